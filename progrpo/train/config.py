"""How to train: documented dataclasses, validated on construction, plain-dict round trip.

``TrainConfig`` holds the training settings only (what to train -- model, rewards, device, dtype -- is
:class:`~progrpo.train.run_config.RunSpec`; a config file holds both, :class:`~progrpo.train.run_config.RunConfig`).
It nests the rollout (:class:`~progrpo.rollout.RolloutConfig`), the LoRA
(:class:`~progrpo.lora.LoraSettings`), the optimiser (:class:`OptimConfig`) and the GRPO loss
(:class:`GRPOConfig`). ``to_dict`` gives plain YAML/JSON types (a prune schedule becomes its
string ``"5:24, 7:12"``, tuples become lists) and ``from_dict`` rebuilds the same config,
rejecting unknown keys by their dotted name (``grpo.clip_rnage``). Every error names the field
(also as ``ProGRPOConfigError.field``) and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..advantages import STD_MODES
from ..errors import ProGRPOConfigError
from ..lora import LoraSettings
from ..rollout import RolloutConfig
from .loss import KL_FORMS
from .prompts import read_prompts
from .timesteps import TIMESTEP_RULES


def _lr_constant(step: int, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then the base lr."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _lr_inverse_sqrt(step: int, warmup_steps: int) -> float:
    """Linear warm-up, then ``sqrt(warmup / step)`` decay (needs no total step count)."""
    warmup = max(warmup_steps, 1)
    return (step + 1) / warmup if step + 1 < warmup else math.sqrt(warmup / (step + 1))


#: lr schedule name -> factor of the base lr at optimiser step k (``LambdaLR``'s ``lr_lambda``).
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": _lr_constant,
    "inverse_sqrt": _lr_inverse_sqrt,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class OptimConfig:
    """AdamW over the LoRA parameters and its lr schedule.

    Attributes:
        lr: base learning rate (Flow-GRPO/DDPO use 3e-4 on real models; 1e-4 is a safer default).
        betas: AdamW ``(beta1, beta2)``.
        weight_decay: AdamW decoupled weight decay (Flow-GRPO: 1e-4).
        eps: AdamW epsilon.
        grad_clip: max global gradient norm (1.0 in DDPO/Flow-GRPO); None only measures the norm.
        scheduler: lr schedule name in :data:`LR_SCHEDULES` (applied through ``torch``'s LambdaLR).
        warmup_steps: optimiser steps of linear lr warm-up (0 = none).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    scheduler: str = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not _is_number(self.lr) or self.lr <= 0:
            raise ProGRPOConfigError(
                f"optim.lr={self.lr!r} must be a number > 0; use e.g. 1e-4.",
                field="optim.lr",
            )
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas):
            raise ProGRPOConfigError(
                f"optim.betas={self.betas!r} must be two numbers in [0, 1); use e.g. [0.9, 0.999].",
                field="optim.betas",
            )
        self.betas = (float(betas[0]), float(betas[1]))
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ProGRPOConfigError(
                f"optim.weight_decay={self.weight_decay!r} must be a number >= 0.",
                field="optim.weight_decay",
            )
        if not _is_number(self.eps) or self.eps <= 0:
            raise ProGRPOConfigError(
                f"optim.eps={self.eps!r} must be a number > 0; use e.g. 1e-8.",
                field="optim.eps",
            )
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or self.grad_clip <= 0):
            raise ProGRPOConfigError(
                f"optim.grad_clip={self.grad_clip!r} must be a number > 0, or null to only measure the norm.",
                field="optim.grad_clip",
            )
        if self.scheduler not in LR_SCHEDULES:
            raise ProGRPOConfigError(
                f"optim.scheduler={self.scheduler!r} is unknown; use one of {sorted(LR_SCHEDULES)}.",
                field="optim.scheduler",
            )
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ProGRPOConfigError(
                f"optim.warmup_steps={self.warmup_steps!r} must be an integer >= 0.",
                field="optim.warmup_steps",
            )
        self.lr, self.weight_decay, self.eps = float(self.lr), float(self.weight_decay), float(self.eps)

    def lr_lambda(self) -> Callable[[int], float]:
        """The ``LambdaLR`` factor function of this schedule (a plain function: not pickled in state)."""
        schedule, warmup = LR_SCHEDULES[self.scheduler], self.warmup_steps

        def factor(step: int) -> float:
            return schedule(step, warmup)

        return factor


@dataclass
class GRPOConfig:
    """The clipped GRPO objective and how its (trajectory, step) pairs are processed.

    Attributes:
        clip_range: PPO ratio clip epsilon. 1e-4 as DDPO and Flow-GRPO (their log-probs are
            per-dimension means too, see :func:`progrpo.dynamics.gaussian_log_prob`).
        adv_clip: advantages are clamped to ``[-adv_clip, adv_clip]`` (5 in DDPO/Flow-GRPO); None disables.
        std_mode: advantage scale, ``"group"`` (per-prompt std, GRPO/DanceGRPO/Pro-GRPO) or
            ``"global"`` (std of the whole batch, Flow-GRPO's ``global_std``).
        kl_beta: weight of the KL to the base model (LoRA disabled); 0 skips the reference forward
            entirely. Flow-GRPO uses 0.01-0.04 WITH ``kl_form="flow_grpo"``: those values carry over
            only in that form (see ``kl_form``).
        kl_form: how the per-step KL is scaled, a name in :data:`progrpo.train.loss.KL_FORMS`.
            ``"exact"``: the Gaussian KL ``|mu - mu_ref|^2 / (2 std^2)`` with the step's std
            (which holds ``sqrt|dt|`` for flow dynamics). ``"flow_grpo"``: Flow-GRPO's
            ``train_sd3.py``, ``|mu - mu_ref|^2 / (2 std_dev_t^2)`` with ``std_dev_t`` WITHOUT the
            ``sqrt|dt|`` factor, i.e. ``exact * |dt|`` (about 1/9 of exact at 10 uniform steps);
            for VP schedules (no dt) both forms are the exact KL. Same beta, exact form: ~1/|dt|
            times stronger.
        timestep_fraction: fraction of the candidate steps trained per trajectory:
            ``max(1, int(K * timestep_fraction))`` of the K candidates (Flow-GRPO's
            ``int(num_steps * timestep_fraction)``); 1.0 = all candidates.
        timestep_rule: which candidate steps are trained, a name in
            :data:`progrpo.train.timesteps.TIMESTEP_RULES`: ``"first"`` (Flow-GRPO / DanceGRPO: the
            first ones, the same for every trajectory) or ``"random"`` (DDPO: each trajectory its own
            random subset, drawn with a seeded generator).
        train_last_step: also train the last sampler step of a FLOW schedule. Its std is tiny (the
            step to sigma 0, std ~7e-4 at 10 steps) and its score-function weight the largest, so
            Flow-GRPO (timestep_fraction 0.99) and DanceGRPO never train it; False (default) drops
            it from the candidates. No effect on VP schedules.
        updates_per_rollout: optimiser steps per rollout and inner epoch: the trained (trajectory,
            step) pairs are shuffled and split into this many disjoint minibatches, one step each
            (Flow-GRPO: 2, "gradients are updated twice per epoch"). From the second on the policy
            is off-policy, so the ratio leaves 1 and the clip binds. 1 = one step (REINFORCE-like).
        inner_epochs: passes over the pairs per rollout (DDPO/Flow-GRPO ``num_inner_epochs``, 1).
        micro_batch_rows: (trajectory, step) rows per forward/backward; gradients accumulate over
            micro-batches, so peak memory does not grow with the group size.
        adv_epsilon: added to the std in the advantage ``(R - mean) / (std + adv_epsilon)``
            (Flow-GRPO: 1e-4) so tiny within-group differences (classifier noise) are not blown up to |A| ~ 1.
        ema_decay: decay of an exponential moving average of the LoRA weights (Flow-GRPO: 0.9 with
            warm-up); the EMA weights are exported and used by ``Trainer.evaluate``. None disables it.
        ema_update_interval: the EMA is updated every this many optimiser steps (Flow-GRPO's
            ``update_step_interval``: 8).
        loss_scale: the loss is multiplied by this before backward and the float32 LoRA gradients
            divided by it after (the update is unchanged); > 1 keeps fp16-computed gradients out of
            fp16's subnormal range (:func:`progrpo.train.precision.loss_scale_for` gives the
            latent's element count for fp16, 1 otherwise).
    """

    clip_range: float = 1e-4
    adv_clip: float | None = 5.0
    std_mode: str = "group"
    kl_beta: float = 0.0
    kl_form: str = "flow_grpo"
    timestep_fraction: float = 1.0
    timestep_rule: str = "first"
    train_last_step: bool = False
    updates_per_rollout: int = 2
    inner_epochs: int = 1
    micro_batch_rows: int = 8
    adv_epsilon: float = 1e-4
    ema_decay: float | None = None
    ema_update_interval: int = 8
    loss_scale: float = 1.0

    def __post_init__(self) -> None:
        if not _is_number(self.loss_scale) or not 1.0 <= self.loss_scale < 1e12:
            raise ProGRPOConfigError(
                f"grpo.loss_scale={self.loss_scale!r} must be a number in [1, 1e12); 1 unless the model computes in "
                "fp16 (then the latent's element count).",
                field="grpo.loss_scale",
            )
        if not _is_number(self.clip_range) or self.clip_range <= 0:
            raise ProGRPOConfigError(
                f"grpo.clip_range={self.clip_range!r} must be a number > 0; Flow-GRPO/DDPO use 1e-4.",
                field="grpo.clip_range",
            )
        if self.adv_clip is not None and (not _is_number(self.adv_clip) or self.adv_clip <= 0):
            raise ProGRPOConfigError(
                f"grpo.adv_clip={self.adv_clip!r} must be a number > 0 (e.g. 5), or null.",
                field="grpo.adv_clip",
            )
        if self.std_mode not in STD_MODES:
            raise ProGRPOConfigError(
                f"grpo.std_mode={self.std_mode!r} is unknown; use one of {list(STD_MODES)}.",
                field="grpo.std_mode",
            )
        if not _is_number(self.kl_beta) or self.kl_beta < 0:
            raise ProGRPOConfigError(
                f"grpo.kl_beta={self.kl_beta!r} must be a number >= 0 (0 disables the KL).",
                field="grpo.kl_beta",
            )
        if not _is_number(self.timestep_fraction) or not 0.0 < self.timestep_fraction <= 1.0:
            raise ProGRPOConfigError(
                f"grpo.timestep_fraction={self.timestep_fraction!r} must be in (0, 1]; 1.0 trains every stochastic step.",
                field="grpo.timestep_fraction",
            )
        if not _is_int(self.micro_batch_rows) or self.micro_batch_rows < 1:
            raise ProGRPOConfigError(
                f"grpo.micro_batch_rows={self.micro_batch_rows!r} must be an integer >= 1.",
                field="grpo.micro_batch_rows",
            )
        if self.ema_decay is not None and (not _is_number(self.ema_decay) or not 0.0 < self.ema_decay < 1.0):
            raise ProGRPOConfigError(
                f"grpo.ema_decay={self.ema_decay!r} must be in (0, 1) (e.g. 0.9), or null.",
                field="grpo.ema_decay",
            )
        self._check_update_regime()

    def _check_update_regime(self) -> None:
        """Validate the fields added for the baselines' update regime (issue 14)."""
        if self.kl_form not in KL_FORMS:
            raise ProGRPOConfigError(
                f"grpo.kl_form={self.kl_form!r} is unknown; use one of {sorted(KL_FORMS)}.",
                field="grpo.kl_form",
            )
        if self.timestep_rule not in TIMESTEP_RULES:
            raise ProGRPOConfigError(
                f"grpo.timestep_rule={self.timestep_rule!r} is unknown; use one of {sorted(TIMESTEP_RULES)}.",
                field="grpo.timestep_rule",
            )
        if not isinstance(self.train_last_step, bool):
            raise ProGRPOConfigError(
                f"grpo.train_last_step={self.train_last_step!r} must be true or false.",
                field="grpo.train_last_step",
            )
        for name in ("updates_per_rollout", "inner_epochs", "ema_update_interval"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ProGRPOConfigError(
                    f"grpo.{name}={value!r} must be an integer >= 1.",
                    field=f"grpo.{name}",
                )
        if not _is_number(self.adv_epsilon) or self.adv_epsilon < 0:
            raise ProGRPOConfigError(
                f"grpo.adv_epsilon={self.adv_epsilon!r} must be a number >= 0; Flow-GRPO uses 1e-4.",
                field="grpo.adv_epsilon",
            )
        self.adv_epsilon = float(self.adv_epsilon)
        self.clip_range, self.kl_beta = float(self.clip_range), float(self.kl_beta)
        self.timestep_fraction = float(self.timestep_fraction)
        self.loss_scale = float(self.loss_scale)


@dataclass
class TrainConfig:
    """How to train: the training settings of a run (what to train is :class:`~progrpo.train.run_config.RunSpec`).

    Attributes:
        prompts: the training prompts; or give ``prompts_file`` instead.
        prompts_file: a ``.txt`` (one prompt per line), ``.json`` (list of strings) or ``.jsonl``
            (objects with a ``"prompt"`` key) file; read when training starts.
        prompts_per_iteration: prompts (groups) sampled per iteration (without replacement when
            there are enough prompts).
        iterations: rollout + update rounds in all (``grpo.updates_per_rollout * grpo.inner_epochs``
            optimiser steps each).
        rollout: how each group is sampled and pruned; its ``seed`` is replaced per iteration by one
            derived from ``seed`` and the iteration.
        lora: rank, alpha, targets of the trained LoRA.
        optim: AdamW and lr schedule.
        grpo: the loss.
        output_dir: where ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``lora.safetensors``
            and ``curve.png`` go.
        checkpoint_every: write a checkpoint every this many iterations (0: only at the end/on stop).
        keep_last: keep this many newest checkpoints, deleting older ones once a newer one is complete
            (0: keep all).
        eval_every: every this many iterations, score ``eval_samples`` samples per held-out prompt on fixed
            seeds (the training sampler, no pruning) and record their mean reward as ``eval_reward`` (0: never).
        eval_prompts: the held-out prompts (None: the training prompts).
        eval_samples: samples per held-out prompt.
        max_bad_iterations: an iteration with a NaN/inf reward, model output, advantage, loss or
            gradient norm is skipped (no optimiser step; ``skipped`` in its metrics line); this
            many skipped in a row stop the run with a checkpoint and an error naming the value.
        seed: seeds prompt choice, rollout noise, trained-step choice and the global torch RNG.
        negative_prompt: the shared negative prompt for CFG; null encodes none (guidance off).
    """

    prompts: list[str] | None = None
    prompts_file: str | None = None
    prompts_per_iteration: int = 1
    iterations: int = 100
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    output_dir: str = "progrpo_output"
    checkpoint_every: int = 10
    keep_last: int = 0
    eval_every: int = 0
    eval_prompts: list[str] | None = None
    eval_samples: int = 4
    max_bad_iterations: int = 3
    seed: int = 0
    negative_prompt: str | None = ""

    def __post_init__(self) -> None:
        self._check_prompts()
        self._check_counts()
        self._check_evaluation()
        if not _is_int(self.seed) or self.seed < 0:
            raise ProGRPOConfigError(f"seed={self.seed!r} must be an integer >= 0.", field="seed")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ProGRPOConfigError(f"negative_prompt={self.negative_prompt!r} must be a string or null.",
                                     field="negative_prompt")
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir).strip():
            raise ProGRPOConfigError(f"output_dir={self.output_dir!r} must be a folder path.", field="output_dir")
        self.output_dir = str(self.output_dir)
        for section, kind in SECTIONS.items():
            if not isinstance(getattr(self, section), kind):
                raise ProGRPOConfigError(
                    f"{section} must be a {kind.__name__} (or a dict in from_dict), got {type(getattr(self, section)).__name__}.",
                    field=section,
                )

    def _check_prompts(self) -> None:
        if self.prompts is not None:
            if isinstance(self.prompts, str) or not isinstance(self.prompts, (list, tuple)) or not self.prompts:
                raise ProGRPOConfigError(
                    f"prompts={self.prompts!r} must be a non-empty list of strings (or use prompts_file).", field="prompts"
                )
            if not all(isinstance(p, str) and p.strip() for p in self.prompts):
                raise ProGRPOConfigError("prompts must all be non-empty strings; remove the blank entries.",
                                         field="prompts")
            self.prompts = list(self.prompts)
        if self.prompts_file is not None and not isinstance(self.prompts_file, (str, os.PathLike)):
            raise ProGRPOConfigError(f"prompts_file={self.prompts_file!r} must be a path string or null.",
                                     field="prompts_file")
        if (self.prompts is None) == (self.prompts_file is None):
            raise ProGRPOConfigError(
                "give exactly one of prompts (a list) and prompts_file (a path); "
                f"got prompts={self.prompts!r}, prompts_file={self.prompts_file!r}.",
                field="prompts",
            )
        if self.prompts_file is not None:
            self.prompts_file = str(self.prompts_file)

    def _check_counts(self) -> None:
        for name in ("prompts_per_iteration", "iterations"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ProGRPOConfigError(f"{name}={value!r} must be an integer >= 1.", field=name)
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise ProGRPOConfigError(
                f"checkpoint_every={self.checkpoint_every!r} must be an integer >= 0 (0: only at the end).",
                field="checkpoint_every",
            )
        if not _is_int(self.keep_last) or self.keep_last < 0:
            raise ProGRPOConfigError(
                f"keep_last={self.keep_last!r} must be an integer >= 0 (checkpoints kept; 0 keeps all).",
                field="keep_last",
            )
        if not _is_int(self.max_bad_iterations) or self.max_bad_iterations < 1:
            raise ProGRPOConfigError(
                f"max_bad_iterations={self.max_bad_iterations!r} must be an integer >= 1 (consecutive skipped "
                "iterations before the run stops); use e.g. 3.",
                field="max_bad_iterations",
            )

    def _check_evaluation(self) -> None:
        if not _is_int(self.eval_every) or self.eval_every < 0:
            raise ProGRPOConfigError(f"eval_every={self.eval_every!r} must be an integer >= 0 (0: no held-out evaluation).",
                                     field="eval_every")
        if not _is_int(self.eval_samples) or self.eval_samples < 1:
            raise ProGRPOConfigError(f"eval_samples={self.eval_samples!r} must be an integer >= 1.", field="eval_samples")
        if self.eval_prompts is not None:
            if isinstance(self.eval_prompts, str) or not self.eval_prompts or \
                    not all(isinstance(p, str) and p.strip() for p in self.eval_prompts):
                raise ProGRPOConfigError(
                    f"eval_prompts={self.eval_prompts!r:.80} must be a non-empty list of prompts (or null: the "
                    "training prompts).",
                    field="eval_prompts",
                )
            self.eval_prompts = list(self.eval_prompts)

    # --- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types; ``from_dict(to_dict())`` rebuilds an equal config."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from plain types; unknown keys (at any level) are rejected by their dotted name."""
        if not isinstance(data, Mapping):
            raise ProGRPOConfigError(f"a training config must be a mapping of fields, got {type(data).__name__}.")
        values = _checked_keys(cls, data, "")
        for section, kind in SECTIONS.items():
            if section in values:
                values[section] = _build_section(section, kind, values[section])
        return _construct(cls, values, "")

    def resolved_prompts(self) -> list[str]:
        """The training prompts: ``prompts`` or those read from ``prompts_file``."""
        if self.prompts is not None:
            return list(self.prompts)
        return read_prompts(self.prompts_file)  # type: ignore[arg-type]

    def resolved(self) -> Any:
        """A copy with ``prompts_file`` read into ``prompts`` (what a run actually trains on)."""
        if self.prompts is not None:
            return dataclasses.replace(self)
        return dataclasses.replace(self, prompts=self.resolved_prompts(), prompts_file=None)


#: nested dataclass sections of TrainConfig.
SECTIONS: dict[str, type] = {"rollout": RolloutConfig, "lora": LoraSettings, "optim": OptimConfig, "grpo": GRPOConfig}


def _plain(value: Any) -> Any:
    """Config value -> YAML/JSON-safe value (dataclasses to dicts, tuples to lists, schedules to strings)."""
    from ..pruning import PruneSchedule

    if isinstance(value, PruneSchedule):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _checked_keys(kind: type, data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ProGRPOConfigError(
            f"unknown config key {prefix + str(unknown[0])!r}"
            + (f" (and {[prefix + str(k) for k in unknown[1:]]})" if len(unknown) > 1 else "")
            + f"; valid keys{' of ' + prefix.rstrip('.') if prefix else ''}: {sorted(names)}.",
            field=prefix + str(unknown[0]),
        )
    return dict(data)


def _build_section(section: str, kind: type, value: Any) -> Any:
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ProGRPOConfigError(f"{section} must be a mapping of {kind.__name__} fields, got {value!r}.", field=section)
    values = _checked_keys(kind, value, section + ".")
    if section == "rollout" and isinstance(values.get("sde_window"), list):
        values["sde_window"] = tuple(values["sde_window"])
    if section == "optim" and isinstance(values.get("betas"), list):
        values["betas"] = tuple(values["betas"])
    try:
        return _construct(kind, values, section + ".")
    except ProGRPOConfigError as error:
        message = str(error)
        if message.startswith(section + "."):
            raise
        raise ProGRPOConfigError(f"{section}: {message}", field=error.field or section) from None


#: what a field of the wrong type or shape raises inside a dataclass's checks (a list where a string goes...).
_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError)


def _construct(kind: type, values: dict[str, Any], prefix: str) -> Any:
    """``kind(**values)``; a field of the wrong type or shape becomes a ProGRPOConfigError naming that field."""
    try:
        return kind(**values)
    except ProGRPOConfigError:
        raise
    except _SHAPE_ERRORS as error:
        # which field: the first that fails on its own (the others at their defaults)
        culprit = next((name for name in values if _fails_alone(kind, name, values[name])), None)
        where = f"{prefix}{culprit}={values[culprit]!r:.60}" if culprit else prefix.rstrip(".") or "the config"
        raise ProGRPOConfigError(
            f"{where} has the wrong type or shape ({type(error).__name__}: {error}); see {kind.__name__}'s "
            "documentation for the expected value.",
            field=prefix + culprit if culprit else prefix.rstrip(".") or None,
        ) from None


def _fails_alone(kind: type, name: str, value: Any) -> bool:
    try:
        # a training config needs prompts to be valid at all
        kind(**{"prompts": ["p"], name: value}) if issubclass(kind, TrainConfig) else kind(**{name: value})
    except ProGRPOConfigError:
        return False
    except _SHAPE_ERRORS:
        return True
    return False

