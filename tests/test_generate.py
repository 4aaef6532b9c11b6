"""`dreambooth generate`: samplers, img2img, inpainting, LoRA strength, and A1111-readable PNG parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sksbooth.cli import build_parser, config_from_args
from sksbooth.config import GenerateConfig
from sksbooth.errors import ConfigError
from sksbooth.generate import generate
from sksbooth.models.lora_files import addnet_hash, save_kohya_lora
from sksbooth.train.setup import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, add_lora

# --- A1111's PNG Info parser (modules/infotext_utils.py, parse_generation_parameters), in small --------------

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_generation_parameters(text: str) -> dict[str, str]:
    """First lines the prompt, a 'Negative prompt:' line, then one line of 'Key: value, ...' (quoted if needed)."""
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in RE_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        m = RE_SIZE.match(value)
        if m:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        else:
            res[key] = value
    return res


def png_parameters(path: Path) -> dict[str, str]:
    with Image.open(path) as im:
        return parse_generation_parameters(im.text["parameters"])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def config(model, out, **kw) -> GenerateConfig:
    base = dict(model=str(model), prompt="a photo of sks dog", num_images=1, batch_size=1, num_inference_steps=2,
                scheduler="DDIM", output_dir=str(out), seed=0)
    return GenerateConfig(**{**base, **kw})


def photo(path: Path, size=(72, 56)) -> Path:
    """An 'existing photo': a gradient with a red square, not square and not the model's native size."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], axis=2).astype(np.uint8)
    im = Image.fromarray(arr)
    ImageDraw.Draw(im).rectangle((4, 4, 20, 20), fill=(220, 20, 20))
    im.save(path)
    return path


# --- text to image ------------------------------------------------------------------------------------------

def test_png_parameters_parse_back_as_a1111_reads_them(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path / "g", prompt="a photo of sks dog, on a beach", negative_prompt="blurry, dark",
                 num_images=3, batch_size=2, seed=41, guidance_scale=5.5, scheduler="Euler a", width=64, height=48)
    paths = generate(cfg)
    assert len(paths) == 3
    for i, path in enumerate(paths):
        assert Image.open(path).size == (64, 48)
        p = png_parameters(path)
        assert p["Prompt"] == "a photo of sks dog, on a beach" and p["Negative prompt"] == "blurry, dark"
        assert (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"]) == ("2", "Euler a", "5.5", str(41 + i))
        assert (p["Size-1"], p["Size-2"]) == ("64", "48") and p["Model"] == tiny_model.name
        assert "Denoising strength" not in p and "Lora hashes" not in p
    assert not np.array_equal(pixels(paths[0]), pixels(paths[1]))  # different seeds
    again = generate(config(tiny_model, tmp_path / "again", prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                            seed=42, guidance_scale=5.5, scheduler="Euler a", width=64, height=48))
    # seed 42 alone = the second image of the batch (up to batched-vs-single float rounding)
    assert np.abs(pixels(again[0]) - pixels(paths[1])).max() <= 3.0


def test_samplers_ddim_euler_a_and_dpmpp_2m_karras(tiny_model, tmp_path):
    images = {}
    for name in ("DDIM", "Euler a", "DPM++ 2M Karras"):
        path = generate(config(tiny_model, tmp_path / name.replace(" ", "_"), scheduler=name, num_inference_steps=3))[0]
        assert png_parameters(path)["Sampler"] == name
        images[name] = pixels(path)
    assert not np.array_equal(images["DDIM"], images["Euler a"])
    assert not np.array_equal(images["DDIM"], images["DPM++ 2M Karras"])


# --- img2img and inpainting -----------------------------------------------------------------------------------

def test_img2img_keeps_the_photo_size_and_follows_strength(tiny_model, tmp_path):
    init = photo(tmp_path / "photo.png")
    outs = {}
    for strength in (0.5, 1.0):
        path = generate(config(tiny_model, tmp_path / f"s{strength}", init_image=str(init), strength=strength,
                               num_inference_steps=4))[0]
        assert Image.open(path).size == (72, 56)
        p = png_parameters(path)
        assert p["Denoising strength"] == str(strength) and (p["Size-1"], p["Size-2"]) == ("72", "56")
        outs[strength] = pixels(path)
    assert np.abs(outs[0.5] - outs[1.0]).mean() > 1.0
    # an odd size (not a multiple of 8) comes back at that size too
    odd = photo(tmp_path / "odd.png", size=(70, 50))
    assert Image.open(generate(config(tiny_model, tmp_path / "odd", init_image=str(odd)))[0]).size == (70, 50)


def test_inpainting_changes_the_masked_part_and_keeps_the_rest(tiny_model, tmp_path):
    init = photo(tmp_path / "photo.png", size=(64, 64))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=255)  # repaint the right half
    mask.save(tmp_path / "mask.png")
    path = generate(config(tiny_model, tmp_path / "g", prompt="sks dog", init_image=str(init),
                           mask_image=str(tmp_path / "mask.png"), strength=1.0, num_inference_steps=3))[0]
    out, before = pixels(path), pixels(init)
    assert out.shape == before.shape
    kept = np.abs(out[:, :20] - before[:, :20])  # well outside the mask and its blurred edge
    changed = np.abs(out[:, 44:] - before[:, 44:])
    assert kept.max() <= 2.0, kept.max()  # PNG round trip only
    assert changed.mean() > 10.0, changed.mean()
    p = png_parameters(path)
    assert p["Denoising strength"] == "1.0" and p["Mask blur"] == "4"


def test_inpainting_without_a_photo_is_refused():
    with pytest.raises(ConfigError, match="--mask_image needs --init_image"):
        GenerateConfig(model="m", prompt="p", mask_image="mask.png")
    with pytest.raises(ConfigError, match="--strength"):
        GenerateConfig(model="m", prompt="p", strength=0.0)


# --- base + LoRA --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kohya_lora(tiny_model, tmp_path_factory) -> Path:
    """A kohya LoRA for the tiny model with adapters that change what is drawn."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model))
    add_lora(pipe.unet, 4, 4, UNET_LORA_TARGETS)
    add_lora(pipe.text_encoder, 4, 4, TEXT_LORA_TARGETS)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = tmp_path_factory.mktemp("loras") / "my_subject.safetensors"
    return save_kohya_lora(path, pipe.unet, pipe.text_encoder, {"ss_network_dim": "4"}, torch.float16)


def test_base_plus_lora_with_strength(tiny_model, kohya_lora, tmp_path):
    base = pixels(generate(config(tiny_model, tmp_path / "base"))[0])
    off = generate(config(tiny_model, tmp_path / "off", lora=str(kohya_lora), lora_scale=0.0))[0]
    on = generate(config(tiny_model, tmp_path / "on", lora=str(kohya_lora), lora_scale=1.0))[0]
    half = generate(config(tiny_model, tmp_path / "half", lora=str(kohya_lora), lora_scale=0.5))[0]
    assert np.abs(pixels(off) - base).max() <= 1.0  # strength 0 is the base model
    assert np.abs(pixels(on) - base).mean() > 1.0
    assert not np.array_equal(pixels(half), pixels(on))
    p = png_parameters(half)
    assert p["Prompt"] == "a photo of sks dog <lora:my_subject:0.5>"  # as A1111 writes (and re-applies) it
    assert p["Lora hashes"] == f"my_subject: {addnet_hash(kohya_lora)[:12]}" and p["Model"] == tiny_model.name


def test_cli_maps_the_generation_flags(tiny_model, tmp_path):
    args = build_parser().parse_args(
        ["generate", "--model", str(tiny_model), "--prompt", "sks dog", "--lora", "x.safetensors", "--lora_scale",
         "0.7", "--init_image", "a.png", "--mask_image", "m.png", "--strength", "0.6", "--scheduler", "Euler a",
         "--negative_prompt", "ugly", "--seed", "3", "--num_images", "2", "--batch_size", "2"])
    cfg = config_from_args(GenerateConfig, args)
    assert (cfg.lora, cfg.lora_scale, cfg.init_image, cfg.mask_image, cfg.strength) == (
        "x.safetensors", 0.7, "a.png", "m.png", 0.6)
    assert (cfg.scheduler, cfg.negative_prompt, cfg.seed, cfg.num_images) == ("Euler a", "ugly", 3, 2)


def test_single_file_model_with_a_lora(tiny_model, kohya_lora, tmp_path):
    """--model a .safetensors checkpoint (A1111's Model and Model hash), plus a LoRA on top."""
    from sksbooth.models.single_file import diffusers_folder_to_single_file
    path, sha256 = diffusers_folder_to_single_file(tiny_model, tmp_path / "tiny-checkpoint.safetensors", "fp32")
    from_file = generate(config(path, tmp_path / "file"))[0]
    from_folder = generate(config(tiny_model, tmp_path / "folder"))[0]
    assert np.abs(pixels(from_file) - pixels(from_folder)).max() <= 2.0  # the same model
    p = png_parameters(from_file)
    assert p["Model"] == "tiny-checkpoint" and p["Model hash"] == sha256[:10]
    with_lora = generate(config(path, tmp_path / "lora", lora=str(kohya_lora)))[0]
    assert np.abs(pixels(with_lora) - pixels(from_file)).mean() > 1.0
    assert png_parameters(with_lora)["Lora hashes"] == f"my_subject: {addnet_hash(kohya_lora)[:12]}"


def test_seed_minus_one_picks_a_random_seed_and_records_it(tiny_model, tmp_path):
    paths = generate(config(tiny_model, tmp_path / "g", seed=-1, num_images=2, batch_size=2))
    first, second = (int(png_parameters(p)["Seed"]) for p in paths)
    assert first >= 0 and second == first + 1
    again = generate(config(tiny_model, tmp_path / "again", seed=first))[0]
    assert np.abs(pixels(again) - pixels(paths[0])).max() <= 3.0  # the recorded seed reproduces the image


def test_a_trained_lora_folder_draws_on_its_base_and_says_so(tiny_model, kohya_lora, tmp_path):
    import shutil
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "dreambooth_config.json").write_text(json.dumps({"pretrained_model_name_or_path": str(tiny_model)}))
    shutil.copy(kohya_lora, run / "my-run.safetensors")
    folder = generate(config(run, tmp_path / "folder", lora_scale=0.5))[0]
    explicit = generate(config(tiny_model, tmp_path / "explicit", lora=str(kohya_lora), lora_scale=0.5))[0]
    assert np.abs(pixels(folder) - pixels(explicit)).max() <= 1.0
    p = png_parameters(folder)
    assert p["Prompt"] == "a photo of sks dog <lora:my-run:0.5>" and p["Model"] == tiny_model.name
    assert p["Lora hashes"] == f"my-run: {addnet_hash(kohya_lora)[:12]}"
