"""Command line: ``python -m progrpo {train,sample,export-lora,convert-reward} ...``.

* ``train CONFIG.yaml``: a whole Pro-GRPO / GRPO LoRA training run (see progrpo/configs/);
* ``sample``: one Expand-and-Prune rollout, saved as an image grid plus a JSON summary (rewards,
  compute ledger, diagnostics), optionally with a trained LoRA applied;
* ``export-lora``: a training checkpoint -> a ComfyUI-loadable ``.safetensors`` LoRA;
* ``convert-reward KIND SRC DST``: released reward files (PickScore, HPSv2.1, ImageReward, LAION
  aesthetic) -> a self-describing folder for ``models/rewards`` (README "Rewards: setup").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from .log import logger


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (YAML or JSON), e.g. progrpo/configs/digits_flow_alignment.yaml")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument("--iterations", type=int, help="override the number of iterations")
    parser.add_argument("--resume", nargs="?", const="latest", help="resume from a checkpoint folder (default: latest)")
    parser.add_argument("--evaluate-samples", type=int, default=16,
                        help="samples per prompt scored before and after training on fixed seeds (0: skip)")


def _run_train(args: argparse.Namespace) -> int:
    from .train.cli import run_train_command

    return run_train_command(args.config, output_dir=args.output_dir, iterations=args.iterations, resume=args.resume,
                             evaluate_samples=args.evaluate_samples)


def _add_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny:sd3", help="tiny:<sd|sd3|flux>, embedded:<digits_flow|digits_ddim> or a local diffusers pipeline folder")
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    parser.add_argument("--negative-prompt", default="", help="negative prompt for CFG ('' = empty prompt)")
    parser.add_argument("--group-size", type=int, default=8, help="trajectories per prompt (G_max)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dynamics", default=None, help="flow_sde, dance_sde, cps, ddim or ode (default per model)")
    parser.add_argument("--noise-level", type=float, default=None)
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    parser.add_argument("--prune", default="", help="prune schedule 'step:keep, ...', e.g. '5:4, 7:2'")
    parser.add_argument("--selection", default="ovf", help="ovf, random, topk or none")
    parser.add_argument("--reward", default="brightness", help="registered reward name")
    parser.add_argument("--reward-path", help="model rewards: the folder written by convert-reward")
    parser.add_argument("--reward-device", help="model rewards: torch device (default cpu), e.g. cuda")
    parser.add_argument("--reward-precision", choices=("auto", "fp32", "fp16", "bf16"),
                        help="model rewards: precision (default fp32; auto = bf16/fp16 on a GPU)")
    parser.add_argument("--size", type=int, default=32, help="image height and width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", help="a ComfyUI-format LoRA .safetensors to merge before sampling")
    parser.add_argument("--lora-strength", type=float, default=1.0)
    parser.add_argument("--out", default="runs/sample", help="output folder")


def _run_sample(args: argparse.Namespace) -> int:
    from .denoisers.loading import load_denoiser
    from .diagnostics import preview_final_correlation
    from .images import save_grid
    from .lora import apply_comfyui_lora
    from .rewards import build_reward
    from .rollout import RolloutConfig, expand_and_prune_rollout

    denoiser = load_denoiser(args.model)
    if args.lora:
        apply_comfyui_lora(denoiser.network, args.lora, strength=args.lora_strength)
    dynamics = args.dynamics or ("flow_sde" if denoiser.schedule(2, (1, 1, 1)).kind == "flow" else "ddim")
    config = RolloutConfig(
        group_size=args.group_size, num_steps=args.steps, dynamics=dynamics, noise_level=args.noise_level,
        guidance_scale=args.guidance, prune_schedule=args.prune, selection=args.selection,
        height=args.size, width=args.size, seed=args.seed,
    )
    options = {"path": args.reward_path, "device": args.reward_device, "precision": args.reward_precision}
    reward = build_reward(args.reward, **{name: value for name, value in options.items() if value is not None})
    rollout = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(args.prompt, args.negative_prompt),
                                       reward, config)
    out = Path(args.out)
    captions = [f"{value:.3f}" for value in rollout.final_rewards.tolist()]
    grid = save_grid(rollout.images, out / "survivors.png", columns=config.final_group_size, captions=captions,
                     scale=max(1, 96 // args.size))
    summary = {
        "model": args.model, "prompts": args.prompt, "config": {k: str(v) for k, v in vars(config).items()},
        "final_rewards": rollout.final_rewards.tolist(), "survivor_prompts": rollout.prompts,
        "pruned_at": rollout.pruned_at.tolist(), "ledger": rollout.ledger.as_dict(),
        "group_std_before": rollout.group_std_before.tolist(), "group_std_after": rollout.group_std_after.tolist(),
        "preview_final_spearman": preview_final_correlation(rollout),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("mean final reward %.4f over %d survivors; %d model evaluations",
                float(rollout.final_rewards.mean()), rollout.num_survivors, rollout.ledger.model_evaluations)
    logger.info("wrote %s and %s", grid, out / "summary.json")
    return 0


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a training checkpoint folder (or a run folder: its latest checkpoint)")
    parser.add_argument("output", help="the .safetensors file to write")


def _run_export(args: argparse.Namespace) -> int:
    from .train.cli import run_export_command

    return run_export_command(args.checkpoint, args.output)


def _add_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("pickscore", "hpsv2", "imagereward", "aesthetic"), help="which reward")
    parser.add_argument("source", help="the released file or folder (PickScore_v1/, HPS_v2.1_compressed.pt, "
                        "ImageReward.pt, sac+logos+ava1-l14-linearMSE.pth)")
    parser.add_argument("destination", help="the folder to write, e.g. ComfyUI/models/rewards/hpsv2.1")
    parser.add_argument("--processor", help="tokenizer/processor folder: CLIP-ViT-H-14-laion2B-s32B-b79K "
                        "(pickscore, hpsv2) or bert-base-uncased (imagereward)")
    parser.add_argument("--backbone", help="aesthetic: the head's CLIP ViT-L/14 (transformers folder or open_clip file)")
    parser.add_argument("--architecture", help="JSON overriding the default architecture (open_clip model config for "
                        "hpsv2/aesthetic; vision_heads/text_heads for imagereward)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination folder")


def _run_convert(args: argparse.Namespace) -> int:
    from .rewards.convert import convert_reward

    convert_reward(args.kind, args.source, args.destination, processor=args.processor, backbone=args.backbone,
                   architecture=args.architecture, overwrite=args.overwrite)
    return 0


#: sub-command -> (argument builder, runner, help)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "train": (_add_train, _run_train, "run a LoRA GRPO / Pro-GRPO training from a config file"),
    "sample": (_add_sample, _run_sample, "one Expand-and-Prune rollout -> image grid + JSON summary"),
    "export-lora": (_add_export, _run_export, "export a checkpoint's LoRA for ComfyUI's Load LoRA"),
    "convert-reward": (_add_convert, _run_convert, "released reward model files -> a folder for models/rewards"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m progrpo", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, runner, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        add_arguments(sub)
        sub.set_defaults(runner=runner)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[progrpo] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from .errors import ProGRPOConfigError

    try:
        return args.runner(args)
    except ProGRPOConfigError as error:
        logger.error("error: %s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
