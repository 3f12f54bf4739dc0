"""Run every benchmark (each in its own process), then print one table of every ratio with its target.

    .venv/bin/python -m bench.run_all            # full settings, ~20 min on 2 cores
    .venv/bin/python -m bench.run_all --quick    # fewer repeats/epochs (warm-ups still discarded), < 10 min
    .venv/bin/python -m bench.run_all --heavy    # also real_size_memory (real-size SD1.5/SDXL on the CPU, 1-2 h)
    .venv/bin/python -m bench.run_all --gpu      # also gpu_check (needs CUDA; a SKIP row without it)

Every speed figure is a ratio of runs interleaved in one process at 1 torch thread (see each
script's docstring); absolute times are context only. Writes ``bench/results/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

from bench._common import RESULTS, write_result

logger = logging.getLogger("progrpo.bench")

#: script -> result file name; run in this order (the cheap, independent ones first).
BENCHMARKS = ("logprob_overhead", "comfyui_sampler", "train_step", "rollout_cost", "peer_trl", "lora_output_speed")
#: opt-in: --heavy (long, several GB of RAM) and --gpu (CUDA only).
HEAVY = ("real_size_memory",)
GPU = ("gpu_check",)


def _read(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(benchmark: str, measure: str, value: float | None, target: str, verdict: str, note: str = "") -> dict:
    return {"benchmark": benchmark, "measure": measure, "value": value, "target": target, "verdict": verdict,
            "note": note}


def summary_rows(errors: dict[str, str], extra: tuple[str, ...] = ()) -> list[dict]:
    """One row per ratio, from the result files the benchmarks wrote (``extra``: the opt-in ones run)."""
    rows: list[dict] = []
    for name in (*BENCHMARKS, *extra):
        if name in errors:
            skipped = "needs a CUDA device" in errors[name]  # gpu_check on a machine without CUDA
            rows.append(_row(name, "(benchmark failed)" if not skipped else "(no CUDA device)", None, "",
                             "SKIP" if skipped else "ERROR", errors[name]))
            continue
        result = _read(name)
        if result is None:
            rows.append(_row(name, "(no result file)", None, "", "ERROR"))
        elif name == "logprob_overhead":
            rows.append(_row(name, "log-prob sampler / diffusers __call__ (wall)", result["ratio"], "<= 1.10",
                             result["verdict"]))
        elif name == "comfyui_sampler":
            if result.get("status") != "ok":
                rows.append(_row(name, "Expanded Sampler / KSampler", None, "<= 1.15", "SKIP", result.get("status", "")))
            else:
                rows.append(_row(name, "Expanded Sampler / KSampler (server exec)", result["ratio"], "<= 1.15",
                                 result["verdict"]))
        elif name == "train_step":
            sizes = [r["group_size"] for r in result["results"]]
            rows.append(_row(name, f"peak RSS, group {sizes[-1]} / group {sizes[0]}", result["peak_rss_ratio"],
                             f"<= {result['target']:.2f}", result["verdict"]))
        elif name == "rollout_cost":
            group = result.get("group", 48)
            funnel = f"{group}->{group // 2}->{group // 4}"
            for ratio in result["ratios"]:
                rows.append(_row(name, f"{funnel} vs {ratio['baseline']}: wall / ledger trajectory-steps",
                                 ratio["measured_vs_rows"], "within 10%", ratio["verdict"],
                                 f"wall {ratio['measured_wall_ratio']:.3f}, ledger {ratio['ledger_rows_ratio']:.3f}"))
        elif name == "peer_trl":
            if result.get("status") != "ok":
                rows.append(_row(name, "ours / TRL DDPO", None, "<= 0.8", "SKIP",
                                 f"{result.get('status')}: {result.get('install', '')}"))
                continue
            medians = result["medians"]
            for figure, label in (("sample_s_per_img_step", "sampling s/img-step"),
                                  ("train_s_per_sample_step", "training s/sample-step")):
                rows.append(_row(name, f"ours / TRL DDPO, {label}", result["ratios"][figure], "<= 0.8",
                                 result["verdicts"][figure],
                                 f"ours {medians['ours'][figure]:.4f}, TRL {medians['trl'][figure]:.4f}"))
            rows.append(_row(name, "ours / TRL DDPO, epoch wall", result["ratios"]["epoch_s"], "(context)", "",
                             f"ours {medians['ours']['epoch_s']:.2f} s, TRL {medians['trl']['epoch_s']:.2f} s"))
        else:
            rows += _issue18_rows(name, result)
    return rows


def _issue18_rows(name: str, result: dict) -> list[dict]:
    """Rows of the memory/precision benchmarks (lora_output_speed, real_size_memory, gpu_check)."""
    rows = []
    if name == "lora_output_speed":
        speed, precision = result["lora_speed"], result["precision"]
        rows.append(_row(name, "Train Loop MODEL output / LoraLoaderModelOnly, KSampler wall", speed["ratio"],
                         "<= 1.05", speed["verdict"]))
        if precision.get("status") == "ok":
            rows.append(_row(name, "Train Loop iteration, training_dtype bf16 / fp32 (CPU)",
                             precision["iteration_ratio_bf16_over_fp32"], "(context)", "",
                             f"update only {precision['update_ratio_bf16_over_fp32']:.3f}"))
        else:
            rows.append(_row(name, "Train Loop iteration, training_dtype bf16 / fp32 (CPU)", None, "(context)",
                             "SKIP", precision.get("status", "")))
    elif name == "real_size_memory":
        for size, summary in result["summary"].items():
            rows.append(_row(name, f"{size}: training / sampling peak RSS (ckpt, micro-batch 1)",
                             summary["ckpt_mb1_ratio"], f"<= {result['target']}", summary["verdict"],
                             f"activation {summary['ckpt_activation_mb_per_row'] or float('nan'):.0f} MB per extra row"))
    elif name == "gpu_check":
        for row in result["rows"]:
            value = None if "error" in row else row["peak_mb"] / 1024
            rows.append(_row(name, f"{row['model']} {row['weights']} {row['px']} px: peak VRAM GB", value,
                             "(context)", "ERROR" if "error" in row else "",
                             row.get("error", f"{row.get('seconds', 0):.1f} s/iteration on {result['device']}")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick setting")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS + HEAVY + GPU,
                        help="run these only (the table still reads all)")
    parser.add_argument("--heavy", action="store_true", help=f"also run {', '.join(HEAVY)} (1-2 h, ~10 GB RAM)")
    parser.add_argument("--gpu", action="store_true", help=f"also run {', '.join(GPU)} (CUDA)")
    args = parser.parse_args()
    extra = (HEAVY if args.heavy else ()) + (GPU if args.gpu else ())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in args.only or (*BENCHMARKS, *extra):
        command = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else [])]
        logger.info("== %s", " ".join(command[1:]))
        began = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds[name] = time.perf_counter() - began
        for line in done.stderr.splitlines():  # the scripts log their tables to stderr
            if not line.startswith(("Loading", "Writing")) and "Warning" not in line:
                logger.info("   %s", line)
        if done.returncode != 0:
            errors[name] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"
        logger.info("   (%.0f s)", seconds[name])
    total = time.perf_counter() - started
    rows = summary_rows(errors, tuple(n for n in (*HEAVY, *GPU) if n in extra or n in (args.only or ())))
    logger.info("")
    logger.info("%-16s %-62s %8s %11s %7s  %s", "benchmark", "measure", "value", "target", "verdict", "note")
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        logger.info("%-16s %-62s %8s %11s %7s  %s", row["benchmark"], row["measure"], value, row["target"],
                    row["verdict"], row["note"])
    logger.info("total %.0f s (%s)%s", total, "quick" if args.quick else "full",
                "" if not errors else f"; failed: {sorted(errors)}")
    path = write_result("summary", {"quick": args.quick, "rows": rows, "seconds": seconds, "total_seconds": total,
                                    "errors": errors, "loadavg": os.getloadavg()})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
