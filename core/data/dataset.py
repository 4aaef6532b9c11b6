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
        # {(kind, index, flipped): VAE posterior params}, filled by train.latents.cache_latents;
        # when set, items hold cached latents instead of pixels.
        self.latent_cache: Optional[dict] = None

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_images))

    def _rng(self, index: int) -> random.Random:
        # Deterministic per (seed, epoch, index): a resumed run sees the same crops.
        return random.Random(hash((self.seed, self.epoch, index)))

    def cache_sources(self):
        """(kind, index, path) of every distinct image, for the latent cache."""
        yield from (("instance", i, p) for i, p in enumerate(self.instance_images))
        yield from (("class", i, p) for i, p in enumerate(self.class_images))

    def _image(self, kind: str, i: int, path, rng: random.Random) -> tuple[str, torch.Tensor]:
        if self.latent_cache is None:
            return "pixels", prepare_image(load_image(path), self.resolution, self.center_crop,
                                           self.random_flip, rng)
        # the flip draw is the same one prepare_image makes after a centre crop
        flipped = self.random_flip and rng.random() < 0.5
        return "latents", self.latent_cache[(kind, i, flipped)]

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        i = index % len(self.instance_images)
        what, value = self._image("instance", i, self.instance_images[i], rng)
        item = {f"instance_{what}": value, "instance_prompt": self.instance_captions[i]}
        if self.class_images:
            j = index % len(self.class_images)
            what, value = self._image("class", j, self.class_images[j], rng)
            item[f"class_{what}"] = value
            item["class_prompt"] = self.class_prompt
        return item


def collate(items: list[dict]) -> dict:
    """Stack instance images first, then class images: one forward pass, then chunk in two."""
    what = "latents" if "instance_latents" in items[0] else "pixels"
    values = [it[f"instance_{what}"] for it in items]
    prompts = [it["instance_prompt"] for it in items]
    if f"class_{what}" in items[0]:
        values += [it[f"class_{what}"] for it in items]
        prompts += [it["class_prompt"] for it in items]
    key = "latent_params" if what == "latents" else "pixel_values"
    return {key: torch.stack(values).contiguous(), "prompts": prompts, "num_instance": len(items)}
