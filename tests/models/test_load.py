"""Base-model loading: every way a path can be wrong gives a ModelLoadError that says what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from sksbooth.errors import ModelLoadError
from sksbooth.models.load import check_model_path, load_components


def test_no_model_given():
    for value in (None, ""):
        with pytest.raises(ModelLoadError, match="No base model given.*--pretrained_model_name_or_path.*make-tiny-model"):
            check_model_path(value)


@pytest.mark.parametrize("loader", [check_model_path, load_components])
def test_missing_path(tmp_path, loader):
    missing = tmp_path / "models" / "nope"
    with pytest.raises(ModelLoadError) as e:
        loader(str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg and "model_index.json" in msg


@pytest.mark.parametrize("loader", [check_model_path, load_components])
def test_folder_without_model_index(tmp_path, loader):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "unet").mkdir()
    with pytest.raises(ModelLoadError) as e:
        loader(str(folder))
    msg = str(e.value)
    assert "is not a diffusers model folder (no model_index.json)" in msg and "Pass the folder" in msg


def test_our_output_folder_points_at_its_model_subfolder(tmp_path):
    (tmp_path / "out" / "model").mkdir(parents=True)
    (tmp_path / "out" / "model" / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="use its model/ subfolder"):
        check_model_path(str(tmp_path / "out"))
    assert check_model_path(str(tmp_path / "out" / "model")) == tmp_path / "out" / "model"


@pytest.mark.parametrize("name", ["sd-v1-4.ckpt", "model.PT", "weights.bin"])
@pytest.mark.parametrize("loader", [check_model_path, load_components])
def test_pickle_checkpoints_are_refused(tmp_path, name, loader):
    f = tmp_path / name
    f.write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError) as e:
        loader(str(f))
    msg = str(e.value)
    assert "pickle checkpoint" in msg and "can run any code" in msg and "--allow_pickle_checkpoints" in msg


@pytest.mark.parametrize("name", ["v1-5-pruned-emaonly.safetensors", "MODEL.SAFETENSORS"])
def test_single_file_checkpoints_are_accepted_then_validated(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"\0" * 64)
    assert check_model_path(str(f)) == f  # a .safetensors file is a valid base-model path...
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        load_components(str(f))  # ...and a broken one says so when loaded


def test_other_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ModelLoadError, match="is not a model: expected a diffusers folder with model_index.json or a .safetensors"):
        check_model_path(str(f))


@pytest.mark.parametrize("loader", [check_model_path, load_components])
def test_unknown_hub_id_offline(tmp_path, monkeypatch, loader):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    with pytest.raises(ModelLoadError) as e:
        loader("sksbooth-test/no-such-model-xyz")
    msg = str(e.value)
    assert "'sksbooth-test/no-such-model-xyz' is not a local folder" in msg and "HF_HUB_OFFLINE" in msg
    assert "Download the model once with network access, or pass a local diffusers folder" in msg


def test_valid_folder_loads(tiny_model):
    assert check_model_path(str(tiny_model)) == tiny_model
    parts = load_components(str(tiny_model))
    assert len(parts.tokenizer) == 49408
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size == 32
    assert parts.noise_scheduler.config.num_train_timesteps == 1000
    assert parts.vae.config.latent_channels == 4


def test_broken_model_folder(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "unet")
    assert check_model_path(str(broken)) == broken  # it has model_index.json...
    with pytest.raises(ModelLoadError, match=f"Cannot load the Stable Diffusion model at {broken}"):
        load_components(str(broken))  # ...but no unet


CACHED_SCRIPT = textwrap.dedent("""
    import sys
    from sksbooth.errors import ModelLoadError
    from sksbooth.models.load import check_model_path, load_components
    assert str(check_model_path("sksbooth-test/tiny-sd")) == "sksbooth-test/tiny-sd"
    parts = load_components("sksbooth-test/tiny-sd")
    assert len(parts.tokenizer) == 49408 and parts.unet.config.cross_attention_dim == 32
    try:
        check_model_path("sksbooth-test/not-cached")
    except ModelLoadError as e:
        assert "HF_HUB_OFFLINE" in str(e)
    else:
        sys.exit("an uncached hub id was accepted offline")
    print("ok")
""")


def test_hub_id_already_in_the_cache_loads_offline(tiny_model, tmp_path):
    """A model downloaded once (into the Hugging Face cache) keeps working with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--sksbooth-test--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert json.loads((repo / "snapshots" / commit / "model_index.json").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CACHED_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
