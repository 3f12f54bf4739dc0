"""Shared test set-up: one torch thread (the CI machine has 2 shared cores), helpers importable."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
torch.set_num_threads(1)
