"""DreamBooth works on the shipped toy-world base: a few dozen fine-tuning steps on the subject's
photos make subject-prompt generations measurably closer to the subject than before; and the scores count
failed pictures as no world object."""

from __future__ import annotations

import dataclasses

from sksbooth.demo import demo_config, make_subject_images
from sksbooth.evaluate.metrics import subject_fidelity
from sksbooth.toyworld.assets import base_path, load_pipeline, load_shipped_checker
from sksbooth.toyworld.quality import INSTANCE_PROMPT, generate, judge
from sksbooth.toyworld.report import load_images
from sksbooth.train.loop import train

PROMPTS = [f"{INSTANCE_PROMPT} on a {b} background" for b in ("red", "blue") for _ in range(4)]


def closeness(model, checker, real) -> float:
    images = generate(load_pipeline(model), PROMPTS, seed=0, steps=12)
    return subject_fidelity(judge(checker, images)["features"], real)


def test_a_few_dozen_steps_bring_the_subject_closer(tmp_path):
    checker = load_shipped_checker()
    subject = make_subject_images(tmp_path / "subject")
    real = judge(checker, load_images(subject))["features"]
    before = closeness(base_path(), checker, real)
    config = dataclasses.replace(demo_config(tmp_path / "out", base_path(), subject, steps=40, prior=False),
                                 validation_prompt=None, checkpointing_steps=1000,
                                 use_ema=False)  # the demo's EMA averages ~100 steps: 40 would barely show
    after = closeness(train(config).model_path, checker, real)
    print(f"subject fidelity before {before:.3f}, after 40 steps {after:.3f}")
    assert after > before + 0.05  # measured: 0.26 -> 0.37 (cosine similarity of checker features)


def test_class_pictures_of_no_world_object_are_counted_as_such_not_as_toys():
    import random
    from sksbooth.toyworld.off_world import bands
    from sksbooth.toyworld.quality import score_dreambooth
    from sksbooth.toyworld.world import random_scene, render, subject_images
    checker, rng = load_shipped_checker(), random.Random(2)
    pipe = load_pipeline(base_path())
    failed = score_dreambooth(pipe, checker, subject_images(3), per_prompt=1, steps=4,
                              class_images=[bands(rng) for _ in range(8)])
    assert failed["class_nothing"] == 1.0 and failed["class_is_toy"] == 0.0
    toys = score_dreambooth(pipe, checker, subject_images(3), per_prompt=1, steps=4,
                            class_images=[render(random_scene(rng, "toy"), rng) for _ in range(8)])
    assert toys["class_nothing"] == 0.0 and toys["class_is_toy"] == 1.0
    assert 0 <= failed["subject_nothing"] <= 1
