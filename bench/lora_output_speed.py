"""Sampling speed of the Train Loop's MODEL output against the same LoRA loaded by the stock loader; bf16 vs fp32 training.

On a tiny SD1.5-family UNet (23 M parameters, random bf16 weights in ComfyUI's layout, loaded by the
stock UNETLoader with ``--bf16-unet``; a random SD VAE), all in one process at 1 torch thread:

1. One Pro-GRPO Train Loop iteration trains a LoRA; Pro-GRPO Save LoRA writes it into the loras
   folder and the stock ``LoraLoaderModelOnly`` loads it onto the same base MODEL. The stock KSampler
   (batch 4, 64 px, 4 steps, euler, CFG 4.5) then runs on the base MODEL, on the Train Loop's MODEL
   output and on the LoraLoader's MODEL, interleaved (base, trained, loader, base, ...; one warm-up
   round discarded), each call a fresh seed. Target: trained output / LoraLoader <= 1.05 (median wall).
   The two LoRA models' samples are compared too (they should agree to float rounding).
2. With the Train Loop's ``training_dtype`` input (issue 18): one Train Loop iteration (group 2,
   32 px, 2 steps) at ``fp32`` and at ``bf16``, interleaved (``--train-repeats`` pairs, after part 1
   warmed the process up); the ratio bf16 / fp32 of the whole iteration's wall and of its update
   (first training forward to the end) is reported, with no target. This machine's CPU (an AMD EPYC
   VM exposing AVX2/FMA, no AVX512 or BF16 instructions) computes bf16 matrix products in an emulated
   path: a 1024^3 bf16 matmul takes ~80x the fp32 one here, so bf16 training on this CPU is far
   slower than fp32 and the figure says nothing about a GPU. Without the input it is reported as not
   measurable.

Writes bench/results/lora_output_speed.json.

    .venv/bin/python -m bench.lora_output_speed            # ~10 min on 2 shared cores
    .venv/bin/python -m bench.lora_output_speed --quick    # fewer sampling rounds
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import real_size_memory as memory
from bench._common import interleaved_medians, pin_threads, write_result

logger = logging.getLogger("progrpo.bench")
TARGET = 1.05
SAMPLE_PX, SAMPLE_STEPS, SAMPLE_BATCH, CFG = 64, 4, 4, 4.5
TRAIN = {"group_size": 4, "steps": 4, "dynamics": "cps", "noise_level": -1.0, "cfg": CFG, "width": 64,
         "height": 64, "iterations": 1, "lr": 1e-3, "rank": 4, "alpha": 4.0, "checkpoint_every": 0,
         "resume": False, "seed": 0, "scheduler": "normal", "prompts_per_iteration": 1}
#: the bf16 / fp32 comparison: small, since bf16 is emulated on this CPU (docstring).
PRECISION_TRAIN = {**TRAIN, "group_size": 2, "steps": 2, "width": 32, "height": 32}


def train(extension: Any, model: Any, vae: Any, reward: Any, positive: list, negative: list, run_name: str,
          settings: dict | None = None, **extra: Any) -> tuple[Any, dict, dict]:
    """One Train Loop iteration: (MODEL output, LoRA, {"seconds", "update_seconds"})."""
    import torch

    began = time.perf_counter()
    with memory.UpdateStopper(micro_batches=10**9) as stopper, torch.inference_mode():
        trained, lora, _ = extension.ProGRPOTrainLoop.execute(model, vae, reward, positive=positive,
                                                              negative=negative, run_name=run_name,
                                                              **(settings or TRAIN), **extra).result
    ended = time.perf_counter()
    return trained, lora, {"seconds": ended - began,
                           "update_seconds": ended - stopper.update_started if stopper.rollout else None}


def sample(model: Any, positive: list, negative: list, seed: int) -> Any:
    import torch

    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(SAMPLE_BATCH, 4, SAMPLE_PX // 8, SAMPLE_PX // 8)}
    with torch.inference_mode():
        return comfy_nodes.KSampler().sample(model, seed, SAMPLE_STEPS, CFG, "euler", "normal", positive, negative,
                                             latent)[0]["samples"]


def sampler_jobs(models: dict[str, Any], positive: list, negative: list) -> dict[str, Any]:
    """One job per MODEL; every call draws a new seed (as a user's next queue does)."""
    seeds = {"next": 100}

    def job(model: Any) -> Any:
        def run() -> Any:
            seeds["next"] += 1
            return sample(model, positive, negative, seeds["next"])
        return run

    return {name: job(model) for name, model in models.items()}


def lora_speed(extension: Any, model: Any, vae: Any, reward: Any, positive: list, negative: list,
               repeats: int) -> dict:
    """Part 1: trained MODEL output vs the stock LoraLoaderModelOnly on the saved LoRA."""
    import torch

    import nodes as comfy_nodes

    trained, lora, _ = train(extension, model, vae, reward, positive, negative, run_name="lora_speed")
    with torch.inference_mode():
        name = extension.ProGRPOSaveLoRA.execute(lora, "progrpo_bench_speed").result[0]
        loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
    base_out, trained_out, loaded_out = (sample(m, positive, negative, 7) for m in (model, trained, loaded))
    medians = interleaved_medians(sampler_jobs({"base": model, "trained_output": trained, "lora_loader": loaded},
                                               positive, negative), repeats=repeats, warmup=1)
    ratio = medians["trained_output"] / medians["lora_loader"]
    return {"medians": medians, "ratio": ratio, "target": TARGET, "verdict": "PASS" if ratio <= TARGET else "MISS",
            "base_over_loader": medians["base"] / medians["lora_loader"],
            "trained_vs_loader_max_abs_diff": float((trained_out - loaded_out).abs().max()),
            "lora_effect_max_abs": float((trained_out - base_out).abs().max()),
            "trained_output_patches": len(getattr(trained, "patches", {})),
            "trained_output_weight_wrappers": len(getattr(trained, "weight_wrapper_patches", {}) or {}),
            "repeats": repeats}


def precision_speed(extension: Any, model: Any, vae: Any, reward: Any, positive: list, negative: list,
                    repeats: int) -> dict:
    """Part 2: one Train Loop iteration at training_dtype bf16 and fp32, interleaved."""
    if "training_dtype" not in memory.train_loop_inputs():
        return {"status": "not measurable: this Train Loop has no training_dtype input (issue 18 adds it)"}
    updates: dict[str, list[float]] = {"bf16": [], "fp32": []}

    def job(dtype: str) -> Any:
        def run() -> None:
            _, _, times = train(extension, model, vae, reward, positive, negative, run_name=f"precision_{dtype}",
                                settings=PRECISION_TRAIN, training_dtype=dtype)
            updates[dtype].append(times["update_seconds"])
        return run

    medians = interleaved_medians({"fp32": job("fp32"), "bf16": job("bf16")}, repeats=repeats, warmup=0)
    import statistics

    update_medians = {dtype: statistics.median(values) for dtype, values in updates.items()}
    return {"status": "ok", "iteration_medians": medians, "update_medians": update_medians,
            "iteration_ratio_bf16_over_fp32": medians["bf16"] / medians["fp32"],
            "update_ratio_bf16_over_fp32": update_medians["bf16"] / update_medians["fp32"], "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved sampling rounds after 1 warm-up")
    parser.add_argument("--train-repeats", type=int, default=1, help="interleaved fp32/bf16 iteration pairs")
    parser.add_argument("--quick", action="store_true", help="5 sampling rounds, 1 training pair")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repeats, train_repeats = (5, 1) if args.quick else (args.repeats, args.train_repeats)
    os.environ["OMP_NUM_THREADS"] = "1"
    pin_threads(1)
    memory.write_files(["tiny"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="progrpo-lora-speed-") as base:
        extension = memory.setup_comfy(Path(base) / "output")
        import folder_paths
        import torch

        (Path(base) / "loras").mkdir()
        folder_paths.add_model_folder_path("loras", str(Path(base) / "loras"), is_default=True)
        model, vae, positive, negative, facts = memory.load_models("tiny")
        with torch.inference_mode():
            reward = extension.ProGRPORewardLoader.execute("brightness", "(none)", "(none)", 1.0).result[0]
        speed = lora_speed(extension, model, vae, reward, positive, negative, repeats)
        logger.info("KSampler median s: base %.3f, Train Loop output %.3f, LoraLoaderModelOnly %.3f; ratio output / "
                    "loader %.3f (target <= %.2f) %s; base / loader %.3f (context: ComfyUI re-patches the weights "
                    "whenever the interleaved calls switch to a patched MODEL); max |output - loader| %.2e (LoRA "
                    "effect %.2e)",
                    speed["medians"]["base"], speed["medians"]["trained_output"], speed["medians"]["lora_loader"],
                    speed["ratio"], TARGET, speed["verdict"], speed["base_over_loader"],
                    speed["trained_vs_loader_max_abs_diff"], speed["lora_effect_max_abs"])
        precision = precision_speed(extension, model, vae, reward, positive, negative, train_repeats)
        if precision["status"] == "ok":
            logger.info("Train Loop iteration median s: fp32 %.2f, bf16 %.2f, ratio bf16 / fp32 %.3f; update only "
                        "%.2f / %.2f s, ratio %.3f", precision["iteration_medians"]["fp32"],
                        precision["iteration_medians"]["bf16"], precision["iteration_ratio_bf16_over_fp32"],
                        precision["update_medians"]["fp32"], precision["update_medians"]["bf16"],
                        precision["update_ratio_bf16_over_fp32"])
        else:
            logger.info("bf16 vs fp32: %s", precision["status"])
    path = write_result("lora_output_speed", {"model": facts, "lora_speed": speed, "precision": precision,
                                              "sample": {"px": SAMPLE_PX, "steps": SAMPLE_STEPS,
                                                         "batch": SAMPLE_BATCH, "cfg": CFG},
                                              "train": TRAIN, "precision_train": PRECISION_TRAIN, "threads": 1, "loadavg": os.getloadavg(),
                                              "seconds": time.perf_counter() - started})
    logger.info("wrote %s (%.0f s)", path, time.perf_counter() - started)


if __name__ == "__main__":
    main()
