"""One GRPO update from one rollout: re-evaluate the stored transitions, clipped loss, optimiser steps on minibatches.

The rollout stored, for every survivor, the latent before and after each step and the step's
log-prob under the sampling policy. Training re-runs the network on ``(latent_t, step t)`` pairs,
evaluates the log-prob of the STORED next latent under the current policy (``policy_step(...,
next_sample=...)``, the way DDPO and Flow-GRPO pass ``prev_sample``), and minimises the clipped
surrogate averaged over all pairs. Pairs are processed in micro-batches whose losses are scaled
by their share of the pairs, so accumulated gradients equal those of the full-batch mean, with a
backward per micro-batch: peak memory is bounded by ``micro_batch_rows``, not the group size.

The pairs are shuffled and split into ``updates_per_rollout`` disjoint minibatches, one clipped
optimiser step each, for ``inner_epochs`` passes (Flow-GRPO: 2 steps per sampled epoch, "gradients
are updated twice per epoch"; DDPO: 4-8). The old log-probs stay those of sampling, so from the
second minibatch on the ratio leaves 1 and the 1e-4 clip binds: this is GRPO, not REINFORCE with a
group baseline. With one minibatch the ratio is 1 at the gradient.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..denoisers.base import Conditioning, Denoiser
from ..dynamics import StepOutput, policy_step
from ..errors import ProGRPOConfigError
from ..ledger import ComputeLedger
from ..log import logger
from ..lora.adapter import LoraAdapter
from ..rollout import Rollout
from ..schedule import StepCoefficients
from .config import GRPOConfig
from .distributed import SINGLE_PROCESS, DistributedContext
from .loss import KL_FORMS, approx_kl, clip_fraction, clipped_surrogate, log_ratio
from .precision import align_optimizer_state, unscale_gradients
from .timesteps import TIMESTEP_RULES, candidate_steps

#: metric names returned by :func:`grpo_update`: means over every trained (pair, optimiser step), except
#: ``rows`` (backpropagated rows in all), ``grad_norm`` (mean over the steps, before clipping),
#: ``step_skipped`` (1.0 when a non-finite norm skipped the update), ``optimizer_steps`` (taken), and
#: ``clip_fraction_off_policy`` / ``ratio_deviation_off_policy`` (clip fraction and mean |ratio - 1|
#: over the minibatches after the first: 0 with one minibatch).
UPDATE_METRICS = (
    "loss", "policy_loss", "kl", "approx_kl", "clip_fraction", "grad_norm", "ratio_mean", "rows", "step_skipped",
    "optimizer_steps", "clip_fraction_off_policy", "ratio_deviation_off_policy",
)

#: what :func:`accumulate_policy_gradient` returns besides ``rows`` (means over its pairs).
_PAIR_METRICS = ("loss", "policy_loss", "kl", "approx_kl", "clip_fraction", "ratio_mean", "ratio_deviation")

#: dynamics whose step std holds ``sqrt|dt|`` (so Flow-GRPO's KL form differs from the exact one by |dt|).
SQRT_DT_DYNAMICS = ("flow_sde", "dance_sde")


@dataclass(frozen=True)
class TrainingPairs:
    """The (survivor, step) pairs one update trains: ``rows`` and ``steps`` LongTensor [N] (CPU)."""

    rows: torch.Tensor
    steps: torch.Tensor

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def select_training_pairs(rollout: Rollout, timestep_fraction: float, generator: torch.Generator,
                          survivor_offset: int = 0, total_survivors: int | None = None, *,
                          rule: str = "first", train_last_step: bool = False) -> TrainingPairs:
    """Pairs of every survivor with ``max(1, int(K * timestep_fraction))`` of its K candidate steps.

    Candidates are the stochastic steps, without the flow schedule's last step unless
    ``train_last_step`` (:func:`progrpo.train.timesteps.candidate_steps`). ``rule`` (a name in
    :data:`~progrpo.train.timesteps.TIMESTEP_RULES`) picks them: ``"first"`` (Flow-GRPO, the
    generator untouched) or ``"random"`` (DDPO's per-survivor subset from ``generator``; untouched
    too when every candidate is trained). Pairs are survivor-major, steps ascending.

    Multi-process: ``total_survivors`` (all ranks) and ``survivor_offset`` (this rank's first
    survivor) make the draws those of the whole batch, this rank's rows kept.
    """
    stochastic = rollout.trainable_steps.cpu()
    if stochastic.numel() == 0:
        raise ProGRPOConfigError(
            "the rollout has no stochastic step (every step std is 0), so there is no policy gradient; "
            "set rollout.noise_level > 0 and/or widen rollout.sde_window."
        )
    if rule not in TIMESTEP_RULES:
        raise ProGRPOConfigError(f"timestep rule {rule!r} is unknown; use one of {sorted(TIMESTEP_RULES)}.")
    steps = candidate_steps(stochastic, rollout.config.num_steps, rollout.schedule.kind, train_last_step)
    survivors = rollout.num_survivors
    count = steps.numel() if timestep_fraction >= 1.0 else max(1, int(steps.numel() * timestep_fraction))
    drawn = survivors if total_survivors is None else total_survivors
    chosen = TIMESTEP_RULES[rule](steps, count, drawn, generator)[survivor_offset: survivor_offset + survivors]
    rows = torch.arange(survivors).repeat_interleave(count)
    return TrainingPairs(rows=rows, steps=chosen.reshape(-1).clone())


def minibatch_partition(total_pairs: int, minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Split pair ids ``0..total_pairs-1`` into ``minibatches`` disjoint shuffled parts (ids ascending in each).

    One part (``minibatches == 1``) is every pair and leaves the generator untouched. The split
    depends only on the global pair count and the generator, never on the number of processes.
    Sizes differ by at most one; with fewer pairs than minibatches there are ``total_pairs`` parts.
    """
    if minibatches <= 1 or total_pairs <= 1:
        return [torch.arange(total_pairs)]
    order = torch.randperm(total_pairs, generator=generator)
    return [part.sort().values for part in torch.tensor_split(order, min(minibatches, total_pairs))]


def _local_pairs(pairs: TrainingPairs, global_ids: torch.Tensor, survivor_offset: int,
                 per_survivor: int) -> TrainingPairs:
    """This rank's pairs among global pair ids ``survivor * per_survivor + j`` (survivor-major)."""
    local_ids = global_ids - survivor_offset * per_survivor
    local_ids = local_ids[(local_ids >= 0) & (local_ids < len(pairs))]
    return TrainingPairs(rows=pairs.rows[local_ids], steps=pairs.steps[local_ids])


@dataclass(frozen=True)
class _Batch:
    """Tensors of one micro-batch of B pairs, on the rollout's device."""

    sample: torch.Tensor  # [B, C, H, W] state before the step
    stored_next: torch.Tensor  # [B, C, H, W] state the rollout moved to
    old_log_prob: torch.Tensor  # [B] fp32, stored by the rollout
    coeffs: StepCoefficients  # [B] each
    timesteps: torch.Tensor  # [B]
    noise_level: torch.Tensor  # [B]
    conditioning: Conditioning  # B rows


def _micro_batch(rollout: Rollout, rows: torch.Tensor, steps: torch.Tensor) -> _Batch:
    device = rollout.latents.device
    rows_d, steps_d = rows.to(device), steps.to(device)
    return _Batch(
        sample=rollout.latents[rows_d, steps_d],
        stored_next=rollout.latents[rows_d, steps_d + 1],
        old_log_prob=rollout.log_probs[rows_d, steps_d].float(),
        coeffs=rollout.schedule.coefficients(steps, device),
        timesteps=rollout.schedule.timesteps_for(steps).to(device),
        noise_level=rollout.noise_levels[steps].to(device),
        conditioning=rollout.conditioning.take(rollout.prompt_index[rows]),
    )


def _kl_dt(dynamics: str, coeffs: StepCoefficients) -> torch.Tensor:
    """``|dt|`` per row [B] for dynamics whose std holds ``sqrt|dt|`` (flow SDEs), else ones (see ``kl_form``)."""
    if dynamics in SQRT_DT_DYNAMICS:
        return (coeffs.sigma - coeffs.sigma_next).abs().float()
    return torch.ones_like(coeffs.sigma, dtype=torch.float32)


def _policy(denoiser: Denoiser, rollout: Rollout, batch: _Batch) -> StepOutput:
    """Step output (log-prob of the stored next latent, mean, std) of the current policy for a micro-batch."""
    output = denoiser.predict(batch.sample, batch.timesteps, batch.conditioning, rollout.config.guidance_scale)
    return policy_step(
        rollout.config.dynamics, output, batch.sample, batch.coeffs, batch.noise_level, next_sample=batch.stored_next
    )


@torch.no_grad()
def recompute_log_probs(denoiser: Denoiser, rollout: Rollout, pairs: TrainingPairs, micro_batch_rows: int = 8) -> torch.Tensor:
    """Log-probs [N] (fp32) of the stored transitions of ``pairs`` under the current policy, no gradient.

    With the weights that sampled the rollout this reproduces ``rollout.log_probs[rows, steps]``
    (the on-policy check of Flow-GRPO's "how to add a model" list: the ratio must be 1).
    """
    parts = []
    for start in range(0, len(pairs), micro_batch_rows):
        batch = _micro_batch(rollout, pairs.rows[start:start + micro_batch_rows], pairs.steps[start:start + micro_batch_rows])
        parts.append(_policy(denoiser, rollout, batch).log_prob)
    return torch.cat(parts)


def accumulate_policy_gradient(
    denoiser: Denoiser,
    rollout: Rollout,
    advantages: torch.Tensor,
    pairs: TrainingPairs,
    grpo_config: GRPOConfig,
    ledger: ComputeLedger | None = None,
    *,
    adapter: LoraAdapter,
) -> dict[str, float]:
    """Backpropagate the mean GRPO loss over ``pairs`` into ``.grad`` (accumulating; no optimiser step).

    Args:
        denoiser: the policy; its LoRA parameters must require grad.
        rollout: the record the pairs index (survivor rows of ``latents`` [S, T+1, ...]).
        advantages: [S] one per survivor (clamped here to ``grpo_config.adv_clip``).
        pairs: from :func:`select_training_pairs`.
        ledger: counts ``backward_rows`` and ``training`` FLOPs (default: ``rollout.ledger``).
        adapter: the LoRA being trained (:class:`progrpo.lora.adapter.LoraAdapter`): its ``disabled()``
            gives the KL reference, ``training()`` the train mode.

    Returns:
        means over the pairs: ``loss``, ``policy_loss``, ``kl`` (0 when ``kl_beta == 0``: not
        computed; scaled as ``grpo_config.kl_form`` says), ``approx_kl``, ``clip_fraction``,
        ``ratio_mean``, ``ratio_deviation`` (mean |ratio - 1|), and ``rows`` (N).
    """
    advantages = _clipped_advantages(rollout, advantages, grpo_config.adv_clip)
    ledger = rollout.ledger if ledger is None else ledger
    total = len(pairs)
    sums = {"policy_loss": 0.0, "kl": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0, "deviation": 0.0}
    with adapter.training():
        for start in range(0, total, grpo_config.micro_batch_rows):
            rows = pairs.rows[start:start + grpo_config.micro_batch_rows]
            batch = _micro_batch(rollout, rows, pairs.steps[start:start + grpo_config.micro_batch_rows])
            with ledger.count_flops("training"):
                step, per_row = _backward_micro_batch(denoiser, rollout, batch, advantages[rows.to(advantages.device)],
                                                      grpo_config, adapter, total, sums)
            ledger.backward_rows += int(rows.shape[0])
            _add_ratio_sums(sums, step.log_prob.detach(), batch.old_log_prob, per_row, grpo_config.clip_range)
    return _pair_means(sums, total, grpo_config.kl_beta)


def _clipped_advantages(rollout: Rollout, advantages: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``advantages`` [S] checked against the rollout's survivors, as float32 on its device, clamped to ``clip``."""
    if advantages.shape != (rollout.num_survivors,):
        raise ProGRPOConfigError(
            f"advantages have shape {tuple(advantages.shape)} but the rollout has {rollout.num_survivors} "
            "survivors; pass one advantage per survivor (group_advantages(rollout.final_rewards, rollout.prompt_index))."
        )
    advantages = advantages.float().to(rollout.latents.device)
    return advantages.clamp(-clip, clip) if clip is not None else advantages


def _backward_micro_batch(denoiser: Denoiser, rollout: Rollout, batch: _Batch, advantages: torch.Tensor,
                          grpo_config: GRPOConfig, adapter: LoraAdapter, total: int,
                          sums: dict[str, float]) -> tuple[StepOutput, torch.Tensor]:
    """One micro-batch's clipped loss (+ KL to the adapter-disabled reference), backpropagated as its share of
    the mean over ``total`` pairs; adds its KL to ``sums``. Returns the policy step and per-row surrogate [B]."""
    step = _policy(denoiser, rollout, batch)
    per_row = clipped_surrogate(step.log_prob, batch.old_log_prob, advantages, grpo_config.clip_range)
    loss = per_row.sum()
    if grpo_config.kl_beta > 0:
        # Flow-GRPO: the reference is the same network with the adapter disabled (no copy).
        with torch.no_grad(), adapter.disabled():
            reference_mean = _policy(denoiser, rollout, batch).mean
        kl = KL_FORMS[grpo_config.kl_form](step.mean, reference_mean, step.std,
                                           _kl_dt(rollout.config.dynamics, batch.coeffs))
        loss = loss + grpo_config.kl_beta * kl.sum()
        sums["kl"] += float(kl.detach().sum())
    # Scaled by the micro-batch's share: accumulated grads equal the full-batch mean's
    # (times loss_scale, undone on the float32 LoRA gradients: see progrpo.train.precision).
    (loss * grpo_config.loss_scale / total).backward()
    return step, per_row


def _add_ratio_sums(sums: dict[str, float], new_log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                    per_row: torch.Tensor, clip_range: float) -> None:
    """Add a micro-batch's surrogate, approx-KL, clip-fraction and ratio sums (over its rows) to ``sums``."""
    sums["policy_loss"] += float(per_row.detach().sum())
    sums["approx_kl"] += float(approx_kl(new_log_prob, old_log_prob).sum())
    sums["clip_fraction"] += float(clip_fraction(new_log_prob, old_log_prob, clip_range).sum())
    ratio = torch.exp(log_ratio(new_log_prob, old_log_prob))
    sums["ratio"] += float(ratio.sum())
    sums["deviation"] += float((ratio - 1.0).abs().sum())


def _pair_means(sums: dict[str, float], total: int, kl_beta: float) -> dict[str, float]:
    """The sums over ``total`` pairs as :func:`accumulate_policy_gradient`'s means."""
    means = {name: value / total for name, value in sums.items()}
    return {
        "loss": means["policy_loss"] + kl_beta * means["kl"],
        "policy_loss": means["policy_loss"],
        "kl": means["kl"],
        "approx_kl": means["approx_kl"],
        "clip_fraction": means["clip_fraction"],
        "ratio_mean": means["ratio"],
        "ratio_deviation": means["deviation"],
        "rows": float(total),
    }


def grpo_update(
    denoiser: Denoiser,
    rollout: Rollout,
    advantages: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    grpo_config: GRPOConfig,
    trainable_params: Sequence[torch.nn.Parameter],
    generator: torch.Generator,
    *,
    adapter: LoraAdapter,
    grad_clip: float | None = 1.0,
    ledger: ComputeLedger | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    lr_scheduler: Any | None = None,
    ema: LoraEMA | None = None,
) -> dict[str, float]:
    """``inner_epochs * updates_per_rollout`` optimiser steps of GRPO on ``rollout`` (see the module doc).

    Returns the metrics in :data:`UPDATE_METRICS`. A non-finite gradient norm at any step undoes
    the whole update (weights, optimiser, lr schedule and EMA back to their state before it) and
    reports ``step_skipped`` = 1, so one bad batch never writes NaN weights.

    Args:
        advantages: [S] per survivor, e.g. ``group_advantages(rollout.final_rewards, rollout.prompt_index)``.
        trainable_params: the LoRA parameters (grad-norm clipping runs over them).
        generator: CPU generator for the trained steps (``timestep_rule="random"``) and the minibatch split.
        adapter: the LoRA trained (:class:`progrpo.lora.adapter.LoraAdapter`: KL reference and train mode).
        grad_clip: max global grad norm per step (None: measure only).
        ledger: receives ``backward_rows`` and training FLOPs (default ``rollout.ledger``).
        distributed: this process's rank when the batch is split across processes; ``rollout`` and
            ``advantages`` are then this rank's rows. The minibatch split is drawn over the GLOBAL
            pairs (independent of the number of processes), gradients are all-reduced before
            clipping and the metrics are those of the global batch.
        lr_scheduler: stepped after every optimiser step (its factor counts optimiser steps).
        ema: updated after every optimiser step (it applies its own ``update_interval``).
    """
    params = list(trainable_params)
    if not params:
        raise ProGRPOConfigError("trainable_params is empty; pass the parameters returned by add_lora.")
    pairs, offset, total_survivors = _rank_pairs(rollout, grpo_config, generator, distributed)
    per_survivor = len(pairs) // rollout.num_survivors
    snapshot = _Snapshot(params, optimizer, lr_scheduler, ema)
    steps: list[dict[str, float]] = []
    for _ in range(grpo_config.inner_epochs):
        for global_ids in minibatch_partition(total_survivors * per_survivor, grpo_config.updates_per_rollout,
                                              generator):
            local = _local_pairs(pairs, global_ids, offset, per_survivor)
            metrics = _one_step(denoiser, rollout, advantages, optimizer, grpo_config, params, local,
                                grad_clip, ledger, adapter, distributed)
            steps.append(metrics)
            if metrics["step_skipped"]:
                snapshot.restore()
                return _combined(steps, skipped=True)
            if lr_scheduler is not None:
                lr_scheduler.step()
            if ema is not None:
                ema.update()
    return _combined(steps, skipped=False)


def _rank_pairs(rollout: Rollout, grpo_config: GRPOConfig, generator: torch.Generator,
                distributed: DistributedContext) -> tuple[TrainingPairs, int, int]:
    """This rank's trained pairs, drawn over the global survivors, with its survivor offset and the global count."""
    survivors = distributed.all_gather(torch.tensor([rollout.num_survivors]))
    offset, total_survivors = int(survivors[: distributed.rank].sum()), int(survivors.sum())
    pairs = select_training_pairs(rollout, grpo_config.timestep_fraction, generator, survivor_offset=offset,
                                  total_survivors=total_survivors, rule=grpo_config.timestep_rule,
                                  train_last_step=grpo_config.train_last_step)
    return pairs, offset, total_survivors


def _one_step(denoiser: Denoiser, rollout: Rollout, advantages: torch.Tensor, optimizer: torch.optim.Optimizer,
              grpo_config: GRPOConfig, params: list[torch.nn.Parameter], pairs: TrainingPairs,
              grad_clip: float | None, ledger: ComputeLedger | None, adapter: LoraAdapter,
              distributed: DistributedContext) -> dict[str, float]:
    """Gradient of the mean loss over one minibatch (all ranks), clipped, one optimiser step (unless non-finite)."""
    optimizer.zero_grad(set_to_none=True)
    if len(pairs):
        metrics = accumulate_policy_gradient(denoiser, rollout, advantages, pairs, grpo_config, ledger, adapter=adapter)
        unscale_gradients(params, grpo_config.loss_scale)
    else:  # this rank holds none of the minibatch's pairs: it contributes zeros (same keys: same all-reduce)
        metrics = {name: 0.0 for name in _PAIR_METRICS}
        metrics["rows"] = 0.0
    if distributed.enabled:
        metrics = _global_means(metrics, distributed)
        distributed.all_reduce_gradients(params, local_weight=len(pairs) / metrics["rows"])
    max_norm = float("inf") if grad_clip is None else float(grad_clip)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    finite = math.isfinite(grad_norm)
    if finite:
        align_optimizer_state(optimizer)  # the host may have moved the LoRA since the state was made
        optimizer.step()
    else:  # one bad batch must not write NaN into the LoRA (and the Adam moments)
        logger.warning("gradient norm is %s; optimiser step skipped (check the reward and the lr)", grad_norm)
    optimizer.zero_grad(set_to_none=True)
    metrics["grad_norm"] = grad_norm
    metrics["step_skipped"] = 0.0 if finite else 1.0
    return metrics


def _combined(steps: list[dict[str, float]], skipped: bool) -> dict[str, float]:
    """Row-weighted means of the per-step metrics (see :data:`UPDATE_METRICS`)."""
    rows = sum(step["rows"] for step in steps)
    weight = [step["rows"] / rows if rows else 0.0 for step in steps]
    means = {name: sum(w * step[name] for w, step in zip(weight, steps))
             for name in ("loss", "policy_loss", "kl", "approx_kl", "clip_fraction", "ratio_mean")}
    later = steps[1:]
    later_rows = sum(step["rows"] for step in later)
    off_policy_clip = sum(step["rows"] * step["clip_fraction"] for step in later) / later_rows if later_rows else 0.0
    off_policy_ratio = (sum(step["rows"] * step.get("ratio_deviation", 0.0) for step in later) / later_rows
                        if later_rows else 0.0)
    return {
        **means,
        "grad_norm": sum(step["grad_norm"] for step in steps) / len(steps),
        "rows": float(rows),
        "step_skipped": 1.0 if skipped else 0.0,
        "optimizer_steps": 0.0 if skipped else float(len(steps)),
        "clip_fraction_off_policy": off_policy_clip,
        "ratio_deviation_off_policy": off_policy_ratio,
    }


class _Snapshot:
    """Weights, optimiser, lr schedule and EMA state before an update, to undo it after a fault."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any | None, ema: LoraEMA | None) -> None:
        self.params, self.optimizer, self.lr_scheduler, self.ema = params, optimizer, lr_scheduler, ema
        self.weights = [p.detach().clone() for p in params]
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.scheduler_state = None if lr_scheduler is None else copy.deepcopy(lr_scheduler.state_dict())
        self.ema_state = None if ema is None else ema.state_dict()

    def restore(self) -> None:
        with torch.no_grad():
            for param, value in zip(self.params, self.weights):
                param.copy_(value)
        self.optimizer.load_state_dict(self.optimizer_state)
        if not self.optimizer_state["state"]:  # load_state_dict keeps nothing; make sure no moment is left
            self.optimizer.state.clear()
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(self.scheduler_state)
        if self.ema is not None:
            self.ema.load_state_dict(self.ema_state)


def _global_means(metrics: dict[str, float], distributed: DistributedContext) -> dict[str, float]:
    """Per-rank means over local pairs -> means over the global pairs (``rows`` becomes the global count)."""
    names = [name for name in metrics if name != "rows"]
    rows = metrics["rows"]
    totals = distributed.sum_values([metrics[name] * rows for name in names] + [rows])
    global_rows = totals[-1]
    return {**{name: total / global_rows for name, total in zip(names, totals)}, "rows": global_rows}


class LoraEMA:
    """Exponential moving average of the LoRA weights (Flow-GRPO's ``EMAModuleWrapper``).

    :meth:`update` is called after every optimiser step; every ``update_interval``-th call
    (Flow-GRPO's ``update_step_interval``, 8) folds the weights in:
    ``shadow = d * shadow + (1 - d) * weight`` with the warm-up decay
    ``d = min(decay, (1 + k) / (10 + k))``, k the EMA updates so far. Shadows are float32 copies.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float, update_interval: int = 1) -> None:
        self.params = list(params)
        self.decay = float(decay)
        self.update_interval = int(update_interval)
        self.updates = 0
        self.calls = 0
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Count one optimiser step; fold the weights in on every ``update_interval``-th."""
        self.calls += 1
        if self.calls % self.update_interval:
            return
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for shadow, param in zip(self.shadow, self.params):
            shadow.mul_(decay).add_(param.detach().float(), alpha=1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the parameters hold the EMA weights; the trained ones are restored after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow):
                param.copy_(shadow.to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved):
                    param.copy_(value)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "updates": self.updates, "calls": self.calls,
                "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = list(state["shadow"])  # type: ignore[arg-type]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ProGRPOConfigError(
                "the checkpoint's EMA weights do not fit this LoRA (count or shapes differ); resume with the "
                "same lora settings and model."
            )
        self.shadow = [s.float().clone() for s in shadow]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
        # checkpoints from before the update interval: every call was an update
        self.calls = int(state.get("calls", self.updates * self.update_interval))  # type: ignore[arg-type]
        self.decay = float(state["decay"])  # type: ignore[arg-type]
