"""Wall time of an Expand-and-Prune rollout against full rollouts, beside the ledger's prediction.

Paper setting (flow model, 10 steps): 48 -> 24 -> 12 at steps 5 and 7, compared with a full
rollout of 48 (what Pro-GRPO expands from) and of 24 (Flow-GRPO's group). The ledger predicts the
ratio from counted work: network rows (trajectory-steps), and FLOPs of sampling + decoding +
reward (torch's flop counter). Everything is measured in one run, interleaved, 1 thread, with
network calls of at most ``--max-batch-rows`` (12) rows in every configuration.

Verdict: PASS when the measured wall ratio and the ledger's TRAJECTORY-STEPS ratio agree within
10% against both baselines. Trajectory-steps (network rows) is the cost model of the paper and
the right predictor of wall time when the denoiser dominates the rollout, as it does on real
models and on the small tier used here. The FLOPs ratio is printed beside it but is not the
yardstick: it weighs the 84 VAE decodes by their FLOPs, and on the CPU dense VAE convolutions
run at several times the FLOP rate of the small transformer's many small ops (and the JPEG
reward runs in PIL, outside torch's flop counter), so FLOPs over-predict what pruning costs.

    .venv/bin/python -m bench.rollout_cost            # ~3 min on 2 cores
    .venv/bin/python -m bench.rollout_cost --quick    # 2 timed rounds, no FLOP counting, ~2.5 min
"""

from __future__ import annotations

import argparse
import logging
import os

from bench._common import interleaved_medians, pin_threads, write_result
from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
from progrpo.rewards import build_reward
from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
from progrpo.tiny_models import TINY_PIPELINES

logger = logging.getLogger("progrpo.bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sd3", choices=sorted(TINY_PIPELINES))
    parser.add_argument("--tier", default="small", help="sd3 only: tiny or small transformer")
    parser.add_argument("--guidance", type=float, default=4.5, help="CFG scale (Flow-GRPO samples with 4.5)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    # Every configuration's network calls take at most 12 rows (the funnel's last width), so all
    # run the same call size: unchunked, the CPU's cost per row grows with the batch (48 rows x 2
    # CFG branches cost ~2.3x 24 rows), which a count of rows cannot see. 0 = unchunked.
    parser.add_argument("--max-batch-rows", type=int, default=12)
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed |measured / ledger - 1|")
    parser.add_argument("--group", type=int, default=48, help="G_max; the funnel is G -> G/2 -> G/4 at steps 5, 7")
    # (A half-size funnel is no quicker proxy: its last steps run 6 rows per call, where the CPU's
    # per-row cost rises, and the measured ratio drifts ~5% away from the 48-trajectory one.)
    parser.add_argument("--quick", action="store_true", help="2 timed rounds, no FLOP counting")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pin_threads(1)

    options = {"tier": args.tier} if args.arch == "sd3" else {}
    denoiser = denoiser_from_pipeline(TINY_PIPELINES[args.arch](seed=0, **options))
    conditioning = denoiser.encode_prompts(["a photo of a cat"], "")
    reward = build_reward("jpeg_compressibility")
    common = dict(num_steps=10, dynamics="flow_sde", height=args.size, width=args.size, keep_images=False,
                  max_batch_rows=args.max_batch_rows or None, guidance_scale=args.guidance)
    group, half, quarter = args.group, args.group // 2, args.group // 4
    pro_grpo = f"pro_grpo_{group}_{half}_{quarter}"
    configs = {
        pro_grpo: RolloutConfig(group_size=group, prune_schedule=f"5:{half}, 7:{quarter}", **common),
        f"full_{group}": RolloutConfig(group_size=group, **common),
        f"full_{half}": RolloutConfig(group_size=half, **common),
    }
    # Trajectory-steps are counted on every run; FLOPs only under the (slow) flop counter.
    ledgers = {
        name: expand_and_prune_rollout(denoiser, conditioning, reward,
                                       RolloutConfig(**{**config.__dict__, "measure_flops": not args.quick})).ledger
        for name, config in configs.items()
    }
    times = interleaved_medians(
        {name: (lambda c=config: expand_and_prune_rollout(denoiser, conditioning, reward, c)) for name, config in configs.items()},
        repeats=args.repeats,
        # --quick: the ledger runs above (no flop counter) already were a warm-up round of every config.
        warmup=0 if args.quick else 1,
    )
    rows = []
    for baseline in (f"full_{group}", f"full_{half}"):
        measured = times[pro_grpo] / times[baseline]
        by_rows = ledgers[pro_grpo].trajectory_steps / ledgers[baseline].trajectory_steps
        by_flops = (ledgers[pro_grpo].total_flops / ledgers[baseline].total_flops) if not args.quick \
            else float("nan")
        agreement = measured / by_rows
        rows.append({"baseline": baseline, "measured_wall_ratio": measured, "ledger_rows_ratio": by_rows,
                     "ledger_flops_ratio": by_flops, "measured_vs_flops": measured / by_flops,
                     "measured_vs_rows": agreement,
                     "verdict": "PASS" if abs(agreement - 1.0) <= args.tolerance else "MISS"})
    logger.info("Expand-and-Prune %d->%d->%d @5,7 of 10 steps, %s %s at %dpx, CFG %.1f, 1 thread, median of %d",
                group, half, quarter,
                args.tier, args.arch, args.size, args.guidance, args.repeats)
    logger.info("%-10s %12s %12s %12s %12s %12s", "vs", "wall ratio", "rows ratio", "wall/rows", "FLOPs ratio",
                "wall/FLOPs")
    for row in rows:
        logger.info("%-10s %12.3f %12.3f %12.3f %12.3f %12.3f  %s (|wall/rows - 1| <= %.2f)", row["baseline"],
                    row["measured_wall_ratio"], row["ledger_rows_ratio"], row["measured_vs_rows"],
                    row["ledger_flops_ratio"], row["measured_vs_flops"], row["verdict"], args.tolerance)
    for name, seconds in times.items():
        ledger = ledgers[name]
        logger.info("  %-18s %.3f s  rows=%d decodes=%d reward_calls=%d GFLOPs=%.2f", name, seconds,
                    ledger.trajectory_steps, ledger.vae_decodes, ledger.reward_calls, ledger.total_flops / 1e9)
    verdict = "PASS" if all(row["verdict"] == "PASS" for row in rows) else "MISS"
    path = write_result("rollout_cost", {"arch": args.arch, "tier": args.tier, "guidance": args.guidance, "size": args.size, "repeats": args.repeats,
                                         "group": group, "max_batch_rows": args.max_batch_rows, "seconds": times, "ratios": rows, "verdict": verdict,
                                         "tolerance": args.tolerance, "compared_with": "ledger trajectory-steps ratio",
                                         "quick": args.quick, "loadavg": os.getloadavg(),
                                         "ledgers": {name: ledger.as_dict() for name, ledger in ledgers.items()}})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
