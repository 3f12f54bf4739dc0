"""The embedded generators' prompt encoder, split into its two halves (token ids, then hidden states).

``StableDiffusionPipeline.encode_prompt`` does both at once; ComfyUI's CLIP interface needs them
apart (``tokenize`` at CLIPTextEncode, ``encode_token_weights`` later), so the ComfyUI loader uses
this class and the diffusers backend uses the pipeline, and a test holds the two equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ProGRPOConfigError


class DigitsTextEncoder(torch.nn.Module):
    """Tokenizer + CLIP text model of a shipped generator folder (``<folder>/tokenizer``, ``text_encoder``).

    ``token_ids(text)`` pads/truncates to the tokenizer's ``model_max_length`` (12) exactly as the
    pipeline does; ``forward(ids [P, L])`` returns ``(hidden [P, L, D], pooled [P, D])`` float32, the
    hidden states of the last layer (or of ``layer``, counted like ``hidden_states``: -1 = last).
    """

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModel

        folder = Path(folder)
        for part in ("tokenizer", "text_encoder"):
            if not (folder / part).is_dir():
                raise ProGRPOConfigError(
                    f"{str(folder)!r} has no {part}/ folder; pass a shipped generator folder "
                    "(progrpo.embedded.embedded_generator_path)."
                )
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        self.text_model = CLIPTextModel.from_pretrained(
            str(folder / "text_encoder"), local_files_only=True, use_safetensors=True
        ).eval().requires_grad_(False)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def num_layers(self) -> int:
        return int(self.text_model.config.num_hidden_layers)

    def token_ids(self, text: str) -> list[int]:
        """The prompt's ids, padded to ``max_length`` ([BOS] words [EOS] [PAD]...)."""
        encoded = self.tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True)
        return list(encoded["input_ids"])

    def forward(self, ids: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids LongTensor [P, L] -> (hidden float32 [P, L, D], pooled float32 [P, D])."""
        if layer is not None and not -self.num_layers <= int(layer) <= -1:
            raise ProGRPOConfigError(
                f"text encoder layer {layer} is out of range; this encoder has {self.num_layers} layers, use "
                f"-1 .. -{self.num_layers} (CLIP Set Last Layer)."
            )
        device = next(self.text_model.parameters()).device
        output = self.text_model(ids.to(device), output_hidden_states=layer is not None and layer != -1)
        hidden = output.last_hidden_state if layer is None or layer == -1 else output.hidden_states[int(layer)]
        return hidden.float(), output.pooler_output.float()


__all__ = ["DigitsTextEncoder"]
