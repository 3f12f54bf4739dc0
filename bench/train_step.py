"""Training cost per (sample, step) and peak RSS of one GRPO update at group sizes 8, 16, 32, 64.

Each group size runs in its own subprocess (peak RSS only grows within a process): after a
warm-up iteration at group 8 it resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and
runs one training iteration at the group size -- a rollout whose network calls take 16 rows at a
time, then a timed ``grpo_update`` with micro-batches of 8 (trajectory, step) rows. The
iteration's peak RSS must stay flat as the group grows, since only one chunk's / micro-batch's
activations live at a time (the stored trajectories grow, by ~100 KB per trajectory here): PASS
when the largest group's peak RSS is within 20% of the smallest's (``--tolerance``).

    .venv/bin/python -m bench.train_step          # ~1.5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from bench._common import pin_threads, write_result

logger = logging.getLogger("progrpo.bench")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def measure(group_size: int, model: str, size: int, micro_batch_rows: int) -> dict:
    """A warm-up iteration, then one measured training iteration (rollout + update) in this process."""
    import torch

    from progrpo.advantages import group_advantages
    from progrpo.denoisers.loading import load_denoiser
    from progrpo.lora import LoraSettings, PeftLoraAdapter
    from progrpo.rewards import build_reward
    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
    from progrpo.train.config import GRPOConfig
    from progrpo.train.update import grpo_update

    pin_threads(1)
    denoiser = load_denoiser(model)
    adapter = PeftLoraAdapter(denoiser.network, LoraSettings(rank=4, alpha=4.0))
    params = adapter.parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    conditioning = denoiser.encode_prompts(["a photo of a cat"], None)
    reward = build_reward("brightness")
    grpo = GRPOConfig(micro_batch_rows=micro_batch_rows)
    generator = torch.Generator().manual_seed(0)

    def iteration(group: int) -> tuple[dict, float, float]:
        # The rollout's network calls are chunked too (max_batch_rows), as a memory-bounded run sets them.
        config = RolloutConfig(group_size=group, num_steps=6, dynamics="flow_sde", height=size, width=size,
                               keep_images=False, seed=0, max_batch_rows=2 * micro_batch_rows)
        rollout = expand_and_prune_rollout(denoiser, conditioning, reward, config)
        advantages = group_advantages(rollout.final_rewards, rollout.prompt_index)
        before_update = _peak_rss_mb()
        start = time.perf_counter()
        metrics = grpo_update(denoiser, rollout, advantages, optimizer, grpo, params, generator, adapter=adapter)
        return metrics, time.perf_counter() - start, before_update

    iteration(8)  # warm-up at the smallest group, so every size starts from the same state
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    baseline = _peak_rss_mb()
    metrics, seconds, before_update = iteration(group_size)
    rows = int(metrics["rows"])
    peak = _peak_rss_mb()
    return {"group_size": group_size, "rows": rows, "seconds": seconds, "seconds_per_row": seconds / rows,
            "peak_rss_mb": peak, "rss_before_iteration_mb": baseline, "iteration_peak_growth_mb": peak - baseline,
            "peak_before_update_mb": before_update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny:sd3")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--micro-batch-rows", type=int, default=8)
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--tolerance", type=float, default=0.20, help="allowed peak-RSS growth, largest/smallest - 1")
    parser.add_argument("--quick", action="store_true", help="same measurement (one update per size is already minimal)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.model, args.size, args.micro_batch_rows)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for group_size in args.group_sizes:
        child = subprocess.run(
            [sys.executable, "-m", __spec__.name, "--child", str(group_size), "--model", args.model, "--size", str(args.size),
             "--micro-batch-rows", str(args.micro_batch_rows)],
            capture_output=True, text=True, env=env, check=True,
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    logger.info("GRPO update, %s at %dpx, 6 steps, micro-batches of %d rows, 1 thread",
                args.model, args.size, args.micro_batch_rows)
    logger.info("%6s %6s %14s %14s %20s", "group", "rows", "ms per row", "peak RSS MB", "iteration growth MB")
    for row in rows:
        logger.info("%6d %6d %14.2f %14.1f %20.1f", row["group_size"], row["rows"], 1e3 * row["seconds_per_row"],
                    row["peak_rss_mb"], row["iteration_peak_growth_mb"])
    growth = [row["iteration_peak_growth_mb"] for row in rows]
    peaks = [row["peak_rss_mb"] for row in rows]
    ratio = peaks[-1] / peaks[0]
    verdict = "PASS" if ratio <= 1.0 + args.tolerance else "MISS"
    logger.info("peak RSS ratio group %d / group %d: %.3f (target <= %.2f) %s; max/min %.3f; iteration growth spread "
                "%.1f MB", rows[-1]["group_size"], rows[0]["group_size"], ratio, 1.0 + args.tolerance, verdict,
                max(peaks) / min(peaks), max(growth) - min(growth))
    path = write_result("train_step", {"model": args.model, "size": args.size, "micro_batch_rows": args.micro_batch_rows,
                                       "results": rows, "peak_rss_ratio": ratio, "target": 1.0 + args.tolerance,
                                       "verdict": verdict, "loadavg": os.getloadavg()})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
