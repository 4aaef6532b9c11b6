"""SDXL files in the original layout, checked against ComfyUI's own lists (tests/models/data, made by
make_sdxl_key_lists.py from ComfyUI's code, not ours): the single-file checkpoint's every tensor name
and shape, the kohya LoRA layer names; and the kohya SDXL LoRA round-trips exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sksbooth.models.lora_files import kohya_state_dict, kohya_text_encoder_name, kohya_unet_name
from sksbooth.train.setup import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, add_lora

DATA = Path(__file__).parent / "data"


def read_listing(name: str) -> dict[str, tuple]:
    shapes = {}
    for line in (DATA / name).read_text().splitlines():
        key, _, shape = line.partition("\t")
        shapes[key] = tuple(json.loads(shape)) if shape else ()
    return shapes


def full_size_sdxl_on_meta():
    """SDXL base's four networks from the bundled configs, shapes only (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from sksbooth.models.single_file import bundled_configs
    cfg = bundled_configs("sdxl")

    def clip(c):
        return CLIPTextConfig.from_dict({k: v for k, v in c.items() if k != "architectures"})
    with torch.device("meta"):
        return (UNet2DConditionModel.from_config(cfg["unet"]), AutoencoderKL.from_config(cfg["vae"]),
                CLIPTextModel(clip(cfg["text_encoder"])), CLIPTextModelWithProjection(clip(cfg["text_encoder_2"])))


def test_sdxl_single_file_has_exactly_the_tensors_comfyui_writes_for_sdxl_base():
    from sksbooth.models.single_file import to_ldm_state_dict
    unet, vae, te1, te2 = full_size_sdxl_on_meta()
    ours = {k: tuple(v.shape) for k, v in to_ldm_state_dict(unet, vae, te1, te2, family="sdxl").items()}
    reference = read_listing("sdxl_ldm_keys.txt")
    assert len(reference) == 2515
    assert sorted(set(reference) - set(ours)) == [] and sorted(set(ours) - set(reference)) == []
    assert {k: s for k, s in ours.items() if s != reference[k]} == {}


def layers(model, suffixes):
    """The layers PEFT adapts for these target names."""
    return [n for n, _ in model.named_modules() if any(n == s or n.endswith("." + s) for s in suffixes)]


def test_sdxl_kohya_lora_names_are_the_ones_comfyui_accepts_for_sdxl_base():
    unet, _, te1, te2 = full_size_sdxl_on_meta()
    accepted = set(read_listing("sdxl_kohya_lora_keys.txt"))
    ours = {kohya_unet_name(n, unet.config) for n in layers(unet, UNET_LORA_TARGETS)}
    ours |= {kohya_text_encoder_name(n, "lora_te1_") for n in layers(te1, TEXT_LORA_TARGETS)}
    ours |= {kohya_text_encoder_name(n, "lora_te2_") for n in layers(te2, TEXT_LORA_TARGETS)}
    # 70 transformer blocks x 2 attentions x 4 projections; 12 + 32 text layers x 4 projections
    assert len(ours) == 70 * 2 * 4 + (12 + 32) * 4
    assert sorted(ours - accepted) == []
    # and every attention projection ComfyUI knows is one we train: none is missed
    projections = ("_to_q", "_to_k", "_to_v", "_to_out_0", "_q_proj", "_k_proj", "_v_proj", "_out_proj")
    assert sorted({k for k in accepted if k.endswith(projections)} - ours) == []


@torch.no_grad()
def outputs(pipe):
    """Both text encoders' hidden states and the UNet's prediction on fixed inputs."""
    ids = pipe.tokenizer(["a photo of sks dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
    hidden = torch.cat([h1, out2.hidden_states[-2]], -1)
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 32, 32, generator=g)
    cond = {"text_embeds": out2.text_embeds, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    return hidden, out2.text_embeds, pipe.unet(noisy, torch.tensor([400]), hidden, added_cond_kwargs=cond).sample


def test_kohya_sdxl_lora_round_trips_through_the_file(tmp_path):
    """PEFT adapters on UNet and both text encoders -> kohya file (lora_unet_/lora_te1_/lora_te2_) -> loaded
    into a fresh pipeline: the same outputs as the adapted models."""
    from safetensors.torch import save_file
    from sksbooth.models.lora_files import apply_lora
    from sksbooth.models.tiny import build_tiny_sdxl_pipeline
    tuned = build_tiny_sdxl_pipeline()
    for model, targets in ((tuned.unet, UNET_LORA_TARGETS), (tuned.text_encoder, TEXT_LORA_TARGETS),
                           (tuned.text_encoder_2, TEXT_LORA_TARGETS)):
        add_lora(model, 4, 8, targets)  # alpha != rank: a file that drops alpha fails
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; make the adapters do something
                p.data = torch.randn(p.shape, generator=g) * 0.1
    expected = outputs(tuned)
    sd = kohya_state_dict(tuned.unet, tuned.text_encoder, torch.float32, tuned.text_encoder_2)
    assert {k.split("_")[1] for k in sd} == {"unet", "te1", "te2"}
    save_file(sd, str(tmp_path / "lora.safetensors"))
    fresh = build_tiny_sdxl_pipeline()
    base = outputs(fresh)
    apply_lora(fresh, tmp_path / "lora.safetensors", 1.0)
    got = outputs(fresh)
    for name, e, b, o in zip(("hidden", "pooled", "unet"), expected, base, got):
        assert (e - b).abs().max() > 1e-2, name  # the adapters change this output
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5, msg=name)
