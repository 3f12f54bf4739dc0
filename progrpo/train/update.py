"""One GRPO update from one rollout: re-evaluate the stored transitions, clipped loss, one optimiser step.

The rollout stored, for every survivor, the latent before and after each step and the step's
log-prob under the sampling policy. Training re-runs the network on ``(latent_t, step t)`` pairs,
evaluates the log-prob of the STORED next latent under the current policy (``policy_step(...,
next_sample=...)``, the way DDPO and Flow-GRPO pass ``prev_sample``), and minimises the clipped
surrogate averaged over all pairs. Pairs are processed in micro-batches whose losses are scaled
by their share of the pairs, so accumulated gradients equal those of the full-batch mean, with a
backward per micro-batch: peak memory is bounded by ``micro_batch_rows``, not the group size.
Then the global grad norm is clipped and the optimiser steps once: one step per rollout, so the
policy that sampled is the policy differentiated and the ratio is 1 at the gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..denoisers.base import Conditioning, Denoiser
from ..dynamics import StepOutput, gaussian_kl_same_std, policy_step
from ..errors import ProGRPOConfigError
from ..ledger import ComputeLedger
from ..log import logger
from ..lora import lora_disabled
from ..rollout import Rollout
from ..schedule import StepCoefficients
from .config import GRPOConfig
from .distributed import SINGLE_PROCESS, DistributedContext
from .loss import approx_kl, clip_fraction, clipped_surrogate, log_ratio
from .precision import align_optimizer_state, unscale_gradients

#: metric names returned by :func:`grpo_update`: means over the trained pairs, except ``rows`` (their
#: count), ``grad_norm`` (before clipping) and ``step_skipped`` (1.0 when a non-finite norm skipped the step).
UPDATE_METRICS = (
    "loss", "policy_loss", "kl", "approx_kl", "clip_fraction", "grad_norm", "ratio_mean", "rows", "step_skipped",
)


@dataclass(frozen=True)
class TrainingPairs:
    """The (survivor, step) pairs one update trains: ``rows`` and ``steps`` LongTensor [N] (CPU)."""

    rows: torch.Tensor
    steps: torch.Tensor

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def select_training_pairs(rollout: Rollout, timestep_fraction: float, generator: torch.Generator,
                          survivor_offset: int = 0, total_survivors: int | None = None) -> TrainingPairs:
    """Pairs of every survivor with ``max(1, int(K * timestep_fraction))`` of the K stochastic steps.

    With ``timestep_fraction == 1`` every stochastic step is trained and ``generator`` is untouched;
    otherwise each survivor gets its own random subset (DDPO's per-sample permutation of the
    timesteps), drawn from ``generator``. Pairs are survivor-major, steps ascending.

    Multi-process: ``total_survivors`` (all ranks) and ``survivor_offset`` (this rank's first
    survivor) make the draws those of the whole batch, this rank's rows kept.
    """
    steps = rollout.trainable_steps.cpu()
    if steps.numel() == 0:
        raise ProGRPOConfigError(
            "the rollout has no stochastic step (every step std is 0), so there is no policy gradient; "
            "set rollout.noise_level > 0 and/or widen rollout.sde_window."
        )
    survivors = rollout.num_survivors
    count = steps.numel() if timestep_fraction >= 1.0 else max(1, int(steps.numel() * timestep_fraction))
    if count == steps.numel():
        chosen = steps.expand(survivors, -1)
    else:
        drawn = survivors if total_survivors is None else total_survivors
        chosen = torch.stack(
            [steps[torch.randperm(steps.numel(), generator=generator)[:count]].sort().values for _ in range(drawn)]
        )[survivor_offset: survivor_offset + survivors]
    rows = torch.arange(survivors).repeat_interleave(count)
    return TrainingPairs(rows=rows, steps=chosen.reshape(-1).clone())


@contextlib.contextmanager
def _training_mode(network: torch.nn.Module) -> Iterator[None]:
    """``network.train()`` inside the block (LoRA dropout active, as DDPO's ``unet.train()``), mode restored after."""
    was_training = network.training
    network.train()
    try:
        yield
    finally:
        network.train(was_training)


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
    adapter: Any | None = None,
) -> dict[str, float]:
    """Backpropagate the mean GRPO loss over ``pairs`` into ``.grad`` (accumulating; no optimiser step).

    Args:
        denoiser: the policy; its LoRA parameters must require grad.
        rollout: the record the pairs index (survivor rows of ``latents`` [S, T+1, ...]).
        advantages: [S] one per survivor (clamped here to ``grpo_config.adv_clip``).
        pairs: from :func:`select_training_pairs`.
        ledger: counts ``backward_rows`` and ``training`` FLOPs (default: ``rollout.ledger``).
        adapter: the :class:`progrpo.lora.adapter.LoraAdapter` being trained (its ``disabled()``
            gives the KL reference, ``training()`` the train mode); default: peft on ``denoiser.network``.

    Returns:
        means over the pairs: ``loss``, ``policy_loss``, ``kl`` (0 when ``kl_beta == 0``: not
        computed), ``approx_kl``, ``clip_fraction``, ``ratio_mean``, and ``rows`` (N).
    """
    if advantages.shape != (rollout.num_survivors,):
        raise ProGRPOConfigError(
            f"advantages have shape {tuple(advantages.shape)} but the rollout has {rollout.num_survivors} "
            "survivors; pass one advantage per survivor (group_advantages(rollout.final_rewards, rollout.prompt_index))."
        )
    ledger = rollout.ledger if ledger is None else ledger
    total = len(pairs)
    clip = grpo_config.adv_clip
    advantages = advantages.float().to(rollout.latents.device)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    network = getattr(denoiser, "network", None)
    if adapter is None and grpo_config.kl_beta > 0 and not isinstance(network, torch.nn.Module):
        raise ProGRPOConfigError(
            "grpo.kl_beta > 0 needs the denoiser's LoRA network (denoiser.network) or a LoRA adapter for the "
            "reference policy; set kl_beta to 0, pass adapter=, or use a diffusers denoiser."
        )

    def reference() -> contextlib.AbstractContextManager[Any]:
        return adapter.disabled() if adapter is not None else lora_disabled(network)

    sums = {"policy_loss": 0.0, "kl": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0}
    if adapter is not None:
        mode = adapter.training()
    else:
        mode = _training_mode(network) if isinstance(network, torch.nn.Module) else contextlib.nullcontext()
    with mode:
        for start in range(0, total, grpo_config.micro_batch_rows):
            rows = pairs.rows[start:start + grpo_config.micro_batch_rows]
            batch = _micro_batch(rollout, rows, pairs.steps[start:start + grpo_config.micro_batch_rows])
            with ledger.count_flops("training"):
                step = _policy(denoiser, rollout, batch)
                per_row = clipped_surrogate(
                    step.log_prob, batch.old_log_prob, advantages[rows.to(advantages.device)], grpo_config.clip_range
                )
                loss = per_row.sum()
                if grpo_config.kl_beta > 0:
                    # Flow-GRPO: the reference is the same network with the adapter disabled (no copy).
                    with torch.no_grad(), reference():
                        reference_mean = _policy(denoiser, rollout, batch).mean
                    kl = gaussian_kl_same_std(step.mean, reference_mean, step.std)
                    loss = loss + grpo_config.kl_beta * kl.sum()
                    sums["kl"] += float(kl.detach().sum())
                # Scaled by the micro-batch's share: accumulated grads equal the full-batch mean's
                # (times loss_scale, undone on the float32 LoRA gradients: see progrpo.train.precision).
                (loss * grpo_config.loss_scale / total).backward()
            ledger.backward_rows += int(rows.shape[0])
            new_log_prob, old_log_prob = step.log_prob.detach(), batch.old_log_prob
            sums["policy_loss"] += float(per_row.detach().sum())
            sums["approx_kl"] += float(approx_kl(new_log_prob, old_log_prob).sum())
            sums["clip_fraction"] += float(clip_fraction(new_log_prob, old_log_prob, grpo_config.clip_range).sum())
            sums["ratio"] += float(torch.exp(log_ratio(new_log_prob, old_log_prob)).sum())
    means = {name: value / total for name, value in sums.items()}
    return {
        "loss": means["policy_loss"] + grpo_config.kl_beta * means["kl"],
        "policy_loss": means["policy_loss"],
        "kl": means["kl"],
        "approx_kl": means["approx_kl"],
        "clip_fraction": means["clip_fraction"],
        "ratio_mean": means["ratio"],
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
    grad_clip: float | None = 1.0,
    ledger: ComputeLedger | None = None,
    adapter: Any | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> dict[str, float]:
    """One optimiser step of GRPO on ``rollout``; returns the metrics in :data:`UPDATE_METRICS`.

    A non-finite gradient norm skips the step (``step_skipped`` = 1) instead of writing NaN weights.

    Args:
        advantages: [S] per survivor, e.g. ``group_advantages(rollout.final_rewards, rollout.prompt_index)``.
        trainable_params: the LoRA parameters (grad-norm clipping runs over them).
        generator: CPU generator choosing the trained steps when ``timestep_fraction < 1``.
        grad_clip: max global grad norm (None: measure only); ``grad_norm`` is the norm before clipping.
        ledger: receives ``backward_rows`` and training FLOPs (default ``rollout.ledger``).
        adapter: the LoRA adapter trained (KL reference and train mode); default peft on ``denoiser.network``.
        distributed: this process's rank when the batch is split across processes; ``rollout`` and
            ``advantages`` are then this rank's rows, gradients are all-reduced before clipping and
            the metrics are those of the global batch.
    """
    params = list(trainable_params)
    if not params:
        raise ProGRPOConfigError("trainable_params is empty; pass the parameters returned by add_lora.")
    survivors = distributed.all_gather(torch.tensor([rollout.num_survivors]))
    offset = int(survivors[: distributed.rank].sum())
    pairs = select_training_pairs(rollout, grpo_config.timestep_fraction, generator, survivor_offset=offset,
                                  total_survivors=int(survivors.sum()))
    optimizer.zero_grad(set_to_none=True)
    metrics = accumulate_policy_gradient(denoiser, rollout, advantages, pairs, grpo_config, ledger, adapter)
    unscale_gradients(params, grpo_config.loss_scale)
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
    return {name: metrics[name] for name in UPDATE_METRICS}


def _global_means(metrics: dict[str, float], distributed: DistributedContext) -> dict[str, float]:
    """Per-rank means over local pairs -> means over the global pairs (``rows`` becomes the global count)."""
    names = [name for name in metrics if name != "rows"]
    rows = metrics["rows"]
    totals = distributed.sum_values([metrics[name] * rows for name in names] + [rows])
    global_rows = totals[-1]
    return {**{name: total / global_rows for name, total in zip(names, totals)}, "rows": global_rows}


class LoraEMA:
    """Exponential moving average of the LoRA weights (Flow-GRPO's ``EMAModuleWrapper``).

    After optimiser step k: ``shadow = d * shadow + (1 - d) * weight`` with the warm-up decay
    ``d = min(decay, (1 + k) / (10 + k))`` Flow-GRPO uses. Shadows are float32 copies.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = float(decay)
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
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
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = list(state["shadow"])  # type: ignore[arg-type]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ProGRPOConfigError(
                "the checkpoint's EMA weights do not fit this LoRA (count or shapes differ); resume with the "
                "same lora settings and model."
            )
        self.shadow = [s.float().clone() for s in shadow]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
        self.decay = float(state["decay"])  # type: ignore[arg-type]
