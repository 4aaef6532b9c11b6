"""Named objects: a few things of the world's classes, each of one fixed look, called by a word of its own.

Stable Diffusion's web captions are full of names bound to one look ("a photo of a Gibson guitar"), so its
UNet has learned, before any DreamBooth run, that a rare word in front of a class noun asks for one
particular instance of the class. The toy world's captions name nothing but shapes and colours, and its base
gave DreamBooth's "sks" 2% of its cross-attention: fine-tuning had to teach the UNet to listen to the word as
well as what the subject looks like. Pretraining on these named objects (none of them the DreamBooth subject,
none of their words "sks") teaches the listening part, the way SD's data does.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from .world import (COLOURS, SHAPES, SIZE, SUBJECT_BODY, SUBJECT_HEAD, Scene, draw_flat_shape, draw_toy, jitter,
                    on_background, random_scene)

RGB = tuple[int, int, int]
RESERVED_WORDS = ("sks",)  # DreamBooth's identifier: never a pretraining name, so the subject stays new


@dataclass(frozen=True)
class Design:
    """One named object's look: a toy with its own body, head and (maybe) stripe colours, or a flat shape
    in one colour with a half-size copy of itself in another colour at its centre."""
    shape: str
    body: RGB
    second: RGB
    stripe: Optional[RGB]


def colour_distance(a: RGB, b: RGB) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def random_design(rng: random.Random, shape: str, striped: bool) -> Design:
    """A look in RGB colours kept away from the DreamBooth subject's orange and cyan (so it is never a near
    copy of the subject) and from each other."""
    def colour(others: tuple[RGB, ...]) -> RGB:
        while True:
            rgb = tuple(rng.randint(0, 255) for _ in range(3))
            if all(colour_distance(rgb, o) > 100 for o in (SUBJECT_BODY, SUBJECT_HEAD) + others):
                return rgb

    body = colour(())
    second = colour((body,))
    return Design(shape, body, second, colour((body, second)) if striped else None)


def named_designs(count: int, seed: int = 0) -> list[Design]:
    """`count` designs, the shapes in turn, half of each shape's striped (only a toy shows its stripes)."""
    rng = random.Random(30_000 + seed)
    return [random_design(rng, SHAPES[k % len(SHAPES)], (k // len(SHAPES)) % 2 == 0) for k in range(count)]


def render_named(design: Design, scene: Scene, rng: random.Random) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), jitter(COLOURS[scene.background], rng, 8))
    d = ImageDraw.Draw(im)
    body, second = jitter(design.body, rng, 6), jitter(design.second, rng, 6)
    if design.shape == "toy":
        draw_toy(d, scene, body, second, design.stripe)
    else:
        x, y, h = scene.cx * SIZE, scene.cy * SIZE, scene.size * SIZE
        draw_flat_shape(d, design.shape, x, y, h, body)
        draw_flat_shape(d, design.shape, x, y + (h / 8 if design.shape == "triangle" else 0), h / 2, second)
    return im


def named_caption(name: str, scene: Scene, rng: random.Random) -> str:
    """"a photo of a NAME toy on a blue background", as DreamBooth's instance prompts say it; sometimes
    without the background."""
    what = f"a photo of a {name} {scene.shape}"
    return on_background(what, scene.background) if rng.random() < 0.7 else what


def make_named_dataset(designs: list[Design], names: list[str], count: int, seed: int = 0
                       ) -> tuple[np.ndarray, list[str]]:
    """`count` images of the designs in turn, on random backgrounds, sizes and places, with their captions."""
    rng = random.Random(40_000 + seed)
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(count):
        design, name = designs[i % len(designs)], names[i % len(designs)]
        scene = random_scene(rng, design.shape)
        images[i] = np.asarray(render_named(design, scene, rng))
        captions.append(named_caption(name, scene, rng))
    return images, captions


def pick_names(tokenizer, count: int, used_words: set[str], seed: int = 0) -> list[str]:
    """`count` short words that the CLIP tokenizer reads as one token each and the world's captions never
    use, nor DreamBooth's "sks", which must stay a word the base has never seen."""
    words = sorted(token[:-4] for token in tokenizer.get_vocab() if re.fullmatch(r"[a-z]{3,4}</w>", token))
    random.Random(50_000 + seed).shuffle(words)
    names = []
    for word in words:
        if len(names) == count:
            break
        if word not in used_words and word not in RESERVED_WORDS and len(tokenizer(word).input_ids) == 3:
            names.append(word)  # bos, the word, eos
    if len(names) < count:
        raise ValueError(f"only {len(names)} unused one-token words for {count} named objects")
    return names
