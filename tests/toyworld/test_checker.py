"""The shipped checker judges world images correctly, and its features tell the subject apart."""

from __future__ import annotations

import random

import torch

from sksbooth.toyworld.assets import load_shipped_checker
from sksbooth.toyworld.checker import SHAPE_LABELS, accuracy, to_tensor
from sksbooth.toyworld.quality import judge
from sksbooth.toyworld.world import SUBJECT, random_scene, render, subject_images
from sksbooth.evaluate.metrics import subject_fidelity


def test_shipped_checker_names_shape_colour_and_background():
    scores = accuracy(load_shipped_checker(), count=300, seed=777)
    assert scores["shape"] >= 0.95 and scores["colour"] >= 0.95 and scores["background"] >= 0.95, scores


def test_features_are_closer_between_photos_of_the_subject_than_to_other_toys():
    checker = load_shipped_checker()
    rng = random.Random(5)
    real = judge(checker, subject_images(5))["features"]
    other_subject = judge(checker, [render(random_scene(rng, SUBJECT), rng) for _ in range(8)])
    toys = judge(checker, [render(random_scene(rng, "toy"), rng) for _ in range(8)])
    assert (other_subject["shape"] == SHAPE_LABELS.index(SUBJECT)).all()
    assert (toys["shape"] == SHAPE_LABELS.index("toy")).all()
    assert subject_fidelity(other_subject["features"], real) > subject_fidelity(toys["features"], real) + 0.1


def test_to_tensor_takes_images_or_arrays():
    image = subject_images(1)[0]
    from_pil = to_tensor([image])
    assert from_pil.shape == (1, 3, 64, 64) and from_pil.min() >= -1 and from_pil.max() <= 1
    import numpy as np
    assert torch.equal(from_pil, to_tensor(np.asarray(image)[None]))


def test_look_alikes_are_objects_off_the_palette_labelled_by_their_shape():
    import numpy as np
    from sksbooth.toyworld.checker import labelled_batch
    from sksbooth.toyworld.world import COLOURS
    plain, plain_labels = labelled_batch(random.Random(3), 48)
    again, _ = labelled_batch(random.Random(3), 48, lookalike_share=0.0)
    assert torch.equal(plain, again)  # off by default: the shipped checker's batches are as they were
    x, labels = labelled_batch(random.Random(3), 300, lookalike_share=0.4)
    subject = labels["shape"] == SHAPE_LABELS.index(SUBJECT)
    lookalike = (labels["colour"] == -100) & ~subject
    assert 80 <= lookalike.sum() <= 160  # ~40% of 300
    palette = torch.tensor(list(COLOURS.values())).float()

    def off_palette_pixels(images):
        pixels = ((images + 1) * 127.5).permute(0, 2, 3, 1).reshape(len(images), -1, 1, 3)
        return ((pixels - palette).abs().sum(-1).min(-1).values > 80).sum(1)

    # a look-alike's object is in colours the world does not use; a world object's is in the palette
    assert (off_palette_pixels(x[lookalike]) > 80).float().mean() > 0.9
    world = (labels["colour"] != -100)
    assert (off_palette_pixels(x[world]) > 80).float().mean() < 0.1
    assert set(labels["shape"][lookalike].tolist()) == {SHAPE_LABELS.index(s) for s in ("circle", "square", "triangle", "toy")}


def test_the_command_line_refuses_a_look_alike_share_past_one_half(capsys):
    import pytest
    from sksbooth.toyworld.make import parse
    assert parse(["dest", "--checker_lookalike_share", "0.3"])[2] == {"steps": 1200, "lookalike_share": 0.3}
    with pytest.raises(SystemExit):
        parse(["dest", "--checker_lookalike_share", "0.9"])
    assert "--checker_lookalike_share must be in [0, 0.5]" in capsys.readouterr().err
