"""Multi-process training: 2 CPU processes (gloo, launched by torchrun) equal one process.

The config exercises everything a rank split could get wrong: a random pruning selection and
random trained steps (generators that must draw for the whole batch), global-std advantages
(all-gathered rewards), a KL term and EMA. The 2-process run's LoRA after 3 iterations must equal
a single-process run of the same global batch and seed within 1e-5, only rank 0 may write, and a
checkpoint of the 2-process run must resume in one process to the same result.

Network calls are chunked (``max_batch_rows`` 2, ``micro_batch_rows`` 4) so that both runs push
the same rows through each call; then the two runs are bit-identical (measured difference 0).
With unaligned chunks, CPU kernels round differently for other batch sizes (~1e-7), and Adam
(update ~ lr * g / (|g| + eps)) turns that noise in gradient entries that cancel to ~1e-10 into
weight differences of ~1e-5 (2.6e-5 measured at lr 2e-3): float noise, not an error of the split.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from progrpo.errors import ProGRPOConfigError
from progrpo.lora import LoraSettings
from progrpo.rollout import RolloutConfig
from progrpo.train import GRPOConfig, OptimConfig, RunConfig, Trainer
from progrpo.train.distributed import DistributedContext

pytestmark = pytest.mark.slow

ITERATIONS = 3


def _config(output_dir: Path) -> RunConfig:
    return RunConfig(
        model="tiny:sd",
        prompts=["a red cat", "a dog", "a blue car", "a green tree", "a small house"],
        prompts_per_iteration=4,
        iterations=ITERATIONS,
        rollout=RolloutConfig(group_size=4, num_steps=3, dynamics="ddim", height=16, width=16,
                              prune_schedule="1:3, 2:2", selection="random", keep_images=False, max_batch_rows=2),
        lora=LoraSettings(rank=2, alpha=2.0),
        optim=OptimConfig(lr=1e-2),
        # EMA folded in every optimiser step: with the default interval (8) a short run would export the
        # untouched initial EMA, and the LoRA comparison would be vacuous
        grpo=GRPOConfig(clip_range=0.2, kl_beta=0.01, timestep_fraction=0.5, std_mode="global", micro_batch_rows=4,
                        ema_decay=0.9, ema_update_interval=1),
        rewards={"brightness": {"weight": 1.0}},
        output_dir=str(output_dir),
        checkpoint_every=1,
        seed=3,
    )


def _lora(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[key].float() - b[key].float()).abs().max()) for key in a)
    assert worst <= 1e-5, f"LoRA differs by {worst:.3g}"
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    single = root / "single"
    trainer = Trainer.from_run(_config(single))
    trainer.export_lora(single / "initial_lora.safetensors")
    trainer.run()
    multi = root / "multi"
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(_config(multi).to_dict()), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "progrpo",
         "train", str(config_file), "--evaluate-samples", "0"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-5000:]
    (root / "torchrun.log").write_text(launched.stdout + launched.stderr, encoding="utf-8")
    return {"single": single, "multi": multi, "root": root}


def test_two_gloo_processes_train_the_same_lora_as_one(runs):
    single = _lora(runs["single"] / "lora.safetensors")
    _assert_close(_lora(runs["multi"] / "lora.safetensors"), single)
    initial = _lora(runs["single"] / "initial_lora.safetensors")
    moved = max(float((single[key] - initial[key]).abs().max()) for key in single)
    assert moved > 1e-3, f"the LoRA moved by only {moved:.3g}: the comparison would be vacuous"
    log = (runs["root"] / "torchrun.log").read_text(encoding="utf-8")
    assert "rank 0 of 2 (gloo)" in log and "rank 1 of 2 (gloo)" in log


def test_metrics_are_the_global_batch_and_written_once(runs):
    import json

    single = [json.loads(line) for line in (runs["single"] / "metrics.jsonl").read_text().splitlines()]
    multi = [json.loads(line) for line in (runs["multi"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in multi] == list(range(ITERATIONS))  # rank 1 appended nothing
    for one, two in zip(single, multi):
        assert two["processes"] == 2 and one["processes"] == 1
        assert two["survivors"] == one["survivors"] == 8 and two["prompts"] == 4
        for name in ("reward_mean", "reward_std", "loss", "grad_norm", "approx_kl", "kl"):
            assert two[name] == pytest.approx(one[name], rel=1e-4, abs=1e-7), name
    checkpoints = sorted(p.name for p in (runs["multi"] / "checkpoints").iterdir())
    assert checkpoints == ["iter_1", "iter_2", "iter_3", "latest"]


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(runs["multi"] / "checkpoints" / "iter_2", tmp_path / "iter_2")
    trainer = Trainer.from_run(_config(resumed_dir), distributed=DistributedContext())
    result = trainer.run(resume_from=tmp_path / "iter_2")
    assert result.iterations_done == ITERATIONS
    _assert_close(_lora(resumed_dir / "lora.safetensors"), _lora(runs["single"] / "lora.safetensors"))


def test_world_size_that_does_not_divide_the_prompts_is_refused_before_loading(tmp_path):
    with pytest.raises(ProGRPOConfigError, match="not divisible by the 3 processes"):
        Trainer.from_run(_config(tmp_path), distributed=DistributedContext(rank=0, world_size=3))
