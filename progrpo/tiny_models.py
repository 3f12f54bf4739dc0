"""Tiny random diffusers pipelines built from configs, fully offline.

Used by the tests, the benchmarks and as a smoke-test target of the CLI: the same loading and
sampling code users run on real checkpoints runs here on sub-megabyte models. Nothing is
downloaded; the tokenizer is a word-level one built in memory (no vocabulary file to download
or ship), so a pipeline saved with ``save_pretrained`` reloads with ``from_pretrained(folder)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: words the tiny tokenizer knows; anything else maps to [UNK].
TINY_VOCABULARY = (
    "a an the of photo picture drawing handwritten digit number small large thick thin bold "
    "red green blue black white cat dog horse astronaut car tree house on in with and "
    "zero one two three four five six seven eight nine"
).split()


def word_level_tokenizer(words: list[str] | tuple[str, ...], model_max_length: int) -> Any:
    """Word-level fast tokenizer (lower-cased, digits split) over ``words``, ids after 4 specials.

    Specials: [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3; every encoding is wrapped in BOS ... EOS.
    Saves to a few-KB ``tokenizer.json`` and reloads through ``from_pretrained``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocabulary = {token: index for index, token in enumerate(specials + list(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocabulary["[BOS]"]), ("[EOS]", vocabulary["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=model_max_length,
    )


def tiny_tokenizer(model_max_length: int = 16) -> Any:
    """The tiny pipelines' tokenizer: :data:`TINY_VOCABULARY` plus the ten numerals."""
    return word_level_tokenizer(list(TINY_VOCABULARY) + list("0123456789"), model_max_length)


def _clip_text_config(vocab_size: int, hidden_size: int = 32, projection_dim: int = 32, max_positions: int = 16) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        projection_dim=projection_dim,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )


def _tiny_vae(latent_channels: int = 4, flow: bool = False, **options: Any) -> Any:
    from diffusers import AutoencoderKL

    extra = {"shift_factor": 0.0, "scaling_factor": 1.0} if flow else {}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32,
        sample_size=32,
        **extra,
        **options,
    )


def _eval(pipeline: Any) -> Any:
    """Put every module in eval mode (dropout off), as ``from_pretrained`` does."""
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipeline


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> Any:
    """SD1.x-style pipeline: 4-channel UNet2DConditionModel, VAE (factor 2), CLIP text, DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return _eval(StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ))


#: SD3 transformer sizes: "tiny" (0.29 M params) for tests; "small" (2.3 M) for
#: benchmarks, where the denoiser rather than the VAE dominates the cost as in real models.
SD3_TIERS = {
    "tiny": dict(num_layers=2, attention_head_dim=16, num_attention_heads=4, caption_projection_dim=64),
    "small": dict(num_layers=4, attention_head_dim=32, num_attention_heads=4, caption_projection_dim=128),
}


def tiny_sd3_pipeline(seed: int = 0, tier: str = "tiny") -> Any:
    """SD3-style pipeline: SD3Transformer2DModel, two CLIP encoders (no T5), shift-3 flow scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        **SD3_TIERS[tier],
        joint_attention_dim=64,
        pooled_projection_dim=64,
    )
    # SD3 concatenates the two CLIP hidden states (32 + 32) and pools both projections (32 + 32).
    return _eval(StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(flow=True),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(len(tokenizer))),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    ))


def tiny_flux_pipeline(seed: int = 0) -> Any:
    """Flux-style pipeline: FluxTransformer2DModel (1 double + 1 single block), CLIP + tiny T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4, decoder_start_token_id=0)
    )
    vae = _tiny_vae(flow=True, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=16, max_image_seq_len=256
    )
    return _eval(FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer,
        transformer=transformer,
    ))


#: architecture name -> builder of a tiny random pipeline.
TINY_PIPELINES: dict[str, Callable[..., Any]] = {
    "sd": tiny_sd_pipeline,
    "sd3": tiny_sd3_pipeline,
    "flux": tiny_flux_pipeline,
}
