"""The world's own judge: a small CNN trained on world images to name the shape (or the DreamBooth
subject), the object's colour and the background colour of an image.

Its pooled features stand in for DINO / CLIP image features in the toy world's metrics (subject
fidelity, PRES, DIV); its colour and background heads stand in for CLIP-T (prompt fidelity).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelLoadError
from ..fsutil import atomic_file
from .world import COLOUR_NAMES, SHAPES, SUBJECT, random_scene, render

NOTHING = "nothing"  # the judge's answer for a picture of no world object (sksbooth.toyworld.off_world)
SHAPE_LABELS = SHAPES + (SUBJECT, NOTHING)
FEATURES = 128


class Checker(nn.Module):
    def __init__(self):
        super().__init__()
        chans = (3, 32, 64, 96, FEATURES)
        # each stage: a strided conv, then a conv at that resolution (group-normed: trains in a minute)
        self.stages = nn.ModuleList(nn.Sequential(
            nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU(),
            nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU()) for a, b in zip(chans, chans[1:]))
        self.shape = nn.Linear(FEATURES, len(SHAPE_LABELS))
        self.colour = nn.Linear(FEATURES, len(COLOUR_NAMES))
        self.background = nn.Linear(FEATURES, len(COLOUR_NAMES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of images in [-1, 1] (N x 3 x 64 x 64)."""
        for stage in self.stages:
            x = stage(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"shape": self.shape(f), "colour": self.colour(f), "background": self.background(f), "features": f}


def to_tensor(images) -> torch.Tensor:
    """PIL images or a uint8 N x H x W x 3 array -> float tensor in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB")) for im in images]) if isinstance(images, list) else images
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and colour shifts like a small diffusion model's output, so the judge is not
    fooled by imperfect generations."""
    n = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=gen)
    x = mix * blur + (1 - mix) * x
    x = x + 0.08 * torch.randn(n, 3, 1, 1, generator=gen) + 0.06 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def labelled_batch(rng: random.Random, count: int, lookalike_share: float = 0.0, nothing_share: float = 0.0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """World images plus about one in six of the subject (no colour label: its colours are fixed), and
    - with `lookalike_share` > 0, that share of look-alikes: objects in colours outside the palette
      (sksbooth.toyworld.named_objects' random designs, never the subject's orange or cyan), labelled by their
      shape. Without them the subject is the only thing out of the palette the judge has seen, and it calls
      any such toy the subject: a base pretrained on named objects drew "a photo of a sks toy" as striped
      many-coloured toys, and 59% of them were "recognised" before any fine-tuning;
    - with `nothing_share` > 0, that share of pictures of no world object (sksbooth.toyworld.off_world),
      labelled NOTHING, with a background label only where the picture is a bare palette ground."""
    from .named_objects import random_design, render_named
    from .off_world import off_world_image
    images, shape, colour, background = [], [], [], []
    for _ in range(count):
        r = rng.random()
        if 1 - lookalike_share - nothing_share < r <= 1 - lookalike_share:
            image, ground = off_world_image(rng)
            images.append(image)
            shape.append(SHAPE_LABELS.index(NOTHING))
            colour.append(-100)
            background.append(COLOUR_NAMES.index(ground) if ground else -100)
            continue
        scene = random_scene(rng, SUBJECT if r < 1 / 6 else None)
        if r > 1 - lookalike_share:  # no colour label: its colours are not the palette's
            scene = dataclasses.replace(scene, colour=None)
            images.append(render_named(random_design(rng, scene.shape, rng.random() < 0.5), scene, rng))
        else:
            images.append(render(scene, rng))
        shape.append(SHAPE_LABELS.index(scene.shape))
        colour.append(COLOUR_NAMES.index(scene.colour) if scene.colour else -100)
        background.append(COLOUR_NAMES.index(scene.background))
    labels = {"shape": torch.tensor(shape), "colour": torch.tensor(colour), "background": torch.tensor(background)}
    return to_tensor(images), labels


def train_checker(steps: int = 600, batch_size: int = 64, seed: int = 0, lookalike_share: float = 0.0,
                  nothing_share: float = 0.0) -> Checker:
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    model = Checker()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        x, labels = labelled_batch(rng, batch_size, lookalike_share, nothing_share)
        out = model(degrade(x, gen))
        loss = sum(F.cross_entropy(out[k], labels[k], ignore_index=-100) for k in labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"checker step {step}: loss {loss.item():.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def accuracy(model: Checker, count: int = 1000, seed: int = 12345, lookalike_share: float = 0.0,
             nothing_share: float = 0.0) -> dict[str, float]:
    """Accuracy of each head on fresh (degraded) world images (and those shares of look-alikes and of
    pictures of no world object)."""
    x, labels = labelled_batch(random.Random(seed), count, lookalike_share, nothing_share)
    out = model(degrade(x, torch.Generator().manual_seed(seed)))
    result = {}
    for k, y in labels.items():
        keep = y != -100
        result[k] = (out[k].argmax(1)[keep] == y[keep]).float().mean().item()
    return result


def save_checker(model: Checker, folder: Path) -> Path:
    from safetensors.torch import save_file
    folder = Path(folder)
    with atomic_file(folder / "checker.safetensors") as tmp:
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(tmp))  # fp16: half the size
    return folder


def load_checker(folder: Path) -> Checker:
    from safetensors.torch import load_file
    path = Path(folder) / "checker.safetensors"
    weights = load_file(str(path))
    answers = weights["shape.weight"].shape[0]
    if answers != len(SHAPE_LABELS):  # made before the judge could answer "nothing"
        raise ModelLoadError(f"{path} names {answers} shapes; this version's checker names {len(SHAPE_LABELS)} "
                             f"({', '.join(SHAPE_LABELS)}). Train a new one with `dreambooth toyworld-pretrain "
                             f"{Path(folder)} --checker_only`, or use the one shipped with sksbooth.")
    model = Checker()
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model.eval()


