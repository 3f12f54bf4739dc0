"""Peak VRAM and seconds per Train Loop iteration of SD1.5, SDXL, SD3.5-Medium and Flux.1-size models on one CUDA GPU.

For each model (random weights at the real size, in ComfyUI's layout: SD1.5 UNet 860 M, SDXL UNet
2.6 B, SD3.5-Medium MMDiT-X 2.5 B, Flux.1 12 B; bench/_comfy_models.py) and each weight format
(``bf16``: UNETLoader's default with ``--bf16-unet``; ``fp8``: its ``weight_dtype`` fp8_e4m3fn;
``fp8_fast``: fp8_e4m3fn_fast, opt-in), a child process makes the random state dict directly on the
GPU (no file to write or read; seconds even for Flux) and hands it to
``comfy.sd.load_diffusion_model_state_dict`` -- what UNETLoader calls after reading a file, with the
same ``model_options``, so the model is built in host RAM (its stored size, 24 GB for Flux in bf16)
and ComfyUI moves it to the GPU -- then checks the detected class. It
runs one warm-up Train Loop iteration at the smallest size, then one measured iteration per image
size (512 and 1024 px; group 4, 4 steps, CFG 4.5, Flux guidance 3.5 at CFG 1, the node's defaults
for training_dtype (auto: bf16), gradient checkpointing (on) and micro_batch_rows unless given),
with a random VAE of the family and directly made CONDITIONING, and reports the peak of
``torch.cuda.max_memory_allocated`` (reset per iteration) and the iteration's wall seconds.

Prints a markdown table and writes bench/results/gpu_check.{json,md}. Without a CUDA device it stops
at once with a message (exit code 2). ``--dry-run`` runs every code path but CUDA on the CPU: the
full-size parameter counts (meta device), then the same child processes on tiny configs of each
family (detected by ComfyUI as SD15, Segmind_Vega (an SDXL), SD3 and Flux) at 64 px, 2 steps,
reporting peak RSS instead of VRAM.

    .venv/bin/python -m bench.gpu_check                       # CUDA; all four models, bf16 and fp8
    .venv/bin/python -m bench.gpu_check --models sdxl,flux1 --weights bf16 --sizes 1024
    .venv/bin/python -m bench.gpu_check --dry-run             # CPU smoke, ~5 min on 2 shared cores

Time on a GPU: model creation is seconds; an H100 should need about 1 min per (model, weights) for
SD1.5/SDXL/SD3.5-M and 2-4 min for Flux.1 (estimates, not measured).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import RESULTS, write_result

logger = logging.getLogger("progrpo.bench")
MODELS = ("sd15", "sdxl", "sd35m", "flux1")
NAMES = {"sd15": "SD1.5", "sdxl": "SDXL", "sd35m": "SD3.5 Medium", "flux1": "Flux.1"}
#: weight format -> UNETLoader weight_dtype (its model_options below); bf16 is "default" with ComfyUI's
#: --bf16-unet, since "default" alone stores SD1.5/SDXL in fp16 on most GPUs.
WEIGHTS = {"bf16": "default", "fp8": "fp8_e4m3fn", "fp8_fast": "fp8_e4m3fn_fast"}
GROUP, STEPS = 4, 4
NO_CUDA = ("gpu_check.py needs a CUDA device (torch.cuda.is_available() is False here: torch {torch}, CUDA build "
           "{cuda}). Run it on a machine with an NVIDIA GPU, or use --dry-run for the CPU smoke run.")


def load_extension(cpu: bool, output_dir: Path) -> Any:
    from testkit.comfy_harness import import_comfy, load_extension_nodes

    import_comfy(cpu)  # on the CPU, or on CUDA (ComfyUI's default)
    extension = load_extension_nodes()
    if not cpu:  # the harness sets --cpu; the device was already picked (CUDA) by import_comfy(cpu=False)
        import comfy.cli_args
        import comfy.model_management

        comfy.cli_args.args.cpu = False
        if comfy.model_management.get_torch_device().type != "cuda":
            raise RuntimeError(f"ComfyUI picked {comfy.model_management.get_torch_device()}, not CUDA")
    import folder_paths

    folder_paths.set_output_directory(str(output_dir))
    return extension


def model_options(weights: str) -> dict:
    """UNETLoader's model_options for its weight_dtype (nodes.UNETLoader.load_unet; bf16: as --bf16-unet)."""
    import torch

    name = WEIGHTS[weights]
    if weights == "bf16":
        return {"dtype": torch.bfloat16}
    if name == "fp8_e4m3fn":
        return {"dtype": torch.float8_e4m3fn}
    if name == "fp8_e4m3fn_fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    return {}


def build_model(architecture: Any, weights: str, device: str) -> Any:
    """A ComfyUI MODEL from a random bf16 state dict made on ``device``, through UNETLoader's loader function."""
    import comfy.sd
    import torch

    from bench import _comfy_models as models

    state = models.random_state_dict(architecture, torch.bfloat16, seed=0, device=device)
    with torch.inference_mode():
        patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options=model_options(weights))
    del state
    if device == "cuda":
        torch.cuda.empty_cache()
    if patcher is None:
        raise RuntimeError(f"ComfyUI did not detect the {architecture.name} state dict")
    detected = models.detected_class(patcher)
    if detected not in architecture.detected:
        raise RuntimeError(f"{architecture.name} was detected as {detected}, not {architecture.detected}")
    return patcher


def build_vae(latent_channels: int) -> Any:
    import comfy.sd
    import torch

    from bench import _comfy_models as models

    with torch.inference_mode():
        return comfy.sd.VAE(sd=models.vae_state_dict(latent_channels, seed=1))


def peak_reader(cuda: bool) -> tuple[Any, Any]:
    """(reset, read) of the peak memory in MB: CUDA allocated on a GPU, RSS (VmHWM) on the CPU."""
    import torch

    if cuda:
        def reset() -> None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def read() -> float:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return reset, read

    def reset_rss() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    def read_rss() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("VmHWM not found")
    return reset_rss, read_rss


def train_settings(architecture: Any, px: int, steps: int, run_name: str, options: dict) -> dict:
    from bench import _comfy_models as models

    positive, negative = models.conditioning(architecture)
    cfg = architecture.cfg
    return {"group_size": GROUP, "steps": steps, "dynamics": "cps", "noise_level": -1.0, "cfg": cfg, "width": px,
            "height": px, "iterations": 1, "lr": 1e-4, "rank": 8, "alpha": 8.0, "checkpoint_every": 0,
            "resume": False, "run_name": run_name, "seed": 0, "scheduler": "simple", "positive": positive,
            "negative": None if cfg == 1.0 else negative, "prompts_per_iteration": 1, **options}


def node_options(extension: Any, args: argparse.Namespace) -> dict:
    """The memory/precision inputs given on the command line that this Train Loop has."""
    import inspect

    inputs = set(inspect.signature(extension.ProGRPOTrainLoop.execute).parameters)
    wanted = {"training_dtype": args.training_dtype, "micro_batch_rows": args.micro_batch_rows,
              "gradient_checkpointing": None if args.gradient_checkpointing is None
              else args.gradient_checkpointing == "on"}
    return {name: value for name, value in wanted.items() if value is not None and name in inputs}


def child(model_name: str, weights: str, sizes: list[int], args: argparse.Namespace) -> list[dict]:
    """Build one model in one weight format and run the warm-up and measured Train Loop iterations."""
    import torch

    from bench import _comfy_models as models

    cuda = not args.dry_run
    torch.set_num_threads(args.threads)
    architecture = (models.TINY_ARCHITECTURES if args.dry_run else models.ARCHITECTURES)[model_name]
    rows = []
    with tempfile.TemporaryDirectory(prefix="progrpo-gpu-check-") as output:
        extension = load_extension(not cuda, Path(output))
        began = time.perf_counter()
        model = build_model(architecture, weights, "cuda" if cuda else "cpu")
        vae = build_vae(architecture.latent_channels)
        build_seconds = time.perf_counter() - began
        with torch.inference_mode():
            reward = extension.ProGRPORewardLoader.execute("brightness", "(none)", "(none)", 1.0).result[0]
        options = node_options(extension, args)
        reset, read = peak_reader(cuda)

        def iteration(px: int, run_name: str) -> dict:
            settings = train_settings(architecture, px, args.steps, run_name, options)
            reset()
            started = time.perf_counter()
            with torch.inference_mode():
                _, lora, _ = extension.ProGRPOTrainLoop.execute(model, vae, reward, **settings).result
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            finite = all(bool(torch.isfinite(v).all()) for v in lora.values() if isinstance(v, torch.Tensor))
            return {"peak_mb": read(), "seconds": seconds, "lora_finite": finite, "lora_tensors": len(lora)}

        if not args.no_warmup:
            iteration(min(sizes), "warmup")
        for px in sizes:
            try:
                measured = iteration(px, f"{model_name}_{weights}_{px}")
            except torch.cuda.OutOfMemoryError as error:  # a row, not the end of the table
                measured = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            rows.append({"model": model_name, "weights": weights, "px": px, "detected": models.detected_class(model),
                         "parameters": models.parameter_count(architecture), "build_seconds": build_seconds,
                         "weight_dtype": str(model.model.get_dtype()), "options": options, **measured})
    return rows


def device_name(cuda: bool) -> str:
    import torch

    return torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"


def run_child(model_name: str, weights: str, sizes: list[int], args: argparse.Namespace) -> list[dict]:
    command = [sys.executable, "-m", __spec__.name, "--child", model_name, weights, "--sizes", ",".join(map(str, sizes)),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    for flag, value in (("--training-dtype", args.training_dtype), ("--micro-batch-rows", args.micro_batch_rows),
                        ("--gradient-checkpointing", args.gradient_checkpointing)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--dry-run"] if args.dry_run else []
    command += ["--no-warmup"] if args.no_warmup else []
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return [{"model": model_name, "weights": weights, "px": px, "error": tail} for px in sizes]
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], device: str, dry_run: bool) -> str:
    memory = "peak RSS MB" if dry_run else "peak VRAM GB"
    lines = [(f"Train Loop iteration on {device}: group {GROUP}, random weights"
              f"{' (tiny configs)' if dry_run else ''}."), "",
             f"| model | parameters | weights | stored as | px | {memory} | s / iteration | detected as |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        params = f"{row['parameters'] / 1e9:.2f} B" if "parameters" in row else ""
        if "error" in row:
            lines.append(f"| {NAMES[row['model']]} | {params} | {row['weights']} | | {row['px']} | "
                         f"error: {row['error'][:120]} | | |")
            continue
        peak = f"{row['peak_mb']:.0f}" if dry_run else f"{row['peak_mb'] / 1024:.1f}"
        lines.append(f"| {NAMES[row['model']]} | {params} | {row['weights']} | "
                     f"{row['weight_dtype'].removeprefix('torch.')} | {row['px']} | {peak} | "
                     f"{row['seconds']:.1f} | {row['detected']} |")
    return "\n".join(lines) + "\n"


def full_size_counts() -> dict[str, int]:
    """Parameter counts of the real-size configs, from meta-device models (no memory)."""
    from bench import _comfy_models as models

    models.import_comfy()
    return {name: models.parameter_count(architecture) for name, architecture in models.ARCHITECTURES.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    parser.add_argument("--weights", default="bf16,fp8", help=f"comma-separated, of {','.join(WEIGHTS)}")
    parser.add_argument("--sizes", default=None, help="image sides in px (default 512,1024; dry run 64)")
    parser.add_argument("--steps", type=int, default=None, help=f"sampling steps (default {STEPS}; dry run 2)")
    parser.add_argument("--training-dtype", default=None, help="Train Loop training_dtype (default: the node's)")
    parser.add_argument("--micro-batch-rows", type=int, default=None, help="default: the node's")
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default=None, help="default: the node's")
    parser.add_argument("--threads", type=int, default=4, help="torch CPU threads of each child")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up iteration")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs: check the code paths")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sizes_list = [int(s) for s in (args.sizes or ("64" if args.dry_run else "512,1024")).split(",")]
    args.steps = args.steps or (2 if args.dry_run else STEPS)
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.sizes_list, args)))
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        sys.exit(2)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    weights = [w.strip() for w in args.weights.split(",") if w.strip()]
    unknown = [m for m in models if m not in MODELS] + [w for w in weights if w not in WEIGHTS]
    if unknown:
        sys.exit(f"unknown models/weights: {unknown}")
    started = time.perf_counter()
    counts = full_size_counts() if args.dry_run else {}
    if counts:
        logger.info("full-size parameters: %s", ", ".join(f"{NAMES[n]} {c / 1e9:.2f} B" for n, c in counts.items()))
    rows: list[dict] = []
    for model_name in models:
        for weight in weights:
            logger.info("== %s %s", model_name, weight)
            new = run_child(model_name, weight, args.sizes_list, args)
            for row in new:
                logger.info("   %s", row.get("error") or f"{row['px']} px: peak {row['peak_mb']:.0f} MB, "
                            f"{row['seconds']:.1f} s")
            rows += new
    device = device_name(not args.dry_run)
    table = markdown(rows, device, args.dry_run)
    print(table)
    name = "gpu_check_dry_run" if args.dry_run else "gpu_check"
    write_result(name, {"device": device, "rows": rows, "full_size_parameters": counts, "group": GROUP,
                        "steps": args.steps, "seconds": time.perf_counter() - started, "loadavg": os.getloadavg()})
    (RESULTS / f"{name}.md").write_text(table)
    failed = [row for row in rows if "error" in row]
    if failed:
        sys.exit(f"{len(failed)} of {len(rows)} runs failed (see the table)")


if __name__ == "__main__":
    main()
