"""Fixtures for worker tests: job files on the tiny model, and draining a worker with a deadline."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sksbooth.config import TrainConfig, save_job_file

WORKER_DEADLINE = 300  # seconds; a hung worker is killed so the test fails instead of hanging


@pytest.fixture
def train_job(tmp_path, tiny_model, instance_dir):
    """Write a small training job file; keyword arguments override config fields."""
    def make(**overrides) -> Path:
        fields = dict(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                      instance_prompt="a photo of sks dog", output_dir=str(tmp_path / "out"), resolution=64,
                      train_batch_size=1, max_train_steps=4, checkpointing_steps=2, learning_rate=1e-4,
                      lr_warmup_steps=0, seed=3)
        fields.update(overrides)
        return save_job_file(tmp_path / "job.json", "train", TrainConfig(**fields))
    return make


@pytest.fixture
def drain():
    """drain(handle, on_event=None) -> all events; on_event(event, handle) runs as each arrives."""
    handles = []

    def run(handle, on_event=None):
        handles.append(handle)
        timer = threading.Timer(WORKER_DEADLINE, handle.kill)
        timer.start()
        try:
            events = []
            for event in handle:
                events.append(event)
                if on_event:
                    on_event(event, handle)
            return events
        finally:
            timer.cancel()

    yield run
    for handle in handles:
        handle.close()
