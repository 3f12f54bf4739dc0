"""Shared bench plumbing: pinned threads, interleaved timing, result files."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def pin_threads(threads: int = 1) -> None:
    """Benchmarks pin torch threads: on 2 shared cores, 2 threads time 5-20x noisier
    (measured on the 2-core CI machine while other jobs ran)."""
    torch.set_num_threads(threads)


def interleaved_medians(jobs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds per job, runs interleaved (A B C A B C ...) so drift hits all alike."""
    for _ in range(warmup):
        for job in jobs.values():
            job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path
