"""The learned models behind `zlab[metrics]`, behind one small interface each. Heavy imports wait until a
model is built, so `import zlab.metrics` stays light.

- `ClipModel`: open_clip; image and text embeddings (prompt adherence, CLIP image distance);
- `TimmEmbedder`: any timm model as an image embedder, by default DINOv2 ViT-S/14 (image distance);
- `LpipsModel`: LPIPS (AlexNet trunk), a perceptual distance between two images.

Defaults avoid non-commercial and AGPL weights: OpenAI's CLIP ViT-B/32 (MIT), DINOv2 (Apache-2.0), LPIPS
(BSD-2, its linear heads ship inside the `lpips` package; the AlexNet trunk comes from torchvision, BSD-3).
Each loader takes a local path instead of a hub name; offline with no weights, `WeightsMissing` names what
to download and where to put it. Every model runs on the GPU when there is one (`device="cuda"`), batched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zlab.errors import ConfigError

DEFAULT_CLIP = "ViT-B-32"
DEFAULT_CLIP_WEIGHTS = "openai"
DEFAULT_DINO = "vit_small_patch14_dinov2.lvd142m"


class WeightsMissing(ConfigError):
    """A model's weights are neither cached nor reachable; the message says what to download and where."""


def pick_device(device: str | None = None) -> str:
    """`device`, else "cuda" when torch sees a GPU, else "cpu"."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _offline_hint(what: str, where: str) -> str:
    return f"{what} could not be loaded (offline, or not downloaded yet). Download {where}"


def _unit(x: Any) -> np.ndarray:
    """Rows scaled to unit length (float32 numpy), so a dot product is a cosine."""
    a = x.detach().float().cpu().numpy()
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


@dataclass
class ClipModel:
    """An open_clip model with its preprocessing and tokenizer; `name` identifies it in the cache."""

    model: Any
    preprocess: Any
    tokenizer: Any
    name: str
    device: str = "cpu"

    @classmethod
    def load(
        cls, name: str = DEFAULT_CLIP, weights: str = DEFAULT_CLIP_WEIGHTS, device: str | None = None
    ) -> ClipModel:
        """`weights` is an open_clip pretrained tag ("openai") or a local checkpoint file."""
        import open_clip

        device = pick_device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
        except (OSError, RuntimeError, ValueError) as exc:
            where = (
                f"the open_clip weights {name!r}/{weights!r} once while online (open_clip caches them in the Hugging "
                "Face cache, HF_HOME), or pass a local checkpoint file: ClipModel.load(name, weights='/path/model.bin')"
            )
            raise WeightsMissing(f"{_offline_hint(f'CLIP {name} ({weights})', where)}: {exc}") from None
        model.eval()
        return cls(model, preprocess, open_clip.get_tokenizer(name), f"clip:{name}:{Path(weights).name}", device)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        with torch.no_grad():
            return _unit(self.model.encode_image(batch))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return _unit(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)))


@dataclass
class TimmEmbedder:
    """A timm model's pooled features as an image embedding (DINOv2 by default)."""

    model: Any
    transform: Any
    name: str
    device: str = "cpu"

    @classmethod
    def from_model(
        cls, model: Any, name: str, device: str | None = None, image_size: int | None = None
    ) -> TimmEmbedder:
        """Wrap a timm model built elsewhere (e.g. `pretrained=False` in tests); `image_size` overrides its own."""
        import timm

        device = pick_device(device)
        config = timm.data.resolve_model_data_config(model)
        if image_size is not None:
            config = {**config, "input_size": (3, image_size, image_size), "crop_pct": 1.0}
        return cls(model.to(device).eval(), timm.data.create_transform(**config), name, device)

    @classmethod
    def load(cls, name: str = DEFAULT_DINO, weights: str | os.PathLike[str] | None = None, device: str | None = None):
        """`name` from the Hugging Face Hub (cached), or `weights` a local .safetensors/.pth file for it."""
        import timm

        try:
            if weights is not None:
                model = timm.create_model(
                    name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}
                )
            else:
                model = timm.create_model(name, pretrained=True, num_classes=0)
        except (OSError, RuntimeError, ValueError) as exc:
            where = (
                f"the timm model 'timm/{name.split('.')[0]}' (tag {name!r}) from the Hugging Face Hub once while "
                "online (it is cached under HF_HOME), or pass weights='/path/model.safetensors'"
            )
            raise WeightsMissing(f"{_offline_hint(f'timm {name}', where)}: {exc}") from None
        return cls.from_model(model, f"timm:{name}", device)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        batch = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
        with torch.no_grad():
            return _unit(self.model(batch))


@dataclass
class LpipsModel:
    """LPIPS: 0 for identical images, larger for perceptually more different ones."""

    model: Any
    name: str
    size: int = 256
    device: str = "cpu"

    @classmethod
    def load(cls, net: str = "alex", device: str | None = None, size: int = 256) -> LpipsModel:
        import lpips

        device = pick_device(device)
        try:
            model = lpips.LPIPS(net=net, verbose=False)
        except (OSError, RuntimeError, ValueError) as exc:
            where = (
                f"torchvision's ImageNet {net} weights (for alex: alexnet-owt-7be5be79.pth) once while online "
                "(torchvision keeps them in $TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)"
            )
            raise WeightsMissing(f"{_offline_hint(f'LPIPS ({net})', where)}: {exc}") from None
        return cls(model.to(device).eval(), f"lpips:{net}", size, device)

    def distances(self, pairs: Sequence[tuple[Image.Image, Image.Image]]) -> np.ndarray:
        import torch

        def tensor(im: Image.Image) -> Any:
            a = np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC), np.float32)
            return torch.from_numpy(a / 127.5 - 1.0).permute(2, 0, 1)

        a = torch.stack([tensor(x) for x, _ in pairs]).to(self.device)
        b = torch.stack([tensor(y) for _, y in pairs]).to(self.device)
        with torch.no_grad():
            return self.model(a, b).reshape(-1).float().cpu().numpy()
