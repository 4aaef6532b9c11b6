"""The trainer really learns, preserves the class prior, resumes exactly, and fails safely."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sksbooth.config import TrainConfig
from sksbooth.errors import NonFiniteLossError
from sksbooth.events import StopFlag
from sksbooth.train.loop import train


def load_unet(folder: Path):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet")


@torch.no_grad()
def denoising_error(model_dir: Path, image_dir: Path, prompt: str, unet=None, n: int = 8) -> float:
    """Mean epsilon-prediction MSE on fixed (image, noise, timestep) draws: lower = the model knows these images."""
    from sksbooth.data.images import scan_image_folder
    from sksbooth.data.transforms import to_tensor, resize_and_crop
    from sksbooth.models.load import load_components
    import random
    parts = load_components(str(model_dir))
    unet = unet or parts.unet
    g = torch.Generator().manual_seed(1234)
    images = scan_image_folder(image_dir, "probe").images
    pixels = torch.stack([to_tensor(resize_and_crop(Image.open(p).convert("RGB"), 64, True, random.Random(0)))
                          for p in images])
    latents = parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor
    latents = latents.repeat_interleave(n, 0)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(50, 950, (latents.shape[0],), generator=g)
    ids = parts.tokenizer([prompt] * latents.shape[0], padding="max_length", max_length=77, return_tensors="pt").input_ids
    pred = unet(parts.noise_scheduler.add_noise(latents, noise, t), t, parts.text_encoder(ids)[0]).sample
    return torch.nn.functional.mse_loss(pred, noise).item()


@torch.no_grad()
def class_prediction_shift(base_dir: Path, tuned_dir: Path, prompt: str, image_dir: Path) -> float:
    """How far the tuned UNet's predictions for `prompt` moved from the base's, on fixed noisy class images."""
    import random
    from sksbooth.data.images import load_image, scan_image_folder
    from sksbooth.data.transforms import resize_and_crop, to_tensor
    from sksbooth.models.load import load_components
    base, tuned = load_components(str(base_dir)), load_unet(tuned_dir)
    pixels = torch.stack([to_tensor(resize_and_crop(load_image(p), 64, True, random.Random(0)))
                          for p in scan_image_folder(image_dir, "class").images])
    latents = (base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor).repeat_interleave(8, 0)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(50, 950, (latents.shape[0],), generator=g)
    ids = base.tokenizer([prompt] * len(t), padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden, noisy = base.text_encoder(ids)[0], base.noise_scheduler.add_noise(latents, noise, t)
    return torch.nn.functional.mse_loss(tuned(noisy, t, hidden).sample, base.unet(noisy, t, hidden).sample).item()


def test_training_on_one_image_drives_the_loss_down(tiny_model, tmp_path, instance_dir, make_config):
    one = tmp_path / "one"
    one.mkdir()
    (instance_dir / "subject_0.png").rename(one / "subject.png")
    out = tmp_path / "out"
    result = train(make_config(tiny_model, one, out, max_train_steps=60, learning_rate=2e-3))
    before = denoising_error(tiny_model, one, "a photo of sks dog")
    after = denoising_error(tiny_model, one, "a photo of sks dog", unet=load_unet(result.model_path))
    assert after < 0.5 * before, (before, after)
    assert (out / "loss.png").stat().st_size > 1000


def draw_class_images(folder: Path, n: int = 6) -> Path:
    """Red squares on grey: the 'dog' class the tiny base is first taught."""
    folder.mkdir(parents=True)
    for i in range(n):
        im = Image.new("RGB", (64, 64), (128, 128, 128))
        ImageDraw.Draw(im).rectangle((8 + i, 12, 44 + i, 48), fill=(200, 30, 30))
        im.save(folder / f"dog_{i}.png")
    return folder


@pytest.fixture(scope="module")
def dogs(tmp_path_factory) -> Path:
    return draw_class_images(tmp_path_factory.mktemp("prior") / "dogs")


@pytest.fixture(scope="module")
def base_with_prior(tiny_model, dogs) -> Path:
    """The random tiny base has no prior to preserve; teach it 'a photo of dog' (red squares) first."""
    cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(dogs),
                      instance_prompt="a photo of dog", output_dir=str(dogs.parent / "base"), resolution=64,
                      train_batch_size=3, max_train_steps=150, learning_rate=2e-3, lr_warmup_steps=0, seed=0,
                      checkpointing_steps=1000)
    return train(cfg).model_path


def test_prior_preservation_keeps_class_predictions_closer_to_the_base(
        base_with_prior, dogs, tmp_path, instance_dir, make_config):
    shifts = {}
    for prior in (False, True):
        # the class folder already holds real class images, so none are generated (users' "regularization images")
        cfg = make_config(base_with_prior, instance_dir, tmp_path / f"out-{prior}", max_train_steps=40,
                          learning_rate=1e-3, with_prior_preservation=prior,
                          class_prompt="a photo of dog" if prior else None, num_class_images=6,
                          class_data_dir=str(dogs), seed=5)
        shifts[prior] = class_prediction_shift(base_with_prior, train(cfg).model_path, "a photo of dog", dogs)
    print(f"class-prompt prediction shift from the base: with prior preservation {shifts[True]:.5f}, "
          f"without {shifts[False]:.5f} (ratio {shifts[True] / shifts[False]:.2f})")
    assert shifts[True] < 0.8 * shifts[False], shifts


def final_unet_state(model_path: Path) -> dict:
    return load_unet(model_path).state_dict()


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tiny_model, tmp_path, instance_dir, make_config):
    common = dict(max_train_steps=6, with_prior_preservation=True, class_prompt="a photo of dog",
                  num_class_images=2, class_data_dir=str(tmp_path / "class"), random_flip=True,
                  train_batch_size=2, lr_scheduler="cosine", lr_warmup_steps=2, checkpointing_steps=1000)
    straight = train(make_config(tiny_model, instance_dir, tmp_path / "straight", **common))

    stop = StopFlag()
    stop_at_3 = lambda e: stop.request("test") if e.kind == "step" and e.step == 3 else None
    first = train(make_config(tiny_model, instance_dir, tmp_path / "resumed", **common), [stop_at_3], stop)
    assert first.stopped and first.global_step == 3 and first.model_path is None
    assert not (tmp_path / "resumed" / "model").exists()
    second = train(make_config(tiny_model, instance_dir, tmp_path / "resumed", resume_from_checkpoint="latest", **common))
    assert second.global_step == 6 and not second.stopped

    a, b = final_unet_state(straight.model_path), final_unet_state(second.model_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        tiny_model, tmp_path, instance_dir, make_config):
    # Step 1 runs at lr 0 (warmup), so checkpoint-1 is good; the absurd rate then blows the weights up.
    cfg = make_config(tiny_model, instance_dir, tmp_path / "out", learning_rate=1e30, lr_scheduler="linear",
                      lr_warmup_steps=1, max_train_steps=6, checkpointing_steps=1, max_grad_norm=0)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step (\d+).*Last good checkpoint: .*checkpoint-") as e:
        train(cfg)
    bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    named = Path(re.search(r"Last good checkpoint: (\S+)\.$", str(e.value)).group(1))
    out = tmp_path / "out"
    assert not (out / "model").exists()
    assert named.name == f"checkpoint-{bad_step - 1}" and not (out / f"checkpoint-{bad_step}").exists()
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(named / "model.safetensors").values())


def test_validation_samples_do_not_change_what_is_learned(tiny_model, tmp_path, instance_dir, make_config):
    """Sampling mid-run must leave the training trajectory alone: no random state shared with training,
    no weight cast for inference and left so."""
    common = dict(max_train_steps=4, train_batch_size=2, random_flip=True, center_crop=False)
    plain = train(make_config(tiny_model, instance_dir, tmp_path / "plain", **common))
    sampled = train(make_config(tiny_model, instance_dir, tmp_path / "sampled", validation_prompt="a photo of sks dog",
                                validation_steps=2, num_validation_images=2, num_validation_inference_steps=2,
                                **common))
    assert len(list((tmp_path / "sampled" / "samples").glob("step-*.png"))) >= 1
    a, b = final_unet_state(plain.model_path), final_unet_state(sampled.model_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
