"""The reward contract, the reward registry and the weighted sum that combines several rewards.

Every reward maps a batch of decoded images and their prompts to one float32 score per image:
``score(images [B,3,H,W] float in [0,1], prompts: list[str] of length B) -> [B]``. Rewards are
built by name from a registry (``build_reward("clip_score", path=...)``) so that the config,
the CLI and the ComfyUI nodes select them without if/elif chains, and a config dict such as
``{"brightness": {"weight": 1.0}, "clip_score": {"weight": 0.5, "path": "..."}}`` becomes one
:class:`WeightedSum` through :func:`build_rewards` (Flow-GRPO and Flow-Factory combine rewards
the same way: a per-reward weight and a sum).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from ..errors import ProGRPOConfigError
from ..log import logger

#: images may exceed [0, 1] by this much (float rounding after a clamp in a lower precision).
RANGE_TOLERANCE = 1e-4


@runtime_checkable
class Reward(Protocol):
    """A reward model; ``name`` identifies it in logs.

    Rewards may also set ``differentiable: bool`` (default False when absent), saying whether
    gradients of ``score`` reach the pixels (ReFL/DRaFT-style use); GRPO only needs the values.
    """

    name: str

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images: [B,3,H,W] float in [0,1]; prompts: B strings -> float32 [B]."""
        ...


def validate_inputs(images: Any, prompts: Any, reward_name: str = "reward") -> None:
    """Raise :class:`ProGRPOConfigError` unless ``images`` is a float [B,3,H,W] tensor with values
    in [0,1] and ``prompts`` is a sequence of B strings."""
    where = f"reward '{reward_name}'"
    if not isinstance(images, torch.Tensor):
        raise ProGRPOConfigError(
            f"{where}: `images` must be a torch.Tensor of shape [B,3,H,W], got {type(images).__name__}; "
            "convert decoded images with torch.as_tensor and put channels second."
        )
    if images.ndim != 4 or images.shape[1] != 3:
        hint = " (ComfyUI IMAGE is [B,H,W,3]: use images.permute(0, 3, 1, 2))" if images.ndim == 4 else ""
        raise ProGRPOConfigError(f"{where}: `images` must have shape [B,3,H,W], got {tuple(images.shape)}{hint}.")
    if not images.is_floating_point():
        raise ProGRPOConfigError(
            f"{where}: `images` must be a float tensor in [0,1], got dtype {images.dtype} with shape "
            f"{tuple(images.shape)}; for uint8 images use images.float() / 255."
        )
    if images.numel() > 0:
        low, high = float(images.detach().min()), float(images.detach().max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ProGRPOConfigError(
                f"{where}: `images` of shape {tuple(images.shape)} contains NaN or inf; check the decoder output."
            )
        if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
            raise ProGRPOConfigError(
                f"{where}: `images` of shape {tuple(images.shape)} must have values in [0,1], got "
                f"[{low:.4g}, {high:.4g}]; for VAE output in [-1,1] use (x / 2 + 0.5).clamp(0, 1)."
            )
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ProGRPOConfigError(
            f"{where}: `prompts` must be a list of {images.shape[0]} strings, got {type(prompts).__name__}; "
            "wrap a single prompt as [prompt] * batch_size."
        )
    if len(prompts) != images.shape[0]:
        raise ProGRPOConfigError(
            f"{where}: len(prompts) = {len(prompts)} but `images` has batch size {images.shape[0]} "
            f"(shape {tuple(images.shape)}); pass one prompt per image."
        )
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise ProGRPOConfigError(f"{where}: every entry of `prompts` must be a str.")


class BaseReward:
    """Template for rewards: ``score`` validates the inputs, casts to fp32 and calls ``_score``.

    Subclasses set ``name`` and ``differentiable`` and implement ``_score(images, prompts)``
    with ``images`` already float32 [B,3,H,W] in [0,1].
    """

    name: str = "reward"
    differentiable: bool = False
    #: images per ``_score`` call (None: the whole batch at once); model rewards set it.
    batch_size: int | None = None

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images: [B,3,H,W] float in [0,1]; prompts: B strings -> float32 [B] on images.device."""
        validate_inputs(images, prompts, self.name)
        if self.batch_size is None or images.shape[0] <= self.batch_size:
            scores = self._score(images.float(), list(prompts))
        else:
            from .runtime import score_in_batches

            scores = score_in_batches(self._score, images.float(), prompts, self.batch_size)
        return scores.to(device=images.device, dtype=torch.float32)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


RewardFactory = Callable[..., Reward]
F = TypeVar("F", bound=Callable[..., Any])

#: reward name -> factory taking keyword options and returning a :class:`Reward`.
REWARDS: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[F], F]:
    """Decorator adding a factory to :data:`REWARDS` under ``name``.

    Registering a different factory under an existing name is an error (silently replacing a
    reward would change what a saved config means); re-registering the same function, as a
    module reload does, is allowed.
    """

    def decorator(factory: F) -> F:
        existing = REWARDS.get(name)
        if existing is not None and _qualified(existing) != _qualified(factory):
            raise ProGRPOConfigError(
                f"reward name '{name}' is already registered by {_qualified(existing)}; "
                "choose another name for the new reward."
            )
        REWARDS[name] = factory
        return factory

    return decorator


def _qualified(factory: Callable[..., Any]) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def build_reward(name: str, **options: Any) -> Reward:
    """Build the reward registered as ``name`` with keyword ``options`` (e.g. ``path=...``)."""
    factory = REWARDS.get(name)
    if factory is None:
        raise ProGRPOConfigError(f"unknown reward '{name}'; known rewards: {', '.join(sorted(REWARDS))}.")
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = ", ".join(p for p in signature.parameters) or "none"
        raise ProGRPOConfigError(
            f"reward '{name}': invalid options {sorted(options)} ({error}); accepted options: {accepted}."
        ) from None
    return factory(**options)


class WeightedSum(BaseReward):
    """``score = sum_k weights[k] * rewards[k].score(images, prompts)``.

    ``score_components`` returns the unweighted per-reward scores (for logging), and
    ``combine`` turns them into the weighted sum, so a caller that logs the components does not
    score twice.
    """

    def __init__(self, rewards: Mapping[str, Reward], weights: Mapping[str, float]) -> None:
        if not rewards:
            raise ProGRPOConfigError("WeightedSum: `rewards` is empty; give at least one reward.")
        if set(rewards) != set(weights):
            raise ProGRPOConfigError(
                f"WeightedSum: `weights` keys {sorted(weights)} must equal `rewards` keys {sorted(rewards)}."
            )
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ProGRPOConfigError(
                    f"WeightedSum: weight of reward '{key}' must be a finite number, got {weight!r}."
                )
        self.rewards: dict[str, Reward] = dict(rewards)
        self.weights: dict[str, float] = {key: float(weights[key]) for key in rewards}
        self.name = " + ".join(f"{self.weights[key]:g}*{key}" for key in self.rewards)
        self.differentiable = all(getattr(reward, "differentiable", False) for reward in self.rewards.values())

    def score_components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Unweighted scores of every component: name -> float32 [B]."""
        validate_inputs(images, prompts, self.name)
        return {key: reward.score(images, prompts) for key, reward in self.rewards.items()}

    def combine(self, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of ``score_components``' output: float32 [B]."""
        terms = [self.weights[key] * components[key].float() for key in self.rewards]
        return torch.stack(terms).sum(dim=0)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.combine(self.score_components(images, prompts))


def _accepts(reward_name: str, option: str) -> bool:
    """Whether the factory registered as ``reward_name`` takes keyword ``option``."""
    factory = REWARDS.get(reward_name)
    return factory is not None and option in inspect.signature(factory).parameters


def build_rewards(spec: Mapping[str, Mapping[str, Any]], default_device: str | None = None) -> WeightedSum:
    """Build a :class:`WeightedSum` from ``{component: {"weight": w, **options}}``.

    The component name is the registered reward name unless the entry names one with
    ``"reward"`` (so one reward can appear twice with different options, e.g.
    ``{"clip_a": {"reward": "clip_score", "path": ...}, "clip_b": {...}}``). ``weight``
    defaults to 1.0; every other key is passed to the reward's factory. ``default_device``
    (the training device) is given to every reward model whose entry names no ``device``.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ProGRPOConfigError(
            f"rewards spec must be a non-empty dict like {{'brightness': {{'weight': 1.0}}}}, got {spec!r}."
        )
    rewards: dict[str, Reward] = {}
    weights: dict[str, float] = {}
    for key, entry in spec.items():
        entry = {} if entry is None else entry
        if not isinstance(entry, Mapping):
            raise ProGRPOConfigError(
                f"rewards spec entry '{key}' must be a dict of options such as {{'weight': 1.0}}, got {entry!r}."
            )
        options = dict(entry)
        weights[key] = options.pop("weight", 1.0)
        reward_name = options.pop("reward", key)
        if default_device is not None and "device" not in options and _accepts(reward_name, "device"):
            options["device"] = default_device
        rewards[key] = build_reward(reward_name, **options)
    combined = WeightedSum(rewards, weights)
    logger.info("rewards: %s", combined.name)
    return combined
