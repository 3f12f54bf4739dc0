"""The paper-table bench runs end to end (smoke setting) and its ledger figures are the hand counts.

``bench/paper_table.py --smoke`` trains every method for 2 iterations on the embedded digits flow
model (about 1.5 min on one thread) and writes the Markdown table, the JSON and the curves PNG.
The per-iteration counts are exact: with P prompts, T steps and a group that is ``n_t`` strong at
step t, an iteration runs ``P * sum_t n_t`` trajectory-steps, decodes and scores every trajectory
alive at each checkpoint plus the ``k`` survivors at the end, and backpropagates ``P * k * T`` rows.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
P, T = 4, 10  # prompts per iteration, sampler steps (bench settings)

#: method -> (initial group, [(checkpoint step, kept)], kept after sampling (static OVF) or None).
FUNNELS = {
    "grpo_k": (4, [], None),
    "grpo_mid": (8, [], None),
    "grpo_gmax": (16, [], None),
    "static_ovf": (16, [], 4),
    "pro_grpo": (16, [(5, 8), (7, 4)], None),
    "flash": (8, [(5, 6), (7, 4)], None),
    "pro_early": (16, [(2, 8), (3, 4)], None),
    "pro_gmax12": (12, [(5, 8), (7, 4)], None),
    "pro_gmax24": (24, [(5, 12), (7, 4)], None),
}
MAIN_LABELS = ("GRPO (G=4)", "GRPO (G=8", "GRPO (G=16", "Static OVF", "Pro-GRPO (16->8->4 @5,7)", "Pro-GRPO-Flash")


def expected_counts(group: int, checkpoints: list[tuple[int, int]], final_keep: int | None) -> dict[str, int]:
    alive, steps, previews = group, 0, 0
    cuts = dict(checkpoints)
    for step in range(T):
        steps += alive
        if step + 1 in cuts:  # preview after step `step + 1`, then prune
            previews += alive
            alive = cuts[step + 1]
    trained = final_keep or alive
    return {
        "trajectory_steps": P * steps,
        "model_evaluations": P * steps,  # guidance 1: one branch
        "preview_decodes": P * previews,
        "final_decodes": P * alive,
        "vae_decodes": P * (previews + alive),
        "reward_calls": P * (previews + alive),
        "backward_rows": P * trained * T,
    }


def test_hand_counts_are_the_papers_arithmetic() -> None:
    # the paper's "rough count": Standard 48x5 + 24x2 + 12x3 = 324 trajectory-steps per prompt
    assert expected_counts(16, [(5, 8), (7, 4)], None)["trajectory_steps"] == P * (16 * 5 + 8 * 2 + 4 * 3)
    assert expected_counts(8, [(5, 6), (7, 4)], None)["trajectory_steps"] == P * (8 * 5 + 6 * 2 + 4 * 3)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paper_table")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paper_table.py"), "--smoke", "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out


def _main_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    section = markdown.split("## Main comparison")[1].split("\n\n* ")[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    return header, rows


def test_markdown_has_every_figure_for_every_method(smoke: Path) -> None:
    markdown = (smoke / "paper_table.md").read_text()
    header, rows = _main_rows(markdown)
    for needed in ("final alignment", "model evals/it", "decodes/it", "reward calls/it", "GFLOPs/it",
                   "wall ratio vs G_max", "clustering frac", "group std after sel.", "rho preview-final @5",
                   "rho preview-final @7"):
        assert any(needed in column for column in header), needed
    assert len(rows) == len(MAIN_LABELS)
    for label in MAIN_LABELS:
        assert sum(row[0].startswith(label) for row in rows) == 1, label
    number = re.compile(r"[-+]?\d+(\.\d+)?")
    for row in rows:
        assert len(row) == len(header), row
        for column, cell in zip(header[1:], row[1:]):
            assert cell and number.search(cell) and "n/a" not in cell, (row[0], column, cell)
    assert "## Ablation: initial group size G_max" in markdown
    assert "## Ablation: checkpoint placement" in markdown
    assert "| (2, 3) |" in markdown and "| (5, 7) |" in markdown


def test_json_and_png(smoke: Path) -> None:
    results = json.loads((smoke / "paper_table.json").read_text())
    assert set(results["methods"]) == set(FUNNELS)
    png = smoke / "paper_table_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in results["methods"].values():
        assert 0.0 <= method["alignment_mean"] <= 1.0
        assert method["total_flops_per_iteration"] > 0
        assert method["wall_s_per_iteration"] > 0


def test_ledger_counts_match_the_hand_counts(smoke: Path) -> None:
    methods = json.loads((smoke / "paper_table.json").read_text())["methods"]
    for name, funnel in FUNNELS.items():
        assert methods[name]["per_iteration"] == pytest.approx(expected_counts(*funnel)), name
    evals = {name: methods[name]["per_iteration"]["model_evaluations"] for name in FUNNELS}
    backward = {name: methods[name]["per_iteration"]["backward_rows"] for name in FUNNELS}
    # Expand-and-Prune samples less than the full G_max group; static OVF samples exactly as much
    assert evals["pro_grpo"] < evals["grpo_gmax"] and evals["static_ovf"] == evals["grpo_gmax"]
    # Flash samples less than the Flow-GRPO-analogue group it starts from, more than G = k
    assert evals["grpo_k"] < evals["flash"] < evals["grpo_mid"]
    # every pruned method trains k = 4 per prompt, as GRPO(G=k)
    for name in ("static_ovf", "pro_grpo", "flash", "pro_early", "pro_gmax12", "pro_gmax24"):
        assert backward[name] == backward["grpo_k"], name
    # measured FLOPs follow the work: Pro-GRPO and Flash below GRPO(G_max), static OVF below it (less training)
    flops = {name: methods[name]["total_flops_per_iteration"] for name in FUNNELS}
    assert flops["flash"] < flops["pro_grpo"] < flops["grpo_gmax"]
    assert flops["static_ovf"] < flops["grpo_gmax"]
    sampling = {name: methods[name]["flops_per_iteration"]["sampling"] for name in FUNNELS}
    assert sampling["static_ovf"] == sampling["grpo_gmax"]
    training = {name: methods[name]["flops_per_iteration"]["training"] for name in FUNNELS}
    assert training["pro_grpo"] == training["static_ovf"] == training["grpo_k"]
