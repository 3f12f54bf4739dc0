"""Rewards that need no weights: DDPO's JPEG (in)compressibility and kornia image statistics.

The JPEG rewards follow DDPO (``ddpo_pytorch/rewards.py``): encode at quality 95 with PIL and
take the file size in kB (``bytes / 1000``); compressibility is ``-kB``, incompressibility
``+kB``. They are not differentiable. The kornia statistics are differentiable end to end,
which the tests check; square roots go through
:func:`_safe_sqrt` so that a flat image, whose variance is exactly 0, gets a finite gradient.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import kornia
import torch
from PIL import Image

from .base import BaseReward, register_reward

#: DDPO encodes at this JPEG quality.
JPEG_QUALITY = 95


def jpeg_kilobytes(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """Size in kB (1000 bytes) of each image encoded as JPEG: [B,3,H,W] in [0,1] -> float32 [B]."""
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegReward(BaseReward):
    """``sign * jpeg_kilobytes(images)``; sign -1 rewards compressible (simple) images."""

    differentiable = False

    def __init__(self, name: str, sign: float, quality: int = JPEG_QUALITY) -> None:
        self.name, self.sign, self.quality = name, sign, quality

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.sign * jpeg_kilobytes(images, self.quality)


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = JPEG_QUALITY) -> JpegReward:
    """DDPO compressibility: minus the JPEG size in kB."""
    return JpegReward("jpeg_compressibility", -1.0, quality)


@register_reward("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = JPEG_QUALITY) -> JpegReward:
    """DDPO incompressibility: the JPEG size in kB."""
    return JpegReward("jpeg_incompressibility", 1.0, quality)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with value 0 and gradient 0 at x <= 0 (plain sqrt has an infinite gradient at 0,
    which turns into NaN for flat images). The double ``where`` keeps NaN out of the backward."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _variance(x: torch.Tensor) -> torch.Tensor:
    """Population variance over all but the first dimension: [B,...] -> [B]."""
    flat = x.flatten(1)
    return (flat - flat.mean(dim=1, keepdim=True)).square().mean(dim=1)


def luma(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B`` (kornia's grayscale): [B,3,H,W] -> [B,1,H,W]."""
    return kornia.color.rgb_to_grayscale(images)


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Mean luma: [B,3,H,W] -> [B], in [0,1]."""
    return luma(images).flatten(1).mean(dim=1)


def contrast(images: torch.Tensor) -> torch.Tensor:
    """Standard deviation (population) of luma: [B,3,H,W] -> [B], in [0,0.5]."""
    return _safe_sqrt(_variance(luma(images)))


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation ``(max - min) / max``: [B,3,H,W] -> [B], in [0,1]."""
    return kornia.color.rgb_to_hsv(images)[:, 1].flatten(1).mean(dim=1)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the 3x3 Laplacian of luma (the usual focus measure): [B,3,H,W] -> [B].

    Reflect padding, so a flat image scores exactly 0.
    """
    return _variance(kornia.filters.laplacian(luma(images), kernel_size=3))


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk (2003) colourfulness on the 0-255 scale of the paper: [B,3,H,W] -> [B].

    ``rg = R - G``, ``yb = (R + G) / 2 - B``; ``M = sqrt(var rg + var yb) + 0.3 sqrt(mean rg^2 +
    mean yb^2)`` (the 0-255 scale keeps the paper's bands: 0 grey, ~33 moderate, >80 very colourful).
    """
    red, green, blue = (images * 255.0).unbind(dim=1)
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = _safe_sqrt(_variance(rg) + _variance(yb))
    mean_rg, mean_yb = rg.flatten(1).mean(dim=1), yb.flatten(1).mean(dim=1)
    return spread + 0.3 * _safe_sqrt(mean_rg.square() + mean_yb.square())


class StatisticReward(BaseReward):
    """A differentiable image statistic used as a reward (prompts are ignored)."""

    differentiable = True

    def __init__(self, name: str, statistic: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name, self.statistic = name, statistic

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.statistic(images)


#: statistic name -> function [B,3,H,W] -> [B]; each is registered as a reward of that name.
STATISTICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "sharpness": sharpness,
    "colorfulness": colorfulness,
}


def _register_statistic(name: str, statistic: Callable[[torch.Tensor], torch.Tensor]) -> None:
    def factory() -> StatisticReward:
        return StatisticReward(name, statistic)

    factory.__qualname__ = f"statistic_reward[{name}]"
    factory.__doc__ = statistic.__doc__
    register_reward(name)(factory)


for _name, _statistic in STATISTICS.items():
    _register_statistic(_name, _statistic)
