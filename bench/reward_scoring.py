"""Reward scoring cost: 48 images at 224 px in fp32 against bf16, and the previews' share of a rollout.

Part 1 scores ``--images`` (48) random images at 224 px with a CLIP reward (the ``hps`` scorer of
a converted HPSv2 folder) whose vision tower is ``--width`` x ``--layers`` (default a ViT-S/16:
384 x 12; ViT-H/14, HPSv2.1's, is 1280 x 32 and ~30x the FLOPs) in fp32 and in bf16, interleaved,
1 thread, ``--batch-size`` images per call; it prints the bf16 / fp32 time ratio and the largest
score difference. Part 2 runs one Pro-GRPO rollout (tiny SD3 "small" tier, 64 px, 10 steps, 48 ->
24 -> 12 at steps 5 and 7, as bench/rollout_cost.py) with that reward and prints which share of
the rollout's wall time went to decoding and scoring the previews (and to the final images), in
bf16 too where bf16 scored faster than fp32.
All figures are ratios measured in this one run.

    .venv/bin/python -m bench.reward_scoring            # ~6 min on 2 shared cores (bf16 is emulated there)
    .venv/bin/python -m bench.reward_scoring --quick    # 1 timed round, ~3 min
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench._common import interleaved_medians, pin_threads, write_result
from progrpo.rewards import build_reward
from progrpo.tiny_models import tiny_tokenizer

logger = logging.getLogger("progrpo.bench")
PROMPTS = ["a photo of a cat", "a red car on a street", "an astronaut riding a horse"]


def save_clip_reward(folder: Path, width: int, layers: int, image_size: int = 224) -> Path:
    """A random CLIPModel with a ``width`` x ``layers`` ViT/16 at ``image_size`` and a small text tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_tokenizer(16)
    text = {"vocab_size": len(tokenizer), "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
            "num_attention_heads": 4, "max_position_embeddings": 16, "bos_token_id": 2, "eos_token_id": 3,
            "pad_token_id": 0}
    vision = {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
              "num_attention_heads": width // 64, "image_size": image_size, "patch_size": 16}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=256)).save_pretrained(str(folder))
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def precision_ratio(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds to score the images in fp32 and bf16, their ratio and the largest score difference."""
    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    rewards = {name: build_reward("hps", path=str(folder), precision=name, batch_size=args.batch_size)
               for name in ("fp32", "bf16")}
    scores: dict[str, torch.Tensor] = {}

    def job(name: str) -> None:
        scores[name] = rewards[name].score(images, prompts)

    with torch.no_grad():
        for reward in rewards.values():  # warm-up on 2 images (lazy initialisation, kernel selection)
            reward.score(images[:2], prompts[:2])
        seconds = interleaved_medians({name: (lambda n=name: job(n)) for name in rewards}, args.repeats, warmup=0)
    difference = float((scores["bf16"] - scores["fp32"]).abs().max())
    return {"fp32_s": seconds["fp32"], "bf16_s": seconds["bf16"], "bf16_over_fp32": seconds["bf16"] / seconds["fp32"],
            "max_abs_score_difference": difference}


class Timed:
    """Records (kind, start, end) of every call to ``function`` into ``events``."""

    def __init__(self, kind: str, function: Any, events: list[tuple[str, float, float]]) -> None:
        self.kind, self.function, self.events = kind, function, events
        self.name = getattr(function, "name", kind)

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        result = self.function(*args)
        self.events.append((self.kind, start, time.perf_counter()))
        return result

    def score(self, *args: Any) -> Any:
        return self(*args)


def preview_share(folder: Path, precision: str) -> dict[str, float]:
    """Shares of one Pro-GRPO rollout's wall time spent decoding + scoring previews and final images."""
    from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
    from progrpo.tiny_models import TINY_PIPELINES

    denoiser = denoiser_from_pipeline(TINY_PIPELINES["sd3"](seed=0, tier="small"))
    conditioning = denoiser.encode_prompts(["a photo of a cat"], "")
    events: list[tuple[str, float, float]] = []
    denoiser.decode = Timed("decode", denoiser.decode, events)
    reward = Timed("reward", build_reward("hps", path=str(folder), precision=precision, batch_size=16).score, events)
    config = RolloutConfig(group_size=48, prune_schedule="5:24, 7:12", num_steps=10, dynamics="flow_sde", height=64,
                           width=64, keep_images=False, max_batch_rows=12, guidance_scale=4.5)
    with torch.no_grad():  # warm-up on an 8-trajectory rollout (lazy initialisation)
        expand_and_prune_rollout(denoiser, conditioning, reward, RolloutConfig(**{**config.__dict__, "group_size": 8,
                                                                                 "prune_schedule": "5:4, 7:2"}))
        events.clear()
        start = time.perf_counter()
        expand_and_prune_rollout(denoiser, conditioning, reward, config)
        total = time.perf_counter() - start
    last_preview = [e for e in events if e[0] == "reward"][-2][2]  # the last call scores the final images
    spent = {"preview": 0.0, "final": 0.0}
    for _, begin, end in events:
        spent["preview" if end <= last_preview else "final"] += end - begin
    return {"rollout_s": total, "preview_share": spent["preview"] / total, "final_share": spent["final"] / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=int, default=384, help="vision tower width (ViT-S/16: 384, ViT-B/16: 768)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 timed round")
    args = parser.parse_args()
    args.repeats = 1 if args.quick else args.repeats
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pin_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_clip_reward(Path(scratch) / "reward", args.width, args.layers, args.size)
        scoring = precision_ratio(folder, args)
        logger.info("scoring %d images at %d px: fp32 %.2f s, bf16 %.2f s -> bf16/fp32 = %.2fx; max |bf16 - fp32| "
                    "= %.2e", args.images, args.size, scoring["fp32_s"], scoring["bf16_s"], scoring["bf16_over_fp32"],
                    scoring["max_abs_score_difference"])
        # bf16 rollouts only where bf16 scores faster (a CPU without bf16 units emulates it, see the ratio)
        precisions = ("fp32", "bf16") if scoring["bf16_over_fp32"] < 1 else ("fp32",)
        shares = {precision: preview_share(folder, precision) for precision in precisions}
    for precision, share in shares.items():
        logger.info("rollout 48->24->12 with the %s reward: %.1f s; previews (decode + score) %.0f%%, final images "
                    "%.0f%%", precision, share["rollout_s"], 100 * share["preview_share"], 100 * share["final_share"])
    path = write_result("reward_scoring", {"settings": vars(args), "scoring": scoring, "rollout": shares,
                                           "threads": torch.get_num_threads()})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
