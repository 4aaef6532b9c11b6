"""Resize, crop, flip and normalise images for training."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from PIL import Image


def cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The smallest resize of a (w, h) image (aspect kept) that covers width x height."""
    w, h = size
    scale = max(width / w, height / h)
    return max(width, round(w * scale)), max(height, round(h * scale))


def fit_and_crop(image: Image.Image, width: int, height: int, center_crop: bool,
                 rng: Optional[random.Random]) -> tuple[Image.Image, tuple[int, int]]:
    """Resize so the image covers width x height, then crop that (centered or random).

    Returns the crop and its top-left corner (top, left) in the resized image: SDXL's crop
    conditioning.
    """
    new_w, new_h = cover_size(image.size, width, height)
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center_crop:
        left, top = (new_w - width) // 2, (new_h - height) // 2
    else:
        left, top = rng.randint(0, new_w - width), rng.randint(0, new_h - height)
    return image.crop((left, top, left + width, top + height)), (top, left)


def resize_and_crop(image: Image.Image, size: int, center_crop: bool, rng: random.Random) -> Image.Image:
    """Resize the short side to `size`, then crop a size x size square (centered or random)."""
    return fit_and_crop(image, size, size, center_crop, rng)[0]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB image to a CHW float tensor in [-1, 1], as the VAE expects."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def prepare_with_time_ids(image: Image.Image, width: int, height: int, center_crop: bool, random_flip: bool,
                          rng: Optional[random.Random]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training tensor of a width x height crop, and SDXL's time ids for it."""
    cropped, corner = fit_and_crop(image, width, height, center_crop, rng)
    return crop_to_tensor(image.size, cropped, corner, random_flip and rng.random() < 0.5)


def crop_to_tensor(original_size: tuple[int, int], cropped: Image.Image, corner: tuple[int, int],
                   flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, time ids): SDXL's (original h, w, crop top, left, target h, w) for this crop.

    A flipped crop is described as the same crop of the flipped image (left measured from the
    other side), so the conditioning matches the pixels the UNet sees.
    """
    (w, h), (top, left) = original_size, corner
    if flip:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = cover_size(original_size, cropped.width, cropped.height)[0] - cropped.width - left
    time_ids = torch.tensor([h, w, top, left, cropped.height, cropped.width], dtype=torch.float32)
    return to_tensor(cropped), time_ids


def prepare_image(image: Image.Image, size: int, center_crop: bool, random_flip: bool,
                  rng: random.Random) -> torch.Tensor:
    return prepare_with_time_ids(image, size, size, center_crop, random_flip, rng)[0]
