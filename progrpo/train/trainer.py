"""The LoRA GRPO training loop: rollout -> advantages -> one update, with checkpoints and resume.

Per iteration ``k`` (all randomness derived from ``config.seed`` and ``k``, see :func:`derive_seed`):

1. choose ``prompts_per_iteration`` prompts and encode them;
2. Expand-and-Prune rollout (:func:`progrpo.rollout.expand_and_prune_rollout`): ``group_size``
   trajectories per prompt, pruned at the schedule's checkpoints, survivors scored;
3. group-relative advantages over the survivors of each prompt;
4. :func:`progrpo.train.update.grpo_update`: ``updates_per_rollout * inner_epochs`` AdamW steps on
   the LoRA weights (disjoint minibatches), each followed by an lr schedule step and an EMA update;
5. one JSON line in ``metrics.jsonl``, checkpoint when due.

The trainer owns its global RNG state (restored around each iteration), so code running between
iterations cannot change its results and it does not disturb the caller's RNG. The output folder
gets ``config.yaml`` at the start, then ``metrics.jsonl``, ``checkpoints/``, and at the end (or
when stopped) ``lora.safetensors`` (ComfyUI format) and ``curve.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..advantages import group_advantages
from ..atomic import remove_stale_temps
from ..denoisers.base import Denoiser
from ..denoisers.loading import load_denoiser
from ..errors import ProGRPOConfigError, ProGRPOOutOfMemoryError, ProGRPORewardError
from ..log import logger
from ..lora.adapter import LoraAdapter, PeftLoraAdapter
from ..rewards import build_rewards
from ..rollout import Rollout, RolloutConfig, expand_and_prune_rollout
from .checkpoint import (
    CHECKPOINTS_DIR,
    TrainingState,
    capture_rng_state,
    check_resume_compatible,
    checkpoint_name,
    load_checkpoint,
    prune_checkpoints,
    read_checkpoint_config,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import TrainConfig
from .curves import plot_training_curves
from .distributed import DistributedContext
from .faults import (
    BadIterations,
    GuardedReward,
    NonFiniteIteration,
    check_finite,
    check_update,
    out_of_memory,
    raise_if_any_rank_bad,
    reward_failure,
    skipped_record,
)
from .metrics import MetricsLog, iteration_record
from .run_config import DTYPES, RunConfig, RunIdentity, RunSpec, run_record, save_config
from .update import LoraEMA, grpo_update

ProgressCallback = Callable[[int, int], None]
StopCallback = Callable[[], bool]

CONFIG_FILE = "config.yaml"
LORA_FILE = "lora.safetensors"
CURVE_FILE = "curve.png"


def derive_seed(seed: int, stream: str, iteration: int = 0) -> int:
    """A 62-bit seed for one named random stream of one iteration (independent across streams)."""
    digest = hashlib.sha256(f"progrpo:{seed}:{stream}:{iteration}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def _generator(seed: int, stream: str, iteration: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, iteration))


# --- models ----------------------------------------------------------------------------------


def load_model(spec: RunSpec, device: str | None = None) -> Denoiser:
    """The denoiser ``spec.model`` names, in ``spec.dtype`` on ``device`` (default ``spec.device``)."""
    return load_denoiser(spec.model, torch_dtype=DTYPES[spec.dtype], device=device or spec.device)


def choose_prompts(prompts: list[str], count: int, generator: torch.Generator) -> list[str]:
    """``count`` prompts: a random subset when there are enough, else drawn with replacement."""
    if count <= len(prompts):
        order = torch.randperm(len(prompts), generator=generator)[:count]
    else:
        order = torch.randint(len(prompts), (count,), generator=generator)
    return [prompts[i] for i in order.tolist()]


# --- results ---------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` produced.

    ``iterations_done``: completed iterations (including those of a resumed checkpoint);
    ``stopped``: True when ``should_stop`` ended the run early; ``history``: the metric records of
    every completed iteration (as in ``metrics.jsonl``); paths are None when not written.
    """

    output_dir: Path
    iterations_done: int
    stopped: bool
    lora_path: Path | None
    checkpoint: Path | None
    curve_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _RunState:
    """What :meth:`Trainer.run` tracks across its loop: the newest checkpoint, the iteration it holds, a stop."""

    checkpoint: Path | None
    saved_at: int
    stopped: bool = False


class Trainer:
    """One training run (see the module doc). Build it, then :meth:`run` (or use :func:`train`).

    The objects it trains are injected: ``denoiser``, ``reward`` (a callable scoring images) and ``adapter``
    (the LoRA on the denoiser, a :class:`~progrpo.lora.adapter.LoraAdapter`); ``identity`` says what they are
    (recorded in checkpoints and the LoRA's metadata, compared on resume). :meth:`from_run` builds all of
    them from a :class:`~progrpo.train.run_config.RunConfig` (the CLI, :func:`train`).

    Attributes: ``config`` (resolved: prompts read from ``prompts_file``), ``identity``, ``denoiser``,
    ``reward``, ``adapter``, ``params`` (LoRA weights, float32), ``optimizer`` (AdamW), ``lr_scheduler``
    (LambdaLR), ``ema`` (:class:`LoraEMA` or None), ``iteration`` (completed iterations),
    ``optimizer_steps``, ``metrics`` (:class:`~progrpo.train.metrics.MetricsLog`; ``history`` its records),
    ``distributed`` (this process's rank; see :mod:`progrpo.train.distributed`).

    Under ``torchrun`` / ``accelerate launch`` each process builds its own Trainer; the iteration's
    prompts are split across them and only rank 0 writes files.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        identity: RunIdentity,
        denoiser: Denoiser,
        reward: Any,
        adapter: LoraAdapter,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.config = config.resolved()
        self.identity = identity
        self.distributed = DistributedContext.from_environment(identity.device) if distributed is None else distributed
        self.distributed.check_divides(self.config.prompts_per_iteration)
        self.prompts: list[str] = list(self.config.prompts or [])
        self.output_dir = Path(self.config.output_dir)
        self.denoiser, self.reward, self.adapter = denoiser, reward, adapter
        self.network = getattr(denoiser, "network", None)  # the diffusers network, when there is one
        self.params = self.adapter.parameters()
        optim = self.config.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, eps=optim.eps
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, optim.lr_lambda())
        decay = self.config.grpo.ema_decay
        self.ema = LoraEMA(self.params, decay, self.config.grpo.ema_update_interval) if decay is not None else None
        self.iteration = 0
        self.optimizer_steps = 0
        self.bad_iterations = BadIterations(self.config.max_bad_iterations)
        self.metrics = MetricsLog(self.output_dir, writes=self.distributed.is_main)
        self._warned_at = -(10**9)  # iteration of the last "learning nothing" warning
        self.last_rollout: Rollout | None = None
        seed = self.config.seed
        self.rng_state: dict[str, Any] = {
            "torch": torch.Generator().manual_seed(derive_seed(seed, "torch")).get_state(),
            "cuda": None,
            "python": random.Random(derive_seed(seed, "python")).getstate(),
        }
        self._stepped = False
        self.optimizer.register_step_post_hook(self._mark_stepped)

    @classmethod
    def from_run(cls, run: RunConfig, distributed: DistributedContext | None = None, *,
                 denoiser: Denoiser | None = None, reward: Any | None = None) -> Trainer:
        """A trainer for ``run``: its model loaded, its rewards built, a peft LoRA put on the model's network.

        ``denoiser`` / ``reward`` replace the loaded model / built rewards (tests, custom rewards); the
        recorded identity stays ``run``'s.
        """
        run = run.resolved()  # a bad prompts file fails before the model loads
        distributed = DistributedContext.from_environment(run.device) if distributed is None else distributed
        distributed.check_divides(run.prompts_per_iteration)
        if denoiser is None:
            denoiser = load_model(run, distributed.device(run.device))
        network = getattr(denoiser, "network", None)
        if not isinstance(network, torch.nn.Module):
            raise ProGRPOConfigError(
                f"denoiser {type(denoiser).__name__} has no .network module to put the LoRA on; "
                "use a diffusers denoiser (load_diffusers_denoiser / denoiser_from_pipeline) or build "
                "Trainer(config, identity=..., adapter=...) with your own LoraAdapter.",
                field="model",
            )
        if reward is None:
            reward = build_rewards(run.rewards, default_device=run.device)
        # peft on the diffusers network (eval mode for sampling, float32 LoRA weights)
        adapter = PeftLoraAdapter(network, run.lora)
        return cls(run.training(), identity=run.identity(), denoiser=denoiser, reward=reward, adapter=adapter,
                   distributed=distributed)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metric records of the completed iterations (as in ``metrics.jsonl``)."""
        return self.metrics.history

    def record(self) -> dict[str, Any]:
        """This run's flat config record (:func:`~progrpo.train.run_config.run_record`)."""
        return run_record(self.config, self.identity)

    def _mark_stepped(self, *_: Any) -> None:
        self._stepped = True

    # --- RNG ownership -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with the trainer's global RNG state; it is kept only if the block completes."""
        outer = capture_rng_state()
        restore_rng_state(self.rng_state)
        if self.rng_state.get("cuda") is None and torch.cuda.is_available():
            torch.cuda.manual_seed_all(derive_seed(self.config.seed, "cuda"))
        try:
            yield
        except BaseException:
            restore_rng_state(outer)
            raise
        self.rng_state = capture_rng_state()
        restore_rng_state(outer)

    # --- one iteration -----------------------------------------------------------------------

    def rollout_config(self, iteration: int) -> RolloutConfig:
        """The iteration's rollout settings: ``config.rollout`` with its derived seed."""
        return dataclasses.replace(self.config.rollout, seed=derive_seed(self.config.seed, "rollout", iteration))

    def run_iteration(self) -> dict[str, Any]:
        """Run iteration ``self.iteration`` (rollout, update, EMA, lr step); returns its metric record.

        Raises :class:`~progrpo.train.faults.NonFiniteIteration` when a reward, the model output,
        the advantages or the gradient went NaN/inf (weights, optimiser, lr, EMA and RNG untouched);
        :meth:`run` then records the skip (:meth:`skip_iteration`) and goes on.
        """
        k = self.iteration
        if self.distributed.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._stepped = False
        with self._own_rng():
            rollout, rewards, groups, all_advantages, update, lr = self._rollout_and_update(k)
        self.optimizer_steps += int(update["optimizer_steps"])
        self.last_rollout = rollout  # for live views (the nodes' preview image)
        self.iteration += 1
        self._stepped = False
        record = iteration_record(k, rollout, rewards, groups, all_advantages, update, lr,
                                  time.perf_counter() - started, self.distributed.world_size)
        record.update(self.bad_iterations.passed())
        if self.config.eval_every and self.iteration % self.config.eval_every == 0:
            record["eval_reward"] = self.held_out_reward()
        self.metrics.append(record)
        logger.info(
            "iteration %d/%d: reward %.4f +- %.4f, loss %.4g, grad norm %.3g, %d survivors, %d of %d groups tied, %.1fs",
            self.iteration, self.config.iterations, record["reward_mean"], record["reward_std"],
            record["loss"], record["grad_norm"], record["survivors"], record["zero_variance_groups"],
            record["prompts"], record["wall_time"],
        )
        self._warn_if_learning_nothing()
        return record

    def _rollout_and_update(self, k: int) -> tuple[Rollout, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float],
                                                   float]:
        """Iteration ``k``'s rollout and update (under the trainer's RNG): the rollout, the global batch's
        rewards, group ids and advantages [N], the update's metrics and the lr it stepped with."""
        seed, distributed, grpo = self.config.seed, self.distributed, self.config.grpo
        # every rank draws the same global prompts and samples its block of them
        prompts = choose_prompts(self.prompts, self.config.prompts_per_iteration, _generator(seed, "prompts", k))
        shard = distributed.row_shard(len(prompts))
        # all prompts encoded on every rank, then its rows kept: the text encoder's output must not
        # depend on the world size (CPU kernels round differently for other batch sizes)
        conditioning = self.denoiser.encode_prompts(prompts, self.config.negative_prompt)
        if distributed.enabled:
            conditioning = conditioning.take(distributed.shard_rows(len(prompts)))
        reward = GuardedReward(self.reward)  # names a failing reward; notes NaN/inf instead of raising
        rollout = expand_and_prune_rollout(self.denoiser, conditioning, reward, self.rollout_config(k), shard=shard)
        raise_if_any_rank_bad(reward, rollout.log_probs, distributed)
        # advantages over the global batch (rank-major = single-process order), this rank's rows kept
        rewards = distributed.all_gather(rollout.final_rewards)
        groups = distributed.all_gather(rollout.prompt_index + shard.prompt_offset)
        all_advantages = group_advantages(rewards, groups, std_mode=grpo.std_mode, clip=grpo.adv_clip,
                                          epsilon=grpo.adv_epsilon)
        check_finite("advantages", all_advantages, "advantages")
        first = distributed.rank * rollout.num_survivors
        advantages = all_advantages[first: first + rollout.num_survivors]
        lr = float(self.lr_scheduler.get_last_lr()[0])
        update = grpo_update(
            self.denoiser, rollout, advantages, self.optimizer, grpo, self.params,
            _generator(seed, "timesteps", k), adapter=self.adapter, grad_clip=self.config.optim.grad_clip,
            distributed=distributed, lr_scheduler=self.lr_scheduler, ema=self.ema,
        )
        if update["step_skipped"]:
            self._stepped = False  # grpo_update restored the weights, optimiser, lr and EMA
        check_update(update)  # a skipped step skips the whole iteration (no lr/EMA step either)
        return rollout, rewards, groups, all_advantages, update, lr

    def _warn_if_learning_nothing(self, window: int = 10, every: int = 50) -> None:
        """Warn (then every ``every`` iterations) when most groups of the last ``window`` iterations tied.

        A group whose survivors all score the same has zero advantages: its update is a no-op (a saturated or
        binary reward); the paper's motivation for expanding the group. Names the reward and what to change.
        """
        recent = [r for r in self.history[-window:] if not r.get("skipped")]
        if len(recent) < min(window, 3) or self.iteration - self._warned_at < every:
            return
        tied = sum(r.get("zero_variance_groups", 0) for r in recent) / max(1, sum(r.get("prompts", 1) for r in recent))
        if tied <= 0.5:
            return
        self._warned_at = self.iteration
        logger.warning(
            "%.0f%% of the prompt groups of the last %d iterations tied (every survivor scored the same under reward "
            "%s): their advantages are 0 and the update learns nothing from them. The reward is saturated or "
            "binary for these prompts: use a graded reward, harder prompts, a larger group_size or more noise.",
            100 * tied, len(recent), self.reward_label,
        )

    @property
    def reward_label(self) -> str:
        """The reward as the identity names it (the nodes store the reward's description under ``reward``)."""
        return " + ".join(str(spec.get("reward", name)) for name, spec in self.identity.rewards.items())

    def skip_iteration(self, fault: NonFiniteIteration, seconds: float = 0.0) -> dict[str, Any]:
        """Count iteration ``self.iteration`` as skipped for ``fault``; returns (and writes) its metric record."""
        k = self.iteration
        record = skipped_record(k, self.bad_iterations.skipped(k, fault), float(self.lr_scheduler.get_last_lr()[0]),
                                seconds)
        self.iteration += 1
        self.metrics.append(record)
        logger.warning("iteration %d/%d skipped (%s); %d in a row, stop at %d", self.iteration, self.config.iterations,
                       fault, self.bad_iterations.consecutive, self.bad_iterations.limit)
        return record

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, samples_per_prompt: int = 8, seed: int = 12345, prompts: list[str] | None = None,
                 rollout: dict[str, Any] | None = None) -> torch.Tensor:
        """Final rewards [P * samples_per_prompt] of the current policy on fixed seeds (no pruning).

        Uses the training sampler (same steps, dynamics, guidance, size) with ``seed``; the same
        ``seed`` before and after training compares the policies on identical noise. ``rollout``
        overrides fields of that sampler (e.g. ``{"dynamics": "ode"}`` for the deterministic sampler,
        ``{"shared_initial_noise": False}``). With EMA on, the EMA weights are evaluated (Flow-GRPO
        evaluates its EMA), the trained ones restored after.
        """
        config = dataclasses.replace(
            self.config.rollout, group_size=samples_per_prompt, prune_schedule=None, final_keep=None, selection="none",
            seed=seed, keep_images=False, **(rollout or {}),
        )
        conditioning = self.denoiser.encode_prompts(prompts or self.prompts, self.config.negative_prompt)
        weights = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        with weights:
            return expand_and_prune_rollout(self.denoiser, conditioning, self.reward, config).final_rewards

    def held_out_reward(self) -> float:
        """Mean reward of ``eval_samples`` samples per held-out prompt (``eval_prompts``) on fixed seeds.

        Runs under a forked RNG: whether and how often it runs does not change the training run.
        """
        with torch.random.fork_rng(devices=[]):
            rewards = self.evaluate(self.config.eval_samples, seed=derive_seed(self.config.seed, "evaluation"),
                                    prompts=self.config.eval_prompts)
        return float(rewards.float().mean())

    # --- checkpoints ---------------------------------------------------------------------------

    def training_state(self) -> TrainingState:
        return TrainingState(
            iteration=self.iteration,
            optimizer_steps=self.optimizer_steps,
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.lr_scheduler.state_dict(),
            ema=None if self.ema is None else self.ema.state_dict(),
            rng=self.rng_state,
            extra=self.bad_iterations.state_dict(),
        )

    def save_checkpoint(self, wait_for_ranks: bool = True) -> Path:
        """Write ``checkpoints/iter_<iteration>`` (atomic; rank 0 only), point ``latest`` at it, keep ``keep_last``.

        Other ranks hold the same state (identical steps), so they only wait for rank 0 to finish
        (``wait_for_ranks``) and return the same path.
        """
        if self.distributed.is_main:
            folder = save_checkpoint(self.output_dir, self.adapter, self.training_state(), self.record())
            prune_checkpoints(self.output_dir, self.config.keep_last)  # older ones only, after the new one is whole
        else:
            folder = self.output_dir / CHECKPOINTS_DIR / checkpoint_name(self.iteration)
        if wait_for_ranks:
            self.distributed.barrier()
        return folder

    def resume(self, resume_from: str | Path) -> Path:
        """Restore a checkpoint (``"latest"`` or a folder); refuses one written with a different config."""
        folder = resolve_checkpoint(self.output_dir, resume_from)
        check_resume_compatible(read_checkpoint_config(folder), self.record(), folder)
        state = load_checkpoint(folder, self.adapter)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)
        if self.ema is not None and state.ema is not None:
            self.ema.load_state_dict(state.ema)
        self.iteration, self.optimizer_steps = state.iteration, state.optimizer_steps
        self.rng_state = state.rng
        self.bad_iterations.load_state_dict(state.extra)
        logger.info("resumed from %s at iteration %d", folder, self.iteration)
        return folder

    # --- outputs -------------------------------------------------------------------------------

    def export_metadata(self) -> dict[str, Any]:
        """Run information written into the exported LoRA's metadata."""
        config, rollout, identity = self.config, self.config.rollout, self.identity
        return {
            "base_model": identity.model,
            "steps": self.optimizer_steps,
            "iterations": self.iteration,
            "rewards": {name: float(spec.get("weight", 1.0)) for name, spec in identity.rewards.items()},
            "reward_spec": identity.rewards,
            "group_size": rollout.group_size,
            "final_group_size": rollout.final_group_size,
            "prune_schedule": "" if rollout.prune_schedule is None else str(rollout.prune_schedule),
            "selection": rollout.selection,
            "dynamics": rollout.dynamics,
            "noise_level": rollout.noise_level,
            "sampler_steps": rollout.num_steps,
            "guidance_scale": rollout.guidance_scale,
            "resolution": [rollout.height, rollout.width],
            "prompts_per_iteration": config.prompts_per_iteration,
            "lr": config.optim.lr,
            "clip_range": config.grpo.clip_range,
            "kl_beta": config.grpo.kl_beta,
            "ema_decay": config.grpo.ema_decay,
            "seed": config.seed,
        }

    def export_lora(self, path: str | Path | None = None) -> Path:
        """Write the ComfyUI LoRA (EMA weights when EMA is on) to ``path`` (default ``output_dir/lora.safetensors``)."""
        path = Path(path) if path is not None else self.output_dir / LORA_FILE
        swap = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        with swap:
            return self.adapter.export(path, self.export_metadata())

    def plot_curve(self, path: str | Path | None = None) -> Path | None:
        """The training curves (:mod:`progrpo.train.curves`) as a PNG; None when matplotlib is missing or nothing ran."""
        return plot_training_curves(self.history, Path(path) if path is not None else self.output_dir / CURVE_FILE)

    # --- the loop ------------------------------------------------------------------------------

    def run(
        self,
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
        resume_from: str | Path | None = None,
    ) -> TrainResult:
        """Train up to ``config.iterations`` (see :func:`train`)."""
        resumed = self._start(resume_from)
        # A resumed state is its checkpoint: never rewrite the folder ``latest`` names.
        state = _RunState(checkpoint=resumed, saved_at=self.iteration if resumed is not None else -1)
        try:
            self._loop(state, progress, should_stop)
        except KeyboardInterrupt:
            if state.saved_at != self.iteration:
                self.checkpoint_on_interrupt()
            raise
        except ProGRPORewardError as error:
            raise reward_failure(error, self.iteration, self._checkpoint_after_fault(state.saved_at)) from error.__cause__
        except torch.OutOfMemoryError as error:
            if isinstance(error, ProGRPOOutOfMemoryError):
                raise
            settings = {"micro_batch_rows": self.config.grpo.micro_batch_rows,
                        "max_batch_rows": self.config.rollout.max_batch_rows,
                        "width": self.config.rollout.width, "height": self.config.rollout.height}
            raise out_of_memory(error, self.iteration, self._checkpoint_after_fault(state.saved_at), settings) from error
        if state.saved_at != self.iteration:
            state.checkpoint = self.save_checkpoint()
        main = self.distributed.is_main
        lora_path = self.export_lora() if main else None
        curve_path = self.plot_curve() if main else None
        return TrainResult(self.output_dir, self.iteration, state.stopped, lora_path, state.checkpoint, curve_path,
                           list(self.history))

    def _start(self, resume_from: str | Path | None) -> Path | None:
        """Resume (when asked), keep the metrics of the completed iterations, write ``config.yaml``; returns
        the checkpoint resumed from."""
        main = self.distributed.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume(resume_from) if resume_from is not None else None
        if resumed is None and main and (self.output_dir / CHECKPOINTS_DIR).is_dir():
            logger.warning(
                "%s already holds checkpoints; this fresh run overwrites them as it goes "
                "(pass resume_from='latest' to continue instead)", self.output_dir,
            )
        # Keep only the records of iterations this state has completed (a crash may leave later ones).
        self.metrics.read_completed(self.iteration)
        self.distributed.barrier()  # every rank has read the metrics before rank 0 rewrites them
        if main:
            remove_stale_temps(self.output_dir, self.output_dir / CHECKPOINTS_DIR)  # left by a killed run
            save_config(self.record(), self.output_dir / CONFIG_FILE)
            self.metrics.rewrite()
        return resumed

    def _loop(self, state: _RunState, progress: ProgressCallback | None, should_stop: StopCallback | None) -> None:
        """Iterate until ``config.iterations``, a stop request or a fault; checkpoint when due."""
        from tqdm.auto import tqdm

        total, every = self.config.iterations, self.config.checkpoint_every
        bar = tqdm(total=total, initial=min(self.iteration, total), desc="Pro-GRPO", unit="it", disable=None)
        try:
            while self.iteration < total:
                if should_stop is not None and should_stop():
                    state.stopped = True
                    logger.info("stop requested after iteration %d", self.iteration)
                    break
                started = time.perf_counter()
                try:
                    record = self.run_iteration()
                except NonFiniteIteration as fault:
                    record = self.skip_iteration(fault, time.perf_counter() - started)
                bar.update(1)
                if not record.get("skipped"):
                    bar.set_postfix(reward=f"{record['reward_mean']:.4f}", loss=f"{record['loss']:.3g}")
                if progress is not None:
                    progress(self.iteration, total)
                if every and self.iteration % every == 0:
                    state.checkpoint, state.saved_at = self.save_checkpoint(), self.iteration
                if self.bad_iterations.exhausted:
                    folder = self._checkpoint_after_fault(state.saved_at)
                    raise self.bad_iterations.stop_error(self.iteration - 1, folder)
        finally:
            bar.close()

    def _checkpoint_after_fault(self, saved_at: int) -> Path | None:
        """The checkpoint of the last completed iteration when a fault stops the run (None: not written here).

        Only rank 0 writes; other ranks and a state past an optimiser step get None.
        """
        if self._stepped or not self.distributed.is_main:
            return None
        if saved_at == self.iteration:
            return self.output_dir / CHECKPOINTS_DIR / checkpoint_name(self.iteration)
        return self.save_checkpoint(wait_for_ranks=False)  # a failing rank may be alone

    def checkpoint_on_interrupt(self) -> None:
        """On Ctrl-C mid-iteration: checkpoint the last completed iteration if the weights are still its."""
        if self._stepped:
            logger.warning(
                "interrupted after the optimiser step of iteration %d but before its bookkeeping; "
                "no checkpoint written (the latest one stays valid)", self.iteration + 1,
            )
            return
        folder = self.save_checkpoint(wait_for_ranks=False)  # other ranks may be gone
        logger.info("interrupted: checkpoint of %d completed iterations written to %s", self.iteration, folder)


def train(
    run: RunConfig,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA with (Pro-)GRPO as ``run`` says; see :class:`Trainer` (built with :meth:`Trainer.from_run`).

    Args:
        progress: ``progress(completed_iterations, total)`` after every iteration.
        should_stop: polled before every iteration; returning True checkpoints, exports and returns
            (``TrainResult.stopped``). Ctrl-C (KeyboardInterrupt) checkpoints the last completed
            iteration and re-raises.
        resume_from: ``"latest"`` (the newest checkpoint of ``run.output_dir``) or a checkpoint
            folder; the config must match the checkpoint's except ``iterations``, ``output_dir``,
            ``checkpoint_every`` and the rollout's ``measure_flops`` / ``keep_images``.
    """
    return Trainer.from_run(run).run(progress=progress, should_stop=should_stop, resume_from=resume_from)
