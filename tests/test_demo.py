"""The demo fine-tunes the shipped toy-world base on the bundled subject and reports the checker's scores."""

from __future__ import annotations

import json

import pytest
import torch

from sksbooth.demo import loss_summary, make_subject_images, run_demo
from sksbooth.models.load import load_components
from sksbooth.toyworld.assets import base_path


def test_subject_images_are_distinct_and_reproducible(tmp_path):
    first = make_subject_images(tmp_path / "a")
    second = make_subject_images(tmp_path / "b")
    names = sorted(p.name for p in first.glob("*.png"))
    assert len(names) == 5
    contents = [(first / n).read_bytes() for n in names]
    assert len(set(contents)) == 5  # five different photos of the toy
    assert contents == [(second / n).read_bytes() for n in names]  # same seed, same photos


def test_subject_photos_are_captioned_with_their_backgrounds(tmp_path):
    from sksbooth.data.images import ImageFolder
    from sksbooth.toyworld.assets import load_shipped_checker
    from sksbooth.toyworld.quality import judge
    from sksbooth.toyworld.world import COLOUR_NAMES
    folder = make_subject_images(tmp_path / "subject")
    photos = sorted(folder.glob("*.png"))
    captions = [ImageFolder(folder).caption_for(p, "a photo of a sks toy") for p in photos]  # what training reads
    assert set(captions) == {"a photo of a sks toy on a white background", "a photo of a sks toy on a yellow background"}
    from PIL import Image
    drawn = judge(load_shipped_checker(), [Image.open(p) for p in photos])["background"]
    assert [f"on a {COLOUR_NAMES[int(b)]} background" in c for b, c in zip(drawn, captions)] == [True] * 5


@pytest.mark.slow
def test_demo_trains_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo(out, max_train_steps=20, per_prompt=2) == 0

    assert (out / "model" / "model_index.json").is_file()
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step-000010.png", "step-000020.png"]
    assert len(list((out / "class_images").glob("*.png"))) == 16
    assert (out / "grid.png").stat().st_size > 0
    saved = json.loads((out / "dreambooth_config.json").read_text())
    assert saved["with_prior_preservation"] and saved["instance_prompt"] == "a photo of a sks toy"

    history = [json.loads(line) for line in (out / "loss_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 21))
    assert all(h["prior_loss"] > 0 for h in history)  # prior preservation is on
    first, last = loss_summary(out / "loss_history.jsonl")
    assert first > 0 and last > 0
    # the demo fine-tunes the UNet only: its weights moved away from the base's, the text encoder's did not
    tuned, base = load_components(str(out / "model")), load_components(str(base_path()))
    assert max((a - b).abs().max().item() for a, b in zip(tuned.unet.parameters(), base.unet.parameters())) > 1e-4
    assert all(torch.equal(a, b) for a, b in zip(tuned.text_encoder.parameters(), base.text_encoder.parameters()))

    report = (out / "report.md").read_text()
    assert "| base (before fine-tuning) |" in report and "| after DreamBooth |" in report
    printed = capsys.readouterr().out
    assert str(out / "model") in printed and "subject recognised" in printed
