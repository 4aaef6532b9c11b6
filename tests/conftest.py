"""Shared fixtures: a tiny random-weight SD pipeline and small subject images, all built offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any hub library is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
if "SKSBOOTH_CACHE_DIR" not in os.environ:  # remembered model hashes stay out of the user's ~/.cache
    import tempfile
    os.environ["SKSBOOTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="sksbooth-test-cache-")

from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny StableDiffusionPipeline folder (64 px, real CLIP tokenizer), built once per session."""
    from sksbooth.models.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


def draw_subject(path: Path, shift: int = 0, size=(80, 72)) -> Path:
    """A yellow disc on blue: a stand-in for a subject photo."""
    im = Image.new("RGB", size, (30, 30, 200))
    ImageDraw.Draw(im).ellipse((10 + shift, 10, 60 + shift, 60), fill=(240, 200, 20))
    im.save(path)
    return path


@pytest.fixture
def instance_dir(tmp_path) -> Path:
    folder = tmp_path / "instance"
    folder.mkdir()
    for i in range(3):
        draw_subject(folder / f"subject_{i}.png", shift=4 * i)
    return folder
