"""ComfyUI: the Pro-GRPO Expanded Sampler (no pruning) against the stock KSampler, through one real server.

Both graphs run on the same MODEL (the shipped digits_flow generator from Pro-GRPO Load Embedded
Digits Model: no download), produce the same number of images (``--images``) with the same
steps, CFG (with an empty negative prompt) and a stochastic sampler, then decode with the same
VAE into a PreviewImage:

* stock: ``KSampler`` (``euler_ancestral``, scheduler ``simple``) on a batch of N latents;
* ours: ``ProGRPOExpandedSampler`` (group_size N, ``flow_sde``, scheduler ``simple``, no prune
  schedule, no reward, no VAE inside: it returns the survivors' latents and the rollout record
  with every step's latents and log-probs) -> the same VAEDecode -> PreviewImage.

A headless ComfyUI server with this extension is started (testkit/comfy_harness.py) and the
prompts are queued over HTTP, alternating stock / ours, each with a new seed so the sampler and
everything after it re-execute (loader, prompts and the empty latent stay cached, for both alike).
A run's time is the server's own: ``execution_success`` minus ``execution_start`` timestamps in the
/history status messages. The first round is discarded. Target ratio ours/stock <= 1.15.

    .venv/bin/python -m bench.comfyui_sampler            # 9 rounds, ~1.5 min (server start included)
    .venv/bin/python -m bench.comfyui_sampler --quick    # 4 rounds
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import write_result

logger = logging.getLogger("progrpo.bench")
TARGET = 1.15
PROMPT = "a handwritten digit 7"


def graphs(images: int, steps: int, cfg: float, size: int, seed: int) -> dict[str, dict]:
    """API-format prompts {"stock": ..., "ours": ...} sharing every node but the sampler."""
    common = {
        "1": {"class_type": "ProGRPOEmbeddedModelLoader", "inputs": {"model_name": "digits_flow"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        # The digits model is 1-channel pixel space: encode an empty image with its VAE to get a
        # [N, 1, size, size] latent both samplers accept.
        "4": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": images, "color": 0}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    stock = {**common, "6": {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": seed,
        "steps": steps, "cfg": cfg, "sampler_name": "euler_ancestral", "scheduler": "simple", "denoise": 1.0}}}
    ours = {**common, "6": {"class_type": "ProGRPOExpandedSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["5", 0], "group_size": images,
        "steps": steps, "dynamics": "flow_sde", "noise_level": -1.0, "cfg": cfg, "seed": seed, "scheduler": "simple",
        "selection": "ovf", "prompt_text": PROMPT}}}
    return {"stock": stock, "ours": ours}


def execution_seconds(entry: dict) -> float:
    """Server-side execution time of a finished prompt from its /history status messages."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    if entry["status"].get("status_str") != "success" or "execution_success" not in stamps:
        raise RuntimeError(f"prompt failed: {entry['status']}")
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="measured (stock, ours) rounds after 1 warm-up")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="4 rounds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from testkit.comfy_harness import COMFYUI, ComfyServer

    if not (COMFYUI / "main.py").is_file():
        logger.info("ComfyUI is not installed in %s; run scripts/install_comfyui.sh", COMFYUI)
        write_result("comfyui_sampler", {"status": "ComfyUI not installed", "loadavg": os.getloadavg()})
        return
    rounds = 4 if args.quick else args.rounds
    os.environ["OMP_NUM_THREADS"] = "1"  # the server inherits it; ComfyUI then runs torch on 1 thread
    times: dict[str, list[float]] = {"stock": [], "ours": []}
    walls: dict[str, list[float]] = {"stock": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="progrpo-bench-comfy-") as base:
        server = ComfyServer.start(Path(base))
        try:
            for index in range(rounds + 1):
                prompts = graphs(args.images, args.steps, args.cfg, args.size, seed=1000 + index)
                order = ("stock", "ours") if index % 2 == 0 else ("ours", "stock")
                for name in order:
                    began = time.perf_counter()
                    status, body = server.post_prompt(prompts[name])
                    if status != 200:
                        raise RuntimeError(f"{name} prompt rejected ({status}): {body}")
                    entry = server.wait_history(body["prompt_id"], timeout=600)
                    wall = time.perf_counter() - began
                    if index > 0:  # round 0 loads the model and warms both paths up
                        times[name].append(execution_seconds(entry))
                        walls[name].append(wall)
        finally:
            server.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    wall_medians = {name: statistics.median(values) for name, values in walls.items()}
    ratio = medians["ours"] / medians["stock"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    logger.info("ComfyUI server, digits_flow, %d images x %d steps, CFG %.1f, %dpx, 1 thread, median of %d",
                args.images, args.steps, args.cfg, args.size, rounds)
    logger.info("%-8s %16s %16s", "", "server exec s", "post->history s")
    for name in times:
        logger.info("%-8s %16.3f %16.3f", name, medians[name], wall_medians[name])
    logger.info("ratio Expanded Sampler / KSampler: %.3f (target <= %.2f) %s; by wall %.3f", ratio, TARGET, verdict,
                wall_medians["ours"] / wall_medians["stock"])
    path = write_result("comfyui_sampler", {
        "status": "ok", "images": args.images, "steps": args.steps, "cfg": args.cfg, "size": args.size,
        "rounds": rounds, "seconds": times, "wall_seconds": walls, "medians": medians, "wall_medians": wall_medians,
        "ratio": ratio, "wall_ratio": wall_medians["ours"] / wall_medians["stock"], "target": TARGET,
        "verdict": verdict, "loadavg": os.getloadavg(),
    })
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
