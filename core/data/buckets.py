"""Aspect-ratio bucketing: images keep their shape instead of being cropped to a square.

Each bucket is a (width, height) of about resolution² pixels with sides in multiples of
`step`; an image goes to the bucket nearest its aspect ratio, is resized to cover it and cropped
(what the crop removes is recorded in SDXL's crop conditioning). A batch holds one bucket's
images only, so its tensors stack; which batches an epoch has, and their order, depend only on
(seed, epoch), so a resumed run replays the same sequence.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from .images import load_image

MAX_ASPECT = 4.0  # SDXL's own training buckets span 1:4 to 4:1


def bucket_sizes(resolution: int, step: int = 64, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """(width, height) buckets with at most resolution² pixels, sides multiples of `step`.

    Only maximal sizes are kept (neither side can grow by a step within the area), so every
    bucket is as close to the training area as its shape allows.
    """
    area, sizes = resolution * resolution, set()
    for width in range(step, int(resolution * math.sqrt(max_aspect)) + step, step):
        height = area // width // step * step
        if height < step or max(width / height, height / width) > max_aspect:
            continue
        if (width + step) * height > area:
            sizes.add((width, height))
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to the image's (width, height)."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def assign_buckets(paths: list[Path], resolution: int, step: int = 64) -> list[tuple[int, int]]:
    """The bucket (width, height) of each image, from its size after EXIF rotation."""
    buckets = bucket_sizes(resolution, step)
    return [nearest_bucket(load_image(p).size, buckets) for p in paths]


class BucketBatchSampler(Sampler):
    """Batches of dataset indices that share a bucket.

    `buckets[i]` is the bucket of dataset item i. Per epoch, indices are shuffled with a generator
    seeded by (seed, epoch), split into batches within each bucket, and the batches shuffled
    again. Like setup.EpochShuffleSampler, the method is `use_epoch`, not accelerate's `set_epoch`.
    """

    def __init__(self, buckets: list, batch_size: int, seed: int):
        self.buckets, self.batch_size, self.seed, self.epoch = list(buckets), batch_size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        groups: dict = {}
        for i in torch.randperm(len(self.buckets), generator=g).tolist():
            groups.setdefault(self.buckets[i], []).append(i)
        batches = [group[k:k + self.batch_size] for _, group in sorted(groups.items())
                   for k in range(0, len(group), self.batch_size)]
        return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        counts: dict = {}
        for b in self.buckets:
            counts[b] = counts.get(b, 0) + 1
        return sum(math.ceil(n / self.batch_size) for n in counts.values())


def make_bucket_dataloader(dataset, config, seed: int):
    """The loader of a bucketed dataset (its `sizes` set by assign_buckets): one bucket per batch."""
    from .dataset import collate
    sampler = BucketBatchSampler([dataset.size_of(i) for i in range(len(dataset))], config.train_batch_size, seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.dataloader_num_workers)
    return loader, sampler
