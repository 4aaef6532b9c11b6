"""--checkpoint_metric scores every checkpoint during training and keeps the best model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sksbooth.config import TrainConfig
from sksbooth.demo import demo_config, make_subject_images
from sksbooth.errors import ConfigError
from sksbooth.evaluate.checkpoints import best_entry, read_scores
from sksbooth.models.lora_files import find_lora_file
from sksbooth.models.pipeline import resolve_model_dir
from sksbooth.toyworld.assets import base_path, load_pipeline
from sksbooth.toyworld.quality import generate
from sksbooth.train.loop import train


def test_checkpoints_are_scored_and_the_best_is_kept(tmp_path):
    subject = make_subject_images(tmp_path / "subject")
    config = dataclasses.replace(
        demo_config(tmp_path / "out", base_path(), subject, steps=6, prior=True), num_class_images=4,
        validation_prompt=None, checkpointing_steps=3, checkpoints_total_limit=None,
        checkpoint_metric="toy_fidelity", metric_num_images=2, keep_best_model=True)
    train(config)
    entries = read_scores(tmp_path / "out")
    assert [e["step"] for e in entries] == [3, 6]
    assert set(entries[0]["scores"]) == {"toy_subject", "toy_fidelity", "toy_background", "toy_pres", "toy_div"}
    best = best_entry(entries, "toy_fidelity")
    kept = json.loads((tmp_path / "out" / "best-model" / "score.json").read_text())
    assert kept["step"] == best["step"] and kept["metric"] == "toy_fidelity"
    assert (tmp_path / "out" / "best-model" / "model_index.json").is_file()


def test_a_lora_runs_best_checkpoint_is_kept_as_its_lora_file(tmp_path):
    subject = make_subject_images(tmp_path / "subject")
    config = dataclasses.replace(
        demo_config(tmp_path / "out", base_path(), subject, steps=4, prior=True), num_class_images=4, use_ema=False,
        use_lora=True, rank=4, validation_prompt=None, checkpointing_steps=4, checkpoint_metric="toy_fidelity",
        metric_num_images=2, keep_best_model=True, train_text_encoder_ti=True)
    final = train(config).model_path
    best = tmp_path / "out" / "best-model"
    lora = find_lora_file(best)
    assert lora is not None and resolve_model_dir(str(best)) == (base_path(), lora)  # the base, from its config
    # the identifier's trained vectors come with it, as they do with the run's own LoRA file
    kept_rows, final_rows = (load_file(f / "embeddings" / "sks.safetensors")["emb_params"] for f in (best, final.parent))
    assert torch.equal(kept_rows, final_rows)
    # one checkpoint, at the last step: the kept LoRA draws what the run's own LoRA draws
    kept, last = (generate(load_pipeline(p), ["a photo of a sks toy"], seed=0, steps=4)[0] for p in (best, final))
    assert np.abs(np.asarray(kept, dtype=int) - np.asarray(last, dtype=int)).max() <= 2


def test_best_entry_follows_the_metric_direction():
    entries = [{"step": 1, "scores": {"PRES": 0.2, "DINO": 0.5}}, {"step": 2, "scores": {"PRES": 0.4, "DINO": 0.7}}]
    assert best_entry(entries, "DINO")["step"] == 2
    assert best_entry(entries, "PRES")["step"] == 1  # lower PRES: less drift toward the subject


@pytest.mark.parametrize("extra, message", [
    ({"checkpoint_metric": "DINO"}, "--metric_dino_model"),
    ({"keep_best_model": True}, "--keep_best_model needs --checkpoint_metric"),
    ({"checkpoint_metric": "toy_subject", "class_prompt": None, "with_prior_preservation": False}, "--class_prompt"),
])
def test_checkpoint_metric_settings_are_checked(tmp_path, extra, message):
    base = dict(pretrained_model_name_or_path="m", instance_data_dir="d", instance_prompt="a photo of sks dog",
                class_prompt="a photo of dog")
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{**base, **extra})
