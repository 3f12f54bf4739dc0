"""The exact denoiser of Gaussian data, a model whose ideal predictions are known in closed form.

For data ``x0 ~ N(m, Sigma)`` and ``x = a*x0 + s*eps``, ``E[x0 | x] = m + a Sigma (a^2 Sigma +
s^2 I)^-1 (x - a m)``. A sampler driven by this denoiser must reproduce ``N(m, Sigma)`` exactly in
the continuous-time limit, which is what the marginal-preservation tests check. Latents are
[B, D, 1, 1] so the same code path as image latents runs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from progrpo.denoisers.base import Conditioning
from progrpo.schedule import Schedule, flow_schedule, schedule_from_scheduler


class GaussianDenoiser:
    """Implements :class:`progrpo.denoisers.base.Denoiser` for Gaussian data (no network)."""

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, kind: str = "flow", prediction_type: str | None = None,
                 shift: float = 1.0):
        self.mean = mean.double()
        self.covariance = covariance.double()
        self.kind = kind
        self.prediction_type = prediction_type or ("flow" if kind == "flow" else "epsilon")
        self.shift = shift
        self.calls = 0
        self._schedule: Schedule | None = None

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (self.mean.shape[0], 1, 1)

    def schedule(self, num_steps: int, latent_shape: Sequence[int]) -> Schedule:
        if self.kind == "flow":
            sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
            schedule = flow_schedule(sigmas, torch.arange(num_steps, dtype=torch.float32))
        else:
            from diffusers import DDIMScheduler

            scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                      clip_sample=False, set_alpha_to_one=True, prediction_type=self.prediction_type,
                                      timestep_spacing="trailing")
            base = schedule_from_scheduler(scheduler, num_steps)
            schedule = Schedule(base.alpha, base.sigma, base.alpha_next, base.sigma_next,
                                torch.arange(num_steps, dtype=torch.float32), "vp", self.prediction_type)
        self._schedule = schedule
        return schedule

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str | None = "") -> Conditioning:
        return Conditioning(positive={"row": torch.zeros(len(prompts), 1)}, prompts=list(prompts))

    def posterior_mean(self, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x] for rows [B, D, 1, 1] with per-row coefficients alpha, sigma [B]."""
        x = sample.flatten(1).double()
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        out = torch.empty_like(x)
        pairs = torch.stack([alpha.double(), sigma.double()], dim=1)
        for pair in torch.unique(pairs, dim=0):  # rows at the same step share one gain matrix
            rows = (pairs == pair).all(dim=1)
            a, s = pair
            gain = a * self.covariance @ torch.linalg.inv(a * a * self.covariance + s * s * eye)
            out[rows] = self.mean + (x[rows] - a * self.mean) @ gain.T
        return out.reshape(sample.shape)

    def predict(self, sample, timestep, conditioning, guidance_scale):
        assert self._schedule is not None
        self.calls += 1
        index = timestep.long()
        alpha = self._schedule.alpha[index].double().reshape(-1, 1, 1, 1)
        sigma = self._schedule.sigma[index].double().reshape(-1, 1, 1, 1)
        x0 = self.posterior_mean(sample, alpha.flatten(), sigma.flatten())
        eps = (sample.double() - alpha * x0) / sigma
        outputs = {
            "flow": eps - x0,
            "epsilon": eps,
            "sample": x0,
            "v_prediction": alpha * eps - sigma * x0,
        }
        return outputs[self.prediction_type].float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A grey image whose brightness is a squashed first latent coordinate."""
        value = torch.sigmoid(latents[:, :1].float())
        return value.expand(-1, 3, 4, 4).clone()
