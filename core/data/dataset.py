"""The DreamBooth dataset: instance images (with captions) paired with class images."""

from __future__ import annotations

import random
from typing import Optional

import torch
from torch.utils.data import Dataset

from .images import ImageFolder, load_image
from .transforms import prepare_with_time_ids


class DreamBoothDataset(Dataset):
    """Item i: instance image i % n_instance; with prior preservation also class image i % n_class.

    Length is max(n_instance, n_class), as in diffusers' script, so an epoch visits every
    class image once.
    """

    def __init__(self, instance: ImageFolder, instance_prompt: str, resolution: int,
                 center_crop: bool = False, random_flip: bool = False,
                 class_folder: Optional[ImageFolder] = None, class_prompt: Optional[str] = None,
                 seed: int = 0, sizes: Optional[list[tuple[int, int]]] = None, caption_dropout_rate: float = 0.0):
        self.instance_images = list(instance.images)
        self.instance_captions = [instance.caption_for(p, instance_prompt) for p in self.instance_images]
        self.class_images = list(class_folder.images) if class_folder else []
        # Captioned class images (kohya's captioned regularisation images) keep what their captions say
        # in the prior: e.g. "a photo of a dog on a beach" keeps the class composing with backgrounds.
        self.class_captions = [class_folder.caption_for(p, class_prompt) for p in self.class_images]
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.seed, self.caption_dropout_rate = seed, caption_dropout_rate
        self.epoch = 0
        # (width, height) each instance image is trained at: a square by default, its aspect
        # bucket with bucketing (data.buckets). A class image is resized to cover and cropped to
        # the size of the instance image it is paired with: the pair then goes through the UNet
        # in one batch (one forward, as in the paper), and no extra class images are generated.
        # Generating class images per bucket would show the prior at each shape uncropped, but
        # multiplies generation time by the number of buckets for a regulariser that works on crops.
        self.sizes = list(sizes) if sizes else [(resolution, resolution)] * len(self.instance_images)
        # {(kind, index, flipped, size): (VAE posterior params, time ids)}, filled by
        # train.latents.cache_latents; when set, items hold cached latents instead of pixels.
        self.latent_cache: Optional[dict] = None

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_images))

    def _rng(self, index: int) -> random.Random:
        # Deterministic per (seed, epoch, index): a resumed run sees the same crops.
        return random.Random(hash((self.seed, self.epoch, index)))

    def size_of(self, index: int) -> tuple[int, int]:
        """(width, height) of dataset item `index` (its instance image's size)."""
        return self.sizes[index % len(self.instance_images)]

    def cache_sources(self):
        """(kind, index, path, size) of every distinct image and size, for the latent cache."""
        yield from (("instance", i, p, self.sizes[i]) for i, p in enumerate(self.instance_images))
        if self.class_images:
            pairs = sorted({(k % len(self.class_images), self.size_of(k)) for k in range(len(self))})
            yield from (("class", j, self.class_images[j], size) for j, size in pairs)

    def _image(self, kind: str, i: int, path, size, rng: random.Random) -> tuple[str, torch.Tensor, torch.Tensor]:
        if self.latent_cache is None:
            pixels, time_ids = prepare_with_time_ids(load_image(path), *size, self.center_crop, self.random_flip, rng)
            return "pixels", pixels, time_ids
        # the flip draw is the same one prepare_with_time_ids makes after a centre crop
        flipped = self.random_flip and rng.random() < 0.5
        return ("latents", *self.latent_cache[(kind, i, flipped, size)])

    def __getitem__(self, index: int) -> dict:
        rng, size = self._rng(index), self.size_of(index)
        i = index % len(self.instance_images)
        what, value, time_ids = self._image("instance", i, self.instance_images[i], size, rng)
        item = {f"instance_{what}": value, "instance_prompt": self.instance_captions[i], "instance_time_ids": time_ids}
        if self.class_images:
            j = index % len(self.class_images)
            what, value, time_ids = self._image("class", j, self.class_images[j], size, rng)
            item.update({f"class_{what}": value, "class_prompt": self.class_captions[j], "class_time_ids": time_ids})
        if self.caption_dropout_rate:  # drawn after the images', so runs without dropout see the same flips
            for kind in ("instance", "class") if self.class_images else ("instance",):
                if rng.random() < self.caption_dropout_rate:
                    item[f"{kind}_prompt"] = ""
        return item


def collate(items: list[dict]) -> dict:
    """Stack instance images first, then class images: one forward pass, then chunk in two."""
    what = "latents" if "instance_latents" in items[0] else "pixels"
    kinds = ("instance", "class") if f"class_{what}" in items[0] else ("instance",)
    values = [it[f"{kind}_{what}"] for kind in kinds for it in items]
    prompts = [it[f"{kind}_prompt"] for kind in kinds for it in items]
    time_ids = [it[f"{kind}_time_ids"] for kind in kinds for it in items]
    key = "latent_params" if what == "latents" else "pixel_values"
    return {key: torch.stack(values).contiguous(), "prompts": prompts, "num_instance": len(items),
            "time_ids": torch.stack(time_ids)}
