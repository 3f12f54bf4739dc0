"""Peer benchmark: progrpo's DDIM-with-log-probs sampler and grpo_update against TRL's DDPOTrainer.

The workload of TRL's standalone DDPO measurement (bench/README.md, "Peer: TRL's DDPO"), run by both implementations on
the SAME saved tiny Stable Diffusion pipeline (``bench/_peer_sd.py``): 64 px, 10 DDIM steps,
eta 1, CFG 5 in sampling AND training, LoRA r=4 alpha 4 on to_q/to_k/to_v/to_out.0, 8 images per
epoch in batches of 4 (4 prompts cycling), fp32, brightness reward, one AdamW step per epoch
(lr 3e-4, wd 1e-4, grad clip 1.0, clip range 1e-4, advantage clip 5), 1 torch thread.

Ours is progrpo's real code path: ``expand_and_prune_rollout`` with the ``ddim`` dynamic at
noise level (eta) 1 and no pruning (4 prompts x 2 = 8 trajectories, network calls of 4 rows =
8 UNet rows with CFG), then ``grpo_update`` with micro-batches of 4 (sample, step) pairs (8 UNet
rows with CFG) over all 80 pairs and one optimiser step.

Measurement boundaries, the same for both (medians over calls, then over runs; epoch 0 of each
run discarded as warm-up):
* ``sample_s_per_img_step``: start of a step's first UNet call (forward pre-hook under no-grad)
  to the end of the step's log-prob step (TRL's ``scheduler_step``, progrpo's ``policy_step``),
  divided by the images in that step (4 for TRL, 8 for ours: two UNet calls of 4 images).
* ``train_s_per_sample_step``: TRL: ``calculate_loss`` start to the prepared optimiser's
  ``zero_grad`` end. Ours: UNet forward start of a micro-batch (pre-hook under grad) to the next
  micro-batch's forward start, the last one to the end of ``grpo_update`` (clip, AdamW step,
  zero_grad) -- so ours also pays the next micro-batch's gather, a conservative boundary.
  Divided by the 4 samples of a training batch.

Both implementations load in one process and alternate whole epochs (A B B A A B ...), so load drift
on the shared cores hits both alike; ``--runs`` repeats that in fresh processes.

    .venv/bin/python -m bench.peer_trl            # 2 processes x 4 measured epochs each, ~3.5 min on 2 cores
    .venv/bin/python -m bench.peer_trl --quick    # 1 process x 2 measured epochs, ~1.2 min
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("progrpo.bench")

PROMPTS = ("cat", "dog", "horse", "monkey")
STEPS, ETA, GUIDANCE, SIZE, BATCH, IMAGES_PER_EPOCH = 10, 1.0, 5.0, 64, 4, 8
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TRL_FIGURES = {"sample_s_per_img_step": 0.0319, "train_s_per_sample_step": 0.0828, "epoch_s": 9.38}
TARGET = 0.8
INSTALL_HINT = "pip install -e '.[bench]'  (or: bash scripts/setup_venv.sh bench)"


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


class _StepClock:
    """Per-call wall times between a start stamp (first one wins) and an end stamp."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.calls: list[float] = []

    def stamp_start(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def stamp_end(self, divide_by: int) -> None:
        if self.start is not None:
            self.calls.append((time.perf_counter() - self.start) / divide_by)
            self.start = None


@dataclass
class _Runner:
    """One implementation, loaded: ``epoch(index)`` runs one epoch and returns its phase times."""

    impl: str
    epoch: Callable[[int], dict]
    sample: _StepClock
    train: _StepClock
    params: list
    rewards: Callable[[], list[float]]
    extra: dict


def run_interleaved(epochs: int, warmup: int, order: tuple[str, ...]) -> dict:
    """Both implementations in this process, epochs alternating (A B A B ...), warm-up epochs dropped.

    Alternating whole epochs inside one process lets load drift on the shared cores hit both alike
    (separate processes ~30 s apart saw 2x swings from other jobs).
    """
    import torch

    torch.set_num_threads(1)
    builders = {"trl": setup_trl, "ours": setup_ours}
    runners = {impl: builders[impl]() for impl in order}
    initial = {impl: [p.detach().clone() for p in r.params] for impl, r in runners.items()}
    measured: dict[str, list[dict]] = {impl: [] for impl in order}
    for index in range(warmup + epochs):
        sequence = order if index % 2 == 0 else order[::-1]
        for impl in sequence:
            runner = runners[impl]
            if index == warmup:
                runner.sample.calls.clear()
                runner.train.calls.clear()
            times = runner.epoch(index)
            if index >= warmup:
                measured[impl].append({**times, "loadavg_1m": os.getloadavg()[0]})
    results = {}
    for impl, runner in runners.items():
        moved = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(runner.params, initial[impl])))
        epochs_done = measured[impl]
        results[impl] = {
            "sample_s_per_img_step": statistics.median(runner.sample.calls),
            "train_s_per_sample_step": statistics.median(runner.train.calls),
            "sample_calls": len(runner.sample.calls),
            "train_calls": len(runner.train.calls),
            "epoch_s": statistics.median(e["epoch_s"] for e in epochs_done),
            "sampling_phase_s": statistics.median(e["sampling_s"] for e in epochs_done),
            "training_phase_s": statistics.median(e["training_s"] for e in epochs_done),
            "epochs": epochs_done,
            "sample_call_s": runner.sample.calls,
            "train_call_s": runner.train.calls,
            "trainable_params": sum(p.numel() for p in runner.params),
            "lora_l2_change": float(moved),
            "reward_means": runner.rewards(),
            **runner.extra,
        }
    return {"results": results, "peak_rss_mb_both": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loadavg": os.getloadavg()}


def setup_trl() -> _Runner:
    """TRL's DDPOTrainer on the peer pipeline, timed at the boundaries of the module docstring."""
    import accelerate
    import torch

    torch.set_num_threads(1)
    accelerate.PartialState()  # TRL's missing-LoRA-file warning goes through accelerate's logger
    import trl.models.modeling_sd_base as sd_base
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from bench._peer_sd import ensure_pipeline

    folder = ensure_pipeline()
    sample, train = _StepClock(), _StepClock()
    phase = {"sampling_s": 0.0, "training_s": 0.0}
    original_step = sd_base.scheduler_step

    def timed_scheduler_step(*args, **kwargs):
        output = original_step(*args, **kwargs)
        if not torch.is_grad_enabled():  # sampling; training's call is inside calculate_loss
            sample.stamp_end(output.latents.shape[0])
        return output

    sd_base.scheduler_step = timed_scheduler_step  # pipeline_step looks the name up at call time

    class TimedTrainer(DDPOTrainer):
        def _generate_samples(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._generate_samples(*args, **kwargs)
            finally:
                phase["sampling_s"] += time.perf_counter() - start

        def _train_batched_samples(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._train_batched_samples(*args, **kwargs)
            finally:
                phase["training_s"] += time.perf_counter() - start

    prompt_cycle = iter(range(10**9))

    def prompt_fn():
        return PROMPTS[next(prompt_cycle) % len(PROMPTS)], {}

    def reward_fn(images, prompts, metadata):
        return images.float().mean(dim=(1, 2, 3)), {}

    pipeline = DefaultDDPOStableDiffusionPipeline(str(folder), use_lora=True)
    config = DDPOConfig(
        num_epochs=10**6, seed=0, mixed_precision="no", allow_tf32=False, log_with=None, save_freq=10**9,
        sample_num_steps=STEPS, sample_eta=ETA, sample_guidance_scale=GUIDANCE, sample_batch_size=BATCH,
        sample_num_batches_per_epoch=IMAGES_PER_EPOCH // BATCH, train_batch_size=BATCH,
        train_gradient_accumulation_steps=IMAGES_PER_EPOCH // BATCH, train_learning_rate=3e-4,
        train_adam_beta1=0.9, train_adam_beta2=0.999, train_adam_weight_decay=1e-4, train_adam_epsilon=1e-8,
        train_max_grad_norm=1.0, train_num_inner_epochs=1, train_cfg=True, train_adv_clip_max=5.0,
        train_clip_range=1e-4, train_timestep_fraction=1.0, per_prompt_stat_tracking=False, negative_prompts="",
        async_reward_computation=False,
    )
    trainer = TimedTrainer(config, reward_fn, prompt_fn, pipeline)
    trainer.sd_pipeline.set_progress_bar_config(disable=True)
    unet = trainer.sd_pipeline.unet
    unet.register_forward_pre_hook(lambda *_: None if torch.is_grad_enabled() else sample.stamp_start())
    calculate_loss = trainer.calculate_loss

    def timed_calculate_loss(*args, **kwargs):
        train.stamp_start()
        return calculate_loss(*args, **kwargs)

    trainer.calculate_loss = timed_calculate_loss
    zero_grad = trainer.optimizer.zero_grad

    def timed_zero_grad(*args, **kwargs):
        result = zero_grad(*args, **kwargs)
        train.stamp_end(BATCH)
        return result

    trainer.optimizer.zero_grad = timed_zero_grad
    logs: list[dict] = []
    log = trainer.accelerator.log
    trainer.accelerator.log = lambda values, step=None, **kw: (logs.append(dict(values)), log(values, step=step, **kw))
    state = {"global_step": 0}

    def epoch(index: int) -> dict:
        phase.update(sampling_s=0.0, training_s=0.0)
        start = time.perf_counter()
        state["global_step"] = trainer.step(index, state["global_step"])
        return {"epoch_s": time.perf_counter() - start, **phase}

    def rewards() -> list[float]:
        return [float(entry["reward_mean"]) for entry in logs if "reward_mean" in entry]

    import trl

    params = [p for p in unet.parameters() if p.requires_grad]
    return _Runner("trl", epoch, sample, train, params, rewards, {"trl_version": trl.__version__})


def setup_ours() -> _Runner:
    """progrpo on the same pipeline: expand_and_prune_rollout + grpo_update, the same timers."""
    import torch

    torch.set_num_threads(1)
    import progrpo.rollout as rollout_module
    from bench._peer_sd import load_pipeline
    from progrpo.advantages import group_advantages
    from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
    from progrpo.lora import LoraSettings, PeftLoraAdapter
    from progrpo.rewards import build_reward
    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
    from progrpo.train.config import GRPOConfig
    from progrpo.train.update import grpo_update

    torch.manual_seed(0)
    denoiser = denoiser_from_pipeline(load_pipeline())
    adapter = PeftLoraAdapter(denoiser.network, LoraSettings(rank=4, alpha=4.0, target_modules=LORA_TARGETS))
    params = adapter.parameters()
    optimizer = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    reward = build_reward("brightness")
    # one optimiser step per epoch, as the TRL DDPO run it is compared with (not the default 2)
    grpo = GRPOConfig(clip_range=1e-4, adv_clip=5.0, micro_batch_rows=BATCH, timestep_fraction=1.0,
                      updates_per_rollout=1)
    group = IMAGES_PER_EPOCH // len(PROMPTS)
    sample, train = _StepClock(), _StepClock()
    original_step = rollout_module.policy_step

    def timed_policy_step(*args, **kwargs):
        output = original_step(*args, **kwargs)
        sample.stamp_end(output.next_sample.shape[0])
        return output

    rollout_module.policy_step = timed_policy_step  # the rollout looks the name up at call time

    def pre_hook(*_):
        if torch.is_grad_enabled():
            if train.start is not None:  # the previous micro-batch ends where this one starts
                train.stamp_end(BATCH)
            train.stamp_start()
        else:
            sample.stamp_start()

    denoiser.network.register_forward_pre_hook(pre_hook)
    generator = torch.Generator().manual_seed(0)
    reward_means: list[float] = []

    def epoch(index: int) -> dict:
        start = time.perf_counter()
        conditioning = denoiser.encode_prompts(list(PROMPTS), "")
        config = RolloutConfig(group_size=group, num_steps=STEPS, dynamics="ddim", noise_level=ETA,
                               guidance_scale=GUIDANCE, height=SIZE, width=SIZE, seed=index, max_batch_rows=BATCH,
                               keep_images=False)
        rollout = expand_and_prune_rollout(denoiser, conditioning, reward, config)
        sampled = time.perf_counter()
        advantages = group_advantages(rollout.final_rewards, rollout.prompt_index)
        grpo_update(denoiser, rollout, advantages, optimizer, grpo, params, generator, adapter=adapter, grad_clip=1.0)
        train.stamp_end(BATCH)  # the last micro-batch ends with the optimiser step and zero_grad
        end = time.perf_counter()
        reward_means.append(float(rollout.final_rewards.mean()))
        return {"epoch_s": end - start, "sampling_s": sampled - start, "training_s": end - sampled}

    return _Runner("ours", epoch, sample, train, params, lambda: reward_means, {})


def _child(order: tuple[str, ...], epochs: int, warmup: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", __spec__.name, "--child", ",".join(order), "--epochs", str(epochs),
                           "--warmup", str(warmup)], capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark process failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


FIGURES = ("sample_s_per_img_step", "train_s_per_sample_step", "epoch_s", "sampling_phase_s", "training_phase_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="processes, each running both implementations")
    parser.add_argument("--epochs", type=int, default=4, help="measured epochs per implementation and process")
    parser.add_argument("--warmup", type=int, default=1, help="epochs per implementation discarded first")
    parser.add_argument("--quick", action="store_true", help="1 process x 2 measured epochs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        result = run_interleaved(args.epochs, args.warmup, tuple(args.child.split(",")))
        print("BENCH_RESULT " + json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bench._common import write_result

    if args.quick:
        args.runs, args.epochs = 1, 2
    if not trl_available():
        logger.info("TRL peer: trl is not installed; install the bench extra: %s", INSTALL_HINT)
        path = write_result("peer_trl", {"status": "trl not installed", "install": INSTALL_HINT,
                                         "loadavg": os.getloadavg()})
        logger.info("wrote %s", path)
        return
    from bench._peer_sd import ensure_pipeline

    ensure_pipeline()
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    processes = []
    started = time.perf_counter()
    for round_index in range(args.runs):
        order = ("trl", "ours") if round_index % 2 == 0 else ("ours", "trl")
        process = _child(order, args.epochs, args.warmup)
        processes.append({"peak_rss_mb_both": process["peak_rss_mb_both"], "loadavg": process["loadavg"]})
        for impl, result in process["results"].items():
            runs[impl].append(result)
            logger.info("process %d %-4s: %.4f s/img-step sampling, %.4f s/sample-step training, %.2f s/epoch",
                        round_index, impl, result["sample_s_per_img_step"], result["train_s_per_sample_step"],
                        result["epoch_s"])
    medians = {impl: {name: statistics.median(r[name] for r in results) for name in FIGURES}
               for impl, results in runs.items()}
    ratios = {name: medians["ours"][name] / medians["trl"][name] for name in FIGURES}
    verdicts = {name: ("PASS" if ratios[name] <= TARGET else "MISS")
                for name in ("sample_s_per_img_step", "train_s_per_sample_step")}
    logger.info("TRL DDPO peer, tiny SD 64px, 10 DDIM steps eta 1, CFG 5, 8 imgs/epoch, 1 thread; %d process(es) "
                "x %d epochs per implementation, alternating (%.0f s)", args.runs, args.epochs,
                time.perf_counter() - started)
    logger.info("%-26s %10s %10s %10s %8s %8s %14s", "figure", "TRL", "ours", "ours/TRL", "target", "", "TRL standalone")
    for name in FIGURES:
        target = f"<= {TARGET}" if name in verdicts else ""
        logger.info("%-26s %10.4f %10.4f %10.3f %8s %8s %14s", name, medians["trl"][name], medians["ours"][name],
                    ratios[name], target, verdicts.get(name, ""), TRL_FIGURES.get(name, ""))
    for impl, results in runs.items():
        logger.info("  %-4s LoRA L2 change %.4g, reward means %s", impl, results[0]["lora_l2_change"],
                    [round(v, 4) for v in results[0]["reward_means"]])
    path = write_result("peer_trl", {
        "status": "ok", "runs": args.runs, "epochs": args.epochs, "warmup": args.warmup, "target": TARGET,
        "medians": medians, "ratios": ratios, "verdicts": verdicts, "trl_reference_figures": TRL_FIGURES,
        "per_run": runs, "processes": processes, "loadavg": os.getloadavg(),
    })
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
