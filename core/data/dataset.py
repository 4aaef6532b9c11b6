"""The DreamBooth dataset: instance images (with captions) paired with class images."""

from __future__ import annotations

import random
from typing import Optional

import torch
from torch.utils.data import Dataset

from .images import ImageFolder, load_image
from .transforms import prepare_image


class DreamBoothDataset(Dataset):
    """Item i: instance image i % n_instance; with prior preservation also class image i % n_class.

    Length is max(n_instance, n_class), as in diffusers' script, so an epoch visits every
    class image once.
    """

    def __init__(self, instance: ImageFolder, instance_prompt: str, resolution: int,
                 center_crop: bool = False, random_flip: bool = False,
                 class_folder: Optional[ImageFolder] = None, class_prompt: Optional[str] = None,
                 seed: int = 0):
        self.instance_images = list(instance.images)
        self.instance_captions = [instance.caption_for(p, instance_prompt) for p in self.instance_images]
        self.class_images = list(class_folder.images) if class_folder else []
        self.class_prompt = class_prompt
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_images))

    def _rng(self, index: int) -> random.Random:
        # Deterministic per (seed, epoch, index): a resumed run sees the same crops.
        return random.Random(hash((self.seed, self.epoch, index)))

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        i = index % len(self.instance_images)
        item = {
            "instance_pixels": prepare_image(load_image(self.instance_images[i]), self.resolution,
                                             self.center_crop, self.random_flip, rng),
            "instance_prompt": self.instance_captions[i],
        }
        if self.class_images:
            path = self.class_images[index % len(self.class_images)]
            item["class_pixels"] = prepare_image(load_image(path), self.resolution, self.center_crop,
                                                 self.random_flip, rng)
            item["class_prompt"] = self.class_prompt
        return item


def collate(items: list[dict]) -> dict:
    """Stack instance images first, then class images: one forward pass, then chunk in two."""
    pixels = [it["instance_pixels"] for it in items]
    prompts = [it["instance_prompt"] for it in items]
    if "class_pixels" in items[0]:
        pixels += [it["class_pixels"] for it in items]
        prompts += [it["class_prompt"] for it in items]
    return {"pixel_values": torch.stack(pixels).contiguous(), "prompts": prompts,
            "num_instance": len(items)}
