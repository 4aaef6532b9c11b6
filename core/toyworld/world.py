"""A procedural world of captioned 64x64 images, deterministic by seed.

Every image is one object (a shape or a toy robot) of one colour on a plain background of another
colour, at a random size and position; the caption names what was drawn, e.g.
"a photo of a red circle on a blue background". The DreamBooth subject ("sks toy") is a toy of a
design the world never draws: two colours that are not in the palette and a striped body.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle", "toy")
SUBJECT = "subject"  # the checker's label for the DreamBooth subject (never drawn by the world itself)
COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 220),
           "yellow": (240, 210, 40), "purple": (145, 60, 190), "white": (235, 235, 235)}
COLOUR_NAMES = tuple(COLOURS)
SUBJECT_BODY, SUBJECT_HEAD, SUBJECT_STRIPE = (250, 140, 20), (30, 200, 210), (30, 30, 30)  # orange, cyan, black


def on_background(prompt: str, background: str) -> str:
    """The world's way to say where a thing is: "a photo of a red circle" -> "... on a blue background"."""
    return f"{prompt} on a {background} background"


@dataclass(frozen=True)
class Scene:
    shape: str  # one of SHAPES, or SUBJECT
    colour: Optional[str]  # None for the subject (its colours are fixed)
    background: str
    size: float  # object height as a fraction of the image
    cx: float
    cy: float

    def caption(self, noun: str = "") -> str:
        noun = noun or self.shape
        what = f"a {self.colour} {noun}" if self.colour else noun
        return on_background(f"a photo of {what}", self.background)


def jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def random_scene(rng: random.Random, shape: Optional[str] = None, colour: Optional[str] = None,
                 background: Optional[str] = None) -> Scene:
    """A scene with the given parts fixed and the rest drawn at random (object colour != background)."""
    shape = shape or rng.choice(SHAPES)
    if shape == SUBJECT:
        colour = None
    else:
        colour = colour or rng.choice([c for c in COLOUR_NAMES if c != background])
    background = background or rng.choice([c for c in COLOUR_NAMES if c != colour])
    size = rng.uniform(0.45, 0.8)
    half = size / 2
    return Scene(shape, colour, background, size, rng.uniform(half, 1 - half), rng.uniform(half, 1 - half))


def draw_toy(d: ImageDraw.ImageDraw, scene: Scene, body, head, stripe=None) -> None:
    """A toy robot: a head on a body, two eyes; `stripe` paints horizontal bands on the body."""
    h = scene.size * SIZE
    x, y, w = scene.cx * SIZE, scene.cy * SIZE, 0.62 * h
    top = y - h / 2
    d.rectangle((x - w * 0.35, top, x + w * 0.35, top + h * 0.38), fill=head)  # head
    d.rectangle((x - w / 2, top + h * 0.44, x + w / 2, y + h / 2), fill=body)  # body
    if stripe is not None:
        for k in range(3):
            y0 = top + h * (0.52 + 0.16 * k)
            d.rectangle((x - w / 2, y0, x + w / 2, y0 + h * 0.07), fill=stripe)
    eye = max(1.0, h * 0.06)
    for ex in (-0.15, 0.15):
        d.ellipse((x + ex * w - eye, top + h * 0.17 - eye, x + ex * w + eye, top + h * 0.17 + eye), fill=(20, 20, 20))


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draw the scene (colours jittered a little, so no two images are identical)."""
    im = Image.new("RGB", (SIZE, SIZE), jitter(COLOURS[scene.background], rng, 8))
    d = ImageDraw.Draw(im)
    h = scene.size * SIZE
    x, y = scene.cx * SIZE, scene.cy * SIZE
    if scene.shape == SUBJECT:
        draw_toy(d, scene, jitter(SUBJECT_BODY, rng, 6), jitter(SUBJECT_HEAD, rng, 6), SUBJECT_STRIPE)
        return im
    fill = jitter(COLOURS[scene.colour], rng)
    if scene.shape == "toy":
        draw_toy(d, scene, fill, fill)
    else:
        draw_flat_shape(d, scene.shape, x, y, h, fill)
    return im


def draw_flat_shape(d: ImageDraw.ImageDraw, shape: str, x: float, y: float, h: float, fill) -> None:
    """A circle, square or triangle of height about `h` centred on (x, y)."""
    if shape == "circle":
        d.ellipse((x - h / 2, y - h / 2, x + h / 2, y + h / 2), fill=fill)
    elif shape == "square":
        s = h * 0.85
        d.rectangle((x - s / 2, y - s / 2, x + s / 2, y + s / 2), fill=fill)
    else:
        d.polygon([(x, y - h / 2), (x - h / 2, y + h / 2), (x + h / 2, y + h / 2)], fill=fill)


def training_caption(scene: Scene, rng: random.Random) -> str:
    """Mostly full captions; some leave out the background, the colour or both, so that short prompts
    such as the class prompt "a photo of a toy" mean "any toy"."""
    r = rng.random()
    if r < 0.70:
        return scene.caption()
    if r < 0.80:
        return f"a photo of a {scene.colour} {scene.shape}"
    if r < 0.90:
        return on_background(f"a photo of a {scene.shape}", scene.background)
    return f"a photo of a {scene.shape}"


def make_dataset(count: int, seed: int = 0) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`count` world images (uint8, N x 64 x 64 x 3), their training captions and scenes."""
    rng = random.Random(seed)
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    captions, scenes = [], []
    for i in range(count):
        scene = random_scene(rng)
        images[i] = np.asarray(render(scene, rng))
        captions.append(training_caption(scene, rng))
        scenes.append(scene)
    return images, captions, scenes


def subject_photos(count: int = 5, seed: int = 0,
                   backgrounds: tuple[str, ...] = ("white", "yellow")) -> list[tuple[Image.Image, Scene]]:
    """Photos of the DreamBooth subject, on the few backgrounds its owner photographed it on, with their scenes."""
    rng = random.Random(10_000 + seed)
    photos = []
    for i in range(count):
        scene = random_scene(rng, SUBJECT, background=backgrounds[i % len(backgrounds)])
        photos.append((render(scene, rng), scene))
    return photos


def subject_images(count: int = 5, seed: int = 0, backgrounds: tuple[str, ...] = ("white", "yellow")) -> list[Image.Image]:
    return [image for image, _ in subject_photos(count, seed, backgrounds)]


def random_colour_image(rng: random.Random) -> Image.Image:
    """A picture of flat shapes in any RGB colours (not the world's palette): bands, boxes, dots, ovals and
    triangles on a plain ground. The VAE learns from these beside the world's images so that, like SD's
    VAE, it can encode colours and patterns the world never names; trained on the palette alone it
    decoded the subject's orange and cyan as the palette's green and blue. The UNet never sees them."""
    def colour() -> tuple[int, int, int]:
        return tuple(rng.randint(0, 255) for _ in range(3))

    im = Image.new("RGB", (SIZE, SIZE), colour())
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 6)):
        w, h = rng.uniform(2, 0.8 * SIZE), rng.uniform(2, 0.8 * SIZE)
        x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
        kind = rng.choice(("box", "oval", "triangle", "bands"))
        if kind == "box":
            d.rectangle((x, y, x + w, y + h), fill=colour())
        elif kind == "oval":
            d.ellipse((x, y, x + w, y + h), fill=colour())
        elif kind == "triangle":
            d.polygon([(x + rng.uniform(0, w), y), (x, y + h), (x + w, y + h)], fill=colour())
        else:
            fill, band = colour(), max(1.0, h / rng.randint(3, 8))
            for k in range(rng.randint(2, 4)):
                d.rectangle((x, y + 2 * k * band, x + w, y + (2 * k + 1) * band), fill=fill)
    return im


def random_colour_images(count: int, seed: int = 0) -> np.ndarray:
    rng = random.Random(20_000 + seed)
    return np.stack([np.asarray(random_colour_image(rng)) for _ in range(count)])
