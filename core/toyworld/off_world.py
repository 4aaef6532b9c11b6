"""Pictures with no world object in them, for the checker's "nothing" answer.

A judge that must name one of the world's shapes for every picture names one for anything: after a
fine-tune gone wrong the class prompt drew full-height blue and yellow bands, and a checker without
this answer called 88% of them toys. These are the ways a small diffusion model was seen to fail
(bands, a bare background, colour noise, smears, clutter), so the judge can say so.
"""

from __future__ import annotations

import random
from typing import Optional

from PIL import Image, ImageDraw, ImageFilter

from .world import COLOUR_NAMES, COLOURS, SIZE, jitter, random_scene, render

RGB = tuple[int, int, int]


def any_colour(rng: random.Random) -> RGB:
    """Half the time a palette colour (bands of the world's own colours are no object either), else any RGB."""
    if rng.random() < 0.5:
        return jitter(COLOURS[rng.choice(COLOUR_NAMES)], rng)
    return tuple(rng.randint(0, 255) for _ in range(3))


def bare(rng: random.Random) -> tuple[Image.Image, Optional[str]]:
    background = rng.choice(COLOUR_NAMES)
    return Image.new("RGB", (SIZE, SIZE), jitter(COLOURS[background], rng, 8)), background


def bands(rng: random.Random) -> Image.Image:
    """Two to five full-length bands, across or down the picture."""
    im = Image.new("RGB", (SIZE, SIZE), any_colour(rng))
    d = ImageDraw.Draw(im)
    cuts = sorted(rng.uniform(4, SIZE - 4) for _ in range(rng.randint(1, 4))) + [SIZE]
    across, start = rng.random() < 0.5, 0.0
    for end in cuts:
        box = (0, start, SIZE, end) if across else (start, 0, end, SIZE)
        d.rectangle(box, fill=any_colour(rng))
        start = end
    return im


def noise(rng: random.Random) -> Image.Image:
    """Smooth colour noise: a few random pixels blown up to the full size."""
    cells = rng.choice((2, 3, 4, 6, 8, 16))
    small = Image.new("RGB", (cells, cells))
    small.putdata([any_colour(rng) for _ in range(cells * cells)])
    return small.resize((SIZE, SIZE), Image.BILINEAR)


def smear(rng: random.Random) -> Image.Image:
    """A world picture blurred past recognition: a blob on a ground."""
    return render(random_scene(rng), rng).filter(ImageFilter.GaussianBlur(rng.uniform(12, 18)))


def clutter(rng: random.Random) -> Image.Image:
    """Many small boxes and dots in many colours: no one object."""
    im = Image.new("RGB", (SIZE, SIZE), any_colour(rng))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(5, 12)):
        w, h = rng.uniform(4, 18), rng.uniform(4, 18)
        x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
        (d.rectangle if rng.random() < 0.5 else d.ellipse)((x, y, x + w, y + h), fill=any_colour(rng))
    return im


def off_world_image(rng: random.Random) -> tuple[Image.Image, Optional[str]]:
    """A picture of no world object, and its background's palette name where it has one (a bare ground)."""
    kind = rng.choice(("bare", *GROUNDLESS))
    return bare(rng) if kind == "bare" else (GROUNDLESS[kind](rng), None)


GROUNDLESS = {"bands": bands, "noise": noise, "smear": smear, "clutter": clutter}  # no one ground to name
