"""Resize, crop, flip and normalise images for training."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def resize_and_crop(image: Image.Image, size: int, center_crop: bool, rng: random.Random) -> Image.Image:
    """Resize the short side to `size`, then crop a size x size square (centered or random)."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center_crop:
        left, top = (new_w - size) // 2, (new_h - size) // 2
    else:
        left, top = rng.randint(0, new_w - size), rng.randint(0, new_h - size)
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB image to a CHW float tensor in [-1, 1], as the VAE expects."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def prepare_image(image: Image.Image, size: int, center_crop: bool, random_flip: bool,
                  rng: random.Random) -> torch.Tensor:
    image = resize_and_crop(image, size, center_crop, rng)
    if random_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(image)
