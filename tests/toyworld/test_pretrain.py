"""Pretraining writes a complete, loadable SD pipeline folder in fp16 (tiny settings here)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors import safe_open

from sksbooth.models.load import load_components
from sksbooth.toyworld.pretrain import PretrainConfig, StepBudget, build_scheduler, loss_weights, pretrain


def test_pretrain_writes_a_loadable_fp16_pipeline(tmp_path):
    config = PretrainConfig(num_images=64, vae_steps=2, vae_batch_size=4, unet_steps=3, unet_batch_size=4,
                            text_width=32, unet_channels=(32, 64), mixed_precision="bf16")
    made = pretrain(tmp_path / "base", config, log=lambda _: None)
    assert made["vae_steps"] == 2 and made["unet_steps"] == 3 and made["final_loss"] > 0
    index = json.loads((tmp_path / "base" / "model_index.json").read_text())
    assert index["scheduler"][1] == "DPMSolverMultistepScheduler"  # samples well in 20 steps
    with safe_open(str(tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    parts = load_components(str(tmp_path / "base"))  # what `dreambooth train` loads
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size == 32
    assert parts.vae.config.scaling_factor != 0.18215  # measured on the world's latents
    assert parts.noise_scheduler.config.beta_schedule == "scaled_linear"


def test_step_budget_fixed_or_timed():
    fixed = StepBudget(steps=5, minutes=0)
    assert [fixed.done(s) for s in range(7)] == [False] * 5 + [True, True]
    timed = StepBudget(steps=0, minutes=0.5 / 60, probe=2)  # half a second
    step = 0
    while not timed.done(step):
        time.sleep(0.05)
        step += 1
    assert 4 <= step <= 16  # about 10 steps of 50 ms fit in 0.5 s


def test_unknown_loss_weighting_is_refused():
    t = torch.tensor([10, 900])
    assert loss_weights(build_scheduler("v_prediction"), t, 5.0, "high_noise")[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_weighting"):
        loss_weights(build_scheduler("v_prediction"), t, 5.0, "min-snr")


def test_unknown_mixed_precision_is_refused():
    assert PretrainConfig(mixed_precision="bf16").mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        PretrainConfig(mixed_precision="fp16")  # CPU autocast here is bf16 only


def test_the_command_line_refuses_an_unknown_mixed_precision(capsys):
    from sksbooth.toyworld.make import parse
    with pytest.raises(SystemExit) as exit_info:
        parse(["dest", "--mixed_precision", "fp16"])
    assert exit_info.value.code == 2 and "must be 'no' or 'bf16'" in capsys.readouterr().err
