"""Log-prob overhead: progrpo's stochastic sampler with log-probs against the plain diffusers pipeline call.

Same model (the peer benchmarks' tiny Stable Diffusion pipeline, ``bench/_peer_sd.py``), same
work: 4 prompts x 2 images = 8 images at 64 px, 10 DDIM steps with eta 1, CFG 5 (negative
prompt ""), float32, 1 thread. Both encode the prompts, run the 10 guided UNet steps on all 8
images at once (16 UNet rows) and VAE-decode the 8 images.

* ``diffusers``: ``StableDiffusionPipeline.__call__(..., eta=1.0, output_type="pt")``.
* ``progrpo``: ``encode_prompts`` + ``expand_and_prune_rollout`` with the ``ddim`` dynamic at
  noise level 1 and no pruning, keeping what training needs (every step's latents and log-probs)
  and the decoded images; its reward is a constant (the rollout always scores the final images,
  so the cheapest possible reward stands in for "no reward").

Runs are interleaved (diffusers, progrpo, diffusers, ...), first round discarded; the ratio of
medians is the overhead of carrying log-probs and the trajectory. Target <= 1.10.

    .venv/bin/python -m bench.logprob_overhead           # 7 repeats, ~1 min
    .venv/bin/python -m bench.logprob_overhead --quick   # 3 repeats
"""

from __future__ import annotations

import argparse
import logging
import os

from bench._common import interleaved_medians, pin_threads, write_result

logger = logging.getLogger("progrpo.bench")

PROMPTS = ["cat", "dog", "horse", "monkey"]
TARGET = 1.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--per-prompt", type=int, default=2, help="images per prompt (>= 2: a GRPO group)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pin_threads(1)
    import torch

    from bench._peer_sd import load_pipeline
    from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout

    repeats = 3 if args.quick else args.repeats
    pipe = load_pipeline()
    denoiser = denoiser_from_pipeline(pipe)
    config = RolloutConfig(group_size=args.per_prompt, num_steps=args.steps, dynamics="ddim", noise_level=1.0,
                           guidance_scale=5.0, height=64, width=64, seed=0, keep_images=True)

    def constant_reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.zeros(images.shape[0])

    def run_diffusers() -> torch.Tensor:
        return pipe(prompt=PROMPTS, negative_prompt=[""] * len(PROMPTS), num_images_per_prompt=args.per_prompt,
                    num_inference_steps=args.steps, guidance_scale=5.0, eta=1.0, height=64, width=64,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).images

    def run_progrpo() -> torch.Tensor:
        conditioning = denoiser.encode_prompts(PROMPTS, "")
        return expand_and_prune_rollout(denoiser, conditioning, constant_reward, config).images

    images = {"diffusers": run_diffusers(), "progrpo": run_progrpo()}
    if images["diffusers"].shape != images["progrpo"].shape:
        raise RuntimeError(f"image shapes differ: { {k: tuple(v.shape) for k, v in images.items()} }")
    times = interleaved_medians({"diffusers": run_diffusers, "progrpo": run_progrpo}, repeats=repeats, warmup=1)
    ratio = times["progrpo"] / times["diffusers"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    images_total = len(PROMPTS) * args.per_prompt
    logger.info("log-prob sampler vs diffusers __call__: tiny SD 64px, %d images, %d DDIM steps eta 1, CFG 5, "
                "decode included, 1 thread, median of %d", images_total, args.steps, repeats)
    logger.info("%-10s %10s %14s", "", "seconds", "s / img-step")
    for name, seconds in times.items():
        logger.info("%-10s %10.3f %14.4f", name, seconds, seconds / (images_total * args.steps))
    logger.info("ratio progrpo/diffusers %.3f (target <= %.2f) %s", ratio, TARGET, verdict)
    path = write_result("logprob_overhead", {
        "seconds": times, "ratio": ratio, "target": TARGET, "verdict": verdict, "repeats": repeats,
        "images": images_total, "steps": args.steps, "loadavg": os.getloadavg(),
    })
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
