"""progrpo's Denoiser over a ComfyUI MODEL, evaluated through ComfyUI's own sampling machinery.

Every :meth:`ComfyDenoiser.predict` is one ``comfy.samplers.CFGGuider.sample`` call whose sampler
(:class:`_SingleEvaluation`) evaluates the guided model once and keeps its output. So
conditioning processing, CFG (``sampling_function``), hooks, wrappers, ``model_options`` patches
(e.g. RescaleCFG, ModelSamplingSD3 shift) and model loading all behave exactly as in KSampler.
ComfyUI's model function returns the guided clean-sample estimate x0 ("denoised").

Coordinates (progrpo's rollout state is ``x = alpha * x0 + sigma * eps`` in the model's latent
space, i.e. after ``process_latent_in``):

* flow models (``model_sampling`` is CONST: SD3, Flux, flow UNets): ComfyUI's state is already
  ``(1 - s) x0 + s eps``, so the schedule is ``flow_schedule(sigmas, sigmas[:-1])`` and the
  prediction is the velocity ``v = (x - x0) / s`` (what ComfyUI's Euler step uses).
* eps / v models (EPS and its subclasses V_PREDICTION, EDM, X0: SD1.x, SDXL): ComfyUI
  (k-diffusion) samples ``x_k = x0 + s eps``, for SD1.x ``s = sqrt((1 - abar) / abar)``.
  Dividing by ``sqrt(1 + s^2)`` gives the variance-preserving state ``x = x_k / sqrt(1 + s^2)``
  with ``alpha = 1 / sqrt(1 + s^2)`` (= sqrt(abar)) and ``sigma = s / sqrt(1 + s^2)``; for
  sigma_data = 1 it is exactly what the network sees (ComfyUI's ``calculate_input``). The
  prediction is x0 itself (prediction type "sample"). DDIM with eta 0 on this schedule is
  ComfyUI's Euler sampler, step for step.

Precision: the flow velocity is recovered from ComfyUI's fp32 x0, so it carries x0's rounding
times 1/s (about 4e-4 at s = 0.001); the Euler/SDE step ``x + dt * v`` is unaffected (dt ~ s), and
log-probs agree with diffusers to 2e-5 there (tests/in_comfyui/test_comfy_backend.py).

``Schedule.timesteps`` hold ComfyUI sigmas (what ``predict`` passes to the model). Rollouts
start from N(0, I), which is ComfyUI's start when the first sigma is the model's sigma_max
(its "max denoise" case: every stock scheduler except ddim_uniform). ComfyUI schedules end at
sigma 0, so a DDIM/CPS step into it is deterministic (std 0, log-prob 0, no policy gradient).

Not handled here: latents with a ``noise_mask`` (inpainting) and gradients inside a running
server, whose ``torch.inference_mode`` makes loaded weights inference tensors
(docs/comfyui_internals.md): the training node must clone them and run under ``inference_mode(False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import comfy.model_sampling
import comfy.samplers
import torch

from progrpo.denoisers.base import (
    Conditioning,
    guidance_branches,
    policy_prediction,
    row_timesteps,
    to_k_diffusion_state,
)
from progrpo.errors import ProGRPOConfigError
from progrpo.schedule import Schedule, flow_schedule

from .comfy_conditioning import ComfyConditioning, PromptTable, is_conditioning

#: name of the Conditioning input holding per-row indices into the denoiser's prompt table.
ROW_KEY = "comfy_prompt"


class _SingleEvaluation(comfy.samplers.Sampler):
    """A ComfyUI Sampler that calls the guided model once at per-row sigmas and keeps x0.

    ``CFGGuider.sample`` passes the latent it is given as ``noise`` unchanged (only KSAMPLER
    rescales it), so ``noise`` is the model-space state. The return value is discarded.
    """

    def __init__(self, sigma: torch.Tensor) -> None:
        self.sigma = sigma
        self.denoised: torch.Tensor | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.denoised = model_wrap(noise, self.sigma.to(noise.device), **extra_args)
        return noise


def schedule_kind(model_sampling: Any) -> str:
    """``"flow"`` or ``"vp"`` from how ComfyUI noises a latent (its ``noise_scaling``); raise otherwise.

    The coordinate mapping relies only on that: CONST's ``s * noise + (1 - s) * x0`` is flow,
    EPS's ``x0 + s * noise`` (inherited by V_PREDICTION, EDM, X0, ...) is the k-diffusion state.
    """
    scaling = type(model_sampling).noise_scaling
    if scaling is comfy.model_sampling.CONST.noise_scaling:
        return "flow"
    if scaling is comfy.model_sampling.EPS.noise_scaling:
        return "vp"
    raise ProGRPOConfigError(
        f"this MODEL's sampling type {type(model_sampling).__name__} is not supported by Pro-GRPO; use an "
        "eps/v-prediction model (SD1.x, SDXL) or a flow model (SD3, Flux, ModelSamplingSD3/Flux patched)."
    )


def schedule_from_sigmas(kind: str, sigmas: torch.Tensor) -> Schedule:
    """progrpo Schedule of ComfyUI sigmas [N+1] for a ``"flow"`` or ``"vp"`` model (module docstring)."""
    sigmas = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64)
    if kind == "flow":
        return flow_schedule(sigmas.to(torch.float32), sigmas[:-1].to(torch.float32))
    scale = (1.0 + sigmas.square()).rsqrt()  # alpha of the variance-preserving state
    sigma_vp = sigmas * scale
    return Schedule(
        alpha=scale[:-1].float(),
        sigma=sigma_vp[:-1].float(),
        alpha_next=scale[1:].float(),
        sigma_next=sigma_vp[1:].float(),
        timesteps=sigmas[:-1].float(),
        kind="vp",
        prediction_type="sample",
    )


class ComfyDenoiser:
    """:class:`progrpo.denoisers.base.Denoiser` on a ComfyUI MODEL (``comfy.model_patcher.ModelPatcher``).

    Args:
        model: the MODEL as ComfyUI nodes pass it (LoRAs, model_options and sampling patches apply).
        vae: a ComfyUI VAE for ``decode``; ``None`` means the model works in pixel space ([-1, 1],
            1 or 3 channels, decoded by ``(x + 1) / 2``).
        clip: a ComfyUI CLIP; only needed for :meth:`encode_prompts` (text -> CONDITIONING).
        scheduler: a ComfyUI scheduler name (``comfy.samplers.SCHEDULER_NAMES``) for :meth:`schedule`.
        sigmas: explicit ComfyUI sigmas [N+1] ending in 0 (a SIGMAS socket); overrides ``scheduler``.
        seed: passed to ComfyUI as the sampling seed (only seed-dependent model patches read it).

    Conditioning: prompts are ComfyUI CONDITIONINGs registered in a prompt table; a progrpo
    :class:`Conditioning` built by :meth:`conditioning` or :meth:`encode_prompts` holds, under
    ``ROW_KEY``, the table index of each row ([P] on ``self.device``), so ``Conditioning.take``
    and pruning work unchanged and every model call gets exactly its rows' prompts.
    """

    def __init__(
        self,
        model: Any,
        vae: Any | None = None,
        clip: Any | None = None,
        scheduler: str = "normal",
        sigmas: torch.Tensor | None = None,
        seed: int = 0,
        guidance: float | None = None,
    ) -> None:
        if scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise ProGRPOConfigError(
                f"scheduler {scheduler!r} is unknown; use one of {list(comfy.samplers.SCHEDULER_NAMES)}."
            )
        self.model = model
        self.vae = vae
        self.clip = clip
        self.scheduler = scheduler
        self.sigmas = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).cpu().reshape(-1)
        self.seed = int(seed)
        #: guidance strength for guidance-distilled models (Flux.1-dev, Flux.2), set on every CONDITIONING that
        #: has none, as the stock FluxGuidance node sets it; None leaves the conditioning as it is
        self.guidance = None if guidance is None else float(guidance)
        self.kind = schedule_kind(model.get_model_object("model_sampling"))
        self.prompts = PromptTable()
        self._text_rows: dict[str, int] = {}
        self._sample_sigmas: torch.Tensor | None = None

    # --- properties ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where ComfyUI runs the model (rollout latents live here)."""
        return torch.device(self.model.load_device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model_dtype()

    @property
    def latent_format(self) -> Any:
        return self.model.model.latent_format

    @property
    def video_latents(self) -> bool:
        """ComfyUI keeps this model's latents 5-D [B, C, T, H, W] (Qwen-Image's Wan 2.1 format); progrpo's are
        [B, C, H, W] with T = 1, so the time axis is added at the model, VAE and LATENT boundaries."""
        return int(getattr(self.latent_format, "latent_dimensions", 2)) == 3

    # --- the Denoiser protocol ------------------------------------------------------------------

    def comfy_sigmas(self, num_steps: int) -> torch.Tensor:
        """ComfyUI sigmas float64 [N+1] (last 0): the explicit ones, or the scheduler's for this model."""
        if int(num_steps) < 1:
            raise ProGRPOConfigError(f"num_steps={num_steps} must be >= 1.")
        if self.sigmas is not None:
            sigmas = self.sigmas
            if sigmas.shape[0] != int(num_steps) + 1:
                raise ProGRPOConfigError(
                    f"the given sigmas have {sigmas.shape[0]} entries, i.e. {sigmas.shape[0] - 1} steps, but "
                    f"num_steps={num_steps}; set steps to {sigmas.shape[0] - 1} or pass matching sigmas."
                )
        else:
            model_sampling = self.model.get_model_object("model_sampling")
            sigmas = comfy.samplers.calculate_sigmas(model_sampling, self.scheduler, int(num_steps))
            sigmas = sigmas.detach().to(device="cpu", dtype=torch.float64)
            if sigmas.shape[0] != int(num_steps) + 1:
                # ddim_uniform does this when 1000 is not a multiple of steps (6 steps -> 7 sigmas).
                raise ProGRPOConfigError(
                    f"scheduler {self.scheduler!r} gives {sigmas.shape[0] - 1} steps for steps={num_steps} on this "
                    "model; choose a step count it honours (for ddim_uniform one that divides 1000) or another "
                    "scheduler."
                )
        if float(sigmas[-1]) != 0.0 or bool((sigmas[1:] >= sigmas[:-1]).any()):
            raise ProGRPOConfigError(
                f"sigmas {[round(float(s), 4) for s in sigmas]} must strictly decrease to 0; use a stock "
                "scheduler or end custom sigmas with 0."
            )
        return sigmas

    def schedule(self, num_steps: int, latent_shape: Sequence[int] = ()) -> Schedule:
        """Schedule of ``num_steps`` steps (see the module docstring for the coordinates).

        ``latent_shape`` is accepted for the protocol; ComfyUI's schedules do not depend on it.
        """
        sigmas = self.comfy_sigmas(num_steps)
        self._sample_sigmas = sigmas.to(torch.float32)
        return schedule_from_sigmas(self.kind, sigmas)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent (C, H, W): C from the model's latent format, H, W divided by the VAE's factor (1 without)."""
        factor = 1 if self.vae is None else int(self.vae.spacial_compression_decode())
        for name, size in (("height", height), ("width", width)):
            if int(size) <= 0 or int(size) % factor:
                raise ProGRPOConfigError(
                    f"{name}={size} must be a positive multiple of {factor} (the VAE's downscale factor); "
                    f"use e.g. {max(factor, int(size) // factor * factor)}."
                )
        return (int(self.latent_format.latent_channels), int(height) // factor, int(width) // factor)

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str | None = "") -> Conditioning:
        """Encode P prompts (and one shared negative, or none) with ``clip`` as CLIPTextEncode does."""
        if self.clip is None:
            raise ProGRPOConfigError(
                "this ComfyDenoiser has no CLIP, so it cannot encode text; pass clip=, or build the "
                "Conditioning from CONDITIONING inputs with ComfyDenoiser.conditioning(positive, negative)."
            )
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ProGRPOConfigError("prompts is empty; pass at least one prompt.")
        positive = [self._text_row(text) for text in prompts]
        negative = None if negative_prompt is None else [self._text_row(negative_prompt)]
        return self._rows_conditioning(positive, negative, prompts)

    def predict(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guided prediction float32 [B,C,H,W]: x0 ("vp") or velocity ("flow") for sample [B,C,H,W].

        ``timestep``: [B] (or one) ComfyUI sigmas, i.e. ``Schedule.timesteps`` entries. Rows may be
        at different sigmas, except that ComfyUI reads the first row's sigma for conditioning
        start/end percentages. Gradients flow (nothing here disables autograd).
        """
        rows = self._check_sample(sample, conditioning)
        sigma = row_timesteps(timestep, rows, sample.device)
        guided = guidance_branches(guidance_scale, conditioning) == 2
        conds = {"positive": self.prompts.select(conditioning.positive[ROW_KEY])}
        if guided:
            conds["negative"] = self.prompts.select(conditioning.negative[ROW_KEY])
        state = sample.float()
        sigma_rows = sigma.reshape(-1, *([1] * (state.ndim - 1)))
        model_input = to_k_diffusion_state(self.kind, state, sigma_rows)
        denoised = self._denoise(model_input, sigma, conds, float(guidance_scale) if guided else 1.0)
        return policy_prediction(self.kind, state, denoised.float().to(state.device), sigma_rows)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents [B,C,h,w] -> images float32 [B,3,H,W] in [0, 1] (ComfyUI VAE, or pixel space)."""
        if self.vae is None:
            if latents.shape[1] not in (1, 3):
                raise ProGRPOConfigError(
                    f"pixel-space sample has {latents.shape[1]} channels; decoding without a VAE needs 1 or 3. "
                    "Connect the model's VAE."
                )
            return (latents.float() / 2 + 0.5).clamp(0, 1).expand(-1, 3, -1, -1)
        images = self.vae.decode(self.to_comfy_latent(latents))  # [B, H, W, C] ([B, T, H, W, C]) in [0, 1]
        images = images.float().reshape(-1, *images.shape[-3:]).movedim(-1, 1)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]

    # --- ComfyUI side ---------------------------------------------------------------------------

    def conditioning(
        self,
        positive: ComfyConditioning | Sequence[ComfyConditioning],
        negative: ComfyConditioning | Sequence[ComfyConditioning] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> Conditioning:
        """progrpo Conditioning over P prompts from ComfyUI CONDITIONINGs.

        ``positive``: one CONDITIONING (P = 1) or a list of P, one prompt each. ``negative``: one
        (shared), P, or ``None`` (guidance off). ``prompts``: the texts, for rewards that read them.
        """
        positive_rows = [self.prompts.add(self._guided(c)) for c in self._as_list(positive, "positive")]
        negative_rows = None
        if negative is not None:
            negative_rows = [self.prompts.add(self._guided(c)) for c in self._as_list(negative, "negative")]
            if len(negative_rows) not in (1, len(positive_rows)):
                raise ProGRPOConfigError(
                    f"negative has {len(negative_rows)} conditionings for {len(positive_rows)} prompts; pass one "
                    "shared negative or one per prompt."
                )
        texts = list(prompts) if prompts is not None else [""] * len(positive_rows)
        if len(texts) != len(positive_rows):
            raise ProGRPOConfigError(f"prompts has {len(texts)} texts for {len(positive_rows)} conditionings.")
        return self._rows_conditioning(positive_rows, negative_rows, texts)

    def to_comfy_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents [B,C,H,W] -> ComfyUI LATENT ``samples`` (``process_latent_out``; 5-D for video formats)."""
        return self.model.model.process_latent_out(latents.unsqueeze(2) if self.video_latents else latents)

    def from_comfy_latent(self, samples: torch.Tensor) -> torch.Tensor:
        """ComfyUI LATENT ``samples`` -> model-space latents [B,C,H,W] (``process_latent_in``)."""
        if self.video_latents:
            return self.model.model.process_latent_in(samples if samples.ndim == 5 else samples.unsqueeze(2)).squeeze(2)
        return self.model.model.process_latent_in(samples)

    # --- internals ------------------------------------------------------------------------------

    def _denoise(self, model_input: torch.Tensor, sigma: torch.Tensor, conds: dict[str, ComfyConditioning],
                 cfg: float) -> torch.Tensor:
        """One guided model call through CFGGuider.sample -> x0 [B,C,H,W] (ComfyUI's k-diffusion space)."""
        if self.video_latents and model_input.ndim == 4:
            return self._denoise(model_input.unsqueeze(2), sigma, conds, cfg).squeeze(2)
        guider = comfy.samplers.CFGGuider(self.model)
        guider.inner_set_conds(conds)
        guider.set_cfg(cfg)
        evaluation = _SingleEvaluation(sigma)
        sample_sigmas = self._sample_sigmas
        if sample_sigmas is None:  # predict() before schedule(): what patches see as the run's sigmas
            sample_sigmas = torch.cat([sigma.max().reshape(1).cpu(), torch.zeros(1)])
        guider.sample(model_input, torch.zeros_like(model_input), evaluation, sample_sigmas,
                      disable_pbar=True, seed=self.seed)
        assert evaluation.denoised is not None
        return evaluation.denoised

    def _check_sample(self, sample: torch.Tensor, conditioning: Conditioning) -> int:
        if sample.ndim != 4:
            raise ProGRPOConfigError(f"sample has shape {tuple(sample.shape)}; pass latents [B, C, H, W].")
        if ROW_KEY not in conditioning.positive:
            raise ProGRPOConfigError(
                "this Conditioning was not built by a ComfyDenoiser; use its conditioning() or encode_prompts()."
            )
        rows = int(sample.shape[0])
        if conditioning.num_rows != rows:
            raise ProGRPOConfigError(
                f"conditioning has {conditioning.num_rows} rows but sample has {rows}; "
                "select one row per sample with conditioning.take(rows)."
            )
        return rows

    def _text_row(self, text: str) -> int:
        """Table index of ``text`` encoded with ``clip`` (encoded once per distinct text)."""
        if text not in self._text_rows:
            encoded = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
            self._text_rows[text] = self.prompts.add(self._guided(encoded))
        return self._text_rows[text]

    def _guided(self, conditioning: ComfyConditioning) -> ComfyConditioning:
        """``conditioning`` with ``guidance`` set where an entry has none (FluxGuidance upstream wins)."""
        if self.guidance is None or all("guidance" in options for _, options in conditioning):
            return conditioning
        return [[tokens, options if "guidance" in options else {**options, "guidance": self.guidance}]
                for tokens, options in conditioning]

    def _rows_conditioning(self, positive: list[int], negative: list[int] | None, prompts: list[str]) -> Conditioning:
        def rows(indices: list[int]) -> dict[str, torch.Tensor]:
            return {ROW_KEY: torch.tensor(indices, dtype=torch.long, device=self.device)}

        return Conditioning(
            positive=rows(positive),
            negative=None if negative is None else rows(negative),
            prompts=list(prompts),
        )

    @staticmethod
    def _as_list(value: Any, name: str) -> list[ComfyConditioning]:
        if is_conditioning(value):
            return [value]
        if isinstance(value, (list, tuple)) and value and all(is_conditioning(c) for c in value):
            return list(value)
        raise ProGRPOConfigError(
            f"{name} must be a ComfyUI CONDITIONING or a list of them (one per prompt); got {type(value).__name__}."
        )
