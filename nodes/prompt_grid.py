"""ProGRPOPromptGrid: sample every prompt of a list with the stock sampler and show one grid per prompt.

The before/after view of a training run: run it on the base MODEL and on the trained one with the
same seed, and each prompt's samples start from identical noise, so what differs is the LoRA.
Sampling goes through ``comfy.sample.sample``, the code path of the stock KSampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.utils
import torch
from comfy_api.latest import io

from progrpo.errors import ProGRPOConfigError
from progrpo.images import pil_to_tensor, titled_grid

from .sampling_inputs import check_grid_sampling, check_image_size, grid_sampling_inputs, prompt_list_inputs
from .sockets import RewardType


def prompt_lines(text: str, input_name: str = "prompts") -> list[str]:
    """Non-empty, stripped lines of a multiline prompt widget; raises naming the input when there are none."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise ProGRPOConfigError(f"{input_name}: no prompts; write one prompt per line.")
    return prompts


def _score(reward: Any, images: torch.Tensor, text: str) -> torch.Tensor:
    """Rewards of one prompt's samples; a reward refusing the prompt text names the prompts input."""
    try:
        return reward.score(images, [text] * len(images)).float().cpu()
    except ProGRPOConfigError as error:
        raise ProGRPOConfigError(f"prompts: the reward cannot score the line {text!r:.80}: {error}",
                                 field=error.field) from None


def _encode(clip: Any, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


@dataclass(frozen=True)
class GridSampling:
    """The stock-sampler settings of :func:`grid_sampling_inputs` with the shared starting noise.

    Every prompt (and every MODEL sampled with these settings) starts from ``noise``: sample ``i`` of any
    prompt gets the same noise, so two models compared with one GridSampling differ only by the model.
    """

    latent: torch.Tensor
    noise: torch.Tensor
    negative: list
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    seed: int

    @classmethod
    def prepare(cls, model: Any, clip: Any, vae: Any, samples_per_prompt: int, width: int, height: int,
                steps: int, cfg: float, sampler_name: str, scheduler: str, seed: int,
                negative_prompt: str) -> GridSampling:
        """Checks the image size against the VAE and draws the seed's noise for ``samples_per_prompt`` images."""
        factor = check_image_size(vae, width, height)
        channels = int(model.get_model_object("latent_format").latent_channels)
        latent = torch.zeros(samples_per_prompt, channels, height // factor, width // factor)
        noise = comfy.sample.prepare_noise(latent, seed)
        return cls(latent, noise, _encode(clip, negative_prompt), steps, cfg, sampler_name, scheduler, seed)

    def sample(self, model: Any, clip: Any, vae: Any, text: str) -> torch.Tensor:
        """The decoded samples of one prompt through ``comfy.sample.sample`` (KSampler's path): [B, 3, H, W]."""
        samples = comfy.sample.sample(model, self.noise, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                      _encode(clip, text), self.negative, self.latent, seed=self.seed,
                                      disable_pbar=True)
        return vae.decode(samples).movedim(-1, 1)[:, :3].float()


class ProGRPOPromptGrid(io.ComfyNode):
    """Samples each prompt ``samples_per_prompt`` times (KSampler's code path) -> one captioned grid per prompt."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOPromptGrid",
            display_name="Pro-GRPO Prompt Grid",
            category="Pro-GRPO/evaluation",
            description=(
                "Samples every prompt (one per line) with the stock sampler and returns one grid image per "
                "prompt, captioned with the reward of each sample when a reward is connected. Run it on the "
                "base and on the trained MODEL with the same seed to compare them on identical noise."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to sample (e.g. before or after training)."),
                *prompt_list_inputs("One prompt per line; each gets its own grid."),
                *grid_sampling_inputs(),
                RewardType.Input("reward", optional=True,
                                 tooltip="Scores each sample; its value captions the tile and goes into scores."),
            ],
            outputs=[
                io.Image.Output(display_name="grids", tooltip="One grid per prompt (a batch of P images)."),
                io.String.Output(display_name="scores",
                                 tooltip="JSON: prompts, per-sample rewards and their mean per prompt."),
            ],
        )

    @classmethod
    def validate_inputs(cls, cfg: float | None = None, sampler_name: str | None = None,
                        scheduler: str | None = None) -> bool | str:
        return check_grid_sampling(cls, cfg, sampler_name, scheduler)

    @classmethod
    def execute(cls, model: Any, clip: Any, vae: Any, prompts: str, samples_per_prompt: int, width: int,
                height: int, steps: int, cfg: float, sampler_name: str, scheduler: str, seed: int,
                negative_prompt: str, reward: Any | None = None) -> io.NodeOutput:
        texts = prompt_lines(prompts)
        sampling = GridSampling.prepare(model, clip, vae, samples_per_prompt, width, height, steps, cfg,
                                        sampler_name, scheduler, seed, negative_prompt)
        bar = comfy.utils.ProgressBar(len(texts))
        grids, scores = [], []
        for index, text in enumerate(texts):
            comfy.model_management.throw_exception_if_processing_interrupted()
            images = sampling.sample(model, clip, vae, text)  # [B, 3, H, W]
            rewards = None if reward is None else _score(reward, images, text)
            captions = None if rewards is None else [f"{float(value):.2f}" for value in rewards]
            title = text if rewards is None else f"{text}  (mean {float(rewards.mean()):.3f})"
            grids.append(pil_to_tensor(titled_grid(images.cpu(), title, captions, columns=min(8, len(images)))))
            scores.append(None if rewards is None else rewards.tolist())
            bar.update_absolute(index + 1, len(texts))
        summary = {
            "prompts": texts,
            "rewards": scores,
            "mean": [None if values is None else sum(values) / len(values) for values in scores],
            "seed": int(seed),
        }
        text = json.dumps(summary)
        return io.NodeOutput(torch.stack(grids).movedim(1, -1), text, ui={"text": [text]})
