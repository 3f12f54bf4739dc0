"""Expand-and-Prune rollouts: sample an expanded group per prompt, prune it at checkpoints.

Every prompt starts with ``group_size`` (G_max) stochastic trajectories. At each checkpoint c of
the :class:`~progrpo.pruning.PruneSchedule` every live trajectory is previewed, decoded and
scored by the training reward, and the selection strategy keeps the target count per prompt;
the others stop at once (no more steps, no final decode, no loss). Survivors finish, get their
true final reward and are recorded with everything training needs.

The preview (``RolloutConfig.preview``, registry :data:`PREVIEW_MODES`):

* ``"current"`` (default, the paper's ``x_hat = x_c + (T - t_c) b(x_c)``): the clean-sample
  prediction of the network call AT x_c, i.e. the call of step c. Survivors reuse that call for
  their step c, so only the pruned trajectories pay one extra evaluation (counted in the ledger's
  ``preview_evaluations``);
* ``"stale"`` (zero cost): the clean-sample prediction of the call step c-1 made at x_(c-1),
  which never saw that step's noise (rank correlation with the final reward is lower).

Noise is drawn for every trajectory at every step, pruned or not, so a survivor's latents are
exactly those the same row gets in an unpruned run with the same seed (in either preview mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from .denoisers.base import Conditioning, Denoiser, guidance_branches
from .dynamics import StepOutput, get_dynamics, policy_step, predicted_x0_and_eps
from .errors import ProGRPOConfigError
from .ledger import ComputeLedger
from .log import logger
from .pruning import SELECTIONS, PruneSchedule, rows_of_positions, select
from .schedule import Schedule

ProgressCallback = Callable[[int, int], None]


class RewardFunction(Protocol):
    """``score(images [B,3,H,W] in [0,1], prompts) -> Tensor[B]`` (see :mod:`progrpo.rewards`)."""

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


#: ``RolloutConfig.preview`` name -> what it previews (see the module doc).
PREVIEW_MODES: dict[str, str] = {
    "current": "x0 predicted at x_c by step c's network call (the paper; survivors reuse the call)",
    "stale": "x0 predicted at x_(c-1) by step c-1's call (zero extra cost, one step stale)",
}


@dataclass
class RolloutConfig:
    """How one Expand-and-Prune rollout samples.

    Attributes:
        group_size: trajectories per prompt at the start (G_max; G for plain GRPO).
        num_steps: sampler steps T.
        dynamics: step dynamic, a name in :data:`progrpo.dynamics.DYNAMICS`.
        noise_level: the dynamic's noise knob; None takes the dynamic's default.
        guidance_scale: classifier-free guidance w (1 disables the negative branch).
        prune_schedule: checkpoints (step -> kept per prompt), a PruneSchedule, a mapping or a
            string like ``"5:24, 7:12"``; None runs every trajectory to the end.
        selection: ``ovf`` (Pro-GRPO), ``random``, ``topk`` or ``none`` (keep all, previews still
            scored for diagnostics).
        final_keep: static filtering (the paper's OVF without Pro-GRPO): after every survivor has
            its final reward, keep this many per prompt by ``selection`` on the FINAL rewards
            (pruned_at = num_steps for the others). None keeps every survivor.
        sde_window: ``(start, stop)`` steps that are stochastic; the rest are ODE steps
            (Flow-GRPO-Fast / MixGRPO). None: every step is stochastic.
        height, width: image size in pixels.
        seed: seeds the initial noise and every step's noise.
        max_batch_rows: rows per network call and per VAE decode (bounds memory); None = all live rows at once.
        keep_images: keep the survivors' decoded final images in the record.
        measure_flops: count FLOPs per category in the ledger (slower).
        preview: how a checkpoint previews, a name in :data:`PREVIEW_MODES`: ``"current"`` (the
            paper: x0 predicted at x_c by step c's call, which survivors reuse) or ``"stale"`` (x0
            of step c-1's call, zero extra cost). See the module doc.
        shared_initial_noise: every trajectory of a prompt starts from the same initial noise
            (DanceGRPO); they differ only by the SDE noise of the steps.
    """

    group_size: int = 8
    num_steps: int = 10
    dynamics: str = "flow_sde"
    noise_level: float | None = None
    guidance_scale: float = 1.0
    prune_schedule: PruneSchedule | str | dict[int, int] | None = None
    selection: str = "ovf"
    final_keep: int | None = None
    sde_window: tuple[int, int] | None = None
    height: int = 32
    width: int = 32
    seed: int = 0
    max_batch_rows: int | None = None
    keep_images: bool = True
    measure_flops: bool = False
    preview: str = "current"
    shared_initial_noise: bool = False

    def __post_init__(self) -> None:
        for name in ("group_size", "num_steps", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProGRPOConfigError(f"{name}={value!r} must be a positive integer.", field=f"rollout.{name}")
        if self.group_size < 2:
            raise ProGRPOConfigError(
                f"group_size={self.group_size}: GRPO needs at least 2 trajectories per prompt.",
                field="rollout.group_size",
            )
        try:
            get_dynamics(self.dynamics)
        except ProGRPOConfigError as error:
            raise ProGRPOConfigError(str(error), field="rollout.dynamics") from None
        if self.noise_level is not None and not self.noise_level >= 0:
            raise ProGRPOConfigError(f"noise_level={self.noise_level} must be >= 0 (0 = deterministic).",
                                     field="rollout.noise_level")
        if self.selection not in SELECTIONS:
            raise ProGRPOConfigError(f"selection {self.selection!r} is unknown; use one of {sorted(SELECTIONS)}.",
                                     field="rollout.selection")
        self._normalise_schedules()
        self._check_options()

    def _normalise_schedules(self) -> None:
        """``prune_schedule`` as a PruneSchedule (or None), ``final_keep`` and ``sde_window`` checked against it."""
        if isinstance(self.prune_schedule, str):
            self.prune_schedule = PruneSchedule.parse(self.prune_schedule) if self.prune_schedule.strip() else None
        elif isinstance(self.prune_schedule, dict):
            self.prune_schedule = PruneSchedule.from_mapping(self.prune_schedule)
        if self.prune_schedule is not None:
            self.prune_schedule.validate_for(self.group_size, self.num_steps)
        if self.final_keep is not None:
            before = self.prune_schedule.final_keep if self.prune_schedule is not None else self.group_size
            if isinstance(self.final_keep, bool) or not isinstance(self.final_keep, int) or not 2 <= self.final_keep < before:
                raise ProGRPOConfigError(
                    f"final_keep={self.final_keep!r} must be an int with 2 <= final_keep < {before} (the trajectories "
                    "per prompt that reach the end); or None for no static filtering.",
                    field="rollout.final_keep",
                )
        if self.sde_window is not None:
            start, stop = (int(v) for v in self.sde_window)
            if not 0 <= start < stop <= self.num_steps:
                raise ProGRPOConfigError(
                    f"sde_window={self.sde_window} must satisfy 0 <= start < stop <= num_steps={self.num_steps}.",
                    field="rollout.sde_window",
                )
            self.sde_window = (start, stop)

    def _check_options(self) -> None:
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise ProGRPOConfigError(f"max_batch_rows={self.max_batch_rows} must be >= 1 or None.",
                                     field="rollout.max_batch_rows")
        if self.guidance_scale < 0:
            raise ProGRPOConfigError(f"guidance_scale={self.guidance_scale} must be >= 0.",
                                     field="rollout.guidance_scale")
        if self.preview not in PREVIEW_MODES:
            raise ProGRPOConfigError(f"preview={self.preview!r} is unknown; use one of {list(PREVIEW_MODES)}.",
                                     field="rollout.preview")
        if not isinstance(self.shared_initial_noise, bool):
            raise ProGRPOConfigError(f"shared_initial_noise={self.shared_initial_noise!r} must be true or false.",
                                     field="rollout.shared_initial_noise")

    @property
    def final_group_size(self) -> int:
        """Trajectories per prompt that reach the end (and are trained)."""
        if self.selection == "none":
            return self.group_size
        if self.final_keep is not None:
            return self.final_keep
        return self.group_size if self.prune_schedule is None else self.prune_schedule.final_keep

    def step_noise_levels(self, default: float) -> torch.Tensor:
        """Noise level per step [T]: the configured level inside the SDE window, 0 outside."""
        level = default if self.noise_level is None else self.noise_level
        levels = torch.full((self.num_steps,), float(level))
        if self.sde_window is not None:
            start, stop = self.sde_window
            levels[:start] = 0.0
            levels[stop:] = 0.0
        return levels


@dataclass
class Rollout:
    """Record of one rollout over P prompts; S survivors (prompt-major, ascending trajectory id).

    Shapes: ``latents`` [S, T+1, C, H, W] (state before each step, then the final one);
    ``log_probs`` [S, T] fp32 (0 at deterministic steps); ``step_std`` / ``noise_levels`` [T];
    ``prompt_index`` / ``trajectory_index`` [S] (trajectory ids are 0..P*G-1, prompt-major);
    ``final_rewards`` [S]; ``preview_rewards`` [K, P*G] (NaN where not alive at that checkpoint);
    ``pruned_at`` [P*G] (checkpoint step that stopped it, ``num_steps`` if a static ``final_keep``
    filter dropped it after sampling, -1 for survivors);
    ``group_std_before`` / ``group_std_after`` [K]: within-group std of preview rewards of the
    live trajectories before and after each selection, averaged over prompts;
    ``images`` [S, 3, H, W] in [0, 1] or None.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    step_std: torch.Tensor
    noise_levels: torch.Tensor
    schedule: Schedule
    prompt_index: torch.Tensor
    trajectory_index: torch.Tensor
    final_rewards: torch.Tensor
    preview_rewards: torch.Tensor
    checkpoint_steps: tuple[int, ...]
    pruned_at: torch.Tensor
    group_std_before: torch.Tensor
    group_std_after: torch.Tensor
    images: torch.Tensor | None
    conditioning: Conditioning
    config: RolloutConfig
    ledger: ComputeLedger = field(default_factory=ComputeLedger)

    @property
    def num_prompts(self) -> int:
        return self.conditioning.num_rows

    @property
    def num_survivors(self) -> int:
        return int(self.prompt_index.shape[0])

    @property
    def prompts(self) -> list[str]:
        """Prompt text of each survivor."""
        return [self.conditioning.prompts[i] for i in self.prompt_index.tolist()] if self.conditioning.prompts else []

    @property
    def trainable_steps(self) -> torch.Tensor:
        """Step indices with noise (std > 0): the only ones with a policy gradient. LongTensor."""
        return torch.nonzero(self.step_std > 0).flatten()


@dataclass(frozen=True)
class RowShard:
    """The block of an iteration's global prompt batch that one process samples (multi-process training).

    ``prompt_offset``: index of this block's first prompt in the global batch; ``total_prompts``:
    prompts in the global batch. The noise of all ``total_prompts`` groups is drawn and the block's
    rows kept, and selections run on inputs padded to all groups, so every trajectory's noise and
    every random choice are the same as in one process sampling the whole batch.
    """

    prompt_offset: int
    total_prompts: int

    def __post_init__(self) -> None:
        if not 0 <= self.prompt_offset < self.total_prompts:
            raise ProGRPOConfigError(
                f"RowShard(prompt_offset={self.prompt_offset}, total_prompts={self.total_prompts}): the offset "
                "must lie in [0, total_prompts)."
            )


def _select_in_shard(strategy: str, per_group: torch.Tensor, keep: int, generator: torch.Generator,
                     shard: RowShard) -> torch.Tensor:
    """``select`` on this shard's groups [P, n] as if run on all ``shard.total_prompts`` groups -> [P, keep]."""
    num_prompts = per_group.shape[0]
    if shard.total_prompts == num_prompts:
        return select(strategy, per_group, keep, generator)
    padded = per_group.new_zeros((shard.total_prompts, per_group.shape[1]))
    padded[shard.prompt_offset: shard.prompt_offset + num_prompts] = per_group
    return select(strategy, padded, keep, generator)[shard.prompt_offset: shard.prompt_offset + num_prompts]


def _score(reward: RewardFunction | Callable, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    score = reward.score if hasattr(reward, "score") else reward
    values = torch.as_tensor(score(images, list(prompts))).detach().float().reshape(-1)
    if values.shape[0] != images.shape[0]:
        raise ProGRPOConfigError(
            f"reward returned {values.shape[0]} scores for {images.shape[0]} images; it must return one per image."
        )
    return values.cpu()


def predict_rows(
    denoiser: Denoiser,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    max_batch_rows: int | None,
) -> torch.Tensor:
    """``denoiser.predict`` over rows in chunks of ``max_batch_rows`` -> [B, C, H, W] float32."""
    rows = sample.shape[0]
    chunk = rows if max_batch_rows is None else max_batch_rows
    outputs = []
    for start in range(0, rows, chunk):
        index = torch.arange(start, min(start + chunk, rows))
        part = conditioning if (start == 0 and chunk >= rows) else conditioning.take(index)
        outputs.append(denoiser.predict(sample[index], timesteps[index], part, guidance_scale).float())
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def decode_rows(denoiser: Denoiser, latents: torch.Tensor, max_batch_rows: int | None) -> torch.Tensor:
    """``denoiser.decode`` in chunks of ``max_batch_rows`` rows (the VAE's memory is bounded like the network's)."""
    rows = latents.shape[0]
    if max_batch_rows is None or rows <= max_batch_rows:
        return denoiser.decode(latents)
    chunks = [latents[start:start + max_batch_rows] for start in range(0, rows, max_batch_rows)]
    return torch.cat([denoiser.decode(chunk) for chunk in chunks])


def _conditioning_device(conditioning: Conditioning) -> torch.device:
    return next(iter(conditioning.positive.values())).device


def _initial_noise(config: RolloutConfig, noise_shape: tuple[int, ...], group_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Initial latents [P_total * G, C, H, W]; with ``shared_initial_noise`` one draw per prompt, repeated G times."""
    if not config.shared_initial_noise:
        return torch.randn(noise_shape, generator=generator)
    per_prompt = torch.randn((noise_shape[0] // group_size, *noise_shape[1:]), generator=generator)
    return per_prompt.repeat_interleave(group_size, dim=0)


class _NetworkCalls:
    """The rollout's network calls at one step for the live rows, counted in the ledger."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule, config: RolloutConfig, ledger: ComputeLedger,
                 branches: int, device: torch.device) -> None:
        self.denoiser, self.schedule, self.config = denoiser, schedule, config
        self.ledger, self.branches, self.device = ledger, branches, device

    def predict(self, sample: torch.Tensor, step: int, conditioning: Conditioning) -> torch.Tensor:
        """Network output [B, C, H, W] (float32) for step ``step`` at ``sample``; counts evaluations and calls."""
        rows = sample.shape[0]
        with self.ledger.count_flops("sampling"):
            output = predict_rows(
                self.denoiser, sample, self.schedule.timesteps_for(torch.full((rows,), step)).to(self.device),
                conditioning, self.config.guidance_scale, self.config.max_batch_rows,
            )
        self.ledger.model_evaluations += rows * self.branches
        self.ledger.model_calls += -(-rows // (self.config.max_batch_rows or rows))
        return output

    def clean_sample(self, output: torch.Tensor, sample: torch.Tensor, step: int) -> torch.Tensor:
        """The clean-sample prediction x0 [B, C, H, W] of ``output`` at ``sample`` for step ``step``."""
        coeffs = self.schedule.coefficients(torch.full((sample.shape[0],), step), self.device)
        return predicted_x0_and_eps(output.float(), sample.float(), coeffs)[0]


@dataclass
class _LiveRows:
    """The trajectories still sampled, row-aligned: trajectory ids [L], the state before each step and
    after the last one ([L, C, H, W] each), log-probs per step ([L] each) and conditioning (L rows)."""

    ids: torch.Tensor
    history: list[torch.Tensor]
    log_probs: list[torch.Tensor]
    conditioning: Conditioning

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    def keep(self, rows: torch.Tensor) -> torch.Tensor:
        """Keep only the rows ``rows`` (LongTensor [k], ascending) of everything; returns the dropped ids."""
        dropped = torch.ones(self.count, dtype=torch.bool)
        dropped[rows] = False
        dropped_ids = self.ids[dropped]
        rows_on_device = rows.to(self.history[-1].device)
        self.ids = self.ids[rows]
        self.history = [latents[rows_on_device] for latents in self.history]
        self.log_probs = [values[rows_on_device] for values in self.log_probs]
        self.conditioning = self.conditioning.take(rows)
        return dropped_ids


def _checked_shard(shard: RowShard | None, num_prompts: int) -> RowShard:
    shard = RowShard(0, num_prompts) if shard is None else shard
    if shard.prompt_offset + num_prompts > shard.total_prompts:
        raise ProGRPOConfigError(
            f"shard {shard} cannot hold {num_prompts} prompts; prompt_offset + prompts must be <= total_prompts."
        )
    return shard


class _ExpandAndPrune:
    """One rollout between its steps; :func:`expand_and_prune_rollout` drives it (``step``, ``prune``, ``finish``)."""

    def __init__(self, denoiser: Denoiser, conditioning: Conditioning, reward: RewardFunction | Callable,
                 config: RolloutConfig, shard: RowShard | None) -> None:
        self.denoiser, self.conditioning, self.reward, self.config = denoiser, conditioning, reward, config
        self.device = _conditioning_device(conditioning)
        self.num_prompts, group_size = conditioning.num_rows, config.group_size
        total = self.num_prompts * group_size
        channels, height, width = denoiser.latent_shape(config.height, config.width)
        self.schedule = denoiser.schedule(config.num_steps, (channels, height, width))
        dynamics = get_dynamics(config.dynamics, self.schedule.kind)
        self.noise_levels = config.step_noise_levels(dynamics.default_noise_level)
        self.ledger = ComputeLedger(measure_flops=config.measure_flops)
        self.branches = guidance_branches(config.guidance_scale, conditioning)
        self.checkpoints = config.prune_schedule.checkpoints if config.prune_schedule is not None else ()
        self.checkpoint_slot = {step: slot for slot, (step, _) in enumerate(self.checkpoints)}
        self.noise_generator = torch.Generator().manual_seed(config.seed)
        # own stream: the noise never depends on the selections
        self.selection_generator = torch.Generator().manual_seed(config.seed + 1)
        self.shard = _checked_shard(shard, self.num_prompts)
        # noise of every group of the global batch, this shard's rows kept (see RowShard)
        self.noise_shape = (self.shard.total_prompts * group_size, channels, height, width)
        start = self.shard.prompt_offset * group_size
        self.own_rows = slice(start, start + total)
        self.prompt_of = torch.arange(self.num_prompts).repeat_interleave(group_size)
        initial = _initial_noise(config, self.noise_shape, group_size, self.noise_generator)[self.own_rows]
        self.live = _LiveRows(torch.arange(total), [initial.to(self.device)], [], conditioning.take(self.prompt_of))
        self.step_std = torch.zeros(config.num_steps)
        self.preview_rewards = torch.full((len(self.checkpoints), total), float("nan"))
        self.pruned_at = torch.full((total,), -1, dtype=torch.long)
        self.std_before = torch.zeros(len(self.checkpoints))
        self.std_after = torch.zeros(len(self.checkpoints))
        self.network = _NetworkCalls(denoiser, self.schedule, config, self.ledger, self.branches, self.device)
        # the next step's network output at the last state, from a "current" preview (survivors reuse it)
        self.cached_output: torch.Tensor | None = None

    def step(self, step: int) -> StepOutput:
        """Advance every live row by step ``step`` (its noise is drawn for all rows of the global batch)."""
        live, config = self.live, self.config
        step_noise = torch.randn(self.noise_shape, generator=self.noise_generator)[self.own_rows].to(self.device)
        step_noise = step_noise[live.ids]
        output = self.cached_output
        if output is None:
            output = self.network.predict(live.history[-1], step, live.conditioning)
        with self.ledger.count_flops("sampling"):
            coefficients = self.schedule.coefficients(torch.full((live.count,), step), self.device)
            result = policy_step(config.dynamics, output, live.history[-1], coefficients,
                                 float(self.noise_levels[step]), noise=step_noise)
        self.cached_output = None
        self.ledger.trajectory_steps += live.count
        self.step_std[step] = float(result.std[0])
        live.history.append(result.next_sample)
        live.log_probs.append(result.log_prob)
        return result

    def _preview_rewards(self, checkpoint: int, result: StepOutput) -> torch.Tensor:
        """Training-reward scores [L] of the live rows' clean-sample previews at ``checkpoint`` (module doc)."""
        live, ledger = self.live, self.ledger
        if self.config.preview == "current":  # the paper: x0 predicted at x_c by step c's call
            self.cached_output = self.network.predict(live.history[-1], checkpoint, live.conditioning)
            clean = self.network.clean_sample(self.cached_output, live.history[-1], checkpoint)
        else:  # stale: the x0 of the call just made at x_(c-1)
            clean = result.x0_pred
        with ledger.count_flops("decode"):
            previews = decode_rows(self.denoiser, clean, self.config.max_batch_rows)
        with ledger.count_flops("reward"):
            proxy = _score(self.reward, previews, live.conditioning.prompts)
        ledger.preview_decodes += live.count
        ledger.reward_calls += live.count
        return proxy

    def _choose(self, scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``scores`` [L] as groups [P, L/P], the kept positions [P, keep] and their live rows [P * keep]."""
        per_group = scores.reshape(self.num_prompts, -1)
        positions = _select_in_shard(self.config.selection, per_group, keep, self.selection_generator, self.shard)
        return per_group, positions, rows_of_positions(positions, per_group.shape[1])

    def prune(self, slot: int, result: StepOutput) -> None:
        """Checkpoint ``slot``: score previews, keep the selection's rows, stop the others."""
        checkpoint, keep = self.checkpoints[slot]
        proxy = self._preview_rewards(checkpoint, result)
        self.preview_rewards[slot, self.live.ids] = proxy
        per_group, positions, rows = self._choose(proxy, keep)
        self.std_before[slot] = per_group.std(dim=1, unbiased=False).mean()
        self.std_after[slot] = per_group.gather(1, positions).std(dim=1, unbiased=False).mean()
        dropped = self.live.keep(rows)
        self.pruned_at[dropped] = checkpoint
        if self.cached_output is not None:  # survivors reuse the call; the pruned rows' evaluation was extra
            self.cached_output = self.cached_output[rows.to(self.device)]
            self.ledger.preview_evaluations += int(dropped.shape[0]) * self.branches
        logger.debug("checkpoint %d: kept %d of %d per prompt", checkpoint, positions.shape[1], per_group.shape[1])

    def finish(self) -> Rollout:
        """Decode and score the survivors, apply a static ``final_keep``, and return the record."""
        live, ledger, config = self.live, self.ledger, self.config
        with ledger.count_flops("decode"):
            images = decode_rows(self.denoiser, live.history[-1], config.max_batch_rows)
        with ledger.count_flops("reward"):
            final_rewards = _score(self.reward, images, live.conditioning.prompts)
        ledger.final_decodes += live.count
        ledger.reward_calls += live.count
        if config.final_keep is not None:  # static OVF: select on the true final rewards, after sampling
            rows = self._choose(final_rewards, config.final_keep)[2]
            self.pruned_at[live.keep(rows)] = config.num_steps
            final_rewards, images = final_rewards[rows], images[rows.to(self.device)]
        return self._record(final_rewards, images)

    def _record(self, final_rewards: torch.Tensor, images: torch.Tensor) -> Rollout:
        return Rollout(
            latents=torch.stack(self.live.history, dim=1),
            log_probs=torch.stack(self.live.log_probs, dim=1),
            step_std=self.step_std,
            noise_levels=self.noise_levels,
            schedule=self.schedule,
            prompt_index=self.prompt_of[self.live.ids],
            trajectory_index=self.live.ids,
            final_rewards=final_rewards,
            preview_rewards=self.preview_rewards,
            checkpoint_steps=tuple(step for step, _ in self.checkpoints),
            pruned_at=self.pruned_at,
            group_std_before=self.std_before,
            group_std_after=self.std_after,
            images=images.cpu() if self.config.keep_images else None,
            conditioning=self.conditioning,
            config=self.config,
            ledger=self.ledger,
        )


@torch.no_grad()
def expand_and_prune_rollout(
    denoiser: Denoiser,
    conditioning: Conditioning,
    reward: RewardFunction | Callable,
    config: RolloutConfig,
    progress: ProgressCallback | None = None,
    shard: RowShard | None = None,
) -> Rollout:
    """Sample ``config.group_size`` trajectories for each of the P prompts, pruning at checkpoints.

    Args:
        denoiser: a :class:`~progrpo.denoisers.base.Denoiser`.
        conditioning: encoded prompts, P rows (``prompts`` text is passed to the reward).
        reward: scores decoded previews and final images.
        config: see :class:`RolloutConfig`.
        progress: called as ``progress(done_steps, num_steps)`` after every step; it may raise
            to cancel (ComfyUI's interrupt does).
        shard: where these P prompts sit in a larger batch sampled by several processes (see
            :class:`RowShard`); None: they are the whole batch.

    Returns:
        the :class:`Rollout` record of the survivors.
    """
    rollout = _ExpandAndPrune(denoiser, conditioning, reward, config, shard)
    for step in range(config.num_steps):
        result = rollout.step(step)
        slot = rollout.checkpoint_slot.get(step + 1)
        if slot is not None:
            rollout.prune(slot, result)
        if progress is not None:
            progress(step + 1, config.num_steps)
    return rollout.finish()
