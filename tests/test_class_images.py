"""Class images: top-up, sidecars, reuse, user images, per-image seeds, stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sksbooth.class_images import generate_class_images
from sksbooth.config import ClassImagesConfig
from sksbooth.errors import StopRequested
from sksbooth.events import StopFlag

PROMPT = "a photo of dog"


def make_config(model, folder, **kw) -> ClassImagesConfig:
    values = dict(pretrained_model_name_or_path=str(model), class_prompt=PROMPT, class_data_dir=str(folder),
                  num_class_images=3, sample_batch_size=2, seed=7, num_inference_steps=2,
                  guidance_scale=1.0)
    values.update(kw)
    return ClassImagesConfig(**values)


def mtimes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is far faster on one thread than with two threads fighting over busy cores."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    """The tiny model's pipeline, loaded once for the calls that do not test loading."""
    from sksbooth.models.pipeline import load_pipeline
    return load_pipeline(str(tiny_model))


def test_top_up_sidecars_reuse_and_seeds(tiny_model, pipe, tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    # a user-provided class photo counts towards num_class_images
    Image.new("RGB", (40, 40), (120, 90, 60)).save(folder / "my_dog.jpg")
    rec = Recorder()
    # no pipe given: the model is loaded from the tiny model folder
    result = generate_class_images(make_config(tiny_model, folder, sample_batch_size=1), callbacks=[rec])

    generated = sorted(p.name for p in folder.glob("class_*.png"))
    assert generated == ["class_00000.png", "class_00001.png"]  # 3 wanted, 1 provided
    assert sorted(p.name for p in result.images) == ["class_00000.png", "class_00001.png", "my_dog.jpg"]
    assert [e.kind for e in rec.events] == ["start", "progress", "progress"]
    assert rec.events[-1].step == rec.events[-1].total == 2
    for k in (0, 1):
        meta = json.loads((folder / f"class_{k:05d}.json").read_text())
        assert meta["prompt"] == PROMPT and meta["seed"] == 7 + k
        with Image.open(folder / f"class_{k:05d}.png") as im:
            assert im.format == "PNG" and im.size == (64, 64)  # the tiny model's native size
    assert not (folder / "my_dog.json").exists()
    a0, a1 = pixels(folder / "class_00000.png"), pixels(folder / "class_00001.png")
    assert not np.array_equal(a0, a1), "two images drawn with different seeds are identical"

    # a second call reuses everything: nothing generated, nothing rewritten
    before = mtimes(folder)
    rec2 = Recorder()
    again = generate_class_images(make_config(tiny_model, folder), callbacks=[rec2], pipe=pipe)
    assert rec2.events == []
    assert mtimes(folder) == before
    assert len(again.images) == 3

    # image k uses seed + k: a deleted image comes back pixel for pixel
    (folder / "class_00001.png").unlink()
    (folder / "class_00001.json").unlink()
    generate_class_images(make_config(tiny_model, folder, sample_batch_size=1), pipe=pipe)
    assert np.array_equal(pixels(folder / "class_00001.png"), a1)
    assert json.loads((folder / "class_00001.json").read_text())["seed"] == 8
    assert (folder / "class_00000.png").stat().st_mtime_ns == before["class_00000.png"]

    # a corrupt generated image is not counted and is regenerated
    (folder / "class_00000.png").write_bytes(b"not a png")
    generate_class_images(make_config(tiny_model, folder, sample_batch_size=1), pipe=pipe)
    assert np.array_equal(pixels(folder / "class_00000.png"), a0)
    assert (folder / "my_dog.jpg").stat().st_mtime_ns == before["my_dog.jpg"]

    # the seed of image k does not depend on the batching: drawn two at a time, the same
    # images come out (up to float rounding of batched convolutions: at most 1 level of 255)
    batched = tmp_path / "batched"
    generate_class_images(make_config(tiny_model, batched, num_class_images=2, sample_batch_size=2), pipe=pipe)
    for k, ref in ((0, a0), (1, a1)):
        diff = np.abs(pixels(batched / f"class_{k:05d}.png").astype(int) - ref)
        assert diff.max() <= 1, f"image {k} differs when drawn in a batch of 2"


def test_more_user_images_than_wanted_generates_nothing(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i, i, i)).save(folder / f"user_{i}.png")
    # the model path does not exist: it must not even be loaded
    result = generate_class_images(make_config(tmp_path / "no-model", folder, num_class_images=2))
    assert len(result.images) == 3
    assert not list(folder.glob("class_*"))


def test_stop_keeps_images_already_written(tiny_model, pipe, tmp_path):
    folder = tmp_path / "class"
    stop = StopFlag()

    def stop_after_first_batch(event):
        if event.kind == "progress":
            stop.request("test")

    config = make_config(tiny_model, folder, num_class_images=4, sample_batch_size=1)
    with pytest.raises(StopRequested, match="stopped after 1 of 4"):
        generate_class_images(config, callbacks=[stop_after_first_batch], stop=stop, pipe=pipe)
    assert sorted(p.name for p in folder.iterdir()) == ["class_00000.json", "class_00000.png"]
    first = pixels(folder / "class_00000.png")
    written = (folder / "class_00000.png").stat().st_mtime_ns

    # a rerun continues where it stopped, keeping the first image
    result = generate_class_images(make_config(tiny_model, folder, num_class_images=2, sample_batch_size=1),
                                   pipe=pipe)
    assert [p.name for p in result.images] == ["class_00000.png", "class_00001.png"]
    assert (folder / "class_00000.png").stat().st_mtime_ns == written
    assert np.array_equal(pixels(folder / "class_00000.png"), first)


def test_stop_set_before_start_writes_nothing(tiny_model, pipe, tmp_path):
    stop = StopFlag()
    stop.request()
    folder = tmp_path / "class"
    with pytest.raises(StopRequested):
        generate_class_images(make_config(tiny_model, folder, num_class_images=2), stop=stop, pipe=pipe)
    assert list(folder.iterdir()) == []


def test_prompts_file_draws_each_line_in_turn_and_captions_it(pipe, tiny_model, tmp_path):
    from sksbooth.data.images import ImageFolder
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of dog on grass\n\n  a photo of dog on snow  \n", encoding="utf-8")
    folder = tmp_path / "class"
    config = make_config(tiny_model, folder, class_prompt=None, class_prompts_file=str(prompts), num_class_images=3,
                         sample_batch_size=3)
    generate_class_images(config, pipe=pipe)
    expected = ["a photo of dog on grass", "a photo of dog on snow", "a photo of dog on grass"]
    names = [f"class_{k:05d}.png" for k in range(3)]
    assert [json.loads((folder / n).with_suffix(".json").read_text())["prompt"] for n in names] == expected
    assert [ImageFolder(folder).caption_for(folder / n, PROMPT) for n in names] == expected  # what training reads
    # image k is drawn with prompt k and seed + k: image 1 is what one --class_prompt "snow" draws at seed 8
    single = tmp_path / "single"
    generate_class_images(make_config(tiny_model, single, num_class_images=1, sample_batch_size=1, seed=8,
                                      class_prompt="a photo of dog on snow"), pipe=pipe)
    assert not (single / "class_00000.txt").exists()  # one --class_prompt: training falls back to it
    diff = np.abs(pixels(single / "class_00000.png").astype(int) - pixels(folder / "class_00001.png"))
    assert diff.max() <= 1
    other = np.abs(pixels(single / "class_00000.png").astype(int) - pixels(folder / "class_00000.png"))
    assert other.max() > 1


def test_prompts_file_errors(tiny_model, tmp_path):
    from sksbooth.errors import ConfigError
    with pytest.raises(ConfigError, match="not both"):
        make_config(tiny_model, tmp_path / "c", class_prompts_file=str(tmp_path))
    with pytest.raises(ConfigError, match="is not a file"):
        make_config(tiny_model, tmp_path / "c", class_prompt=None, class_prompts_file=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no prompt"):
        generate_class_images(make_config(tiny_model, tmp_path / "c", class_prompt=None, class_prompts_file=str(empty)))
    assert not list((tmp_path / "c").glob("*.png"))
