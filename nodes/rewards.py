"""Reward nodes: load a progrpo reward by name, combine two, score an IMAGE batch.

Model rewards read *folders* from ComfyUI's ``rewards`` models folder (``models/rewards/<name>``),
registered by :func:`register_rewards_folder`: folders written by ``python -m progrpo
convert-reward`` (PickScore, HPSv2.1, ImageReward, aesthetic; ``progrpo_reward.json`` names the
kind) or plain transformers CLIPModel folders; an aesthetic head may also be a file there. Model
rewards run on ComfyUI's torch device unless the ``device`` input says otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import folder_paths
import torch
from comfy_api.latest import io

from progrpo.errors import ProGRPOConfigError
from progrpo.rewards import REWARDS, WeightedSum, build_reward
from progrpo.rewards.reward_folder import read_reward_config
from progrpo.rewards.runtime import DEFAULT_BATCH_SIZE, PRECISIONS

from .input_checks import check_choices, check_numbers
from .paths import resolve_inside
from .sockets import RewardType, ScoresType

FOLDER = "rewards"
#: rewards that need a model folder from the rewards models folder.
MODEL_REWARDS = ("aesthetic", "clip_score", "hps", "imagereward", "pickscore")
#: ``device`` choice meaning ComfyUI's torch device (comfy.model_management.get_torch_device()).
COMFY_DEVICE = "comfyui"
#: every reward a user can pick (digit_alignment uses the embedded classifier when no model is given).
REWARD_NAMES = sorted(REWARDS)
NONE = "(none)"
#: head files are loaded only as safetensors (a pickled .pt/.pth could run code when unpickled).
HEAD_EXTENSIONS = {".safetensors"}


def register_rewards_folder() -> None:
    """Add ``models/rewards`` to ComfyUI's model folders (idempotent; extra_model_paths may add more)."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], HEAD_EXTENSIONS)


def _roots() -> list[str]:
    register_rewards_folder()
    return list(folder_paths.get_folder_paths(FOLDER))


def reward_entries() -> list[str]:
    """Subfolders and head files of every rewards folder, by name ("(none)" first)."""
    names: set[str] = set()
    for root in _roots():
        if os.path.isdir(root):
            for entry in os.listdir(root):
                path = os.path.join(root, entry)
                if os.path.isdir(path) or os.path.splitext(entry)[1] in HEAD_EXTENSIONS:
                    names.add(entry)
    return [NONE, *sorted(names)]


def resolve_entry(name: str, input_name: str) -> str:
    """Absolute path of rewards-folder entry ``name`` (never outside the folder); errors name the input."""
    path = resolve_inside(_roots(), name, input_name, must_exist=False)
    if not path.exists():
        expected = " or ".join(_roots())
        raise ProGRPOConfigError(
            f"{input_name}: '{name}' was not found in the rewards folder ({expected}); put the folder written by "
            "`python -m progrpo convert-reward` (or a CLIPModel folder, or the aesthetic head file) there and refresh "
            "the page."
        )
    if input_name == "aesthetic_head" and (path.is_dir() or path.suffix.lower() not in HEAD_EXTENSIONS):
        raise ProGRPOConfigError(
            f"{input_name}: '{name}' is not a .safetensors file; only safetensors heads are loaded (a pickled "
            ".pt/.pth can run code). Convert it once: python -m progrpo convert-reward aesthetic HEAD.pth "
            "models/rewards/aesthetic --backbone CLIP_FOLDER, then pick that folder as model."
        )
    if input_name == "model" and not path.is_dir():
        raise ProGRPOConfigError(
            f"{input_name}: '{name}' is a file; pick a model folder from the rewards folder (written by "
            "`python -m progrpo convert-reward`, or a CLIPModel folder with config.json + model.safetensors)."
        )
    return str(path)


def _check_choice(reward: str | None, model: str | None, head: str | None) -> str | None:
    """The error text for a reward/model/head choice, or None when it is fine (queue-time check)."""
    if reward is not None and reward not in REWARD_NAMES:  # a list: any JSON value may be tested
        return f"reward: '{reward}' is unknown; use one of {', '.join(REWARD_NAMES)}."
    if reward in MODEL_REWARDS and model in (None, NONE, ""):
        return (f"model: reward '{reward}' needs a model folder; put one written by `python -m progrpo convert-reward` "
                f"in the rewards folder ({' or '.join(_roots())}) and pick it here.")
    try:
        folder = resolve_entry(model, "model") if model not in (None, NONE, "") else None
        if head not in (None, NONE, ""):
            resolve_entry(head, "aesthetic_head")
        elif reward == "aesthetic" and not _names_head(folder):
            return ("aesthetic_head: the aesthetic reward needs its MLP head; pick the head file from the rewards "
                    "folder, or a folder written by `python -m progrpo convert-reward aesthetic` as model.")
    except ProGRPOConfigError as error:
        return str(error)
    return None


def _names_head(folder: str | None) -> bool:
    """Whether ``folder`` is a converted aesthetic folder (its progrpo_reward.json names the head)."""
    config = read_reward_config(folder) if folder is not None and os.path.isdir(folder) else None
    return config is not None and "head" in config


def device_choices() -> list[str]:
    """``comfyui`` (ComfyUI's device), ``cpu`` and every CUDA device of this machine."""
    return [COMFY_DEVICE, "cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]


def resolve_device_choice(device: str | None) -> str:
    """The torch device name for a ``device`` input (``comfyui``: ComfyUI's torch device)."""
    if device in (None, "", COMFY_DEVICE):
        import comfy.model_management

        return str(comfy.model_management.get_torch_device())
    return str(device)


def reward_name(reward: Any, fallback: str) -> str:
    """The name a reward shows in tables and logs (its ``name``: the Loader's reward, the Combine's sum)."""
    name = getattr(reward, "name", None)
    return name if isinstance(name, str) and name else fallback


class ProGRPORewardLoader(io.ComfyNode):
    """Builds a progrpo reward by name (weight-free, or from the rewards models folder)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPORewardLoader",
            display_name="Pro-GRPO Reward Loader",
            category="Pro-GRPO/rewards",
            description="A reward for Pro-GRPO sampling and training: image statistics, JPEG size, the embedded "
            "digit classifier, or a reward model (PickScore, HPSv2.1, ImageReward, LAION aesthetic, CLIP score) from "
            "models/rewards, converted once with `python -m progrpo convert-reward`.",
            inputs=[
                io.Combo.Input("reward", options=REWARD_NAMES, default="brightness",
                               tooltip="Which reward. clip_score, pickscore, hps (HPSv2.1), imagereward and aesthetic "
                               "need a model folder in models/rewards (python -m progrpo convert-reward writes one)."),
                io.Combo.Input("model", options=reward_entries(), default=NONE,
                               tooltip="Model folder in models/rewards for the model rewards (a convert-reward folder or "
                               "a CLIPModel folder); digit_alignment uses its embedded classifier when (none)."),
                io.Combo.Input("aesthetic_head", options=reward_entries(), default=NONE,
                               tooltip="The aesthetic reward's MLP head file in models/rewards (aesthetic only; leave "
                               "(none) when model is a folder written by convert-reward aesthetic)."),
                io.Float.Input("weight", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Multiplies the reward (negative to minimise it)."),
                io.Combo.Input("device", options=device_choices(), default=COMFY_DEVICE, optional=True,
                               tooltip="Where the reward model runs: comfyui = ComfyUI's device (the GPU when there is "
                               "one), or cpu / a given GPU. Weight-free rewards ignore it."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", optional=True,
                               tooltip="Reward model precision: auto = bf16 (or fp16) on a GPU, fp32 on the CPU; "
                               "scores are always returned in fp32."),
                io.Int.Input("batch_size", default=DEFAULT_BATCH_SIZE, min=1, max=1024, optional=True,
                             tooltip="Images the reward model scores per call (lower it if the GPU runs out of memory)."),
            ],
            outputs=[RewardType.Output(display_name="reward", tooltip="The reward, for samplers and score nodes.")],
        )

    @classmethod
    def validate_inputs(cls, reward: str | None = None, model: str | None = None,
                        aesthetic_head: str | None = None, weight: float | None = None, device: str | None = None,
                        precision: str | None = None) -> bool | str:
        # Declaring model/aesthetic_head here makes ComfyUI skip its own "value not in list" check, so a
        # missing file gets our message naming the folder. ComfyUI 0.3.75 checks no V3 combo value, so
        # device and precision are checked here; batch_size keeps ComfyUI's integer range check.
        problem = _check_choice(reward, model, aesthetic_head)
        if problem:
            return problem
        for checked in (check_choices(cls, device=device, precision=precision), check_numbers(cls, weight=weight)):
            if checked is not True:
                return checked
        return True

    @classmethod
    def execute(cls, reward: str, model: str, aesthetic_head: str, weight: float, device: str = COMFY_DEVICE,
                precision: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE) -> io.NodeOutput:
        problem = _check_choice(reward, model, aesthetic_head)
        for name, value in (("device", device), ("precision", precision)):
            # a JSON null reaches execute unchecked (validate_inputs takes None for a linked input)
            checked = check_choices(cls, **{name: value}) if value is not None else f"{name}: a value is required."
            problem = problem or (checked if checked is not True else None)
        if problem:
            raise ProGRPOConfigError(problem)
        options: dict[str, Any] = {}
        # weight-free rewards take no files: a model left selected from another reward is ignored.
        if model not in (None, NONE, "") and (reward in MODEL_REWARDS or reward == "digit_alignment"):
            options["path"] = resolve_entry(model, "model")
        if reward == "aesthetic" and aesthetic_head not in (None, NONE, ""):
            options["head"] = resolve_entry(aesthetic_head, "aesthetic_head")
        if reward in MODEL_REWARDS:
            options.update(device=resolve_device_choice(device), precision=precision, batch_size=int(batch_size))
        built = build_reward(reward, **options)
        return io.NodeOutput(built if weight == 1.0 else WeightedSum({reward: built}, {reward: float(weight)}))


class ProGRPORewardCombine(io.ComfyNode):
    """Weighted sum of two rewards."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPORewardCombine",
            display_name="Pro-GRPO Reward Combine",
            category="Pro-GRPO/rewards",
            description="weight_a * reward_a + weight_b * reward_b.",
            inputs=[
                RewardType.Input("reward_a", tooltip="First reward."),
                io.Float.Input("weight_a", default=1.0, min=-100.0, max=100.0, step=0.01, tooltip="Weight of reward_a."),
                RewardType.Input("reward_b", tooltip="Second reward."),
                io.Float.Input("weight_b", default=1.0, min=-100.0, max=100.0, step=0.01, tooltip="Weight of reward_b."),
            ],
            outputs=[RewardType.Output(display_name="reward", tooltip="The weighted sum.")],
        )

    @classmethod
    def validate_inputs(cls, weight_a: float | None = None, weight_b: float | None = None) -> bool | str:
        return check_numbers(cls, weight_a=weight_a, weight_b=weight_b)  # NaN passes ComfyUI's range check

    @classmethod
    def execute(cls, reward_a: Any, weight_a: float, reward_b: Any, weight_b: float) -> io.NodeOutput:
        combined = WeightedSum({"a": reward_a, "b": reward_b}, {"a": float(weight_a), "b": float(weight_b)})
        names = reward_name(reward_a, "a"), reward_name(reward_b, "b")
        combined.name = f"{float(weight_a):g}*{names[0]} + {float(weight_b):g}*{names[1]}"
        return io.NodeOutput(combined)


def split_prompts(prompts: str, count: int) -> list[str]:
    """One prompt per line for ``count`` images, or one line for all; error names ``prompts``."""
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    if not lines:
        return [""] * count
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise ProGRPOConfigError(
            f"prompts: {len(lines)} lines for {count} images; give one line per image or a single line for all."
        )
    return lines


class ProGRPORewardScore(io.ComfyNode):
    """Scores an IMAGE batch with a reward."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPORewardScore",
            display_name="Pro-GRPO Reward Score",
            category="Pro-GRPO/rewards",
            description="Scores every image of a batch with a reward; the scores feed the OVF filter.",
            inputs=[
                io.Image.Input("images", tooltip="The images to score (a batch)."),
                RewardType.Input("reward", tooltip="The reward, from Pro-GRPO Reward Loader."),
                io.String.Input("prompts", default="", multiline=True,
                                tooltip="One prompt per line (one per image), or one line for all images; text-aware "
                                "rewards read it."),
            ],
            outputs=[
                ScoresType.Output(display_name="scores", tooltip="One score per image (for Pro-GRPO OVF Filter)."),
                io.String.Output(display_name="text", tooltip="'index: score' per image, for Preview Any."),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, reward: Any, prompts: str) -> io.NodeOutput:
        texts = split_prompts(prompts, images.shape[0])
        scores = torch.as_tensor(reward.score(images.movedim(-1, 1).float(), texts)).float().reshape(-1).cpu()
        text = "\n".join(f"{i}: {value:.6g}" for i, value in enumerate(scores.tolist()))
        return io.NodeOutput(scores, text)
