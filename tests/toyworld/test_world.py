"""The toy world: deterministic by seed, and every caption tells the truth about its image."""

from __future__ import annotations

import random

import numpy as np

from sksbooth.toyworld.world import (COLOURS, SUBJECT, SUBJECT_BODY, SUBJECT_HEAD, make_dataset, random_colour_images,
                                    random_scene, render, subject_images)


def test_same_seed_same_world_other_seed_other_world():
    a_images, a_captions, _ = make_dataset(50, seed=3)
    b_images, b_captions, _ = make_dataset(50, seed=3)
    c_images, _, _ = make_dataset(50, seed=4)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)


def colour_distance(pixel, name):
    return np.abs(pixel.astype(int) - np.array(COLOURS[name])).sum()


def test_captions_name_the_drawn_colours():
    images, captions, scenes = make_dataset(200, seed=0)
    for image, caption, scene in zip(images, captions, scenes):
        assert scene.colour != scene.background
        assert scene.shape in caption
        # the object's centre has the object's colour (toys: the body, below the centre), a corner the background's
        y = int(scene.cy * 64 + (0.2 * scene.size * 64 if scene.shape == "toy" else 0))
        centre, corner = image[y, int(scene.cx * 64)], image[0, 0] if scene.cx > 0.5 else image[0, 63]
        assert min(COLOURS, key=lambda c: colour_distance(centre, c)) == scene.colour
        assert min(COLOURS, key=lambda c: colour_distance(corner, c)) == scene.background
    full = [c for c, s in zip(captions, scenes) if c == s.caption()]
    assert len(full) > 100  # most captions are complete: "a photo of a red circle on a blue background"
    assert full[0].startswith("a photo of a ") and full[0].endswith(" background")


def test_subject_is_not_in_the_world():
    _, captions, scenes = make_dataset(500, seed=1)
    assert all(s.shape != SUBJECT for s in scenes) and not any("sks" in c for c in captions)
    photos = subject_images(5)
    assert len({im.tobytes() for im in photos}) == 5
    assert [im.tobytes() for im in photos] == [im.tobytes() for im in subject_images(5)]
    # orange and cyan are drawn, colours no world object has
    pixels = np.concatenate([np.asarray(im).reshape(-1, 3) for im in photos]).astype(int)
    assert (np.abs(pixels - (250, 140, 20)).sum(1) < 30).any() and (np.abs(pixels - (30, 200, 210)).sum(1) < 30).any()
    world_pixels = np.asarray(render(random_scene(random.Random(0), "toy"), random.Random(0))).reshape(-1, 3).astype(int)
    assert not (np.abs(world_pixels - (250, 140, 20)).sum(1) < 30).any()


def test_random_colour_pictures_span_colours_beyond_the_palette():
    a, b = random_colour_images(40, seed=0), random_colour_images(40, seed=0)
    assert a.shape == (40, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, random_colour_images(40, seed=1))
    pixels = a.reshape(-1, 3).astype(int)
    palette = np.array(list(COLOURS.values()))
    nearest_palette = np.abs(pixels[:, None] - palette[None]).sum(-1).min(1)
    assert (nearest_palette > 60).mean() > 0.5  # mostly colours the world never draws
    # and near the subject's orange and cyan somewhere, without ever drawing the subject
    for rgb in (SUBJECT_BODY, SUBJECT_HEAD):
        assert (np.abs(pixels - rgb).sum(1) < 60).any()
