"""The shipped digits generators as ComfyUI MODEL / CLIP / VAE (ProGRPOEmbeddedModelLoader).

The generators are diffusers ``UNet2DConditionModel`` s that ComfyUI's own UNet cannot express
(GroupNorm(16), a 48-channel level), so stock detection never finds them. The loader builds the
model as a custom ``comfy.supported_models_base.BASE`` config around the diffusers module:

* a ``BASE`` model config with ``disable_unet_model_creation`` whose model type is FLOW
  (``digits_flow``: ``ModelSamplingDiscreteFlow``, shift 1, timestep = 1000 sigma, as the diffusers
  FlowMatchEulerDiscreteScheduler it was trained with) or EPS (``digits_ddim``: the
  ``squaredcos_cap_v2`` betas of its DDIMScheduler);
* ``diffusion_model`` = the diffusers UNet behind ComfyUI's call signature, with its layers turned
  into ComfyUI's ``comfy.ops`` layers so that weight patches (the stock LoraLoader) and weight
  wrappers (Pro-GRPO training) reach every weight, exactly as on ComfyUI's own models;
* a real ``comfy.sd.CLIP`` around the generator's tokenizer and tiny CLIP text model
  (:class:`progrpo.embedded.text.DigitsTextEncoder`), so the stock CLIPTextEncode encodes prompts;
* a ``comfy.sd.VAE`` in pixel space (the model works on [-1, 1] grey 16x16 images): decode repeats
  the grey channel to RGB (the stock pixel_space VAE would give 1-channel IMAGEs that Save /
  Preview Image reject), encode averages RGB to grey.
"""

from __future__ import annotations

from typing import Any, ClassVar

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models_base
import torch
from comfy_api.latest import io

from progrpo.embedded import EMBEDDED_GENERATORS, embedded_generator_path
from progrpo.embedded.text import DigitsTextEncoder
from progrpo.errors import ProGRPOConfigError

#: diffusers scheduler config -> ComfyUI model type and sampling settings, per scheduler class.
_SAMPLING = {
    "FlowMatchEulerDiscreteScheduler": lambda config: (
        comfy.model_base.ModelType.FLOW,
        {"shift": float(config.get("shift", 1.0)), "multiplier": float(config.get("num_train_timesteps", 1000))},
    ),
    "DDIMScheduler": lambda config: (
        {"epsilon": comfy.model_base.ModelType.EPS,
         "v_prediction": comfy.model_base.ModelType.V_PREDICTION}[config.get("prediction_type", "epsilon")],
        {"timesteps": int(config.get("num_train_timesteps", 1000))},
    ),
}


def _trained_betas(scheduler_config: dict[str, Any]) -> torch.Tensor | None:
    """The betas a VP generator was trained with (its diffusers scheduler's), or None for flow models.

    Handed to ComfyUI as given betas rather than as a ``beta_schedule`` name: ComfyUI 0.3.75's
    ``squaredcos_cap_v2`` branch returns a numpy array and model creation fails, and the scheduler's
    own float32 betas are the ones the model saw in training anyway.
    """
    if scheduler_config["_class_name"] != "DDIMScheduler":
        return None
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler_config).betas.double()


class GreyPixelLatent(comfy.latent_formats.LatentFormat):
    """Pixel-space grey latents: 1 channel in [-1, 1], previewed as grey by Latent2RGB."""

    latent_channels = 1
    scale_factor = 1.0

    def __init__(self) -> None:
        self.latent_rgb_factors = [[1.0, 1.0, 1.0]]
        self.latent_rgb_factors_bias = [0.0, 0.0, 0.0]


class _EmbeddedModelConfig(comfy.supported_models_base.BASE):
    """Model config of a shipped generator; ``unet_config`` is never matched by stock detection."""

    unet_extra_config: ClassVar[dict[str, Any]] = {}
    latent_format = GreyPixelLatent
    supported_inference_dtypes: ClassVar[list[torch.dtype]] = [torch.float32]
    memory_usage_factor = 1.0

    def __init__(self, model_type: Any, sampling_settings: dict[str, Any], in_channels: int) -> None:
        self.sampling_settings = sampling_settings
        super().__init__({"disable_unet_model_creation": True, "in_channels": in_channels})
        self._model_type = model_type

    def model_type(self, state_dict: Any, prefix: str = "") -> Any:
        return self._model_type

    def inpaint_model(self) -> bool:
        return False


#: torch layer class -> the ComfyUI op class ComfyUI builds its own models from (same parameters).
_COMFY_OPS = {
    torch.nn.Linear: comfy.ops.disable_weight_init.Linear,
    torch.nn.Conv2d: comfy.ops.disable_weight_init.Conv2d,
    torch.nn.GroupNorm: comfy.ops.disable_weight_init.GroupNorm,
    torch.nn.LayerNorm: comfy.ops.disable_weight_init.LayerNorm,
}


def use_comfy_ops(module: torch.nn.Module) -> int:
    """Turn every Linear/Conv2d/GroupNorm/LayerNorm of ``module`` into its ``comfy.ops`` class, in place.

    The op classes subclass the torch ones and add only class attributes (``weight_function``,
    ``bias_function``, ``comfy_cast_weights``) and a forward that applies them, so switching the
    instance's class keeps its parameters and, with no functions attached, its output. Returns the
    number of layers switched.
    """
    switched = 0
    for layer in module.modules():
        op = _COMFY_OPS.get(type(layer))
        if op is not None:
            layer.__class__ = op
            switched += 1
    return switched


class DiffusersUNetForComfy(torch.nn.Module):
    """ComfyUI's ``diffusion_model(x, timesteps, context=...)`` call on a diffusers UNet2DConditionModel."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        # The first weight's dtype (the model is cast as a whole): diffusers' ModelMixin.dtype walks every
        # submodule (~1 ms), and ComfyUI asks three times per sampling call (bench/comfyui_sampler.py).
        return next(self.unet.parameters()).dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        """x [B, C, H, W], timesteps [B] (1000 sigma for flow, the DDPM step for eps), context [B, L, D]."""
        return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False)[0]


def load_embedded_model(name: str) -> Any:
    """The shipped generator ``name`` as a ComfyUI MODEL (ModelPatcher), weights float32."""
    from diffusers import UNet2DConditionModel

    folder = embedded_generator_path(name)
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    model_type, sampling_settings = _SAMPLING[scheduler_config["_class_name"]](scheduler_config)
    # Built outside inference mode so the parameters are ordinary tensors, frozen like ComfyUI's.
    with torch.inference_mode(False):
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=torch.float32,
                                                    local_files_only=True, use_safetensors=True)
        unet.eval().requires_grad_(False)
        use_comfy_ops(unet)
        config = _EmbeddedModelConfig(model_type, sampling_settings, int(unet.config.in_channels))
        config.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.BaseModel(config, model_type=model_type)
        betas = _trained_betas(scheduler_config)
        if betas is not None:
            model.model_sampling._register_schedule(given_betas=betas, timesteps=int(betas.shape[0]))
        model.diffusion_model = DiffusersUNetForComfy(unet)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


class _EmbeddedTokenizer:
    """ComfyUI tokenizer of a shipped generator: ``{"digits": [[(id, weight), ...]]}`` (weights are 1)."""

    def __init__(self, embedding_directory: Any = None, tokenizer_data: dict[str, Any] | None = None) -> None:
        self.encoder: DigitsTextEncoder = (tokenizer_data or {})["progrpo_text_encoder"]

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, Any]:
        ids = self.encoder.token_ids(text)
        if return_word_ids:
            return {"digits": [[(token, 1.0, 0) for token in ids]]}
        return {"digits": [[(token, 1.0) for token in ids]]}

    def untokenize(self, token_weight_pair: Any) -> list[Any]:
        vocab = {index: word for word, index in self.encoder.tokenizer.get_vocab().items()}
        return [(pair, vocab.get(pair[0], "")) for pair in token_weight_pair]

    def state_dict(self) -> dict[str, Any]:
        return {}


class _EmbeddedTextModel(torch.nn.Module):
    """ComfyUI ``cond_stage_model`` of a shipped generator (CLIP Set Last Layer picks the layer)."""

    def __init__(self, text_encoder: DigitsTextEncoder | None = None, dtype: Any = None, device: Any = None,
                 model_options: Any = None) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.dtypes = {torch.float32}
        self.layer: int | None = None

    def set_clip_options(self, options: dict[str, Any]) -> None:
        self.layer = options.get("layer", self.layer)

    def reset_clip_options(self) -> None:
        self.layer = None

    def encode_token_weights(self, tokens: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (from the tokenizer) -> (cond [N, L, D], pooled [N, D]) for N token chunks."""
        ids = torch.tensor([[pair[0] for pair in chunk] for chunk in tokens["digits"]], dtype=torch.long)
        hidden, pooled = self.text_encoder(ids, layer=self.layer)
        device = comfy.model_management.intermediate_device()
        return hidden.to(device), pooled.to(device)

    def load_sd(self, state_dict: dict[str, torch.Tensor]) -> Any:
        return self.text_encoder.text_model.load_state_dict(state_dict, strict=False)


def load_embedded_clip(name: str) -> Any:
    """The shipped generator's prompt encoder as a ComfyUI CLIP (for the stock CLIPTextEncode)."""
    with torch.inference_mode(False):
        encoder = DigitsTextEncoder(embedded_generator_path(name)).float()
    target = comfy.supported_models_base.ClipTarget(_EmbeddedTokenizer, _EmbeddedTextModel)
    target.params = {"text_encoder": encoder}
    parameters = sum(p.numel() for p in encoder.parameters())
    return comfy.sd.CLIP(target=target, tokenizer_data={"progrpo_text_encoder": encoder}, parameters=parameters,
                         model_options={"dtype": torch.float32})


class GreyPixelSpace(torch.nn.Module):
    """First stage of the grey pixel-space VAE: 1-channel samples <-> 3-channel images, both in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        # ComfyUI sizes and moves a VAE by its parameters; a one-element marker keeps that working.
        self.pixel_space_vae = torch.nn.Parameter(torch.tensor(1.0), requires_grad=False)

    def decode(self, samples: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return samples.expand(-1, 3, *samples.shape[2:])

    def encode(self, pixels: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return pixels.mean(dim=1, keepdim=True)


def grey_pixel_vae() -> Any:
    """A ComfyUI VAE in grey pixel space (ComfyUI's pixel_space VAE with the grey first stage)."""
    with torch.inference_mode(False):
        vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
        vae.first_stage_model = GreyPixelSpace().to(vae.vae_dtype)
    vae.latent_channels = 1
    vae.size = None
    vae.patcher = comfy.model_patcher.ModelPatcher(
        vae.first_stage_model, load_device=vae.device, offload_device=vae.patcher.offload_device
    )
    vae.model_size()
    return vae


def _read_json(path: Any) -> dict[str, Any]:
    import json

    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class ProGRPOEmbeddedModelLoader(io.ComfyNode):
    """Loads a generator shipped with Pro-GRPO (16x16 handwritten digits) as MODEL, CLIP and VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOEmbeddedModelLoader",
            display_name="Pro-GRPO Load Embedded Digits Model",
            category="Pro-GRPO/loaders",
            description=(
                "The small text-to-digit generator shipped inside the extension (no download): prompts like "
                "\"a handwritten digit 7\", 16x16 grey images. Sample it with the stock KSampler (latent "
                "16x16: Empty Latent Image at 128x128, or Pro-GRPO nodes at width = height = 16), decode with "
                "this VAE, score with the digit_alignment reward. digits_flow is a rectified-flow model (the "
                "paper's setting), digits_ddim an eps model."
            ),
            inputs=[
                io.Combo.Input("model_name", options=list(EMBEDDED_GENERATORS), default=EMBEDDED_GENERATORS[0],
                               tooltip="digits_flow: rectified flow (use flow_sde / cps); digits_ddim: eps "
                               "prediction with a DDIM schedule (use ddim / cps)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The generator (a UNet, float32)."),
                io.Clip.Output(display_name="clip",
                               tooltip="Its prompt encoder, for CLIP Text Encode and the Train Loop's prompt file."),
                io.Vae.Output(display_name="vae",
                              tooltip="Pixel-space decoder: grey [-1, 1] samples -> RGB images (and back)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name: str | None = None) -> bool | str:
        # ComfyUI 0.3.75 does not check V3 combo values at queue time; a name becomes a package folder.
        if model_name is not None and model_name not in EMBEDDED_GENERATORS:
            return f"model_name: {model_name!r} is not a shipped model; use one of {', '.join(EMBEDDED_GENERATORS)}."
        return True

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        problem = cls.validate_inputs(model_name=model_name if model_name is not None else "")
        if problem is not True:  # a null value skips the queue-time check (null also means "linked")
            raise ProGRPOConfigError(problem)
        return io.NodeOutput(load_embedded_model(model_name), load_embedded_clip(model_name), grey_pixel_vae())
