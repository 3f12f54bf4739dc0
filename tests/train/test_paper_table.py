"""The paper-table bench: its statistics by hand, and its smoke run end to end with exact ledger counts.

``python -m bench.paper_table --smoke`` trains every arm for 2 iterations x 2 seeds on the embedded digits
flow model and writes the Markdown table, the JSON and the curves PNG. The per-iteration counts are
exact: with P prompts, T steps and a group ``n_t`` strong at step t, an iteration runs
``P * sum_t n_t`` trajectory-steps; each checkpoint previews (decodes and scores) every live
trajectory, and the x_c preview costs one extra evaluation per PRUNED trajectory (survivors reuse
it for their step); the survivors are decoded and scored at the end; ``k * (T - 1)`` rows per prompt
are backpropagated (the last flow step is not trained), split over 2 minibatches.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
P, T = 1, 6  # prompts per iteration, sampler steps (bench settings)
C1, C2 = 3, 4

#: arm -> (initial group, [(checkpoint step, kept)], kept after sampling (static OVF) or None).
FUNNELS = {
    "grpo8": (8, [], None),
    "pro": (16, [(C1, 8), (C2, 4)], None),
    "pro_random": (16, [(C1, 8), (C2, 4)], None),
    "static8": (8, [], 4),
    "static16": (16, [], 4),
    "grpo4": (4, [], None),
    "grpo16": (16, [], None),
    "flash": (8, [(C1, 6), (C2, 4)], None),
}


def _bench():
    from bench import paper_table

    return paper_table


def expected_counts(group: int, checkpoints: list[tuple[int, int]], final_keep: int | None) -> dict[str, int]:
    alive, steps, previews, extra = group, 0, 0, 0
    cuts = dict(checkpoints)
    for step in range(T):
        steps += alive
        if step + 1 in cuts:  # preview at x_(step+1), then prune
            previews += alive
            extra += alive - cuts[step + 1]
            alive = cuts[step + 1]
    trained = final_keep or alive
    return {
        "trajectory_steps": P * steps,
        "model_evaluations": P * (steps + extra),  # guidance 1: one branch
        "preview_evaluations": P * extra,
        "preview_decodes": P * previews,
        "final_decodes": P * alive,
        "vae_decodes": P * (previews + alive),
        "reward_calls": P * (previews + alive),
        "backward_rows": P * trained * (T - 1),
    }


def test_hand_counts_are_the_papers_arithmetic() -> None:
    # 16 x 3 + 8 x 1 + 4 x 2 trajectory-steps; the x_c previews add the 8 + 4 pruned rows' calls
    counts = expected_counts(16, [(3, 8), (4, 4)], None)
    assert counts["trajectory_steps"] == 16 * 3 + 8 * 1 + 4 * 2
    assert counts["model_evaluations"] == 16 * 3 + 8 * 1 + 4 * 2 + 8 + 4


def test_statistics_by_hand() -> None:
    bench = _bench()
    # trapezoid mean of (0, 0) (10, 1) (20, 1): (5 + 10) / 20
    assert bench.area_under([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    # up to 5: the curve is interpolated to 0.5 at x = 5; area 1.25 over 5
    assert bench.area_under([0, 10, 20], [0.0, 1.0, 1.0], upto=5) == pytest.approx(0.25)
    # t-interval of [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.3027 -> half-width 4.3027 / sqrt(3)
    mean, low, high = bench.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5) and low < mean
    assert bench.verdict(0.01, 0.2) == "reproduced"
    assert bench.verdict(-0.2, -0.01) == "not reproduced"
    assert bench.verdict(-0.1, 0.1) == "undecided at this power"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paper_table")
    completed = subprocess.run(
        [sys.executable, "-m", "bench.paper_table", "--smoke", "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out


@pytest.mark.slow
def test_markdown_has_the_verdict_and_every_arm(smoke: Path) -> None:
    markdown = (smoke / "paper_table.md").read_text()
    results = json.loads((smoke / "paper_table.json").read_text())
    verdict = markdown.split("## Verdict")[1].strip().splitlines()[0]
    assert verdict == _bench().verdict_line(results)
    assert any(word in verdict for word in ("**reproduced**", "**not reproduced**", "**undecided at this power**"))
    arms = markdown.split("## Arms")[1].split("\n\n")[1]
    for arm in results["arms"].values():
        assert f"| {arm['label']} |" in arms
    for needed in ("Pro-GRPO - GRPO G=8", "RANDOM selection", "static OVF 16->4", "probability (secondary)",
                   "x_c (step c's call, default)", "stale (step c-1's call)", "logit_margin", "tempered_log_prob_T4"):
        assert needed in markdown, needed


@pytest.mark.slow
def test_json_png_and_exact_ledger_counts(smoke: Path) -> None:
    results = json.loads((smoke / "paper_table.json").read_text())
    assert set(results["arms"]) == set(FUNNELS)
    png = smoke / "paper_table_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arms = results["arms"]
    for name, funnel in FUNNELS.items():
        per_iteration = {key: value for key, value in arms[name]["per_iteration"].items()}
        assert per_iteration == pytest.approx(expected_counts(*funnel)), name
        assert arms[name]["total_flops_per_iteration"] > 0 and len(arms[name]["area"]) == 2
    flops = {name: arms[name]["total_flops_per_iteration"] for name in FUNNELS}
    # Expand-and-Prune samples less than the full G=16 group; Flash less than G=8; static OVF trains less
    assert flops["flash"] < flops["grpo8"] and flops["pro"] < flops["grpo16"] and flops["static16"] < flops["grpo16"]
    # every arm trained 2 optimiser steps per iteration, and the second was off-policy
    for run in results["runs"]["grpo8"]:
        assert len(run["history"]) == 2
    primary = results["comparisons"]["primary"]
    assert primary["seeds"] == [0, 1] and len(primary["per_seed_flops"]) == 2
