"""The paper's comparison (Tables 1 and 4, ablations as Tables 5 and 6) on the embedded digits flow model.

Every method trains the same LoRA for the SAME number of iterations (one optimiser step each),
on the same prompts, from the same seeds; only the group each prompt gets differs:

* ``grpo_k``      GRPO with G = k (as many trained trajectories as Pro-GRPO keeps);
* ``grpo_mid``    GRPO with G = 2k, the Flow-GRPO analogue (the paper's baseline, G = 24 = 2 x 12);
* ``grpo_gmax``   GRPO with G = G_max (everything Pro-GRPO expands to is sampled AND trained);
* ``static_ovf``  G_max sampled to the end, OVF keeps k by FINAL reward (``final_keep``), k trained;
* ``pro_grpo``    Expand-and-Prune, G_max -> G_max/2 -> k, OVF on one-step previews during sampling;
* ``flash``       Pro-GRPO-Flash, 2k -> 1.5k -> k, no expansion.

Ablations: checkpoint placement (early 2,3 vs late 5,7; paper Table 6) and G_max (12, 16, 24 with
k = 4; paper Table 5).

Scaling (paper / here): sampler steps 10 / 10, checkpoints after steps 5, 7 / 5, 7; k 12 / 4;
Flow-GRPO G 24 / 8; G_max 48 / 16; funnel 48->24->12 / 16->8->4; Flash 24->16->12 / 8->6->4.
Everything is divided by 3 except the steps (the digits model is small, and 4 prompts per
iteration keep an iteration near 1-2 s on one CPU thread).

Measured per method: final prompt alignment (``Trainer.evaluate`` on fixed noise, all 10 digit
prompts, mean and spread over seeds), model evaluations / decodes / reward calls / backward rows
per iteration (the compute ledger; exact counts), FLOPs per iteration (one extra measured
iteration per method: torch's FlopCounterMode is too slow for every iteration), wall seconds per
iteration (median, 1 thread) and its ratio to GRPO(G_max), the reward-clustering fraction
(|advantage| <= 0.25), the within-group std of the trained trajectories' final rewards, and the
preview-vs-final Spearman correlation per checkpoint. The correlation is measured for EVERY
method on its final policy with an unpruned G_max-group diagnostic rollout (selection ``none``:
previews scored, nothing pruned), the clean measurement; Pro-GRPO/Flash also report the
correlation among their training survivors.

    .venv/bin/python bench/paper_table.py              # defaults (30 it x 3 seeds x 9 runs): 22 min measured
    .venv/bin/python bench/paper_table.py --smoke --out runs/paper_table_smoke   # ~1-2 min

Writes ``paper_table.md``, ``paper_table.json`` and ``paper_table_curves.png`` to ``--out``
(default ``bench/results/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, pin_threads

from progrpo.diagnostics import preview_final_correlation
from progrpo.rollout import expand_and_prune_rollout
from progrpo.train.config import TrainConfig, load_config
from progrpo.train.trainer import Trainer

logger = logging.getLogger("progrpo.bench")

BASE_CONFIG = Path(__file__).resolve().parents[1] / "progrpo" / "configs" / "digits_flow_alignment.yaml"
NUM_STEPS = 10
K = 4
G_MID = 8
G_MAX = 16
LATE = (5, 7)
EARLY = (2, 3)
EVAL_SEED = 12345

#: name -> (label, group_size, prune_schedule, final_keep, role). Roles: main comparison / ablations.
METHODS: dict[str, dict[str, Any]] = {
    "grpo_k": {"label": f"GRPO (G={K})", "group": K, "schedule": None, "final_keep": None, "role": "main"},
    "grpo_mid": {"label": f"GRPO (G={G_MID}, Flow-GRPO analogue)", "group": G_MID, "schedule": None, "final_keep": None,
                     "role": "main"},
    "grpo_gmax": {"label": f"GRPO (G={G_MAX}=G_max)", "group": G_MAX, "schedule": None, "final_keep": None, "role": "main"},
    "static_ovf": {"label": f"Static OVF ({G_MAX}->{K} after sampling)", "group": G_MAX, "schedule": None, "final_keep": K,
                       "role": "main"},
    "pro_grpo": {"label": f"Pro-GRPO ({G_MAX}->8->{K} @5,7)", "group": G_MAX, "schedule": "5:8, 7:4", "final_keep": None,
                     "role": "main"},
    "flash": {"label": f"Pro-GRPO-Flash ({G_MID}->6->{K} @5,7)", "group": G_MID, "schedule": "5:6, 7:4", "final_keep": None,
                  "role": "main"},
    "pro_early": {"label": f"Pro-GRPO ({G_MAX}->8->{K} @2,3)", "group": G_MAX, "schedule": "2:8, 3:4", "final_keep": None,
                      "role": "ablation"},
    "pro_gmax12": {"label": f"Pro-GRPO (12->8->{K} @5,7)", "group": 12, "schedule": "5:8, 7:4", "final_keep": None,
                       "role": "ablation"},
    "pro_gmax24": {"label": f"Pro-GRPO (24->12->{K} @5,7)", "group": 24, "schedule": "5:12, 7:4", "final_keep": None,
                       "role": "ablation"},
}
MAIN = [name for name, spec in METHODS.items() if spec["role"] == "main"]
REFERENCE = "grpo_gmax"  # wall-time and FLOPs ratios are to this one
PAPER_BASELINE = "grpo_mid"  # the paper's "speedup" (1 + fraction of FLOPs saved) is against Flow-GRPO
DIAG_STEPS = sorted(set(LATE) | set(EARLY))


def _config(base: TrainConfig, spec: dict[str, Any], iterations: int, seed: int, output_dir: str) -> TrainConfig:
    rollout = dataclasses.replace(
        base.rollout, group_size=spec["group"], num_steps=NUM_STEPS, prune_schedule=spec["schedule"],
        final_keep=spec["final_keep"], selection="ovf", keep_images=False, measure_flops=False,
    )
    return dataclasses.replace(base, rollout=rollout, iterations=iterations, seed=seed, output_dir=output_dir,
                               checkpoint_every=0)


def _diagnostic(trainer: Trainer, samples: int) -> dict[str, float | None]:
    """Preview-vs-final Spearman at DIAG_STEPS on the current policy: G_max per prompt, nothing pruned."""
    group = max(samples, len(DIAG_STEPS) + 2)
    keeps = ", ".join(f"{step}:{group - 1 - i}" for i, step in enumerate(DIAG_STEPS))  # selection none keeps all
    config = dataclasses.replace(trainer.config.rollout, group_size=group,
                                 prune_schedule=keeps, final_keep=None, selection="none", seed=EVAL_SEED + 1,
                                 keep_images=False, measure_flops=False)
    conditioning = trainer.denoiser.encode_prompts(trainer.prompts, trainer.config.negative_prompt)
    rollout = expand_and_prune_rollout(trainer.denoiser, conditioning, trainer.reward, config)
    return {str(step): (None if math.isnan(value) else value) for step, value in preview_final_correlation(rollout).items()}


def evaluate(trainer: Trainer, samples: int) -> float:
    """Mean final reward of ``Trainer.evaluate`` (fixed noise, every prompt, nothing pruned)."""
    return float(trainer.evaluate(samples, EVAL_SEED).mean())


def run_one(base: TrainConfig, name: str, seed: int, args: argparse.Namespace, measure_flops: bool) -> dict[str, Any]:
    spec = METHODS[name]
    folder = tempfile.mkdtemp(prefix=f"paper_table_{name}_")
    try:
        trainer = Trainer(_config(base, spec, args.iterations, seed, folder))
        evals: list[tuple[int, float]] = []
        started = time.perf_counter()
        while trainer.iteration < args.iterations:
            trainer.run_iteration()
            if trainer.iteration % args.eval_every == 0 or trainer.iteration == args.iterations:
                evals.append((trainer.iteration, evaluate(trainer, args.eval_samples)))
        seconds = time.perf_counter() - started
        history = list(trainer.history)
        diagnostic = _diagnostic(trainer, args.diag_samples)
        flops = None
        if measure_flops:  # one extra rollout + update with the flop counter (after every measurement)
            trainer.config = dataclasses.replace(
                trainer.config, rollout=dataclasses.replace(trainer.config.rollout, measure_flops=True))
            flops = trainer.run_iteration()["ledger"]["flops"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    keep = ("iteration", "reward_mean", "reward_group_std", "clustering_fraction", "group_std_before",
            "group_std_after", "preview_final_spearman", "ledger", "wall_time", "survivors")
    return {"method": name, "seed": seed, "evals": evals, "final_alignment": evals[-1][1], "seconds": seconds,
            "diagnostic_spearman": diagnostic, "flops": flops,
            "history": [{key: record[key] for key in keep} for record in history]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(name: str, runs: list[dict[str, Any]], base_alignment: float) -> dict[str, Any]:
    spec = METHODS[name]
    finals = [run["final_alignment"] for run in runs]
    records = [record for run in runs for record in run["history"]]
    ledgers = [record["ledger"] for record in records]
    per_iteration = {key: _mean([float(ledger[key]) for ledger in ledgers])
                     for key in ("trajectory_steps", "model_evaluations", "preview_decodes", "final_decodes",
                                 "vae_decodes", "reward_calls", "backward_rows")}
    flops = next(run["flops"] for run in runs if run["flops"] is not None)
    # the first iteration of a run pays warm-up; skip it where there is more than one
    walls = [record["wall_time"] for run in runs for record in run["history"][1 if len(run["history"]) > 1 else 0:]]
    training_rho: dict[str, float | None] = {}
    for record in records:
        for step in record["preview_final_spearman"]:
            training_rho.setdefault(step, None)
    for step in training_rho:
        values = [r["preview_final_spearman"][step] for r in records if r["preview_final_spearman"].get(step) is not None]
        training_rho[step] = _mean(values) if values else None
    diag = {step: _mean([run["diagnostic_spearman"][step] for run in runs if run["diagnostic_spearman"][step] is not None])
            for step in runs[0]["diagnostic_spearman"]}
    group_std_after_ckpt = [_mean([record["group_std_after"][slot] for record in records])
                            for slot in range(len(records[0]["group_std_after"]))]
    return {
        "label": spec["label"], "role": spec["role"], "group_size": spec["group"], "prune_schedule": spec["schedule"],
        "final_keep": spec["final_keep"], "trained_per_prompt": spec["final_keep"] or (
            int(spec["schedule"].split(":")[-1]) if spec["schedule"] else spec["group"]),
        "seeds": [run["seed"] for run in runs],
        "final_alignment": finals, "alignment_mean": _mean(finals), "alignment_sd": _sd(finals),
        "alignment_min": min(finals), "alignment_max": max(finals), "alignment_gain": _mean(finals) - base_alignment,
        "per_iteration": per_iteration, "flops_per_iteration": flops, "total_flops_per_iteration": sum(flops.values()),
        "wall_s_per_iteration": statistics.median(walls), "run_seconds": _mean([run["seconds"] for run in runs]),
        "clustering_fraction": _mean([record["clustering_fraction"] for record in records]),
        "group_std_after_selection": _mean([record["reward_group_std"] for record in records]),
        "group_std_after_checkpoint": group_std_after_ckpt,
        "training_spearman": training_rho, "diagnostic_spearman": diag,
        "train_reward_last": _mean([run["history"][-1]["reward_mean"] for run in runs]),
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    methods, settings = results["methods"], results["settings"]
    ref, paper_ref = methods[REFERENCE], methods[PAPER_BASELINE]
    lines = [
        "# Pro-GRPO paper table on the embedded digits flow model",
        "",
        (f"{settings['iterations']} iterations per run (equal for every method), seeds {settings['seeds']}, "
        f"{settings['prompts_per_iteration']} prompts/iteration, {NUM_STEPS} flow-SDE steps, lr {settings['lr']}, "
        f"reward `digit_alignment`. Final alignment: `Trainer.evaluate` on fixed noise (seed {EVAL_SEED}), "
        f"{settings['eval_samples']} samples x {settings['eval_prompts']} prompts; base policy "
        f"{_fmt(results['base_alignment'], 4)}. Total bench time {results['bench_seconds'] / 60:.1f} min."),
        "",
        ("Scaling from the paper's flow setting (divide by 3): k 12 -> 4, Flow-GRPO G 24 -> 8, G_max 48 -> 16, "
        "funnel 48->24->12 @5,7 -> 16->8->4 @5,7, Flash 24->16->12 -> 8->6->4 @5,7, steps 10 -> 10."),
        "",
        "## Main comparison (paper Tables 1 and 4)",
        "",
        ("Per-iteration costs are exact ledger counts (4 prompts); FLOPs from one measured iteration "
        "(sampling + preview/final decode + reward + training). `paper speedup` = 1 + fraction of FLOPs "
        f"saved vs {paper_ref['label']}, as the paper computes it. Wall ratio is the median s/iteration "
        f"over that of {ref['label']} (1 thread, shared CPU: +-10% noise)."),
        "",
        "| Method | trained/prompt | final alignment (mean +- sd) | min..max | gain vs base | model evals/it "
        "| decodes/it | reward calls/it | backward rows/it | GFLOPs/it | FLOPs vs G_max | paper speedup "
        "| wall s/it | wall ratio vs G_max | clustering frac | group std after sel. "
        + " ".join(f"| rho preview-final @{s}" for s in LATE) + " |",
        "|---|" + "---:|" * (15 + len(LATE)),
    ]
    for name in MAIN:
        m = methods[name]
        per = m["per_iteration"]
        flops_ratio = m["total_flops_per_iteration"] / ref["total_flops_per_iteration"]
        paper_speedup = 1 + (1 - m["total_flops_per_iteration"] / paper_ref["total_flops_per_iteration"])
        lines.append(
            f"| {m['label']} | {m['trained_per_prompt']} | {_fmt(m['alignment_mean'], 4)} +- {_fmt(m['alignment_sd'], 4)} "
            f"| {_fmt(m['alignment_min'])}..{_fmt(m['alignment_max'])} | {m['alignment_gain']:+.4f} "
            f"| {per['model_evaluations']:.0f} | {per['vae_decodes']:.0f} | {per['reward_calls']:.0f} "
            f"| {per['backward_rows']:.0f} | {m['total_flops_per_iteration'] / 1e9:.2f} | {flops_ratio:.3f} "
            f"| {paper_speedup:.2f}x | {m['wall_s_per_iteration']:.2f} "
            f"| {m['wall_s_per_iteration'] / ref['wall_s_per_iteration']:.3f} | {_fmt(m['clustering_fraction'])} "
            f"| {_fmt(m['group_std_after_selection'], 4)} "
            + " ".join(f"| {_fmt(m['diagnostic_spearman'][str(s)])}" for s in LATE) + " |"
        )
    lines += [
        "",
        ("* `group std after sel.`: within-group std of the trained trajectories' FINAL rewards, averaged over "
        "groups and iterations. `clustering frac`: share of trained trajectories with |advantage| <= 0.25 "
        "(paper Observation 1)."),
        (f"* `rho preview-final @t`: within-group Spearman of the one-step preview reward after step t vs the final "
        f"reward, on each method's FINAL policy, unpruned diagnostic rollout ({settings['diag_samples']} per prompt, all "
        "prompts), mean over seeds."),
        "",
        "### Selection diagnostics during training (methods that prune at checkpoints)",
        "",
        "| Method | checkpoint | preview std before -> after selection | rho preview-final among survivors |",
        "|---|---:|---:|---:|",
    ]
    for name, m in methods.items():
        if not m["prune_schedule"]:
            continue
        steps = [int(part.split(":")[0]) for part in m["prune_schedule"].split(",")]
        run_records = results["runs"][name][0]["history"]
        for slot, step in enumerate(steps):
            before = _mean([r["group_std_before"][slot] for run in results["runs"][name] for r in run["history"]])
            lines.append(f"| {m['label']} | {step} | {_fmt(before, 4)} -> {_fmt(m['group_std_after_checkpoint'][slot], 4)} "
                         f"| {_fmt(m['training_spearman'].get(str(step)))} |")
        del run_records
    lines += [
        "",
        "## Ablation: initial group size G_max (paper Table 5; k = 4, checkpoints 5, 7)",
        "",
        ("| G_max | funnel | final alignment (mean +- sd) | model evals/it | GFLOPs/it | wall s/it | group std after sel. "
        "| clustering frac |"),
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("pro_gmax12", "pro_grpo", "pro_gmax24"):
        if name not in methods:
            continue
        m = methods[name]
        funnel = f"{m['group_size']}->" + "->".join(p.split(":")[1].strip() for p in m["prune_schedule"].split(","))
        lines.append(f"| {m['group_size']} | {funnel} | {_fmt(m['alignment_mean'], 4)} +- {_fmt(m['alignment_sd'], 4)} "
                     f"| {m['per_iteration']['model_evaluations']:.0f} | {m['total_flops_per_iteration'] / 1e9:.2f} "
                     f"| {m['wall_s_per_iteration']:.2f} | {_fmt(m['group_std_after_selection'], 4)} "
                     f"| {_fmt(m['clustering_fraction'])} |")
    lines += [
        "",
        "## Ablation: checkpoint placement (paper Table 6; 16->8->4)",
        "",
        ("| checkpoints | final alignment (mean +- sd) | model evals/it | GFLOPs/it | wall s/it "
        "| rho preview-final (final policy, per checkpoint) | rho among survivors (training) |"),
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name in ("pro_early", "pro_grpo"):
        if name not in methods:
            continue
        m = methods[name]
        steps = [p.split(":")[0].strip() for p in m["prune_schedule"].split(",")]
        lines.append(f"| ({', '.join(steps)}) | {_fmt(m['alignment_mean'], 4)} +- {_fmt(m['alignment_sd'], 4)} "
                     f"| {m['per_iteration']['model_evaluations']:.0f} | {m['total_flops_per_iteration'] / 1e9:.2f} "
                     f"| {m['wall_s_per_iteration']:.2f} | "
                     + ", ".join(f"@{s}: {_fmt(m['diagnostic_spearman'][s])}" for s in steps) + " | "
                     + ", ".join(f"@{s}: {_fmt(m['training_spearman'].get(s))}" for s in steps) + " |")
    lines += ["", ("Curves: `paper_table_curves.png` (evaluation alignment vs iteration, cumulative model "
              "evaluations and cumulative FLOPs; mean over seeds)."), ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    base = results["base_alignment"]
    for name, runs in results["runs"].items():
        method = results["methods"][name]
        iterations = [0] + [it for it, _ in runs[0]["evals"]]
        values = [base] + [_mean([run["evals"][i][1] for run in runs]) for i in range(len(runs[0]["evals"]))]
        evals_per_it = method["per_iteration"]["model_evaluations"]
        flops_per_it = method["total_flops_per_iteration"] / 1e12
        style = "-" if method["role"] == "main" else "--"
        for ax, scale in zip(axes, (1.0, evals_per_it, flops_per_it)):
            ax.plot([it * scale for it in iterations], values, style, marker="o", markersize=3, label=method["label"])
    for ax, xlabel in zip(axes, ("iteration", "cumulative model evaluations", "cumulative TFLOPs (sampling+training)")):
        ax.set(xlabel=xlabel, ylabel="eval alignment (fixed noise)")
        ax.grid(alpha=0.3)
    axes[0].set_title("reward vs iterations")
    axes[1].set_title("reward vs model evaluations")
    axes[2].set_title("reward vs FLOPs")
    axes[2].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per run (same for all)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (0..seeds-1)")
    parser.add_argument("--eval-samples", type=int, default=16, help="evaluation samples per prompt")
    parser.add_argument("--eval-every", type=int, default=10, help="evaluate every this many iterations (curves)")
    parser.add_argument("--diag-samples", type=int, default=G_MAX, help="per prompt in the preview diagnostic")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--smoke", action="store_true", help="tiny setting for the test suite (~1-2 min)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for paper_table.md/.json/_curves.png")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations, args.seeds, args.eval_samples, args.eval_every, args.diag_samples = 2, 1, 2, 2, 6
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("progrpo", "diffusers", "transformers"):  # per-iteration lines of the trainer
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    pin_threads(1)
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    for required in (REFERENCE, PAPER_BASELINE):
        if required not in names:
            names.insert(0, required)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")

    base = load_config(BASE_CONFIG)
    started = time.perf_counter()
    probe = Trainer(_config(base, METHODS[REFERENCE], 1, 0, tempfile.mkdtemp(prefix="paper_table_base_")))
    base_alignment = float(probe.evaluate(args.eval_samples, EVAL_SEED).mean())
    shutil.rmtree(probe.output_dir, ignore_errors=True)
    del probe
    logger.info("base policy alignment %.4f", base_alignment)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name in names:  # sequential: the CPU is shared
        for seed in range(args.seeds):
            run = run_one(base, name, seed, args, measure_flops=seed == 0)
            runs[name].append(run)
            walls = [r["wall_time"] for r in run["history"]]
            logger.info("%-12s seed %d: alignment %.4f (train reward %.4f), %.2f s/it, %.0f s total, elapsed %.1f min",
                        name, seed, run["final_alignment"], run["history"][-1]["reward_mean"],
                        statistics.median(walls), run["seconds"], (time.perf_counter() - started) / 60)
    methods = {name: aggregate(name, runs[name], base_alignment) for name in names}
    results = {
        "settings": {"iterations": args.iterations, "seeds": list(range(args.seeds)), "eval_samples": args.eval_samples,
                     "eval_every": args.eval_every, "eval_prompts": len(base.prompts or []), "eval_seed": EVAL_SEED,
                     "diag_samples": args.diag_samples, "num_steps": NUM_STEPS, "k": K, "g_mid": G_MID,
                     "g_max": G_MAX, "prompts_per_iteration": base.prompts_per_iteration, "lr": base.optim.lr,
                     "model": base.model, "smoke": args.smoke,
                     "scaling": "paper/here: k 12/4, Flow-GRPO G 24/8, G_max 48/16, 48->24->12@5,7 / 16->8->4@5,7, "
                                "Flash 24->16->12 / 8->6->4, steps 10/10"},
        "base_alignment": base_alignment,
        "bench_seconds": time.perf_counter() - started,
        "methods": methods,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_table.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "paper_table.md").write_text(table)
    plot(results, out / "paper_table_curves.png")
    print(table)
    logger.info("wrote %s/paper_table.{md,json} and paper_table_curves.png in %.1f min", out,
                results["bench_seconds"] / 60)
    return results


if __name__ == "__main__":
    main()
