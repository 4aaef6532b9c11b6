"""Training options of diffusers' script change what is trained, and the model still learns."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from sksbooth.config import TrainConfig
from sksbooth.train.loop import train
from sksbooth.train.report import read_jsonl


def v_prediction_copy(tiny_model: Path, dest: Path) -> Path:
    """The tiny model with an SD 2.x-768-style v-prediction schedule."""
    shutil.copytree(tiny_model, dest)
    config_path = dest / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return dest


@torch.no_grad()
def v_prediction_error(base: Path, image_dir: Path, tuned: Path | None = None) -> float:
    """MSE against the velocity target on fixed (image, noise, timestep) draws."""
    from diffusers import UNet2DConditionModel
    from sksbooth.data.images import load_image, scan_image_folder
    from sksbooth.data.transforms import resize_and_crop, to_tensor
    from sksbooth.models.load import load_components
    parts = load_components(str(base))
    unet = UNet2DConditionModel.from_pretrained(tuned, subfolder="unet") if tuned else parts.unet
    pixels = torch.stack([to_tensor(resize_and_crop(load_image(p), 64, True, random.Random(0)))
                          for p in scan_image_folder(image_dir, "x").images])
    latents = (parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor).repeat_interleave(8, 0)
    g = torch.Generator().manual_seed(3)
    noise, t = torch.randn(latents.shape, generator=g), torch.randint(50, 950, (latents.shape[0],), generator=g)
    ids = parts.tokenizer(["a photo of sks dog"] * len(t), padding="max_length", max_length=77, return_tensors="pt")
    pred = unet(parts.noise_scheduler.add_noise(latents, noise, t), t, parts.text_encoder(ids.input_ids)[0]).sample
    return torch.nn.functional.mse_loss(pred, parts.noise_scheduler.get_velocity(latents, noise, t)).item()


def test_v_prediction_bf16_min_snr_offset_noise_and_accumulation_still_learn(tiny_model, instance_dir, tmp_path):
    model = v_prediction_copy(tiny_model, tmp_path / "v-model")
    out = tmp_path / "out"
    cfg = TrainConfig(pretrained_model_name_or_path=str(model), instance_data_dir=str(instance_dir),
                      instance_prompt="a photo of sks dog", output_dir=str(out), resolution=64, train_batch_size=1,
                      gradient_accumulation_steps=2, max_train_steps=24, learning_rate=2e-3, lr_warmup_steps=0,
                      mixed_precision="bf16", snr_gamma=5.0, offset_noise=True, seed=0, checkpointing_steps=1000)
    result = train(cfg)
    history = read_jsonl(out / "loss_history.jsonl")
    assert [h["step"] for h in history] == list(range(1, 25))  # one record per optimizer step, not per micro-batch
    before, after = v_prediction_error(model, instance_dir), v_prediction_error(model, instance_dir, result.model_path)
    assert after < 0.7 * before, (before, after)
    saved = json.loads((result.model_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["prediction_type"] == "v_prediction"


def test_bf16_on_a_cpu_that_would_emulate_it_is_warned_about(tiny_model, instance_dir, tmp_path):
    from sksbooth.cpu_precision import cpu_has_fast_bf16
    warned = {}
    for precision in ("no", "bf16"):
        logs = []
        cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                          instance_prompt="a photo of sks dog", output_dir=str(tmp_path / precision), resolution=64,
                          train_batch_size=1, max_train_steps=1, mixed_precision=precision, checkpointing_steps=1000)
        train(cfg, [lambda e: logs.append(e.data.get("message", "")) if e.kind == "log" else None])
        warned[precision] = any("emulated in software" in m for m in logs)
    assert warned == {"no": False, "bf16": not cpu_has_fast_bf16()}


def test_runs_with_different_precisions_in_one_process(tiny_model, instance_dir, tmp_path):
    """A host app trains several times in one process; accelerate's global state must not pin the first precision."""
    for i, precision in enumerate(("no", "bf16", "no")):
        cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                          instance_prompt="a photo of sks dog", output_dir=str(tmp_path / f"run{i}"), resolution=64,
                          train_batch_size=1, max_train_steps=1, mixed_precision=precision, checkpointing_steps=1000)
        assert train(cfg).global_step == 1
