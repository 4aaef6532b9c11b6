"""Fixtures of the trainer's tests."""

from __future__ import annotations

import pytest

from sksbooth.config import TrainConfig


@pytest.fixture
def make_config():
    """A function making a small, fast TrainConfig for a model and an instance folder; keywords override."""
    def make(model, instance_dir, out, **overrides) -> TrainConfig:
        base = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(instance_dir),
                    instance_prompt="a photo of sks dog", output_dir=str(out), resolution=64, train_batch_size=1,
                    max_train_steps=6, checkpointing_steps=1000, learning_rate=1e-3, lr_warmup_steps=0, seed=3)
        return TrainConfig(**{**base, **overrides})
    return make
