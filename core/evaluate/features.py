"""Image and text features from DINO and CLIP weights the user has locally (transformers folders).

Preprocessing is done here (resize to the model's input size, normalise with the folder's
preprocessor_config.json mean/std when present), so no image-processor class or torchvision is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ModelLoadError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINO's
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _folder(path: str | Path, what: str, flag: str) -> Path:
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{what} weights not found at {p} (no config.json). Pass {flag} with a local "
                             f"transformers folder, e.g. a download of facebook/dino-vits16 or openai/clip-vit-base-patch32.")
    return p


def _normalisation(folder: Path, mean, std) -> tuple:
    cfg = folder / "preprocessor_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        return tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
    return mean, std


def pixels(images: list[Image.Image], size: int, mean, std) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class DinoFeatures:
    """The CLS embedding of a DINO / DINOv2 ViT (the paper's DINO metric: ViT-S/16 DINO)."""

    def __init__(self, path: str | Path):
        from transformers import AutoModel
        folder = _folder(path, "DINO", "--dino_model")
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.size = self.model.config.image_size
        self.mean, self.std = _normalisation(folder, IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.model(pixel_values=pixels(images, self.size, self.mean, self.std)).last_hidden_state[:, 0]


class ClipFeatures:
    """CLIP's projected image and text embeddings (the paper's CLIP-I and CLIP-T)."""

    def __init__(self, path: str | Path):
        from transformers import CLIPModel, CLIPTokenizer
        folder = _folder(path, "CLIP", "--clip_model")
        self.model = CLIPModel.from_pretrained(str(folder)).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        self.size = self.model.config.vision_config.image_size
        self.mean, self.std = _normalisation(folder, CLIP_MEAN, CLIP_STD)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels(images, self.size, self.mean, self.std))
        return self.model.visual_projection(out.pooler_output)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        max_len = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        ids = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.text_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        return self.model.text_projection(out.pooler_output)
