"""``digit_alignment``: prompt alignment of digit images under the embedded digit classifier.

The GenEval analogue of the embedded digits generators (``progrpo/embedded``): the score of an
image is the classifier's probability (or log-probability) of the digit its prompt names.

The probability is nearly binary on the digits model (most base-policy samples score < 0.05 or
> 0.95), so few trajectories cluster around a group's mean and OVF has little to remove. Two
continuous scores keep the ranking and spread the values (registered as their own rewards):

* ``digit_logit_margin``: the prompt digit's logit minus the largest other logit;
* ``digit_tempered_log_prob``: ``log softmax(logits / temperature)`` of the prompt digit
  (temperature 4 by default), a log-probability that does not saturate at 0.
A prompt names its digit once, as a numeral or a word ("a handwritten digit 7", "a seven");
a prompt that names no digit, or several different ones, is an error that quotes the prompt.
The score is differentiable with respect to the pixels.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ProGRPOConfigError
from .base import BaseReward, register_reward

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_PATTERN = re.compile(r"(?<![0-9])([0-9])(?![0-9])|\b(" + "|".join(DIGIT_WORDS) + r")\b", re.IGNORECASE)


def _probability(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0].exp()


def _log_probability(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]


def _tempered_log_probability(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits / temperature, dim=1).gather(1, targets[:, None])[:, 0]


def _logit_margin(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    target = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return target - others.max(dim=1).values


#: ``mode`` -> score of the prompt digit from the logits [B, 10] and targets [B] -> [B].
MODE_SCORES = {
    "probability": _probability,
    "log_probability": _log_probability,
    "tempered_log_probability": _tempered_log_probability,
    "logit_margin": _logit_margin,
}
MODES = tuple(MODE_SCORES)


def prompt_digit(prompt: str) -> int:
    """The digit 0-9 a prompt names (numeral or word); ProGRPOConfigError quoting the prompt otherwise."""
    found = set()
    for numeral, word in _DIGIT_PATTERN.findall(prompt):
        found.add(int(numeral) if numeral else DIGIT_WORDS.index(word.lower()))
    if len(found) != 1:
        what = "names no digit" if not found else f"names several digits {sorted(found)}"
        raise ProGRPOConfigError(
            f"reward 'digit_alignment': prompt {prompt!r} {what}; each prompt must name exactly one digit "
            "0-9 as a numeral or a word, e.g. 'a handwritten digit 7' or 'a handwritten digit seven'."
        )
    return found.pop()


@lru_cache(maxsize=4)
def _cached_classifier(folder: str):
    from ..embedded.classifier import load_classifier

    model = load_classifier(folder)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class DigitAlignmentReward(BaseReward):
    """``p(digit named in the prompt | image)`` (or its log) under the digit classifier."""

    name = "digit_alignment"
    differentiable = True

    def __init__(self, path: str | Path | None = None, mode: str = "probability", temperature: float = 4.0) -> None:
        if mode not in MODES:
            raise ProGRPOConfigError(f"reward 'digit_alignment': mode={mode!r} is unknown; use one of {MODES}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ProGRPOConfigError(
                f"reward 'digit_alignment': temperature={temperature!r} must be a number > 0 (e.g. 4)."
            )
        self.temperature = float(temperature)
        if path is None:
            from ..embedded import embedded_model_path

            path = embedded_model_path("digit_classifier")
        self.path, self.mode = str(path), mode
        self.classifier = _cached_classifier(self.path)

    def targets(self, prompts: list[str]) -> torch.Tensor:
        """Digit named by each prompt: int64 [B]."""
        return torch.tensor([prompt_digit(prompt) for prompt in prompts], dtype=torch.long)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = self.targets(prompts).to(images.device)
        classifier = self.classifier.to(images.device)
        return MODE_SCORES[self.mode](classifier(images), targets, self.temperature)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier's digit for each image [B,3,H,W] in [0,1]: int64 [B]."""
        return self.classifier.to(images.device)(images.float()).argmax(dim=1)


@register_reward("digit_alignment")
def digit_alignment(path: str | None = None, mode: str = "probability", temperature: float = 4.0) -> DigitAlignmentReward:
    """Embedded digit classifier's probability (``mode="log_probability"``: log) of the prompt's digit."""
    return DigitAlignmentReward(path, mode, temperature)


@register_reward("digit_logit_margin")
def digit_logit_margin(path: str | None = None) -> DigitAlignmentReward:
    """Prompt digit's classifier logit minus the largest other logit (continuous; > 0 when classified right)."""
    reward = DigitAlignmentReward(path, "logit_margin")
    reward.name = "digit_logit_margin"
    return reward


@register_reward("digit_tempered_log_prob")
def digit_tempered_log_prob(path: str | None = None, temperature: float = 4.0) -> DigitAlignmentReward:
    """``log softmax(logits / temperature)`` of the prompt digit (continuous; temperature 4 by default)."""
    reward = DigitAlignmentReward(path, "tempered_log_probability", temperature)
    reward.name = "digit_tempered_log_prob"
    return reward
