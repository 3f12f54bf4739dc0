"""Rewards: ``score(images [B,3,H,W] in [0,1], prompts) -> float32 [B]``, built by name.

Importing this package registers every reward in :data:`REWARDS`; transformers is imported
only when a CLIP-family reward is built.
"""

from __future__ import annotations

from .base import (
    REWARDS,
    BaseReward,
    Reward,
    WeightedSum,
    build_reward,
    build_rewards,
    register_reward,
    validate_inputs,
)
from .clip_family import (
    AestheticHead,
    AestheticReward,
    ClipBackbone,
    ClipSimilarityReward,
    ImagePreprocess,
    clear_model_cache,
    load_aesthetic_head,
    load_clip,
    read_image_preprocess,
)
from .weight_free import (
    STATISTICS,
    JpegReward,
    StatisticReward,
    brightness,
    colorfulness,
    contrast,
    jpeg_kilobytes,
    luma,
    saturation,
    sharpness,
)

__all__ = [
    "REWARDS",
    "STATISTICS",
    "AestheticHead",
    "AestheticReward",
    "BaseReward",
    "ClipBackbone",
    "ClipSimilarityReward",
    "ImagePreprocess",
    "JpegReward",
    "Reward",
    "StatisticReward",
    "WeightedSum",
    "brightness",
    "build_reward",
    "build_rewards",
    "clear_model_cache",
    "colorfulness",
    "contrast",
    "jpeg_kilobytes",
    "load_aesthetic_head",
    "load_clip",
    "luma",
    "read_image_preprocess",
    "register_reward",
    "saturation",
    "sharpness",
    "validate_inputs",
]
from .digits import DigitAlignmentReward, digit_alignment, prompt_digit  # noqa: F401
from .imagereward import ImageRewardReward, imagereward, load_imagereward  # noqa: F401
