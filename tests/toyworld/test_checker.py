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


def test_the_command_line_refuses_shares_past_one_half(capsys):
    import pytest
    from sksbooth.toyworld.make import parse
    assert parse(["dest", "--checker_lookalike_share", "0.3", "--checker_nothing_share", "0.1"])[2] == {
        "steps": 1200, "lookalike_share": 0.3, "nothing_share": 0.1, "only": False}
    for shares in (["--checker_lookalike_share", "0.9"], ["--checker_lookalike_share", "0.3", "--checker_nothing_share",
                                                         "0.3"], ["--checker_nothing_share", "-0.1"]):
        with pytest.raises(SystemExit):
            parse(["dest", *shares])
        assert "must be at least 0 and add up to at most 0.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["dest", "--checker_only", "--checker_steps", "0"])
    assert "--checker_only needs --checker_steps above 0" in capsys.readouterr().err


def test_pictures_of_no_world_object_are_labelled_nothing_with_a_ground_only_when_bare():
    from sksbooth.toyworld.checker import NOTHING, labelled_batch
    from sksbooth.toyworld.world import COLOUR_NAMES, COLOURS
    x, labels = labelled_batch(random.Random(4), 400, lookalike_share=0.2, nothing_share=0.3)
    nothing = labels["shape"] == SHAPE_LABELS.index(NOTHING)
    assert 90 <= nothing.sum() <= 150  # ~30% of 400
    assert (labels["colour"][nothing] == -100).all()
    bare = nothing & (labels["background"] != -100)
    assert 0 < bare.sum() < nothing.sum()
    for image, ground in zip(x[bare], labels["background"][bare]):  # one flat colour: the named ground
        rgb = ((image + 1) * 127.5).reshape(3, -1)
        assert rgb.std(1).max() < 1
        assert (rgb.mean(1) - torch.tensor(COLOURS[COLOUR_NAMES[ground]])).abs().max() <= 9
    assert (labels["background"][~nothing] != -100).all()  # world objects and look-alikes keep theirs


def test_the_shipped_checker_says_nothing_of_pictures_without_a_world_object_and_names_look_alikes_shapes():
    from sksbooth.toyworld.checker import NOTHING, labelled_batch
    from sksbooth.toyworld.off_world import bands, clutter, noise
    from sksbooth.toyworld.quality import judge
    checker = load_shipped_checker()
    rng = random.Random(31)
    for kind in (bands, noise, clutter):
        verdict = judge(checker, [kind(rng) for _ in range(40)])["shape"]
        assert (verdict == SHAPE_LABELS.index(NOTHING)).float().mean() >= 0.9, kind.__name__
    scores = accuracy(checker, count=400, seed=778, lookalike_share=0.3, nothing_share=0.2)
    assert scores["shape"] >= 0.95, scores
    # look-alikes are named by their shape, not taken for the subject
    x, labels = labelled_batch(random.Random(9), 300, lookalike_share=0.5)
    lookalike = (labels["colour"] == -100) & (labels["shape"] != SHAPE_LABELS.index(SUBJECT))
    with torch.no_grad():
        verdict = checker(x[lookalike])["shape"].argmax(1)
    assert (verdict == SHAPE_LABELS.index(SUBJECT)).float().mean() <= 0.03


def test_a_checker_made_before_the_nothing_answer_is_refused_with_the_command_to_remake_it(tmp_path):
    import pytest
    from safetensors.torch import load_file, save_file
    from sksbooth.errors import ModelLoadError
    from sksbooth.toyworld.assets import ASSETS
    from sksbooth.toyworld.checker import load_checker
    old = load_file(str(ASSETS / "checker.safetensors"))
    old["shape.weight"], old["shape.bias"] = old["shape.weight"][:5].clone(), old["shape.bias"][:5].clone()
    save_file(old, str(tmp_path / "checker.safetensors"))
    with pytest.raises(ModelLoadError, match=r"names 5 shapes.*toyworld-pretrain .* --checker_only"):
        load_checker(tmp_path)


def test_checker_only_trains_the_judge_alone_and_records_how(tmp_path):
    import json
    from sksbooth.toyworld.checker import load_checker
    from sksbooth.toyworld.make import main
    assert main([str(tmp_path), "--checker_only", "--checker_steps", "4"]) == 0
    made = json.loads((tmp_path / "checker.json").read_text())
    assert made["steps"] == 4 and made["lookalike_share"] == 0.25 and made["nothing_share"] == 0.15
    assert set(made["accuracy"]) == {"world", "lookalikes_0.3", "nothing_0.3"}
    assert "--checker_only" in made["command"]
    load_checker(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checker.json", "checker.safetensors"]  # no base
