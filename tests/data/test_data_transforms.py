"""Resize + crop to a square, optional flip, normalisation to [-1, 1]."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sksbooth.data.transforms import prepare_image, resize_and_crop, to_tensor


def three_bands(width=96, height=32) -> Image.Image:
    """Red | green | blue vertical thirds: the center crop is the green third."""
    arr = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    arr[:, :third, 0] = 255
    arr[:, third:2 * third, 1] = 255
    arr[:, 2 * third:, 2] = 255
    return Image.fromarray(arr)


def asymmetric(size=(40, 40)) -> Image.Image:
    """A horizontal gradient with a white mark on the left: not its own mirror image."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[5:15, 2:10] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("center_crop", [True, False])
@pytest.mark.parametrize("size", [(96, 32), (32, 96), (20, 20), (9, 300)])
def test_output_is_a_square_of_the_resolution_in_minus1_1(size, center_crop):
    rng = random.Random(0)
    t = prepare_image(Image.new("RGB", size, (10, 200, 90)), 24, center_crop, True, rng)
    assert t.shape == (3, 24, 24) and t.dtype == torch.float32
    assert t.min() >= -1.0 and t.max() <= 1.0


def test_value_range_endpoints():
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, 8:] = 255
    t = to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 16, 16)
    assert t.min().item() == -1.0 and t.max().item() == 1.0  # black -> -1, white -> +1
    assert torch.all(t[:, :, :8] == -1.0) and torch.all(t[:, :, 8:] == 1.0)
    # channel order is RGB, CHW
    red = to_tensor(Image.new("RGB", (4, 4), (255, 0, 0)))
    assert torch.all(red[0] == 1.0) and torch.all(red[1:] == -1.0)


def test_center_crop_keeps_the_middle():
    out = resize_and_crop(three_bands(), 16, center_crop=True, rng=random.Random(0))
    assert out.size == (16, 16)
    arr = np.asarray(out, dtype=np.int32)
    # the short side (32) scales to 16, the long one (96) to 48: the middle 16 columns are green
    assert arr[:, 2:-2, 1].min() > 200 and arr[:, 2:-2, 0].max() < 60 and arr[:, 2:-2, 2].max() < 60


def test_center_crop_of_a_tall_image():
    tall = three_bands().transpose(Image.Transpose.ROTATE_90)  # bands now horizontal, 32x96
    arr = np.asarray(resize_and_crop(tall, 16, True, random.Random(0)), dtype=np.int32)
    assert arr[2:-2, :, 1].min() > 200


def test_random_crop_varies_and_stays_inside_the_image():
    image = three_bands()
    resized = np.asarray(image.resize((48, 16), Image.Resampling.BICUBIC))
    offsets = set()
    for seed in range(30):
        crop = np.asarray(resize_and_crop(image, 16, center_crop=False, rng=random.Random(seed)))
        # the crop is a window of the resized image: find its offset
        matches = [x for x in range(0, 48 - 16 + 1) if np.array_equal(resized[:, x:x + 16], crop)]
        assert matches, "a random crop is not a window of the resized image"
        offsets.add(matches[0])
    assert len(offsets) > 5, f"random crop barely moves: offsets {sorted(offsets)}"
    assert min(offsets) < 8 and max(offsets) > 24  # reaches both ends


def test_random_crop_is_deterministic_per_rng():
    image = three_bands()
    a = prepare_image(image, 16, False, True, random.Random(123))
    b = prepare_image(image, 16, False, True, random.Random(123))
    assert torch.equal(a, b)


def test_flip_gives_the_mirror_image():
    image = asymmetric()
    plain = prepare_image(image, 32, True, False, random.Random(0))
    mirror = torch.flip(plain, dims=[2])  # flip along width
    assert not torch.equal(plain, mirror)
    outcomes = []
    for seed in range(20):
        t = prepare_image(image, 32, True, True, random.Random(seed))
        if torch.equal(t, mirror):
            outcomes.append("flipped")
        else:
            assert torch.equal(t, plain), "a sample is neither the original nor its mirror"
            outcomes.append("plain")
    assert "flipped" in outcomes and "plain" in outcomes


def test_no_flip_without_random_flip():
    image = asymmetric()
    plain = prepare_image(image, 32, True, False, random.Random(0))
    for seed in range(10):
        assert torch.equal(prepare_image(image, 32, True, False, random.Random(seed)), plain)
