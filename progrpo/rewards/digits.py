"""``digit_alignment``: prompt alignment of digit images under the embedded digit classifier.

The GenEval analogue of the embedded digits generators (``progrpo/embedded``): the score of an
image is the classifier's probability (or log-probability) of the digit its prompt names.
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
MODES = ("probability", "log_probability")


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

    def __init__(self, path: str | Path | None = None, mode: str = "probability") -> None:
        if mode not in MODES:
            raise ProGRPOConfigError(f"reward 'digit_alignment': mode={mode!r} is unknown; use one of {MODES}.")
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
        log_probs = torch.log_softmax(classifier(images), dim=1).gather(1, targets[:, None])[:, 0]
        return log_probs if self.mode == "log_probability" else log_probs.exp()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier's digit for each image [B,3,H,W] in [0,1]: int64 [B]."""
        return self.classifier.to(images.device)(images.float()).argmax(dim=1)


@register_reward("digit_alignment")
def digit_alignment(path: str | None = None, mode: str = "probability") -> DigitAlignmentReward:
    """Embedded digit classifier's probability (``mode="log_probability"``: log) of the prompt's digit."""
    return DigitAlignmentReward(path, mode)
