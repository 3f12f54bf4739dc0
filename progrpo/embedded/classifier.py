"""The embedded digit classifier (a GenEval analogue for the embedded digits generators): pure torch.

A 38 K-parameter CNN (``Conv16-Pool-Conv32-Pool-FC64-FC10``) trained by
``scripts/train_embedded.py`` on scikit-learn's 8x8 digits, upscaled to 16x16. It reads images
``[B,3,H,W]`` (or ``[B,1,H,W]``) in [0, 1]: the channels are averaged to grey and any other size
is resized bilinearly to 16x16, so it scores the generators' decoded samples directly.

The data helpers (:func:`digits_dataset`, :func:`digits_split`) live here too, so the training
script and the tests use the very same fixed split.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ProGRPOConfigError

#: side of the images the classifier and the generators work at.
IMAGE_SIZE = 16
#: fraction of load_digits held out (never trained on) and the seed of the split permutation.
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class DigitClassifier(nn.Module):
    """``Conv(1,c1,3)-ReLU-MaxPool2-Conv(c1,c2,3)-ReLU-MaxPool2-FC(hidden)-ReLU-FC(10)`` on 16x16 grey."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.config = {"channels": [c1, c2], "hidden": hidden, "num_classes": num_classes, "image_size": IMAGE_SIZE}
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * (IMAGE_SIZE // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """[B,3|1,H,W] in [0,1] -> grey [B,1,16,16] in [0,1] (channel mean, bilinear resize)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ProGRPOConfigError(
                f"digit classifier: images must be [B,3,H,W] or [B,1,H,W], got {tuple(images.shape)}."
            )
        grey = images.float().mean(dim=1, keepdim=True)
        if grey.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            grey = F.interpolate(grey, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return grey

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B,10] for images [B,3|1,H,W] in [0,1]."""
        x = self.prepare(images).to(self.conv1.weight.dtype) * 2.0 - 1.0
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def save_classifier(model: DigitClassifier, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` (created)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: value.detach().contiguous() for name, value in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({**model.config, **(extra or {})}, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> DigitClassifier:
    """Load a classifier written by :func:`save_classifier` (eval mode, float32)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not config.is_file():
        raise ProGRPOConfigError(
            f"digit classifier folder {str(folder)!r} must hold {WEIGHTS_FILE} and {CONFIG_FILE}; "
            "regenerate it with `python scripts/train_embedded.py --models classifier`."
        )
    options = json.loads(config.read_text())
    model = DigitClassifier(tuple(options["channels"]), options["hidden"], options["num_classes"])
    model.load_state_dict({name: value.float() for name, value in load_file(str(weights)).items()})
    return model.to(device).eval()


def digits_dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits as (images float32 [N,1,16,16] in [0,1], labels int64 [N]).

    The 8x8 images (values 0..16) are divided by 16 and upscaled bilinearly to 16x16.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ProGRPOConfigError(
            "the embedded digits data needs scikit-learn (it bundles load_digits); pip install scikit-learn."
        ) from error
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.tensor(data.target, dtype=torch.long)


def digits_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (train, held-out) index split of :func:`digits_dataset` (permutation with ``SPLIT_SEED``)."""
    _, labels = digits_dataset()
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    held = round(HELD_OUT_FRACTION * labels.shape[0])
    return order[held:], order[:held]


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy of ``model`` on images [N,1|3,H,W] in [0,1]."""
    correct = 0
    for start in range(0, labels.shape[0], batch):
        logits = model(images[start:start + batch])
        correct += int((logits.argmax(dim=1) == labels[start:start + batch]).sum())
    return correct / max(1, labels.shape[0])
