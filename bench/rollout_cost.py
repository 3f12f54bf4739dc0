"""Wall time of an Expand-and-Prune rollout against full rollouts, beside the ledger's prediction.

Paper setting (flow model, 10 steps): 48 -> 24 -> 12 at steps 5 and 7, compared with a full
rollout of 48 (what Pro-GRPO expands from) and of 24 (Flow-GRPO's group). The ledger predicts the
ratio from counted work: network rows (trajectory-steps), and FLOPs of sampling + decoding +
reward (torch's flop counter). Everything is measured in one run, interleaved, 1 thread.

    .venv/bin/python bench/rollout_cost.py            # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians, pin_threads, write_result  # noqa: E402

from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline  # noqa: E402
from progrpo.rewards import build_reward  # noqa: E402
from progrpo.rollout import RolloutConfig, expand_and_prune_rollout  # noqa: E402
from progrpo.tiny_models import TINY_PIPELINES  # noqa: E402

logger = logging.getLogger("progrpo.bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sd3", choices=sorted(TINY_PIPELINES))
    parser.add_argument("--tier", default="small", help="sd3 only: tiny or small transformer")
    parser.add_argument("--guidance", type=float, default=4.5, help="CFG scale (Flow-GRPO samples with 4.5)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch-rows", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pin_threads(1)

    options = {"tier": args.tier} if args.arch == "sd3" else {}
    denoiser = denoiser_from_pipeline(TINY_PIPELINES[args.arch](seed=0, **options))
    conditioning = denoiser.encode_prompts(["a photo of a cat"], "")
    reward = build_reward("jpeg_compressibility")
    common = dict(num_steps=10, dynamics="flow_sde", height=args.size, width=args.size, keep_images=False,
                  max_batch_rows=args.max_batch_rows, guidance_scale=args.guidance)
    configs = {
        "pro_grpo_48_24_12": RolloutConfig(group_size=48, prune_schedule="5:24, 7:12", **common),
        "full_48": RolloutConfig(group_size=48, **common),
        "full_24": RolloutConfig(group_size=24, **common),
    }
    ledgers = {
        name: expand_and_prune_rollout(denoiser, conditioning, reward,
                                       RolloutConfig(**{**config.__dict__, "measure_flops": True})).ledger
        for name, config in configs.items()
    }
    times = interleaved_medians(
        {name: (lambda c=config: expand_and_prune_rollout(denoiser, conditioning, reward, c)) for name, config in configs.items()},
        repeats=args.repeats,
    )
    rows = []
    for baseline in ("full_48", "full_24"):
        measured = times["pro_grpo_48_24_12"] / times[baseline]
        by_rows = ledgers["pro_grpo_48_24_12"].trajectory_steps / ledgers[baseline].trajectory_steps
        by_flops = ledgers["pro_grpo_48_24_12"].total_flops / ledgers[baseline].total_flops
        rows.append({"baseline": baseline, "measured_wall_ratio": measured, "ledger_rows_ratio": by_rows,
                     "ledger_flops_ratio": by_flops, "measured_vs_flops": measured / by_flops})
    logger.info("Expand-and-Prune 48->24->12 @5,7 of 10 steps, %s %s at %dpx, CFG %.1f, 1 thread, median of %d",
                args.tier, args.arch, args.size, args.guidance, args.repeats)
    logger.info("%-10s %12s %12s %12s %12s", "vs", "wall ratio", "rows ratio", "FLOPs ratio", "wall/FLOPs")
    for row in rows:
        logger.info("%-10s %12.3f %12.3f %12.3f %12.3f", row["baseline"], row["measured_wall_ratio"],
                    row["ledger_rows_ratio"], row["ledger_flops_ratio"], row["measured_vs_flops"])
    for name, seconds in times.items():
        ledger = ledgers[name]
        logger.info("  %-18s %.3f s  rows=%d decodes=%d reward_calls=%d GFLOPs=%.2f", name, seconds,
                    ledger.trajectory_steps, ledger.vae_decodes, ledger.reward_calls, ledger.total_flops / 1e9)
    path = write_result("rollout_cost", {"arch": args.arch, "tier": args.tier, "guidance": args.guidance, "size": args.size, "repeats": args.repeats,
                                         "seconds": times, "ratios": rows,
                                         "ledgers": {name: ledger.as_dict() for name, ledger in ledgers.items()}})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
