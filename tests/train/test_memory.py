"""Memory savers: latent caching, Adafactor, EMA, precomputed prompts, checkpointing, mixed precision."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest
import torch

from sksbooth.config import TrainConfig
from sksbooth.errors import ConfigError
from sksbooth.train.loop import train


@pytest.fixture
def make_config(make_config):
    """These tests train on two images a step, for four steps, unless they say otherwise."""
    return functools.partial(make_config, train_batch_size=2, max_train_steps=4)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss_history.jsonl").read_text().splitlines()]


def unet_state(folder: Path) -> dict:
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()


def distance(a: dict, b: dict) -> float:
    return sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5


def test_cached_latents_give_the_same_losses_as_encoding_every_step(tiny_model, instance_dir, tmp_path, make_config):
    """Same seeds, centre crops and flips: the cache must change nothing but the work done."""
    runs = {}
    for cached in (True, False):
        out = tmp_path / f"cached-{cached}"
        train(make_config(tiny_model, instance_dir, out, center_crop=True, random_flip=True, cache_latents=cached))
        runs[cached] = losses(out)
    assert len(runs[True]) == 4
    torch.testing.assert_close(torch.tensor(runs[True]), torch.tensor(runs[False]), rtol=1e-4, atol=1e-6)


def test_flip_caching_holds_both_orientations_and_the_dataset_uses_both(tiny_model, instance_dir):
    from sksbooth.data.dataset import DreamBoothDataset, collate
    from sksbooth.data.images import load_image, scan_image_folder
    from sksbooth.data.transforms import prepare_image
    from sksbooth.models.load import load_components
    from sksbooth.train.latents import cache_latents

    vae = load_components(str(tiny_model)).vae
    ds = DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", 64, random_flip=True)
    cache = cache_latents(ds, vae, "cpu", torch.float32)
    assert set(cache) == {("instance", i, f, (64, 64)) for i in range(3) for f in (False, True)}
    pixels = prepare_image(load_image(ds.instance_images[1]), 64, True, False, random.Random(0))
    with torch.no_grad():
        plain = vae.encode(pixels[None]).latent_dist.parameters[0]
        mirrored = vae.encode(pixels.flip(-1)[None]).latent_dist.parameters[0]
    torch.testing.assert_close(cache[("instance", 1, False, (64, 64))][0], plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache[("instance", 1, True, (64, 64))][0], mirrored, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, mirrored)
    seen = set()
    for epoch in range(8):
        ds.epoch = epoch
        for i in range(len(ds)):
            latents = ds[i]["instance_latents"]
            seen.add((i, next(f for f in (False, True) if latents is cache[("instance", i, f, (64, 64))][0])))
    assert seen == {(i, f) for i in range(3) for f in (False, True)}
    assert collate([ds[0], ds[1]])["latent_params"].shape == (2, 8, 32, 32)


def test_caching_with_random_crops_says_it_centre_crops(tiny_model, instance_dir, tmp_path, make_config):
    logs = []
    train(make_config(tiny_model, instance_dir, tmp_path / "out", max_train_steps=1),
          [lambda e: logs.append(e.data.get("message", "")) if e.kind == "log" else None])
    assert any("centre-cropped once" in m for m in logs) and any("Cached the latents of 3" in m for m in logs)


@torch.no_grad()
def probe_error(model_dir: Path, image_dir: Path, unet=None) -> float:
    """Epsilon-prediction MSE on fixed (image, noise, timestep) draws: lower = the model knows the images."""
    from sksbooth.data.images import load_image, scan_image_folder
    from sksbooth.data.transforms import prepare_image
    from sksbooth.models.load import load_components
    parts = load_components(str(model_dir))
    unet = unet or parts.unet
    pixels = torch.stack([prepare_image(load_image(p), 64, True, False, None)
                          for p in scan_image_folder(image_dir, "probe").images])
    latents = (parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor).repeat_interleave(8, 0)
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(50, 950, (latents.shape[0],), generator=g)
    ids = parts.tokenizer(["a photo of sks dog"] * len(t), padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    pred = unet(parts.noise_scheduler.add_noise(latents, noise, t), t, parts.text_encoder(ids)[0]).sample
    return torch.nn.functional.mse_loss(pred, noise).item()


def test_adafactor_trains(tiny_model, tmp_path, instance_dir, make_config):
    from diffusers import UNet2DConditionModel
    from transformers.optimization import Adafactor
    from sksbooth.train.setup import make_optimizer
    one = tmp_path / "one"
    one.mkdir()
    (instance_dir / "subject_0.png").rename(one / "subject.png")
    cfg = make_config(tiny_model, one, tmp_path / "out", optimizer="adafactor", train_batch_size=1,
                      max_train_steps=60, learning_rate=2e-3)
    assert isinstance(make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg, 1e-3), Adafactor)
    result = train(cfg)
    tuned = UNet2DConditionModel.from_pretrained(result.model_path, subfolder="unet")
    before, after = probe_error(tiny_model, one), probe_error(tiny_model, one, unet=tuned)
    assert after < 0.5 * before, (before, after)


def test_optimizer_choices_and_the_8bit_flag():
    base = dict(pretrained_model_name_or_path="m", instance_data_dir="d", instance_prompt="p")
    assert TrainConfig(**base).resolved_optimizer == "adamw"
    assert TrainConfig(**base, use_8bit_adam=True).resolved_optimizer == "adamw8bit"
    with pytest.raises(ConfigError, match="conflicts"):
        TrainConfig(**base, use_8bit_adam=True, optimizer="adafactor")
    with pytest.raises(ConfigError, match="use_lora"):
        TrainConfig(**base, use_ema=True, use_lora=True)


def test_ema_weights_differ_from_the_raw_ones_and_are_what_is_saved(tiny_model, instance_dir, tmp_path, make_config):
    from safetensors.torch import load_file
    raw = train(make_config(tiny_model, instance_dir, tmp_path / "raw", checkpointing_steps=1))
    ema = train(make_config(tiny_model, instance_dir, tmp_path / "ema", use_ema=True, ema_decay=0.5,
                            checkpointing_steps=2))
    assert losses(tmp_path / "raw") == losses(tmp_path / "ema")  # the EMA never touches training
    base, raw_w, ema_w = unet_state(tiny_model), unet_state(raw.model_path), unet_state(ema.model_path)
    assert distance(ema_w, raw_w) > 0.05 * distance(raw_w, base)
    assert distance(ema_w, base) < distance(raw_w, base)  # the average lags behind the raw weights
    # replay diffusers' EMA over the raw run's per-step weights: decay_n = min(decay, (1+n)/(10+n)), n = step-1
    shadow = {k: v.double() for k, v in base.items()}
    for step in range(1, 5):
        weights, n = load_file(tmp_path / "raw" / f"checkpoint-{step}" / "model.safetensors"), step - 1
        decay = 0.0 if n <= 0 else min(0.5, (1 + n) / (10 + n))
        shadow = {k: s - (1 - decay) * (s - weights[k].double()) for k, s in shadow.items()}
    for k in base:
        torch.testing.assert_close(ema_w[k].double(), shadow[k], rtol=0, atol=1e-6, msg=k)
    state = torch.load(ema.last_checkpoint / "trainer_state_0.pt", weights_only=False)
    assert state["ema"]["optimization_step"] == 4 and len(state["ema"]["shadow_params"]) == len(raw_w)


def test_ema_resumes_exactly(tiny_model, instance_dir, tmp_path, make_config):
    from sksbooth.events import StopFlag
    common = dict(use_ema=True, ema_decay=0.9, max_train_steps=4)
    straight = train(make_config(tiny_model, instance_dir, tmp_path / "straight", **common))
    stop = StopFlag()
    first = train(make_config(tiny_model, instance_dir, tmp_path / "resumed", **common),
                  [lambda e: stop.request("test") if e.kind == "step" and e.step == 2 else None], stop)
    assert first.stopped
    second = train(make_config(tiny_model, instance_dir, tmp_path / "resumed", resume_from_checkpoint="latest",
                               **common))
    a, b = unet_state(straight.model_path), unet_state(second.model_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_changes_memory_not_results(tiny_model, instance_dir, tmp_path, make_config):
    for ckpt in (False, True):
        train(make_config(tiny_model, instance_dir, tmp_path / f"gc-{ckpt}", max_train_steps=3,
                          gradient_checkpointing=ckpt, train_text_encoder=True, learning_rate=1e-4))
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "gc-True")), torch.tensor(losses(tmp_path / "gc-False")),
                               rtol=1e-5, atol=1e-7)


def test_all_savers_together_train_with_finite_losses(tiny_model, instance_dir, tmp_path, make_config):
    """bf16 autocast, Adafactor, grads set to None, checkpointing, precomputed prompts, EMA, samples."""
    out = tmp_path / "out"  # the trainer starts each run from a clean accelerate state, so bf16 applies here
    result = train(make_config(tiny_model, instance_dir, out, mixed_precision="bf16", optimizer="adafactor",
                               set_grads_to_none=True, gradient_checkpointing=True,
                               pre_compute_text_embeddings=True, use_ema=True, validation_steps=4,
                               validation_prompt="a photo of sks dog", num_validation_images=1,
                               num_validation_inference_steps=2))
    assert all(torch.isfinite(torch.tensor(losses(out))))
    assert result.model_path.is_dir() and any((out / "samples").iterdir())


def test_precomputed_prompts_come_from_the_cache_once_the_encoder_is_offloaded(tiny_model):
    from sksbooth.models.load import load_components
    from sksbooth.train.text import PromptEncoder
    parts = load_components(str(tiny_model))
    prompts = PromptEncoder(parts.tokenizer, parts.text_encoder, trainable=False)
    prompts.precompute(["a photo of sks dog"], "cpu")
    expected = prompts(["a photo of sks dog"], "cpu")
    parts.text_encoder.to("meta")  # gone from any device: a cached prompt must not need it
    torch.testing.assert_close(prompts(["a photo of sks dog"] * 2, "cpu"), expected.repeat(2, 1, 1))


def test_ema_can_be_switched_on_when_resuming_a_run_without_it(tiny_model, instance_dir, tmp_path, make_config):
    from sksbooth.events import StopFlag
    stop = StopFlag()
    out = tmp_path / "run"
    train(make_config(tiny_model, instance_dir, out, max_train_steps=4),
          [lambda e: stop.request("test") if e.kind == "step" and e.step == 2 else None], stop)
    logs = []
    result = train(make_config(tiny_model, instance_dir, out, max_train_steps=4, use_ema=True, ema_decay=0.9,
                               resume_from_checkpoint="latest"), [logs.append])
    assert result.global_step == 4 and not result.stopped
    assert any("holds no EMA weights" in e.data.get("message", "") for e in logs if e.kind == "log")


def test_adamw_uses_the_fused_kernel_with_the_reference_update(tiny_model, tmp_path, instance_dir, make_config):
    from sksbooth.train.setup import make_optimizer
    cfg = make_config(tiny_model, instance_dir, tmp_path / "out")
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 32, generator=g), torch.randn(32, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(3)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    reference = [torch.nn.Parameter(p.clone()) for p in start]
    optimizer = make_optimizer(ours, cfg, 1e-2)
    assert optimizer.defaults["fused"] is True
    loop = torch.optim.AdamW(reference, lr=1e-2, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon, foreach=False)
    for step_grads in grads:
        for params, opt in ((ours, optimizer), (reference, loop)):
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            opt.step()
    for a, b, initial in zip(ours, reference, start):
        assert not torch.equal(a.detach(), initial)  # it did update
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
