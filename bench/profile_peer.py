"""Where one epoch of the TRL-peer workload spends its time in progrpo (and, for comparison, in TRL).

Loads the peer pipeline (``bench/_peer_sd.py``) and the same setup as ``bench/peer_trl.py``,
runs one warm-up epoch, then one epoch under ``cProfile`` (Python-level split: UNet forward in
sampling and training, autograd backward, the log-prob step, VAE decode, progrpo's own code) and
one under ``torch.profiler`` (the top aten operators by self CPU time). 1 thread.

    .venv/bin/python -m bench.profile_peer            # ~1 min
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats

from bench._common import write_result

logger = logging.getLogger("progrpo.bench")


def _cumulative(stats: pstats.Stats, needle: str, function: str) -> float:
    """Cumulative seconds of the functions whose file contains ``needle`` and name is ``function``."""
    total = 0.0
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if needle in filename and name == function:
            total += cumulative
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=("ours", "trl"), default="ours")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench import peer_trl

    torch.set_num_threads(1)
    runner = (peer_trl.setup_ours if args.impl == "ours" else peer_trl.setup_trl)()
    runner.epoch(0)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    phases = runner.epoch(1)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    epoch = phases["epoch_s"]
    unet = _cumulative(stats, "unet_2d_condition.py", "forward")
    backward = _cumulative(stats, "torch/autograd/__init__.py", "backward")
    decode = _cumulative(stats, "autoencoder_kl.py", "decode")
    split = {"epoch_s": epoch, "sampling_s": phases["sampling_s"], "training_s": phases["training_s"],
             "unet_forward_s": unet, "autograd_backward_s": backward, "vae_decode_s": decode}
    if args.impl == "ours":
        split["policy_step_s"] = _cumulative(stats, "progrpo/dynamics.py", "policy_step")
        split["optimizer_step_s"] = _cumulative(stats, "torch/optim/adamw.py", "step")
        split["text_encode_s"] = _cumulative(stats, "progrpo/denoisers/_diffusers_base.py", "encode_prompts")
    else:
        split["scheduler_step_s"] = _cumulative(stats, "trl/models/modeling_sd_base.py", "scheduler_step")
    split["rest_s"] = epoch - unet - backward - decode - sum(v for k, v in split.items() if k in (
        "policy_step_s", "optimizer_step_s", "text_encode_s", "scheduler_step_s"))
    logger.info("%s, one epoch (profiled by cProfile, so a little slower than unprofiled):", args.impl)
    for name, value in split.items():
        logger.info("  %-22s %8.3f s  %5.1f%%", name, value, 100 * value / epoch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.epoch(2)
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages)
    operators = [{"name": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
                  "calls": e.count} for e in averages[:args.top]]
    logger.info("top aten operators by self CPU time (one epoch):")
    for op in operators:
        logger.info("  %-58s %8.3f s %5.1f%% %6d calls", op["name"][:58], op["self_s"], 100 * op["share"], op["calls"])
    path = write_result(f"profile_peer_{args.impl}", {"split": split, "operators": operators,
                                                      "loadavg": os.getloadavg()})
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
