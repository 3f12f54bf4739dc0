"""Pro-GRPO: Expand-and-Prune GRPO for diffusion and flow models (arXiv 2512.15347).

The core package: samplers with log-probs, Optimal Variance Filtering, Expand-and-Prune
rollouts, the LoRA GRPO trainer and rewards. It never imports ComfyUI; the nodes in ``nodes/``
are a thin layer over it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .log import logger

__all__ = ["__version__", "logger"]
