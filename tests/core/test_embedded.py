"""Embedded models (progrpo/embedded): the shipped files re-measure as metrics.json records.

* the digit classifier's accuracy on the fixed held-out split is at least its recorded floor;
* every shipped generator loads through the diffusers backend, and its per-prompt alignment at
  the recorded sampling setting (same seed, same sample count) is at least the recorded value
  minus a tolerance, while its mean stays below a ceiling that leaves GRPO room to improve;
* the ``digit_alignment`` reward parses digits from prompts and names a bad prompt in its error.
"""

from __future__ import annotations

import pytest
import torch

from progrpo.embedded import (
    DEFAULT_SAMPLING,
    DIGIT_PROMPTS,
    EMBEDDED_GENERATORS,
    EMBEDDED_MODELS,
    embedded_model_path,
    measure_alignment,
    recorded_metrics,
)
from progrpo.errors import ProGRPOConfigError
from progrpo.rewards import REWARDS, build_reward
from progrpo.rewards.digits import DigitAlignmentReward, prompt_digit

torch.set_num_threads(1)  # 2 shared cores

#: the classifier may lose this much held-out accuracy against metrics.json (float rounding on other CPUs).
CLASSIFIER_TOLERANCE = 0.01
#: absolute floor of the classifier's held-out accuracy.
CLASSIFIER_FLOOR = 0.98
#: per-prompt alignment may fall this far below the recorded value (32 samples: one sample is 0.03).
PROMPT_TOLERANCE = 0.15
#: the mean alignment may fall this far below the recorded mean.
MEAN_TOLERANCE = 0.05
#: the base generators must leave room for GRPO: mean alignment at most this.
ALIGNMENT_CEILING = 0.90


@pytest.fixture(scope="module")
def metrics() -> dict:
    return recorded_metrics()


@pytest.fixture(scope="module")
def reward() -> DigitAlignmentReward:
    return build_reward("digit_alignment")


def test_every_embedded_model_is_shipped(metrics: dict) -> None:
    for name in EMBEDDED_MODELS:
        folder = embedded_model_path(name)
        assert any(folder.iterdir()), name
        assert name in metrics, f"metrics.json has no entry for {name}"
    total = sum(f.stat().st_size for name in EMBEDDED_MODELS for f in EMBEDDED_MODELS[name].rglob("*") if f.is_file())
    assert total < 5_000_000, f"embedded models take {total} bytes"


def test_classifier_held_out_accuracy_meets_recorded_floor(metrics: dict) -> None:
    pytest.importorskip("sklearn")
    from progrpo.embedded.classifier import accuracy, digits_dataset, digits_split, load_classifier

    images, labels = digits_dataset()
    _, held_out = digits_split()
    recorded = metrics["digit_classifier"]
    assert held_out.shape[0] == recorded["held_out_size"]
    measured = accuracy(load_classifier(embedded_model_path("digit_classifier")), images[held_out], labels[held_out])
    assert measured >= max(CLASSIFIER_FLOOR, recorded["held_out_accuracy"] - CLASSIFIER_TOLERANCE), measured
    # the reward scores the same images fed as [B,3,H,W] in [0,1]; at 32x32 it resizes them back to 16x16
    reward = DigitAlignmentReward()
    rgb = images[held_out].expand(-1, 3, -1, -1)
    prompts = [f"a handwritten digit {int(label)}" for label in labels[held_out]]
    assert float((reward.predict(rgb) == labels[held_out]).float().mean()) == pytest.approx(measured)
    assert float(reward.score(rgb, prompts).mean()) > 0.9


@pytest.mark.parametrize("name", EMBEDDED_GENERATORS)
def test_generator_alignment_meets_recorded_floors_and_leaves_room(
    name: str, metrics: dict, reward: DigitAlignmentReward
) -> None:
    from progrpo.denoisers.diffusers_backend import load_diffusers_denoiser

    recorded = metrics[name]
    assert recorded["sampling"] == DEFAULT_SAMPLING[name]
    denoiser = load_diffusers_denoiser(embedded_model_path(name))
    assert denoiser.dtype == torch.float32
    result = measure_alignment(
        denoiser, reward, DIGIT_PROMPTS, recorded["samples_per_prompt"], recorded["sampling_seed"], **recorded["sampling"]
    )
    for prompt in DIGIT_PROMPTS:
        floor = recorded["alignment"][prompt] - PROMPT_TOLERANCE
        assert result["accuracy"][prompt] >= floor, (prompt, result["accuracy"][prompt], floor)
    assert result["mean_accuracy"] >= recorded["mean_alignment"] - MEAN_TOLERANCE, result["mean_accuracy"]
    assert result["mean_accuracy"] <= ALIGNMENT_CEILING, f"{name} leaves GRPO no room: {result['mean_accuracy']:.3f}"
    assert 0.3 <= result["mean_accuracy"], f"{name} is too weak to start from: {result['mean_accuracy']:.3f}"


def test_prompt_digit_parses_numerals_and_words() -> None:
    assert prompt_digit("a handwritten digit 7") == 7
    assert prompt_digit("a handwritten digit Seven") == 7
    assert prompt_digit("0") == 0
    assert prompt_digit("the number nine, nine again") == 9
    assert [prompt_digit(prompt) for prompt in DIGIT_PROMPTS] == list(range(10))


@pytest.mark.parametrize(
    "prompt, message",
    [("a handwritten digit", "names no digit"), ("a 3 and a seven", "several digits"), ("digit 12", "names no digit")],
)
def test_reward_error_names_the_prompt(reward: DigitAlignmentReward, prompt: str, message: str) -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ProGRPOConfigError) as error:
        reward.score(images, ["a handwritten digit 4", prompt])
    assert repr(prompt) in str(error.value) and message in str(error.value)


def test_reward_is_registered_bounded_and_differentiable(reward: DigitAlignmentReward) -> None:
    assert "digit_alignment" in REWARDS
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    prompts = ["a handwritten digit 1", "two", "a handwritten digit 8"]
    scores = reward.score(images, prompts)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert bool(((scores >= 0) & (scores <= 1)).all())
    scores.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    log_scores = build_reward("digit_alignment", mode="log_probability").score(images.detach(), prompts)
    torch.testing.assert_close(log_scores, scores.detach().log(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ProGRPOConfigError, match="mode"):
        build_reward("digit_alignment", mode="logits")


def test_continuous_digit_rewards_against_hand_values():
    """Logit margin and tempered log-probability of the prompt digit from known logits, and their registry names."""
    from progrpo.rewards import REWARDS, build_reward
    from progrpo.rewards.digits import MODE_SCORES

    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    targets = torch.tensor([0, 2])
    # margin: target logit minus the largest other one
    torch.testing.assert_close(MODE_SCORES["logit_margin"](logits, targets, 4.0), torch.tensor([1.0, -4.0]))
    # tempered: log softmax(logits / 2) at the target, by hand
    row0 = 1.0 - torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(0.25)) + torch.exp(torch.tensor(0.5)))
    row1 = -0.5 - torch.log(torch.exp(torch.tensor(0.0)) + torch.exp(torch.tensor(1.5)) + torch.exp(torch.tensor(-0.5)))
    torch.testing.assert_close(MODE_SCORES["tempered_log_probability"](logits, targets, 2.0), torch.stack([row0, row1]))
    assert {"digit_logit_margin", "digit_tempered_log_prob"} <= set(REWARDS)
    images = torch.rand(3, 3, 16, 16)
    prompts = ["a handwritten digit 1", "a handwritten digit 7", "a seven"]
    reward = build_reward("digit_logit_margin")
    logits = reward.classifier(images)
    target = torch.tensor([1, 7, 7])
    others = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    torch.testing.assert_close(reward.score(images, prompts), logits.gather(1, target[:, None])[:, 0] - others)
    tempered = build_reward("digit_tempered_log_prob", temperature=4.0).score(images, prompts)
    torch.testing.assert_close(tempered, torch.log_softmax(logits / 4.0, dim=1).gather(1, target[:, None])[:, 0])
    with pytest.raises(ProGRPOConfigError, match="temperature"):
        build_reward("digit_tempered_log_prob", temperature=0)
