"""Small models shipped inside the package: text-to-digit generators and the digit classifier.

Everything here is trained by ``scripts/train_embedded.py`` (deterministic, CPU, minutes) on
scikit-learn's 8x8 digits upscaled to 16x16 and is package data, so an installed extension
finds it without a download:

* ``digits_flow``: pixel-space rectified-flow UNet2DConditionModel + tiny CLIP text encoder,
  a diffusers ``StableDiffusionPipeline`` folder (``vae=None``, FlowMatchEulerDiscreteScheduler,
  shift 1); the paper's main setting.
* ``digits_ddim``: the same network trained for eps prediction, DDIM scheduler.
* ``digit_classifier``: the reward model (:mod:`progrpo.embedded.classifier`, reward
  ``digit_alignment``).

The generators are deliberately EARLY checkpoints: at :data:`DEFAULT_SAMPLING` their prompt
alignment is well below 100% (``metrics.json`` records it per prompt), so GRPO has room to
improve. Prompts look like ``"a handwritten digit 7"`` (:func:`digit_prompt`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ProGRPOConfigError

EMBEDDED_DIR = Path(__file__).resolve().parent

#: name -> folder of every shipped model.
EMBEDDED_MODELS: dict[str, Path] = {
    "digits_flow": EMBEDDED_DIR / "digits_flow",
    "digits_ddim": EMBEDDED_DIR / "digits_ddim",
    "digit_classifier": EMBEDDED_DIR / "digit_classifier",
}

#: the generators among :data:`EMBEDDED_MODELS` (diffusers pipeline folders).
EMBEDDED_GENERATORS = ("digits_flow", "digits_ddim")

#: sampling setting of the recorded per-prompt alignment (metrics.json), per generator.
DEFAULT_SAMPLING: dict[str, dict[str, Any]] = {
    "digits_flow": {"num_steps": 10, "guidance_scale": 1.0, "dynamics": "ode", "height": 16, "width": 16},
    "digits_ddim": {"num_steps": 10, "guidance_scale": 1.0, "dynamics": "ode", "height": 16, "width": 16},
}

#: seed of the noise used for the recorded metrics, and samples per prompt.
METRICS_SEED = 1234
METRICS_SAMPLES_PER_PROMPT = 32

METRICS_FILE = EMBEDDED_DIR / "metrics.json"


def digit_prompt(digit: int) -> str:
    """The prompt naming ``digit`` the generators were trained with: ``"a handwritten digit 7"``."""
    return f"a handwritten digit {int(digit)}"


#: one prompt per digit 0..9.
DIGIT_PROMPTS = tuple(digit_prompt(digit) for digit in range(10))


def embedded_model_path(name: str) -> Path:
    """Folder of the shipped model ``name`` (a key of :data:`EMBEDDED_MODELS`)."""
    if name not in EMBEDDED_MODELS:
        raise ProGRPOConfigError(
            f"embedded model {name!r} is unknown; use one of {', '.join(sorted(EMBEDDED_MODELS))}."
        )
    folder = EMBEDDED_MODELS[name]
    if not folder.is_dir():
        raise ProGRPOConfigError(
            f"embedded model {name!r} is missing at {str(folder)!r}; regenerate it with "
            "`python scripts/train_embedded.py`."
        )
    return folder


def embedded_generator_path(name: str) -> Path:
    """Pipeline folder of the shipped generator ``name`` (``embedded:<name>`` in model specs)."""
    if name not in EMBEDDED_GENERATORS:
        raise ProGRPOConfigError(
            f"embedded generator {name!r} is unknown; use one of "
            f"{', '.join('embedded:' + generator for generator in EMBEDDED_GENERATORS)}."
        )
    return embedded_model_path(name)


def recorded_metrics() -> dict[str, Any]:
    """The metrics ``scripts/train_embedded.py`` measured when it wrote the shipped files."""
    if not METRICS_FILE.is_file():
        raise ProGRPOConfigError(f"{str(METRICS_FILE)!r} is missing; run `python scripts/train_embedded.py`.")
    return json.loads(METRICS_FILE.read_text())


def measure_alignment(
    denoiser: Any,
    reward: Any,
    prompts: tuple[str, ...] | list[str] = DIGIT_PROMPTS,
    samples_per_prompt: int = METRICS_SAMPLES_PER_PROMPT,
    seed: int = METRICS_SEED,
    num_steps: int = 10,
    guidance_scale: float = 1.0,
    dynamics: str = "ode",
    noise_level: float | None = None,
    height: int = 16,
    width: int = 16,
) -> dict[str, Any]:
    """Sample ``samples_per_prompt`` images per prompt with the GRPO rollout sampler and score them.

    ``reward`` is a :class:`~progrpo.rewards.digits.DigitAlignmentReward`. Returns
    ``{"accuracy": {prompt: fraction whose classified digit is the prompt's}, "mean_accuracy",
    "mean_probability": {prompt: mean p(target)}, "mean_p_target"}``.
    """
    import torch

    from ..rollout import RolloutConfig, expand_and_prune_rollout

    prompts = list(prompts)
    config = RolloutConfig(
        group_size=samples_per_prompt, num_steps=num_steps, dynamics=dynamics, noise_level=noise_level,
        guidance_scale=guidance_scale, selection="none", height=height, width=width, seed=seed,
    )
    conditioning = denoiser.encode_prompts(prompts)
    rollout = expand_and_prune_rollout(denoiser, conditioning, reward, config)
    predicted = reward.predict(rollout.images)
    targets = reward.targets(rollout.prompts)
    accuracy, probability = {}, {}
    for index, prompt in enumerate(prompts):
        rows = rollout.prompt_index == index
        accuracy[prompt] = float((predicted[rows] == targets[rows]).float().mean())
        probability[prompt] = float(rollout.final_rewards[rows].mean())
    return {
        "accuracy": accuracy,
        "mean_accuracy": float(torch.tensor(list(accuracy.values())).mean()),
        "probability": probability,
        "mean_probability": float(torch.tensor(list(probability.values())).mean()),
    }


__all__ = [
    "DEFAULT_SAMPLING",
    "DIGIT_PROMPTS",
    "EMBEDDED_DIR",
    "EMBEDDED_GENERATORS",
    "EMBEDDED_MODELS",
    "METRICS_FILE",
    "METRICS_SAMPLES_PER_PROMPT",
    "METRICS_SEED",
    "digit_prompt",
    "embedded_generator_path",
    "embedded_model_path",
    "measure_alignment",
    "recorded_metrics",
]
