"""The diffusers denoiser's cached (device, dtype) follows moves and casts of its network."""

from __future__ import annotations

import torch

from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
from progrpo.tiny_models import tiny_sd_pipeline


def test_device_and_dtype_follow_a_cast_of_the_network():
    denoiser = denoiser_from_pipeline(tiny_sd_pipeline(seed=0))
    assert denoiser.dtype == torch.float32 and denoiser.device == torch.device("cpu")
    conditioning = denoiser.encode_prompts(["a photo of a cat"], "")
    sample = torch.randn(1, 4, 16, 16)
    denoiser.network.to(torch.float64)  # invalidates the cache: the first parameter's dtype changed
    assert denoiser.dtype == torch.float64
    output = denoiser.predict(sample, torch.tensor([500.0]), conditioning, 3.0)
    assert output.dtype == torch.float32 and output.shape == sample.shape
    denoiser.network.to(torch.float32)
    assert denoiser.dtype == torch.float32
