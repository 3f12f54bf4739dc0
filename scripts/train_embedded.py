"""Train the models shipped in ``progrpo/embedded`` and record their metrics (deterministic, CPU).

    python -m scripts.train_embedded                      # classifier, flow and ddim (~5 min)
    python -m scripts.train_embedded --models classifier flow
    python -m scripts.train_embedded --models flow --eval-every 50 --out runs/explore   # pick a checkpoint

(from the repo root, so this checkout's ``progrpo`` is the one trained and written; ``python
scripts/train_embedded.py`` does the same where ``progrpo`` is installed from this checkout, as
``pip install -e .`` by scripts/setup_venv.sh does).

Data: scikit-learn's ``load_digits`` (1797 8x8 images, bundled, no download), upscaled
bilinearly to 16x16, with the fixed split of :func:`progrpo.embedded.classifier.digits_split`
(20% held out). Everything runs on 1 thread with fixed seeds, so re-running reproduces the
shipped files and ``metrics.json`` (on the same CPU kind; other CPUs agree up to float rounding).

* classifier: 38 K-parameter CNN, 60 epochs, batch 32, +-1 px shifts and pixel noise.
* flow: pixel-space UNet2DConditionModel (0.8 M) + tiny CLIP text encoder trained jointly with
  rectified flow (``x_t = (1-t) x0 + t eps``, target ``v = eps - x0``, timestep ``1000 t``,
  logit-normal t), saved as a ``StableDiffusionPipeline`` folder with ``vae=None`` and
  ``FlowMatchEulerDiscreteScheduler(shift=1)``.
* ddim: the same networks trained for eps prediction (DDPM ``squaredcos_cap_v2``), saved with a
  ``DDIMScheduler``.

The generators are trained for a FIXED, small number of optimiser steps with a constant
learning rate after warm-up, so they stop early: their prompt alignment at the default sampling
setting (10 ODE steps, CFG 1) is well below 100% and leaves GRPO room to improve. UNet weights are
stored in fp16 (they are evaluated after reloading, in fp32).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from progrpo.embedded import (
    DEFAULT_SAMPLING,
    DIGIT_PROMPTS,
    METRICS_SAMPLES_PER_PROMPT,
    METRICS_SEED,
    digit_prompt,
    measure_alignment,
)
from progrpo.embedded.classifier import (
    DigitClassifier,
    accuracy,
    digits_dataset,
    digits_split,
    load_classifier,
    save_classifier,
)
from progrpo.tiny_models import word_level_tokenizer

REPO = Path(__file__).resolve().parents[1]
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: the generators' word-level vocabulary (after the 4 specials).
VOCABULARY = ["a", "handwritten", "digit", "number", "of", "the", *DIGIT_WORDS, *"0123456789"]
MAX_TOKENS = 12

#: fraction of training prompts that spell the digit as a word, and that are empty (for CFG).
WORD_FRACTION = 0.3
EMPTY_FRACTION = 0.1

#: default optimiser steps of each generator (the early checkpoint that is shipped).
DEFAULT_STEPS = {"flow": 140, "ddim": 375}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# ----------------------------------------------------------------------------------------------
# classifier


def train_classifier(folder: Path, seed: int, epochs: int = 60, batch: int = 32) -> dict:
    seed_everything(seed)
    images, labels = digits_dataset()
    train_index, held_index = digits_split()
    x, y = images[train_index], labels[train_index]
    model = DigitClassifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for first in range(0, x.shape[0], batch):
            rows = order[first:first + batch]
            xb = F.pad(x[rows], (1, 1, 1, 1))
            shifts = torch.randint(0, 3, (rows.shape[0], 2), generator=generator)
            xb = torch.stack([xb[i, :, dy:dy + 16, dx:dx + 16] for i, (dy, dx) in enumerate(shifts.tolist())])
            noise_std = 0.15 * torch.rand(rows.shape[0], 1, 1, 1, generator=generator)
            xb = (xb + noise_std * torch.randn(xb.shape, generator=generator)).clamp(0, 1)
            loss = F.cross_entropy(model(xb), y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        for group in optimiser.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * (epoch + 1) / epochs))
    seconds = time.perf_counter() - start
    model.eval()
    save_classifier(model, folder, {"trained_by": "scripts/train_embedded.py --models classifier", "seed": seed})
    reloaded = load_classifier(folder)
    metrics = {
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "seed": seed,
        "train_accuracy": accuracy(reloaded, images[train_index], labels[train_index]),
        "held_out_accuracy": accuracy(reloaded, images[held_index], labels[held_index]),
        "held_out_size": int(held_index.shape[0]),
    }
    print(f"classifier: {metrics}", flush=True)
    return metrics


# ----------------------------------------------------------------------------------------------
# generators


def build_tokenizer():
    return word_level_tokenizer(VOCABULARY, MAX_TOKENS)


def build_networks(vocab_size: int):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, projection_dim=32, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    ))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 32, 48),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16,
    )
    return text_encoder, unet


def build_scheduler(kind: str):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if kind == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )


def make_pipeline(kind: str, tokenizer, text_encoder, unet):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(kind),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    for module in (text_encoder, unet):
        module.eval()
    return pipe


def training_prompts(labels: torch.Tensor, generator: torch.Generator) -> list[str]:
    draw = torch.rand(labels.shape[0], generator=generator)
    prompts = []
    for label, u in zip(labels.tolist(), draw.tolist()):
        if u < EMPTY_FRACTION:
            prompts.append("")
        elif u < EMPTY_FRACTION + WORD_FRACTION:
            prompts.append(f"a handwritten digit {DIGIT_WORDS[label]}")
        else:
            prompts.append(digit_prompt(label))
    return prompts


def evaluate(kind: str, pipe, reward, samples: int) -> dict:
    from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline

    setting = DEFAULT_SAMPLING[f"digits_{kind}"]
    return measure_alignment(denoiser_from_pipeline(pipe), reward, DIGIT_PROMPTS, samples, METRICS_SEED, **setting)


def train_generator(kind: str, folder: Path, seed: int, steps: int, eval_every: int, reward) -> dict:
    from diffusers import DDPMScheduler

    seed_everything(seed)
    images, labels = digits_dataset()
    train_index, _ = digits_split()
    data = images[train_index] * 2.0 - 1.0
    data_labels = labels[train_index]
    tokenizer = build_tokenizer()
    text_encoder, unet = build_networks(len(tokenizer))
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    for module in (ema_text, ema_unet):
        module.requires_grad_(False)
    text_encoder.train()
    unet.train()
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.01)
    warmup, batch = 100, 96
    alphas_cumprod = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    generator = torch.Generator().manual_seed(seed + 1)
    history = []
    start = time.perf_counter()
    train_seconds = 0.0
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / warmup)
        rows = torch.randint(0, data.shape[0], (batch,), generator=generator)
        x0 = data[rows]
        ids = tokenizer(training_prompts(data_labels[rows], generator), padding="max_length",
                        max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(x0.shape, generator=generator)
        if kind == "flow":
            t = torch.sigmoid(torch.randn(batch, generator=generator))
            xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
            timestep, target = 1000.0 * t, noise - x0
        else:
            timestep = torch.randint(0, 1000, (batch,), generator=generator)
            alphabar = alphas_cumprod[timestep][:, None, None, None]
            xt = alphabar.sqrt() * x0 + (1 - alphabar).sqrt() * noise
            target = noise
        hidden = text_encoder(ids)[0]
        prediction = unet(xt, timestep, encoder_hidden_states=hidden, return_dict=False)[0]
        loss = F.mse_loss(prediction, target)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for p_ema, p in zip(ema.parameters(), live.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        if (step + 1) % 50 == 0:
            print(f"{kind} step {step + 1}/{steps} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if eval_every and (step + 1) % eval_every == 0:
            train_seconds += time.perf_counter() - start
            pipe = make_pipeline(kind, tokenizer, copy.deepcopy(ema_text), copy.deepcopy(ema_unet))
            result = evaluate(kind, pipe, reward, METRICS_SAMPLES_PER_PROMPT)
            history.append({"step": step + 1, "mean_accuracy": result["mean_accuracy"],
                            "mean_probability": result["mean_probability"]})
            print(f"  eval step {step + 1}: acc {result['mean_accuracy']:.3f} p {result['mean_probability']:.3f} "
                  + " ".join(f"{v:.2f}" for v in result["accuracy"].values()), flush=True)
            start = time.perf_counter()
    train_seconds += time.perf_counter() - start

    # UNet weights in fp16 (diffusers reloads them as fp32); the 18 K-parameter text encoder stays
    # fp32 because transformers would reload an fp16 one as fp16.
    pipe = make_pipeline(kind, tokenizer, ema_text, ema_unet.half())
    pipe.save_pretrained(str(folder), safe_serialization=True)
    from progrpo.denoisers.diffusers_backend import load_diffusers_denoiser

    reloaded = load_diffusers_denoiser(folder)  # exactly what the CLI and the tests load
    if reloaded.dtype != torch.float32 or reloaded.pipeline.text_encoder.dtype != torch.float32:
        raise RuntimeError(f"{folder} reloads as {reloaded.dtype}/{reloaded.pipeline.text_encoder.dtype}, not fp32")
    setting = DEFAULT_SAMPLING[f"digits_{kind}"]
    start = time.perf_counter()
    result = measure_alignment(reloaded, reward, DIGIT_PROMPTS, METRICS_SAMPLES_PER_PROMPT, METRICS_SEED, **setting)
    metrics = {
        "kind": kind,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
        "train_steps": steps,
        "batch_size": batch,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / steps, 3),
        "seed": seed,
        "sampling": setting,
        "samples_per_prompt": METRICS_SAMPLES_PER_PROMPT,
        "sampling_seed": METRICS_SEED,
        "alignment": result["accuracy"],
        "mean_alignment": result["mean_accuracy"],
        "p_target": result["probability"],
        "mean_p_target": result["mean_probability"],
        "measure_seconds": round(time.perf_counter() - start, 1),
    }
    if kind == "flow":
        sde = measure_alignment(reloaded, reward, DIGIT_PROMPTS, METRICS_SAMPLES_PER_PROMPT, METRICS_SEED,
                                **{**setting, "dynamics": "flow_sde"})
        metrics["flow_sde_default_noise"] = {"mean_alignment": sde["mean_accuracy"], "mean_p_target": sde["mean_probability"]}
    cfg = measure_alignment(reloaded, reward, DIGIT_PROMPTS, METRICS_SAMPLES_PER_PROMPT, METRICS_SEED,
                            **{**setting, "guidance_scale": 3.0})
    metrics["cfg3"] = {"mean_alignment": cfg["mean_accuracy"], "mean_p_target": cfg["mean_probability"]}
    if history:
        metrics["checkpoint_history"] = history
    print(f"{kind}: " + json.dumps({k: v for k, v in metrics.items() if k not in ("alignment", "p_target")}), flush=True)
    print("  per prompt: " + " ".join(f"{p[-1]}:{a:.2f}" for p, a in result["accuracy"].items()), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=("classifier", "flow", "ddim"), default=["classifier", "flow", "ddim"])
    parser.add_argument("--out", type=Path, default=REPO / "progrpo" / "embedded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-steps", type=int, default=DEFAULT_STEPS["flow"])
    parser.add_argument("--ddim-steps", type=int, default=DEFAULT_STEPS["ddim"])
    parser.add_argument("--eval-every", type=int, default=0, help="measure alignment every N steps (exploration)")
    args = parser.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    command = " ".join(["python scripts/train_embedded.py", *(sys.argv[1:] if argv is None else argv)])
    environment = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                   "threads": 1}
    if "classifier" in args.models:
        metrics["digit_classifier"] = {**train_classifier(out / "digit_classifier", args.seed), "command": command,
                                       "environment": environment}
        metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    from progrpo.rewards.digits import DigitAlignmentReward

    reward = DigitAlignmentReward(out / "digit_classifier")
    for kind in ("flow", "ddim"):
        if kind in args.models:
            steps = args.flow_steps if kind == "flow" else args.ddim_steps
            result = train_generator(kind, out / f"digits_{kind}", args.seed, steps, args.eval_every, reward)
            metrics[f"digits_{kind}"] = {**result, "command": command, "environment": environment}
            metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {metrics_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
