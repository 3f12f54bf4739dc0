"""The paper's claim re-tested on the embedded digits flow model, in the baselines' training regime.

The claim (arXiv 2512.15347, Tables 1 and 4): Pro-GRPO (expanded groups pruned at checkpoints by
Optimal Variance Filtering) beats Flow-GRPO at lower compute. Every arm here trains the same LoRA
in Flow-GRPO's regime (``updates_per_rollout`` 2 disjoint minibatches per rollout, clip 1e-4, its
KL form, EMA with update interval 8 and the EMA evaluated, advantage epsilon 1e-4, the last
deterministic step not trained) on a CONTINUOUS reward (the classifier's logit margin of the
prompted digit: the probability is nearly binary, so OVF would have little to remove); only the
groups differ:

* ``grpo8``      GRPO G=8, the Flow-GRPO analogue (its global std);
* ``pro``        Pro-GRPO 16->8->4, OVF on x_c previews at the two checkpoints;
* ``pro_random`` the same funnel with RANDOM selection (the control the paper lacks);
* ``static8`` / ``static16``  static OVF: 8 or 16 sampled to the end, OVF keeps 4 by FINAL reward;
* ``grpo4`` / ``grpo16``      GRPO G=4 and G=16 (global std);
* ``flash``      Pro-GRPO-Flash 8->6->4.

Pruned arms use the survivors' own group std (the paper). Every arm is evaluated every
``eval_every`` iterations on fixed noise with the ODE sampler (EMA weights), all 10 digit
prompts, scored by the training reward (primary) and the digit probability (secondary).

Statistics, over paired seeds (same seed = same prompts' first draw, same eval noise):

* primary: the seed-paired difference Pro-GRPO minus GRPO G=8 in the area under the eval curve
  (mean eval reward over iterations 0..N, trapezoid), mean and 95% t-interval;
* secondary: the same at equal cumulative FLOPs (the area under the eval curve against the
  ledger's cumulative FLOPs, over the budget of the cheaper arm, curves interpolated), and
  Pro-GRPO (OVF) minus the same funnel with random selection.

The verdict line says ``reproduced`` (interval above 0), ``not reproduced`` (interval below 0) or
``undecided at this power`` (interval covers 0).

    .venv/bin/python -m bench.paper_table                   # 8 seeds x 40 iterations x 8 arms, 2 processes
    .venv/bin/python -m bench.paper_table --smoke --out runs/paper_table_smoke   # the tests' setting (~1-2 min)

Writes ``paper_table.md``, ``paper_table.json`` and ``paper_table_curves.png`` to ``--out``
(default ``bench/results/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import RESULTS, pin_threads

logger = logging.getLogger("progrpo.bench")

BASE_CONFIG = Path(__file__).resolve().parents[1] / "progrpo" / "configs" / "digits_flow_alignment.yaml"
PRIMARY_REWARD = "digit_logit_margin"
SECONDARY_REWARD = "digit_alignment"  # the probability
EVAL_SEED = 12345
DIAG_SEED = 777
NUM_STEPS = 6  # 10 in the paper; 6 keeps 8 arms x 8 seeds x 40 iterations near 30 min on 2 shared cores
CHECKPOINTS = (3, 4)  # the paper's 5, 7 of 10 (half and 70% of the steps), scaled to 6 steps
K = 4

#: arm -> group size, prune schedule, static final_keep, selection, advantage std mode.
ARMS: dict[str, dict[str, Any]] = {
    "grpo8": {"label": "GRPO G=8 (Flow-GRPO analogue)", "group": 8, "schedule": None, "final_keep": None,
              "selection": "ovf", "std": "global"},
    "pro": {"label": "Pro-GRPO 16->8->4 (OVF)", "group": 16, "schedule": f"{CHECKPOINTS[0]}:8, {CHECKPOINTS[1]}:4",
            "final_keep": None, "selection": "ovf", "std": "group"},
    "pro_random": {"label": "16->8->4 RANDOM selection", "group": 16,
                   "schedule": f"{CHECKPOINTS[0]}:8, {CHECKPOINTS[1]}:4", "final_keep": None, "selection": "random",
                   "std": "group"},
    "static8": {"label": "Static OVF 8->4", "group": 8, "schedule": None, "final_keep": 4, "selection": "ovf",
                "std": "group"},
    "static16": {"label": "Static OVF 16->4", "group": 16, "schedule": None, "final_keep": 4, "selection": "ovf",
                 "std": "group"},
    "grpo4": {"label": "GRPO G=4", "group": 4, "schedule": None, "final_keep": None, "selection": "ovf",
              "std": "global"},
    "grpo16": {"label": "GRPO G=16", "group": 16, "schedule": None, "final_keep": None, "selection": "ovf",
               "std": "global"},
    "flash": {"label": "Pro-GRPO-Flash 8->6->4", "group": 8, "schedule": f"{CHECKPOINTS[0]}:6, {CHECKPOINTS[1]}:4",
              "final_keep": None, "selection": "ovf", "std": "group"},
}
PRO, BASELINE, RANDOM = "pro", "grpo8", "pro_random"


# --- configuration ---------------------------------------------------------------------------


def train_config(arm: str, seed: int, settings: dict[str, Any], output_dir: str) -> Any:
    """The RunConfig of one arm and seed (Flow-GRPO's regime for every arm; see the module doc)."""
    from progrpo.train.config import GRPOConfig
    from progrpo.train.run_config import load_config

    spec, base = ARMS[arm], load_config(BASE_CONFIG)
    rollout = dataclasses.replace(
        base.rollout, group_size=spec["group"], num_steps=NUM_STEPS, prune_schedule=spec["schedule"],
        final_keep=spec["final_keep"], selection=spec["selection"], keep_images=False, measure_flops=False,
        preview="current",
    )
    grpo = GRPOConfig(clip_range=1e-4, std_mode=spec["std"], kl_beta=settings["kl_beta"], kl_form="flow_grpo",
                      updates_per_rollout=2, micro_batch_rows=64, adv_epsilon=1e-4, ema_decay=settings["ema_decay"],
                      ema_update_interval=8)
    optim = dataclasses.replace(base.optim, lr=settings["lr"])
    return dataclasses.replace(base, rollout=rollout, grpo=grpo, optim=optim, iterations=settings["iterations"],
                               seed=seed, output_dir=output_dir, checkpoint_every=0,
                               prompts_per_iteration=settings["prompts_per_iteration"],
                               rewards={PRIMARY_REWARD: {"weight": 1.0}})


# --- one run -----------------------------------------------------------------------------------


def evaluate(trainer: Any, samples: int, secondary: Any) -> tuple[float, float]:
    """(primary, secondary) mean reward on fixed noise, ODE sampler, every prompt, EMA weights when on."""
    import contextlib

    from progrpo.rollout import expand_and_prune_rollout

    config = dataclasses.replace(trainer.config.rollout, group_size=samples, prune_schedule=None, final_keep=None,
                                 selection="none", seed=EVAL_SEED, keep_images=True, dynamics="ode",
                                 shared_initial_noise=False)
    conditioning = trainer.denoiser.encode_prompts(trainer.prompts, trainer.config.negative_prompt)
    weights = trainer.ema.swapped_in() if trainer.ema is not None else contextlib.nullcontext()
    with weights:
        rollout = expand_and_prune_rollout(trainer.denoiser, conditioning, trainer.reward, config)
    probability = secondary.score(rollout.images, rollout.prompts)
    return float(rollout.final_rewards.mean()), float(probability.mean())


def run_one(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    """Train one arm with one seed; evaluations every ``eval_every`` iterations (iteration 0 included)."""
    import torch

    from progrpo.rewards import build_reward
    from progrpo.train.trainer import Trainer

    arm, seed, settings = job
    pin_threads(1)
    logging.getLogger("progrpo").setLevel(logging.WARNING)
    folder = tempfile.mkdtemp(prefix=f"paper_table_{arm}_{seed}_")
    started = time.perf_counter()
    try:
        trainer = Trainer.from_run(train_config(arm, seed, settings, folder))
        secondary = build_reward(SECONDARY_REWARD)
        evals = [(0, *evaluate(trainer, settings["eval_samples"], secondary))]
        while trainer.iteration < settings["iterations"]:
            trainer.run_iteration()
            if trainer.iteration % settings["eval_every"] == 0 or trainer.iteration == settings["iterations"]:
                evals.append((trainer.iteration, *evaluate(trainer, settings["eval_samples"], secondary)))
        seconds = time.perf_counter() - started
        history = list(trainer.history)
        flops = None
        if settings["measure_flops"] and seed == 0:  # one extra measured iteration (FlopCounterMode is slow)
            trainer.config = dataclasses.replace(
                trainer.config, rollout=dataclasses.replace(trainer.config.rollout, measure_flops=True))
            flops = trainer.run_iteration()["ledger"]["flops"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    del torch
    keep = ("iteration", "reward_mean", "clustering_fraction", "preview_final_spearman", "ledger", "wall_time",
            "clip_fraction", "clip_fraction_off_policy", "ratio_deviation_off_policy", "approx_kl", "kl")
    return {"arm": arm, "seed": seed, "evals": evals, "seconds": seconds, "flops": flops,
            "history": [{key: record.get(key) for key in keep} for record in history]}


# --- base-policy diagnostics -----------------------------------------------------------------


def base_diagnostics(samples: int, settings: dict[str, Any]) -> dict[str, Any]:
    """At the base policy: clustering fraction per reward, preview-vs-final Spearman for both preview modes."""
    from progrpo.advantages import group_advantages
    from progrpo.diagnostics import clustering_fraction, preview_final_correlation
    from progrpo.rewards import build_reward
    from progrpo.rollout import expand_and_prune_rollout
    from progrpo.train.trainer import Trainer

    pin_threads(1)
    folder = tempfile.mkdtemp(prefix="paper_table_base_")
    trainer = Trainer.from_run(train_config(BASELINE, 0, settings, folder))
    conditioning = trainer.denoiser.encode_prompts(trainer.prompts, trainer.config.negative_prompt)
    keeps = f"{CHECKPOINTS[0]}:{samples - 1}, {CHECKPOINTS[1]}:{samples - 2}"  # selection none keeps all
    result: dict[str, Any] = {"spearman": {}, "clustering": {}, "samples_per_prompt": samples}
    images = None
    for preview in ("current", "stale"):
        config = dataclasses.replace(trainer.config.rollout, group_size=samples, prune_schedule=keeps, selection="none",
                                     seed=DIAG_SEED, keep_images=True, preview=preview)
        rollout = expand_and_prune_rollout(trainer.denoiser, conditioning, trainer.reward, config)
        result["spearman"][preview] = {str(step): value for step, value in preview_final_correlation(rollout).items()}
        images, prompts, groups = rollout.images, rollout.prompts, rollout.prompt_index
    rewards = {"probability": build_reward("digit_alignment"), "logit_margin": build_reward("digit_logit_margin"),
               "tempered_log_prob_T4": build_reward("digit_tempered_log_prob")}
    # groups of 8 (the Flow-GRPO analogue's): each prompt's samples split in halves
    groups8 = groups * 2 + (torch_arange_within(groups) >= samples // 2).long()
    for name, reward in rewards.items():
        scores = reward.score(images, prompts)
        advantages = group_advantages(scores, groups8, clip=None, epsilon=1e-4)
        result["clustering"][name] = clustering_fraction(advantages)
        if name == "probability":
            result["probability_extreme_fraction"] = float(((scores < 0.05) | (scores > 0.95)).float().mean())
    shutil.rmtree(folder, ignore_errors=True)
    return result


def torch_arange_within(groups: Any) -> Any:
    """Position of each row within its (contiguous) group: [N] -> [N]."""
    import torch

    positions = torch.zeros_like(groups)
    for group in torch.unique(groups):
        rows = torch.nonzero(groups == group).flatten()
        positions[rows] = torch.arange(rows.numel())
    return positions


# --- statistics ----------------------------------------------------------------------------------


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval of the mean of ``values`` (n >= 2; n = 1 gives an infinite interval)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def area_under(xs: list[float], ys: list[float], upto: float | None = None) -> float:
    """Mean of the piecewise-linear curve (xs, ys) over [xs[0], upto] (default: the last x)."""
    end = xs[-1] if upto is None else upto
    total, previous_x, previous_y = 0.0, xs[0], ys[0]
    for x, y in zip(xs[1:], ys[1:]):
        if previous_x >= end:
            break
        if x > end:  # interpolate the curve at the budget's end
            y = previous_y + (y - previous_y) * (end - previous_x) / (x - previous_x)
            x = end
        total += (x - previous_x) * (previous_y + y) / 2
        previous_x, previous_y = x, y
    return total / (end - xs[0])


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced"
    return "undecided at this power"


def paired(runs: dict[str, list[dict[str, Any]]], flops: dict[str, float], first: str, second: str,
           index: int = 1) -> dict[str, Any]:
    """Seed-paired differences ``first - second``: area under the eval curve per iteration and at equal FLOPs."""
    by_seed = {arm: {run["seed"]: run for run in runs[arm]} for arm in (first, second)}
    seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
    budget = min(flops[first], flops[second]) * max(it for it, *_ in runs[first][0]["evals"])
    per_iteration, per_flops = [], []
    for seed in seeds:
        curves = {arm: by_seed[arm][seed]["evals"] for arm in (first, second)}
        areas = {arm: area_under([e[0] for e in curve], [e[index] for e in curve]) for arm, curve in curves.items()}
        per_iteration.append(areas[first] - areas[second])
        at_flops = {arm: area_under([e[0] * flops[arm] for e in curve], [e[index] for e in curve], budget)
                    for arm, curve in curves.items()}
        per_flops.append(at_flops[first] - at_flops[second])
    iteration_stat, flops_stat = t_interval(per_iteration), t_interval(per_flops)
    return {"first": first, "second": second, "seeds": seeds, "per_seed_iterations": per_iteration,
            "per_seed_flops": per_flops, "iterations": iteration_stat, "flops": flops_stat,
            "verdict_iterations": verdict(*iteration_stat[1:]), "verdict_flops": verdict(*flops_stat[1:]),
            "flops_budget": budget}


# --- aggregation -------------------------------------------------------------------------------


def aggregate(arm: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-arm figures: eval curve (mean over seeds), areas, exact ledger counts, FLOPs, wall, diagnostics."""
    spec = ARMS[arm]
    records = [record for run in runs for record in run["history"]]
    ledgers = [record["ledger"] for record in records]
    per_iteration = {key: statistics.fmean(float(ledger[key]) for ledger in ledgers)
                     for key in ("trajectory_steps", "model_evaluations", "preview_evaluations", "preview_decodes",
                                 "final_decodes", "vae_decodes", "reward_calls", "backward_rows")}
    flops = next((run["flops"] for run in runs if run["flops"] is not None), None)
    iterations = [it for it, *_ in runs[0]["evals"]]
    curve = [statistics.fmean(run["evals"][i][1] for run in runs) for i in range(len(iterations))]
    curve_secondary = [statistics.fmean(run["evals"][i][2] for run in runs) for i in range(len(iterations))]
    areas = [area_under(iterations, [e[1] for e in run["evals"]]) for run in runs]
    spearman: dict[str, list[float]] = {}
    for record in records:
        for step, value in (record["preview_final_spearman"] or {}).items():
            if value is not None:
                spearman.setdefault(step, []).append(value)
    walls = [record["wall_time"] for run in runs for record in run["history"][1:]] or [1.0]

    def mean_of(name: str) -> float:
        return statistics.fmean(float(record[name] or 0.0) for record in records)

    return {
        "label": spec["label"], "spec": spec, "seeds": [run["seed"] for run in runs], "iterations": iterations,
        "curve": curve, "curve_secondary": curve_secondary, "area": areas,
        "area_mean": statistics.fmean(areas), "area_sd": statistics.stdev(areas) if len(areas) > 1 else 0.0,
        "final": statistics.fmean(run["evals"][-1][1] for run in runs),
        "final_secondary": statistics.fmean(run["evals"][-1][2] for run in runs),
        "per_iteration": per_iteration, "flops_per_iteration": flops,
        "total_flops_per_iteration": float(sum(flops.values())) if flops else float("nan"),
        "wall_s_per_iteration": statistics.median(walls),
        "clustering_fraction": mean_of("clustering_fraction"), "clip_fraction": mean_of("clip_fraction"),
        "clip_fraction_off_policy": mean_of("clip_fraction_off_policy"),
        "ratio_deviation_off_policy": mean_of("ratio_deviation_off_policy"), "approx_kl": mean_of("approx_kl"),
        "training_spearman": {step: statistics.fmean(values) for step, values in spearman.items()},
    }


# --- report ------------------------------------------------------------------------------------


def _interval(stat: tuple[float, float, float], digits: int = 3) -> str:
    mean, low, high = stat
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def verdict_line(results: dict[str, Any]) -> str:
    """The sentence the README quotes word for word."""
    primary, settings = results["comparisons"]["primary"], results["settings"]
    mean, low, high = primary["flops"]
    i_mean, i_low, i_high = primary["iterations"]
    return (f"Paper claim (Pro-GRPO beats the Flow-GRPO analogue at lower compute) on the digits miniature, "
            f"{len(primary['seeds'])} paired seeds x {settings['iterations']} iterations, reward "
            f"{PRIMARY_REWARD}: **{primary['verdict_flops']}** at equal FLOPs (Pro-GRPO minus GRPO G=8, "
            f"area under the eval curve: {mean:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}]); "
            f"per iteration: **{primary['verdict_iterations']}** ({i_mean:+.3f} [{i_low:+.3f}, {i_high:+.3f}]).")


def _settings_lines(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    seeds = len(results["comparisons"]["primary"]["seeds"])
    planned = "" if seeds == len(s["seeds"]) else f" (of {len(s['seeds'])} planned; the run was stopped at the deadline)"
    kl = f"KL beta {s['kl_beta']} in Flow-GRPO's form" if s["kl_beta"] else "KL off (beta 0, a third less training compute)"
    return [
        "# Pro-GRPO paper claim on the embedded digits flow model (Flow-GRPO's training regime)",
        "",
        (f"{seeds} paired seeds{planned} x {s['iterations']} iterations x {len(results['arms'])} arms; "
         f"{s['prompts_per_iteration']} prompts/iteration, {NUM_STEPS} flow-SDE steps (noise 0.7), checkpoints "
         f"{CHECKPOINTS}, x_c previews; training reward `{PRIMARY_REWARD}` (primary), `{SECONDARY_REWARD}` "
         f"probability secondary (evaluation only). Every arm: 2 optimiser steps per rollout on disjoint "
         f"minibatches, clip 1e-4, lr {s['lr']}, {kl}, EMA decay "
         f"{s['ema_decay']} every 8 optimiser steps (evaluated with the EMA), advantage epsilon 1e-4, last step "
         "not trained. GRPO arms use the batch std (Flow-GRPO), pruned arms the survivors' group std (the paper)."),
        (f"Evaluation: every {s['eval_every']} iterations (and at 0) on fixed noise (seed {EVAL_SEED}), ODE sampler, "
         f"{s['eval_samples']} samples x 10 prompts. Area = mean eval reward over iterations 0..{s['iterations']} "
         "(trapezoid); at equal FLOPs = mean over cumulative ledger FLOPs up to the cheaper arm's total. "
         "Intervals: 95% t-intervals over seeds of the seed-paired differences."),
        (f"Wall time {results['bench_seconds'] / 60:.1f} min with {s['workers']} processes (1 torch thread each) "
         f"on {os.cpu_count()} cores; load average at start {results['load_start']}, at end {results['load_end']} "
         "(other jobs shared the machine)."),
        "",
    ]


def _comparison_lines(results: dict[str, Any]) -> list[str]:
    comparisons = results["comparisons"]
    lines = ["## Verdict", "", verdict_line(results), "",
             "| comparison (seed-paired, first minus second) | area per iteration [95% CI] | verdict | "
             "area at equal FLOPs [95% CI] | verdict |", "|---|---:|---|---:|---|"]
    for name, label in (("primary", f"Pro-GRPO - GRPO G=8, {PRIMARY_REWARD} (primary)"),
                        ("primary_probability", "Pro-GRPO - GRPO G=8, probability (secondary)"),
                        ("selection", f"Pro-GRPO OVF - RANDOM selection, {PRIMARY_REWARD}"),
                        ("static", f"Pro-GRPO - static OVF 16->4, {PRIMARY_REWARD}")):
        c = comparisons[name]
        lines.append(f"| {label} | {_interval(c['iterations'])} | {c['verdict_iterations']} "
                     f"| {_interval(c['flops'])} | {c['verdict_flops']} |")
    return lines + [""]


def _arm_lines(results: dict[str, Any]) -> list[str]:
    lines = ["## Arms", "",
             ("| arm | seeds | area (mean +- sd) | final eval | final probability | model evals/it | of which preview-only "
              "| decodes/it | backward rows/it | GFLOPs/it | wall s/it | clustering frac | clip frac (off-policy "
              "step) | mean abs(ratio-1) off-policy | rho preview-final (training survivors) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, m in results["arms"].items():
        per = m["per_iteration"]
        rho = ", ".join(f"@{step}: {_fmt(value)}" for step, value in sorted(m["training_spearman"].items())) or "-"
        lines.append(
            f"| {m['label']} | {len(m['seeds'])} | {m['area_mean']:.3f} +- {m['area_sd']:.3f} | {m['final']:.3f} | {m['final_secondary']:.3f} "
            f"| {per['model_evaluations']:.0f} | {per['preview_evaluations']:.0f} | {per['vae_decodes']:.0f} "
            f"| {per['backward_rows']:.0f} | {m['total_flops_per_iteration'] / 1e9:.2f} | {m['wall_s_per_iteration']:.2f} "
            f"| {m['clustering_fraction']:.3f} | {m['clip_fraction_off_policy']:.3f} "
            f"| {m['ratio_deviation_off_policy']:.2e} | {rho} |")
    return lines + [""]


def _base_lines(results: dict[str, Any]) -> list[str]:
    base = results["base"]
    lines = ["## Base policy: reward clustering and preview fidelity", "",
             (f"{base['samples_per_prompt']} samples per prompt x 10 prompts, training sampler, seed {DIAG_SEED}. "
              "Clustering fraction: share of samples with |advantage| <= 0.25 in groups of 8 (paper Observation 1). "
              f"Probability rewards below 0.05 or above 0.95: {base['probability_extreme_fraction']:.2f} of samples."),
             "", "| reward | clustering fraction |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in base["clustering"].items()]
    lines += ["", "| preview | " + " | ".join(f"Spearman preview-final @{c}" for c in CHECKPOINTS) + " |",
              "|---|" + "---:|" * len(CHECKPOINTS)]
    for preview, values in base["spearman"].items():
        label = "x_c (step c's call, default)" if preview == "current" else "stale (step c-1's call)"
        lines.append(f"| {label} | " + " | ".join(_fmt(values.get(str(c))) for c in CHECKPOINTS) + " |")
    return lines + [""]


def markdown(results: dict[str, Any]) -> str:
    lines = _settings_lines(results) + _comparison_lines(results) + _arm_lines(results) + _base_lines(results)
    lines += ["Curves: `paper_table_curves.png` (eval reward vs iteration and vs cumulative FLOPs, mean over seeds).", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for m in results["arms"].values():
        flops = m["total_flops_per_iteration"] / 1e12
        axes[0].plot(m["iterations"], m["curve"], marker="o", markersize=3, label=m["label"])
        axes[1].plot([it * flops for it in m["iterations"]], m["curve"], marker="o", markersize=3, label=m["label"])
    for ax, xlabel in zip(axes, ("iteration", "cumulative TFLOPs (ledger)")):
        ax.set(xlabel=xlabel, ylabel=f"eval {PRIMARY_REWARD} (fixed noise, ODE)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


# --- main ----------------------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=40, help="training iterations per run (same for all)")
    parser.add_argument("--seeds", type=int, default=8, help="paired seeds per arm (0..seeds-1)")
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate every this many iterations")
    parser.add_argument("--eval-samples", type=int, default=2, help="evaluation samples per prompt (10 prompts)")
    parser.add_argument("--diag-samples", type=int, default=16, help="samples per prompt, base-policy diagnostics")
    parser.add_argument("--prompts-per-iteration", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--kl-beta", type=float, default=0.0,
                        help="KL weight, Flow-GRPO's form (its 0.01-0.04 carry over); 0 (Flow-GRPO's fast configs "
                             "use 0-0.04) saves the reference forward, a third of the training compute")
    parser.add_argument("--ema-decay", type=float, default=0.9)
    parser.add_argument("--workers", type=int, default=2, help="processes (1 torch thread each)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    parser.add_argument("--smoke", action="store_true", help="tiny setting for the test suite (~1-2 min)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for paper_table.md/.json/_curves.png")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs in --out's paper_table_runs.jsonl and run only the missing ones")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from --out's paper_table_runs.jsonl (the runs of an earlier call)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations, args.seeds, args.eval_every, args.eval_samples, args.diag_samples = 2, 2, 2, 2, 4
    return args


#: the arms of the three comparisons: run first for every seed, so a run cut short still decides them.
PRIORITY = (PRO, BASELINE, RANDOM, "static16")


def _jobs(arms: list[str], settings: dict[str, Any],
          done: set[tuple[str, int]] = frozenset()) -> list[tuple[str, int, dict[str, Any]]]:
    """Every (arm, seed) not ``done``: seed 0 of every arm, then the comparisons' arms for all seeds, then the rest."""
    jobs = [(arm, seed, settings) for seed in range(settings["seeds"]) for arm in arms if (arm, seed) not in done]
    return sorted(jobs, key=lambda job: (job[1] > 0, job[0] not in PRIORITY, job[1], -ARMS[job[0]]["group"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.setLevel(logging.INFO)
    arms = [name.strip() for name in args.arms.split(",") if name.strip()]
    for required in (PRO, BASELINE, RANDOM, "static16"):
        if required not in arms:
            arms.append(required)
    settings = {"iterations": args.iterations, "seeds": args.seeds, "eval_every": args.eval_every,
                "eval_samples": args.eval_samples, "prompts_per_iteration": args.prompts_per_iteration, "lr": args.lr,
                "kl_beta": args.kl_beta, "ema_decay": args.ema_decay, "measure_flops": True, "workers": args.workers}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "paper_table_runs.jsonl"  # every finished run at once: a crash in the report loses nothing
    if args.report_only:
        return _report(out, *_read_raw(raw))
    done: set[tuple[str, int]] = set()
    if args.resume and raw.is_file():  # keep the finished runs of an interrupted call (same settings)
        previous, _, header = _read_raw(raw)
        if header["settings"] != settings:
            raise SystemExit(f"{raw} was written with other settings {header['settings']}; run without --resume")
        done = {(arm, run["seed"]) for arm, arm_runs in previous.items() for run in arm_runs}
        _append(raw, {"resumed_with_runs": len(done), "load_at_resume": _load()})
    else:
        raw.write_text(json.dumps({"settings": settings, "load_start": _load(), "arms": arms}) + "\n")
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        base_job = pool.apply_async(base_diagnostics, (args.diag_samples, settings))
        for run in pool.imap_unordered(run_one, _jobs(arms, settings, done)):
            _append(raw, {"run": run})
            logger.info("%-10s seed %d: area %.3f, final %.3f, %.0f s; elapsed %.1f min, load %s", run["arm"],
                        run["seed"], area_under([e[0] for e in run["evals"]], [e[1] for e in run["evals"]]),
                        run["evals"][-1][1], run["seconds"], (time.perf_counter() - started) / 60, _load())
        _append(raw, {"base": base_job.get()})
    _append(raw, {"bench_seconds": time.perf_counter() - started, "load_end": _load()})
    return _report(out, *_read_raw(raw))


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def _read_raw(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
    """(runs per arm, base diagnostics, header with settings/loads/bench time) from a runs file."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    header = dict(lines[0])
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in header["arms"]}
    base: dict[str, Any] = {}
    for record in lines[1:]:
        if "run" in record:
            runs[record["run"]["arm"]].append(record["run"])
        elif "base" in record:
            base = record["base"]
        elif "bench_seconds" in record:  # one per (resumed) call: the wall time is their sum
            header["bench_seconds"] = header.get("bench_seconds", 0.0) + record["bench_seconds"]
            header["load_end"] = record["load_end"]
        else:
            header.update(record)
    return runs, base, header


def _report(out: Path, runs: dict[str, list[dict[str, Any]]], base: dict[str, Any],
            header: dict[str, Any]) -> dict[str, Any]:
    if not base:  # a run stopped before the diagnostics came back: measure them now
        base = base_diagnostics(16 if not header["settings"].get("smoke") else 4, header["settings"])
        _append(out / "paper_table_runs.jsonl", {"base": base})
    runs = {arm: arm_runs for arm, arm_runs in runs.items() if arm_runs}  # arms a stopped run never reached
    results = _results(runs, base, header["settings"], header.get("bench_seconds", float("nan")),
                       header["load_start"], header.get("load_end", "n/a"))
    (out / "paper_table.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "paper_table.md").write_text(table)
    plot(results, out / "paper_table_curves.png")
    print(table)
    return results


def _results(runs: dict[str, list[dict[str, Any]]], base: dict[str, Any], settings: dict[str, Any],
             bench_seconds: float, load_start: str, load_end: str) -> dict[str, Any]:
    for arm_runs in runs.values():
        arm_runs.sort(key=lambda run: run["seed"])
    arms = {arm: aggregate(arm, arm_runs) for arm, arm_runs in runs.items()}
    flops = {arm: m["total_flops_per_iteration"] for arm, m in arms.items()}
    comparisons = {
        "primary": paired(runs, flops, PRO, BASELINE),
        "primary_probability": paired(runs, flops, PRO, BASELINE, index=2),
        "selection": paired(runs, flops, PRO, RANDOM),
        "static": paired(runs, flops, PRO, "static16"),
    }
    return {"settings": {**settings, "seeds": list(range(settings["seeds"])), "num_steps": NUM_STEPS,
                         "checkpoints": list(CHECKPOINTS), "primary_reward": PRIMARY_REWARD,
                         "secondary_reward": SECONDARY_REWARD},
            "bench_seconds": bench_seconds, "load_start": load_start, "load_end": load_end,
            "base": base, "arms": arms, "comparisons": comparisons, "runs": runs}


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
