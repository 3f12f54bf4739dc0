"""Peak RSS of stock sampling against one Train Loop iteration on real-size SD1.5 and SDXL UNets (CPU).

Nothing is downloaded: random-weight diffusion models of the real sizes (SD1.5 860 M parameters,
1.7 GB; SDXL 2.6 B, 5.1 GB) are written in bf16 with ComfyUI's key layout into the git-ignored
``bench/.cache/models`` (bench/_comfy_models.py), plus a random full-size SD VAE (84 M). Each
measurement runs in its own process, which loads them through ComfyUI's own loaders in inference
mode, as a server does (``UNETLoader`` -- the detected class is checked -- and ``VAELoader``), with
ComfyUI's ``--bf16-unet`` so the weights stay bf16 as on a GPU (on a CPU ComfyUI otherwise stores
them in fp32; it computes in fp32 there either way). CONDITIONING tensors are made directly
(SD1.5 [1, 77, 768]; SDXL [1, 77, 2048] + pooled_output [1, 1280]); the reward is the weight-free
brightness reward (Pro-GRPO Reward Loader). After loading, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), then one of:

* ``sample``: stock KSampler (batch 4, 256 px, 4 steps, euler, CFG 4.5) and VAEDecode, the graph a
  user samples the same group with;
* ``train``: one ProGRPOTrainLoop iteration (group 4, 256 px, 4 steps, cps, CFG 4.5,
  prompts_per_iteration 1) at a gradient-checkpointing setting and ``micro_batch_rows``. The
  rollout, decode and reward run in full; the update is stopped (ComfyUI's interrupt, as Cancel
  does) once ``--update-micro-batches`` micro-batches (default 1) have done forward and backward:
  every micro-batch of an update has the same shape, so the first one reaches the update's peak.

Reported: peak RSS (VmHWM) per configuration, the training / sampling peak ratio (target <= 1.3 at
micro-batch 1 with checkpointing, for both sizes) and the activation memory per extra micro-batch
row, (peak mb 4 - peak mb 1) / 3. Writes bench/results/real_size_memory.{json,md} and the README
snippet bench/results/real_size_memory_README_snippet.md.

Memory is the measure here, not time: processes run one at a time (one real-size model in
memory, SDXL's load peaks near 11 GB), at ``--threads`` torch threads (default 1). A peak does not
depend on the number of sampling steps (every model call of a run has the same shape); ``--steps 2``
halves the rollouts when time is short, and ``--reuse`` keeps rows of an earlier run (other step
counts included, each row shows its steps). Times on the 2-core machine shared with other work (load
average 8-13): SD1.5 sampling 9 min, SDXL sampling 32 min (4 steps, 1 thread); a Train Loop
iteration about as long as its sampling plus the update's micro-batch. Unloaded, expect a third of
that. The model files are deleted at the end unless ``--keep-files``.

    .venv/bin/python -m bench.real_size_memory --quick            # SD1.5 only
    .venv/bin/python -m bench.real_size_memory --sizes sd15,sdxl  # both (the default)
    .venv/bin/python -m bench.real_size_memory --sizes tiny       # smoke run of the harness, ~2 min
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from bench._common import RESULTS, write_result

BENCH = Path(__file__).resolve().parent
logger = logging.getLogger("progrpo.bench")
CACHE = BENCH / ".cache" / "models"
VAE_FILE = "random_sd_vae_bf16.safetensors"
TARGET = 1.3
GROUP, SIZE_PX, STEPS, CFG = 4, 256, 4, 4.5
#: (label, gradient checkpointing, micro_batch_rows); the sampling run is measured besides these.
TRAIN_CONFIGS = {
    "ckpt_mb1": (True, 1),
    "ckpt_mb4": (True, 4),
    "nockpt_mb1": (False, 1),
    "nockpt_mb4": (False, 4),
}


#: --sizes: the real sizes, and "tiny" (a one-level SD1.5-family UNet: a smoke run of the harness in minutes).
SIZES = ("sd15", "sdxl", "tiny")
NAMES = {"sd15": "SD1.5 (860 M)", "sdxl": "SDXL (2.6 B)", "tiny": "tiny SD1.5 (23 M)"}


def unet_file(size: str) -> str:
    return f"random_{size}_bf16.safetensors"


def architecture_of(size: str) -> Any:
    from bench import _comfy_models as models

    return models.TINY_ARCHITECTURES["sd15"] if size == "tiny" else models.ARCHITECTURES[size]


# --- memory readings ------------------------------------------------------------------------------

def memory_mb() -> dict[str, float]:
    """VmHWM (peak RSS since the last reset) and VmRSS of this process, in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"peak": values["VmHWM"], "rss": values["VmRSS"]}


def reset_peak() -> None:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


# --- the model files ------------------------------------------------------------------------------

def write_files(sizes: list[str]) -> dict[str, float]:
    """Write the missing model files under bench/.cache/models (in a child process: frees its memory)."""
    seconds = {}
    for size in sizes:
        if not (CACHE / "diffusion_models" / unet_file(size)).is_file():
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", __spec__.name, "--write-file", size], check=True)
            seconds[size] = time.perf_counter() - began
    if not (CACHE / "vae" / VAE_FILE).is_file():
        subprocess.run([sys.executable, "-m", __spec__.name, "--write-file", "vae"], check=True)
    return seconds


def write_file(which: str) -> None:
    import torch

    from bench import _comfy_models as models

    models.import_comfy()
    if which == "vae":
        from safetensors.torch import save_file

        (CACHE / "vae").mkdir(parents=True, exist_ok=True)
        save_file(models.vae_state_dict(4, seed=1), str(CACHE / "vae" / VAE_FILE))
        return
    written = models.write_diffusion_model(CACHE / "diffusion_models" / unet_file(which), architecture_of(which),
                                           dtype=torch.bfloat16, seed=0)
    logger.info("wrote %s (%.2f GB)", unet_file(which), written / 1e9)


# --- one measurement (child process) --------------------------------------------------------------

def setup_comfy(output_dir: Path) -> Any:
    """ComfyUI in-process on the CPU, weights kept bf16 (--bf16-unet), our folders registered."""
    from bench import _comfy_models as models

    models.import_comfy()
    from comfy.cli_args import args

    args.bf16_unet = True  # ComfyUI's --bf16-unet: bf16 storage, as on a GPU
    from testkit.comfy_harness import load_extension_nodes

    extension = load_extension_nodes()
    import folder_paths

    folder_paths.add_model_folder_path("diffusion_models", str(CACHE / "diffusion_models"), is_default=True)
    folder_paths.add_model_folder_path("vae", str(CACHE / "vae"), is_default=True)
    folder_paths.set_output_directory(str(output_dir))
    return extension


def load_models(size: str) -> tuple[Any, Any, list, list, dict]:
    """(model, vae, positive, negative, facts) loaded as a server loads them (inference mode)."""
    import torch

    import nodes as comfy_nodes
    from bench import _comfy_models as models

    began = time.perf_counter()
    with torch.inference_mode():
        model = comfy_nodes.UNETLoader().load_unet(unet_file(size), "default")[0]
        vae = comfy_nodes.VAELoader().load_vae(VAE_FILE)[0]
    detected = models.detected_class(model)
    architecture = architecture_of(size)
    if detected not in architecture.detected:
        raise RuntimeError(f"{unet_file(size)} was detected as {detected}, not {architecture.detected}")
    positive, negative = models.conditioning(architecture)
    facts = {"detected": detected, "weight_dtype": str(model.model.get_dtype()),
             "compute_dtype": str(model.model.manual_cast_dtype or model.model.get_dtype()),
             "load_seconds": time.perf_counter() - began, "after_load": memory_mb()}
    return model, vae, positive, negative, facts


def measure_sampling(model: Any, vae: Any, positive: list, negative: list) -> dict:
    """Stock KSampler on a batch of GROUP latents, then VAEDecode; peak RSS of each."""
    import torch

    import nodes as comfy_nodes

    result = {}
    latent = {"samples": torch.zeros(GROUP, 4, SIZE_PX // 8, SIZE_PX // 8)}
    reset_peak()
    began = time.perf_counter()
    with torch.inference_mode():
        samples = comfy_nodes.KSampler().sample(model, 0, STEPS, CFG, "euler", "normal", positive, negative,
                                                latent)[0]
    result["ksampler"] = {**memory_mb(), "seconds": time.perf_counter() - began}
    reset_peak()
    began = time.perf_counter()
    with torch.inference_mode():
        images = comfy_nodes.VAEDecode().decode(vae, samples)[0]
    result["decode"] = {**memory_mb(), "seconds": time.perf_counter() - began}
    result["peak_mb"] = max(result["ksampler"]["peak"], result["decode"]["peak"])
    result["finite"] = bool(torch.isfinite(images).all())
    return result


class UpdateStopper:
    """Stops the Train Loop (ComfyUI's interrupt) once ``micro_batches`` update micro-batches did their backward.

    The Train Loop checks ComfyUI's interrupt flag before every model evaluation; evaluations with
    autograd on are the update's forwards (the rollout runs under ``no_grad``). At the first one the
    rollout's peak is read and the peak mark reset, so the final reading is the update's own peak.
    Backward passes are counted by wrapping ``torch.Tensor.backward``; the next update forward after
    the last counted backward raises ComfyUI's InterruptProcessingException, as Cancel does.
    """

    def __init__(self, micro_batches: int) -> None:
        import comfy.model_management as management
        import torch

        self.management, self.torch = management, torch
        self.original_check = management.throw_exception_if_processing_interrupted
        self.original_backward = torch.Tensor.backward
        self.micro_batches = micro_batches
        self.forwards = self.backwards = 0
        self.rollout: dict | None = None
        self.update_started = 0.0
        self.events: list[tuple[str, float]] = []

    def __enter__(self) -> Self:
        self.management.throw_exception_if_processing_interrupted = self.check
        stopper = self

        def counted_backward(tensor: Any, *args: Any, **kwargs: Any) -> None:
            stopper.original_backward(tensor, *args, **kwargs)
            stopper.backwards += 1
            stopper.events.append(("backward", time.perf_counter()))

        self.torch.Tensor.backward = counted_backward
        return self

    def __exit__(self, *exc: object) -> None:
        self.management.throw_exception_if_processing_interrupted = self.original_check
        self.torch.Tensor.backward = self.original_backward

    def check(self) -> None:
        if self.torch.is_grad_enabled():
            if self.forwards == 0:
                self.rollout = memory_mb()
                self.update_started = time.perf_counter()
                reset_peak()
            self.forwards += 1
            if self.backwards >= self.micro_batches:
                raise self.management.InterruptProcessingException()
        self.original_check()


def train_loop_inputs() -> set[str]:
    """Names of the Train Loop's inputs in this checkout (the memory inputs exist from issue 18 on)."""
    import progrpo_comfy_nodes as extension

    return set(inspect.signature(extension.ProGRPOTrainLoop.execute).parameters)


def measure_training(extension: Any, model: Any, vae: Any, positive: list, negative: list, checkpointing: bool,
                     micro_batch_rows: int, update_micro_batches: int, run_name: str) -> dict:
    """One Train Loop iteration, stopped after ``update_micro_batches`` update micro-batches."""
    import comfy.model_management as management
    import torch

    with torch.inference_mode():
        reward = extension.ProGRPORewardLoader.execute("brightness", "(none)", "(none)", 1.0).result[0]
    settings: dict[str, Any] = {
        "group_size": GROUP, "steps": STEPS, "dynamics": "cps", "noise_level": -1.0, "cfg": CFG, "width": SIZE_PX,
        "height": SIZE_PX, "iterations": 1, "lr": 1e-4, "rank": 8, "alpha": 8.0, "checkpoint_every": 0,
        "resume": False, "run_name": run_name, "seed": 0, "scheduler": "normal", "positive": positive,
        "negative": negative, "prompts_per_iteration": 1}
    inputs = train_loop_inputs()
    memory_inputs = {"gradient_checkpointing", "micro_batch_rows", "max_batch_rows"} <= inputs
    if memory_inputs:
        settings.update(gradient_checkpointing=checkpointing, micro_batch_rows=micro_batch_rows)
    stopped = False
    reset_peak()
    began = time.perf_counter()
    with UpdateStopper(update_micro_batches) as stopper, torch.inference_mode():
        try:
            extension.ProGRPOTrainLoop.execute(model, vae, reward, **settings)
        except management.InterruptProcessingException:
            stopped = True
        finally:
            management.interrupt_current_processing(False)
    update = memory_mb()
    rollout = stopper.rollout or update
    return {"memory_inputs": memory_inputs, "rollout": rollout, "update": update,
            "peak_mb": max(rollout["peak"], update["peak"]), "update_forwards": stopper.forwards,
            "update_backwards": stopper.backwards,
            "update_backward_seconds": [round(at - stopper.update_started, 2) for _, at in stopper.events],
            "stopped_early": stopped, "rollout_seconds": stopper.update_started - began if stopper.rollout else None,
            "update_seconds": time.perf_counter() - stopper.update_started if stopper.rollout else None,
            "seconds": time.perf_counter() - began}


def child(size: str, measurement: str, update_micro_batches: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="progrpo-real-size-") as output:
        extension = setup_comfy(Path(output))
        model, vae, positive, negative, facts = load_models(size)
        load_peak = memory_mb()["peak"]
        if measurement == "sample":
            result = measure_sampling(model, vae, positive, negative)
        else:
            checkpointing, rows = TRAIN_CONFIGS[measurement]
            result = measure_training(extension, model, vae, positive, negative, checkpointing, rows,
                                      update_micro_batches, run_name=f"{size}_{measurement}")
    return {"size": size, "measurement": measurement, **facts, "load_peak_mb": load_peak, **result,
            "threads": threads, "px": SIZE_PX, "steps": STEPS}


# --- the driver -----------------------------------------------------------------------------------

def run_child(size: str, measurement: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", __spec__.name, "--child", size, measurement, "--threads", str(args.threads),
               "--update-micro-batches", str(args.update_micro_batches), "--px", str(args.px), "--steps",
               str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"size": size, "measurement": measurement, "error": " | ".join(tail),
                "wall_seconds": time.perf_counter() - began}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall_seconds"] = time.perf_counter() - began
    return row


def summarise(rows: list[dict], sizes: list[str]) -> dict[str, dict]:
    """Per size: sampling peak, training peaks, ratios and activation MB per extra micro-batch row."""
    out = {}
    for size in sizes:
        by = {row["measurement"]: row for row in rows if row["size"] == size and "error" not in row}
        sampling = by.get("sample", {}).get("peak_mb")
        summary: dict[str, Any] = {"sampling_peak_mb": sampling}
        for label in TRAIN_CONFIGS:
            peak = by.get(label, {}).get("peak_mb")
            summary[f"{label}_peak_mb"] = peak
            summary[f"{label}_ratio"] = peak / sampling if peak and sampling else None
        for prefix in ("ckpt", "nockpt"):
            one, four = by.get(f"{prefix}_mb1"), by.get(f"{prefix}_mb4")
            summary[f"{prefix}_activation_mb_per_row"] = (
                (four["update"]["peak"] - one["update"]["peak"]) / 3 if one and four else None)
        ratio = summary["ckpt_mb1_ratio"]
        summary["verdict"] = "n/a" if ratio is None else ("PASS" if ratio <= TARGET else "MISS")
        out[size] = summary
    return out


def _figure(value: float | None, pattern: str = "{:.0f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def markdown(rows: list[dict], summary: dict[str, dict], sizes: list[str], meta: dict) -> str:
    """The results table (every measured figure) and the per-size ratios."""
    lines = [
        (f"Peak RSS on the CPU (random bf16 weights, ComfyUI {meta['comfyui']} loaders, compute fp32), group {GROUP}, "
         f"{SIZE_PX} px, CFG {CFG}; MB."),
        "",
        ("| model | run | steps | checkpointing | micro_batch_rows | peak RSS MB | rollout peak | update peak | "
         "after load | peak / sampling | wall s |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        by = {row["measurement"]: row for row in rows if row["size"] == size}
        sampling = summary[size]["sampling_peak_mb"]
        for label in ("sample", *TRAIN_CONFIGS):
            row = by.get(label)
            if row is None:
                continue
            if "error" in row:
                lines.append(f"| {NAMES[size]} | {label} | | | | error: {row['error'][:80]} | | | | | |")
                continue
            if label == "sample":
                run, checkpointing, micro = "KSampler + VAEDecode", "-", "-"
                rollout, update = row["ksampler"]["peak"], row["decode"]["peak"]
            else:
                run = "Train Loop iteration"
                checkpointing = "on" if TRAIN_CONFIGS[label][0] else "off"
                micro = str(TRAIN_CONFIGS[label][1])
                if not row["memory_inputs"]:
                    checkpointing, micro = "(today's default: off)", "(8)"
                rollout, update = row["rollout"]["peak"], row["update"]["peak"]
            lines.append(f"| {NAMES[size]} | {run} | {row.get('steps', 4)} | {checkpointing} | {micro} | "
                         f"{row['peak_mb']:.0f} | "
                         f"{rollout:.0f} | {update:.0f} | {row['after_load']['rss']:.0f} | "
                         f"{_figure(row['peak_mb'] / sampling if sampling else None, '{:.3f}')} | "
                         f"{_figure(row.get('wall_seconds'))} |")
    lines += ["", "For the sampling row, 'rollout peak' is the KSampler's and 'update peak' the VAEDecode's.", ""]
    for size in sizes:
        s = summary[size]
        lines.append(f"- {NAMES[size]}: training / sampling peak at micro-batch 1 with checkpointing "
                     f"{_figure(s['ckpt_mb1_ratio'], '{:.3f}')} (target <= {TARGET}) {s['verdict']}; activation "
                     f"memory per extra micro-batch row {_figure(s['ckpt_activation_mb_per_row'])} MB with "
                     f"checkpointing, {_figure(s['nockpt_activation_mb_per_row'])} MB without.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="sd15,sdxl", help="comma-separated: sd15, sdxl (tiny: a smoke run)")
    parser.add_argument("--quick", action="store_true", help="SD1.5 only")
    parser.add_argument("--configs", default=",".join(TRAIN_CONFIGS),
                        help=f"training configurations to measure, of {','.join(TRAIN_CONFIGS)}")
    parser.add_argument("--update-micro-batches", type=int, default=1,
                        help="update micro-batches run (forward and backward) before the iteration is stopped")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--px", type=int, default=SIZE_PX, help="image side (smoke runs: smaller)")
    parser.add_argument("--steps", type=int, default=STEPS, help="sampling steps of both runs")
    parser.add_argument("--keep-files", action="store_true", help="keep the written model files in bench/.cache")
    parser.add_argument("--reuse", action="store_true",
                        help="keep rows of an earlier run in the JSON for configurations not measured now")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--write-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    globals().update(SIZE_PX=args.px, STEPS=args.steps)
    if args.write_file:
        write_file(args.write_file)
        return
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.update_micro_batches, args.threads)))
        return
    sizes = ["sd15"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in TRAIN_CONFIGS] + [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes/configs: {unknown}")
    started = time.perf_counter()
    previous = json.loads((RESULTS / "real_size_memory.json").read_text()) if args.reuse and (
        RESULTS / "real_size_memory.json").is_file() else {"rows": []}
    rows: list[dict] = []
    write_seconds: dict[str, float] = {}
    try:
        for size in sizes:
            write_seconds.update(write_files([size]))
            for measurement in ("sample", *configs):
                if args.reuse and any(row["size"] == size and row["measurement"] == measurement and "error" not in row
                                      and row.get("px", 256) == SIZE_PX for row in previous["rows"]):
                    logger.info("== %s %s: measured before (--reuse)", size, measurement)
                    continue
                logger.info("== %s %s", size, measurement)
                row = run_child(size, measurement, args)
                logger.info("   %s", "error: " + row["error"] if "error" in row else
                            f"peak {row['peak_mb']:.0f} MB, {row['wall_seconds']:.0f} s")
                rows.append(row)
            if not args.keep_files:
                (CACHE / "diffusion_models" / unet_file(size)).unlink(missing_ok=True)
    finally:
        if not args.keep_files:
            shutil.rmtree(CACHE / "vae", ignore_errors=True)
    measured = {(row["size"], row["measurement"]) for row in rows}
    # rows of other step counts are kept: every model call has the same shape whatever the step count, so a
    # peak does not depend on it (the table shows each row's steps)
    rows += [row for row in previous["rows"] if (row["size"], row["measurement"]) not in measured
             and row.get("px", 256) == SIZE_PX]
    all_sizes = [s for s in SIZES if any(row["size"] == s for row in rows)]
    summary = summarise(rows, all_sizes)
    meta = {"comfyui": comfyui_version(), "threads": args.threads, "update_micro_batches": args.update_micro_batches,
            "loadavg": os.getloadavg(), "total_seconds": time.perf_counter() - started,
            "write_seconds": write_seconds}
    path = write_result("real_size_memory", {**meta, "rows": rows, "summary": summary, "target": TARGET,
                                             "group": GROUP, "size_px": SIZE_PX, "steps": STEPS, "cfg": CFG})
    table = markdown(rows, summary, all_sizes, meta)
    logger.info("\n%s", table)
    (RESULTS / "real_size_memory.md").write_text(table)
    (RESULTS / "real_size_memory_README_snippet.md").write_text(readme_snippet(table, summary, meta))
    logger.info("wrote %s, real_size_memory.md and real_size_memory_README_snippet.md (%.0f s)", path,
                meta["total_seconds"])


def comfyui_version() -> str:
    import re

    text = (BENCH.parent / ".comfyui" / "ComfyUI" / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return match.group(1) if match else "unknown"


def readme_snippet(table: str, summary: dict[str, dict], meta: dict) -> str:
    """The README's "Memory and precision" table and its paragraph (pasted by hand)."""
    figures = []
    for size, values in summary.items():
        if values["ckpt_mb1_ratio"] is not None:
            figures.append(f"{NAMES[size]} {values['ckpt_mb1_ratio']:.2f}x ({values['verdict']})")
    per_row = ", ".join(f"{NAMES[size]} {values['ckpt_activation_mb_per_row']:.0f} MB"
                        for size, values in summary.items() if values["ckpt_activation_mb_per_row"] is not None)
    text = (
        "#### Measured memory on real-size models (CPU)\n\n"
        "`bench/real_size_memory.py` writes random-weight SD1.5 (860 M) and SDXL (2.6 B) diffusion models in bf16 "
        "with ComfyUI's key layout, loads them with the stock UNETLoader and VAELoader (kept in bf16 with "
        "`--bf16-unet`; on a CPU ComfyUI computes in fp32, casting each layer's weight per call) and measures the "
        "peak resident memory of each run in its own process: the stock KSampler + VAEDecode on the same group "
        "(batch 4, 256 px, CFG 4.5) as the sampling reference, and one Train Loop iteration (group 4, "
        "prompts_per_iteration 1: rollout, decode, reward, then the update up to the end of its first "
        f"{meta['update_micro_batches']} micro-batch(es), which reaches the update's peak since every micro-batch "
        "has the same shape) per gradient-checkpointing and `micro_batch_rows` setting. The target is a training "
        "peak within 1.3x the sampling peak at `micro_batch_rows` 1 with checkpointing"
        + (f"; measured: {', '.join(figures)}" if figures else "")
        + ". The activation memory of one more micro-batch row is (peak at 4 rows - peak at 1 row) / 3"
        + (f": {per_row} with checkpointing" if per_row else "")
        + ". Peaks do not depend on the number of sampling steps (every model call has the same shape), so rows "
        "measured at 2 steps to save time on the shared 2-core machine stand beside 4-step ones. The absolute "
        "figures include about 1.4 GB of Python, torch, ComfyUI and the fp32 VAE; a GPU holds the same weights and "
        "activations in VRAM (in bf16 there: activations about half these fp32 ones).\n\n"
    )
    return text + table + speed_paragraph()


def speed_paragraph() -> str:
    """The lora_output_speed.py figures, when its result file is there."""
    path = RESULTS / "lora_output_speed.json"
    if not path.is_file():
        return ""
    result = json.loads(path.read_text())
    speed, precision = result["lora_speed"], result["precision"]
    text = (f"\nSampling with the Train Loop's MODEL output takes {speed['ratio']:.3f}x the time of sampling with the "
            f"same LoRA file loaded by the stock LoraLoaderModelOnly (target <= 1.05, median of {speed['repeats']} "
            "interleaved KSampler runs, tiny SD1.5-family UNet; both give bit-identical samples: the output carries "
            "the LoRA as ordinary weight patches, `bench/lora_output_speed.py`).")
    if precision.get("status") == "ok":
        text += (f" On this CPU (AVX2 only: bf16 is emulated) a Train Loop iteration at training_dtype bf16 takes "
                 f"{precision['iteration_ratio_bf16_over_fp32']:.2f}x the fp32 one (update alone "
                 f"{precision['update_ratio_bf16_over_fp32']:.2f}x), which is why auto picks fp32 on a CPU; "
                 "GPUs with bf16 support are the opposite case.")
    return text + "\n"

if __name__ == "__main__":
    main()
