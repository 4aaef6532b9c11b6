"""Pretraining writes a complete, loadable SD pipeline folder in fp16 (tiny settings here)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sksbooth.models.load import load_components
from sksbooth.toyworld.pretrain import (PretrainConfig, StepBudget, build_scheduler, loss_weights, pretrain,
                                       vae_pictures)
from sksbooth.toyworld.world import make_dataset


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


@pytest.mark.parametrize("freeze, embeddings_move, layers_move", [
    ({}, True, True), ({"freeze_token_embeddings": True}, False, True), ({"freeze_text_encoder": True}, False, False)])
def test_the_frozen_parts_of_the_text_encoder_stay_as_initialised(freeze, embeddings_move, layers_move):
    from sksbooth.toyworld.pretrain import build_text_encoder, build_unet, train_denoiser
    config = PretrainConfig(unet_steps=3, unet_batch_size=4, text_width=32, unet_channels=(32, 64), **freeze)
    torch.manual_seed(0)
    build_unet(config)  # train_denoiser builds the UNet first, then the encoder: same draws, same weights
    initial = build_text_encoder(config)
    latents, ids = torch.randn(8, 4, 8, 8), torch.randint(0, 49406, (8, 77))
    torch.manual_seed(0)
    _, trained, *_ = train_denoiser(latents, ids, ids[0], config, log=lambda _: None)
    embeddings = trained.get_input_embeddings().weight
    assert (not torch.equal(embeddings, initial.get_input_embeddings().weight)) == embeddings_move
    before = dict(initial.named_parameters())
    layers = [(name, p) for name, p in trained.named_parameters() if p is not embeddings]
    assert any(not torch.equal(p, before[name]) for name, p in layers) == layers_move


def test_the_command_line_reads_boolean_options():
    from sksbooth.toyworld.make import parse
    assert parse(["dest"])[1].freeze_token_embeddings is False
    assert parse(["dest", "--freeze_token_embeddings"])[1].freeze_token_embeddings is True
    assert parse(["dest", "--no-freeze_token_embeddings"])[1].freeze_token_embeddings is False


def test_the_vae_learns_from_random_colour_pictures_beside_the_world():
    images, _, _ = make_dataset(30, seed=0)
    assert vae_pictures(images, PretrainConfig()) is images  # off by default
    mixed = vae_pictures(images, PretrainConfig(vae_random_colour_share=0.25))
    assert len(mixed) == 40 and np.array_equal(mixed[:30], images)
    with pytest.raises(ValueError, match="vae_random_colour_share"):
        PretrainConfig(vae_random_colour_share=1.0)
    with pytest.raises(ValueError, match="vae_refit_steps"):
        PretrainConfig(vae_refit_steps=-1)


def made_record(argv: list[str]) -> dict:
    """What `toyworld-pretrain` records for these options (made up times and steps)."""
    import dataclasses
    from sksbooth.toyworld.make import parse
    _, config, _ = parse(["dest", *argv])
    return {"config": dataclasses.asdict(config), "minutes": 40.0, "vae_minutes": 9.0, "vae_steps": 1, "unet_steps": 2,
            "final_loss": 0.1, "command": "dreambooth toyworld-pretrain DEST"}


def test_made_md_names_the_word_loss():
    from sksbooth.toyworld.make import made_md
    assert "word loss weight 0.1" in made_md(made_record(["--text_token_loss_weight", "0.1"]))
    assert "word loss" not in made_md(made_record([]))


def test_made_md_says_what_the_vae_learned_from():
    from sksbooth.toyworld.make import made_md
    made = made_record(["--vae_random_colour_share", "0.5"])
    assert "50% of its pictures flat shapes in random RGB colours" in made_md(made)
    made["config"]["vae_random_colour_share"] = 0.0
    assert "world images only" in made_md(made) and "refit" not in made_md(made)
    made["config"]["vae_refit_steps"] = 1200
    assert "refit for 1200 steps" in made_md(made)
    made["vae_precision"] = "fp32"  # a CPU without bf16 instructions trains it in fp32
    assert "32x32 crops (fp32)" in made_md(made)


def test_the_vae_refit_stage_changes_the_vae_and_nothing_else(tmp_path):
    tiny = dict(num_images=16, vae_steps=2, vae_batch_size=4, unet_steps=2, unet_batch_size=4, text_width=32,
                unet_channels=(32, 64))
    logged = []
    pretrain(tmp_path / "plain", PretrainConfig(**tiny), log=lambda _: None)
    pretrain(tmp_path / "refit", PretrainConfig(**tiny, vae_refit_steps=2), log=logged.append)

    def same(part: str, name: str) -> bool:
        return (tmp_path / "plain" / part / name).read_bytes() == (tmp_path / "refit" / part / name).read_bytes()

    assert same("unet", "diffusion_pytorch_model.safetensors") and same("text_encoder", "model.safetensors")
    assert not same("vae", "diffusion_pytorch_model.safetensors")
    assert any("vae refit step 1" in line for line in logged)


def test_a_reused_vae_ships_as_it_was_and_an_ema_unet_keeps_its_last_weights_beside(tmp_path):
    from diffusers import UNet2DConditionModel
    from sksbooth.toyworld.make import made_md
    from sksbooth.toyworld.pretrain import last_unet_path
    tiny = dict(num_images=16, vae_steps=2, vae_batch_size=4, unet_steps=4, unet_batch_size=4, text_width=32,
                unet_channels=(32, 64))
    pretrain(tmp_path / "first", PretrainConfig(**tiny), log=lambda _: None)
    logged = []
    config = PretrainConfig(**tiny, vae_from=str(tmp_path / "first"), unet_ema_decay=0.9)
    made = pretrain(tmp_path / "second", config, log=logged.append)
    assert made["vae_steps"] == 0 and not any("vae step" in line for line in logged)

    def weights(folder):
        with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "first" / "vae").values(),
                                                  weights(tmp_path / "second" / "vae").values()))
    shipped, last = weights(tmp_path / "second" / "unet"), weights(last_unet_path(tmp_path / "second"))
    assert shipped.keys() == last.keys() and any(not torch.equal(shipped[k], last[k]) for k in shipped)
    assert {t.dtype for t in last.values()} == {torch.float16}  # saved as the base's UNet is
    assert UNet2DConditionModel.from_pretrained(last_unet_path(tmp_path / "second")).config.sample_size == 16
    made |= {"command": "dreambooth toyworld-pretrain DEST"}
    assert "VAE: reused from" in made_md(made) and "EMA decay 0.9" in made_md(made)


def test_a_vae_from_folder_without_a_vae_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vae_from"):
        PretrainConfig(vae_from=str(tmp_path))
