"""ProGRPOEvaluation: a held-out prompt list sampled by two MODELs and scored by several rewards.

The paper's out-of-domain table in miniature: every prompt is sampled ``samples_per_prompt`` times by the
base MODEL and by the trained one from identical noise (one seed, the stock KSampler path through
:class:`~.prompt_grid.GridSampling`), and each connected reward scores both image batches. The node
returns a captioned table IMAGE (mean ± std before and after, and the difference; per-prompt means), the
scores as JSON, and both image batches, so any Reward Score node can rescore them.
"""

from __future__ import annotations

import json
from typing import Any

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from progrpo.errors import ProGRPOConfigError
from progrpo.images import pil_to_tensor, stack_vertically, text_table

from .prompt_grid import GridSampling, prompt_lines
from .rewards import reward_name
from .sampling_inputs import check_grid_sampling, grid_sampling_inputs, prompt_list_inputs
from .sockets import RewardType

REWARD_INPUTS = ("reward_1", "reward_2", "reward_3", "reward_4")
MODELS = ("before", "after")


def _sample_all(sampling: GridSampling, models: dict[str, Any], clip: Any, vae: Any,
                texts: list[str]) -> dict[str, torch.Tensor]:
    """Each model's samples of every prompt, prompt-major: name -> [P*S, 3, H, W]; Cancel is honoured."""
    bar = comfy.utils.ProgressBar(len(models) * len(texts))
    done, images = 0, {}
    for name, model in models.items():
        batches = []
        for text in texts:
            comfy.model_management.throw_exception_if_processing_interrupted()
            batches.append(sampling.sample(model, clip, vae, text).cpu())
            done += 1
            bar.update_absolute(done, len(models) * len(texts))
        images[name] = torch.cat(batches)
    return images


def _check_latents(model_before: Any, model_after: Any) -> None:
    """Both MODELs must take the same latents (one noise for both); the error names model_after."""
    channels = [int(model.get_model_object("latent_format").latent_channels) for model in (model_before, model_after)]
    if channels[0] != channels[1]:
        raise ProGRPOConfigError(
            f"model_after: its latents have {channels[1]} channels but model_before's have {channels[0]}; compare "
            "two versions of one model (e.g. the base and the Train Loop's model output)."
        )


def _score(reward: Any, input_name: str, images: torch.Tensor, texts: list[str]) -> list[float]:
    """Scores of an IMAGE batch [B, H, W, 3] exactly as ProGRPORewardScore computes them; errors name the input."""
    try:
        scores = torch.as_tensor(reward.score(images.movedim(-1, 1).float(), texts)).float().reshape(-1).cpu()
    except ProGRPOConfigError as error:
        raise ProGRPOConfigError(f"{input_name}: reward '{reward_name(reward, input_name)}' cannot score the samples "
                                 f"of these prompts (check it suits the prompts input): {error}",
                                 field=error.field) from None
    if scores.shape[0] != len(texts):
        raise ProGRPOConfigError(f"{input_name}: the reward gave {scores.shape[0]} scores for {len(texts)} images.")
    if not torch.isfinite(scores).all():
        raise ProGRPOConfigError(f"{input_name}: the reward gave NaN or infinite scores; check the reward model.")
    return scores.tolist()


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    return float(tensor.mean()), float(tensor.std()) if len(values) > 1 else 0.0


def _summary(before: list[float], after: list[float], per_image: list[str]) -> dict[str, Any]:
    """One reward's JSON entry: per-image scores, means, standard deviations, difference, per-prompt means."""
    (before_mean, before_std), (after_mean, after_std) = _stats(before), _stats(after)
    per_prompt: dict[str, dict[str, float]] = {}
    for text in dict.fromkeys(per_image):  # a repeated line pools its samples
        picked = [index for index, other in enumerate(per_image) if other == text]
        per_prompt[text] = {name: _stats([values[index] for index in picked])[0]
                            for name, values in (("before", before), ("after", after))}
    return {"before": before, "after": after, "before_mean": before_mean, "after_mean": after_mean,
            "before_std": before_std, "after_std": after_std, "difference": after_mean - before_mean,
            "per_prompt": per_prompt}


def _names(rewards: dict[str, Any]) -> dict[str, str]:
    """input name -> the reward's display name, made unique by the input name where two rewards share one."""
    names = {key: reward_name(reward, key) for key, reward in rewards.items()}
    counts = {name: list(names.values()).count(name) for name in names.values()}
    return {key: name if counts[name] == 1 else f"{name} ({key})" for key, name in names.items()}


def _table(summary: dict[str, Any]) -> torch.Tensor:
    """The captioned table IMAGE [1, H, W, 3]: one row per reward, then per-prompt means."""
    settings, rewards = summary["settings"], summary["rewards"]
    caption = [
        (f"Pro-GRPO Evaluation: {len(summary['prompts'])} prompts x {settings['samples_per_prompt']} samples, "
         f"{settings['width']}x{settings['height']}, seed {settings['seed']}"),
        (f"{settings['steps']} steps, cfg {settings['cfg']:g}, {settings['sampler_name']} / {settings['scheduler']}; "
         "mean ± std over all images"),
    ]
    rows = [[name, f"{entry['before_mean']:.4g} ± {entry['before_std']:.3g}",
             f"{entry['after_mean']:.4g} ± {entry['after_std']:.3g}", f"{entry['difference']:+.4g}"]
            for name, entry in rewards.items()]
    overall = text_table(caption, ["reward", "before", "after", "difference"], rows)
    prompts = list(dict.fromkeys(summary["prompts"]))
    per_prompt = [[f"{text:.48}", *(f"{entry['per_prompt'][text]['before']:.4g} -> "
                                     f"{entry['per_prompt'][text]['after']:.4g}" for entry in rewards.values())]
                  for text in prompts]
    detail = text_table(["per prompt: mean before -> after"], ["prompt", *(f"{name:.40}" for name in rewards)],
                        per_prompt)
    return pil_to_tensor(stack_vertically([overall, detail])).movedim(0, -1).unsqueeze(0)


class ProGRPOEvaluation(io.ComfyNode):
    """Held-out prompts sampled by a base and a trained MODEL on identical noise, scored by up to four rewards."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        reward_tip = "Scores both image batches; its name labels a table row and a JSON entry."
        return io.Schema(
            node_id="ProGRPOEvaluation",
            display_name="Pro-GRPO Evaluation",
            category="Pro-GRPO/evaluation",
            description=(
                "Samples a held-out prompt list with the base and the trained MODEL from identical noise (the "
                "stock sampler, one seed) and scores both with up to four rewards: a captioned table (mean +- "
                "std before and after, difference, per-prompt means), the scores as JSON, and both image batches."
            ),
            inputs=[
                io.Model.Input("model_before", tooltip="The base MODEL (before training)."),
                io.Model.Input("model_after", tooltip="The trained MODEL (e.g. the Train Loop's model output)."),
                *prompt_list_inputs("The held-out prompts, one per line (prompts the model was not trained on)."),
                RewardType.Input("reward_1", tooltip=reward_tip),
                RewardType.Input("reward_2", optional=True, tooltip=reward_tip),
                RewardType.Input("reward_3", optional=True, tooltip=reward_tip),
                RewardType.Input("reward_4", optional=True, tooltip=reward_tip),
                *grid_sampling_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="table",
                                tooltip="One image: per reward mean +- std before and after and the difference, "
                                "then per-prompt means, captioned with the settings."),
                io.String.Output(display_name="json",
                                 tooltip="JSON: prompts, per reward the per-image scores before/after (prompt-major), "
                                 "means, stds, difference and per-prompt means, and the settings."),
                io.Image.Output(display_name="images_before",
                                tooltip="The base MODEL's samples, prompt-major (prompt 1's samples first)."),
                io.Image.Output(display_name="images_after",
                                tooltip="The trained MODEL's samples, in the same order and from the same noise."),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompts: str | None = None, cfg: float | None = None, sampler_name: str | None = None,
                        scheduler: str | None = None) -> bool | str:
        if isinstance(prompts, str) and not prompts.strip():
            return "prompts: no prompts; write one held-out prompt per line."
        return check_grid_sampling(cls, cfg, sampler_name, scheduler)

    @classmethod
    def execute(cls, model_before: Any, model_after: Any, clip: Any, vae: Any, prompts: str, reward_1: Any,
                samples_per_prompt: int, width: int, height: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, seed: int, negative_prompt: str, reward_2: Any | None = None,
                reward_3: Any | None = None, reward_4: Any | None = None) -> io.NodeOutput:
        texts = prompt_lines(prompts)
        given = dict(zip(REWARD_INPUTS, (reward_1, reward_2, reward_3, reward_4), strict=True))
        rewards = {key: reward for key, reward in given.items() if reward is not None}
        _check_latents(model_before, model_after)
        sampling = GridSampling.prepare(model_before, clip, vae, samples_per_prompt, width, height, steps, cfg,
                                        sampler_name, scheduler, seed, negative_prompt)
        images = _sample_all(sampling, dict(zip(MODELS, (model_before, model_after), strict=True)), clip, vae, texts)
        outputs = {name: batch.movedim(1, -1) for name, batch in images.items()}  # IMAGE [P*S, H, W, 3]
        per_image = [text for text in texts for _ in range(samples_per_prompt)]
        names = _names(rewards)
        summary = {
            "prompts": texts,
            "rewards": {names[key]: _summary(*(_score(reward, key, outputs[name], per_image) for name in MODELS),
                                             per_image) for key, reward in rewards.items()},
            "settings": {"samples_per_prompt": int(samples_per_prompt), "seed": int(seed), "steps": int(steps),
                         "cfg": float(cfg), "sampler_name": sampler_name, "scheduler": scheduler,
                         "width": int(width), "height": int(height), "negative_prompt": negative_prompt},
        }
        text = json.dumps(summary)
        return io.NodeOutput(_table(summary), text, outputs["before"], outputs["after"], ui={"text": [text]})
