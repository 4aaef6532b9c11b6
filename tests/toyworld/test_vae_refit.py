"""The VAE refit teaches new colours while the world's latents stay where the UNet learned them."""

from __future__ import annotations

import torch

from sksbooth.toyworld.pretrain import PretrainConfig, build_vae, to_pixels
from sksbooth.toyworld.vae_refit import decoder_drift, main, refit_loss, refit_vae
from sksbooth.toyworld.world import make_dataset


def small_vae():
    torch.manual_seed(0)
    vae = build_vae(PretrainConfig(vae_channels=(32, 32)))
    vae.register_to_config(scaling_factor=0.5)
    return vae


def test_the_drift_term_measures_how_far_world_latents_moved():
    original = small_vae().eval()
    moved = small_vae().eval()
    with torch.no_grad():
        moved.encoder.conv_in.bias.add_(0.5)
    world = to_pixels(make_dataset(4, seed=0)[0])
    gen = torch.Generator().manual_seed(0)
    _, none = refit_loss(original, original, world, world, 1.0, gen)
    _, some = refit_loss(moved, original, world, world, 1.0, gen)
    assert none.item() < 1e-4 < some.item()


def test_refit_trains_a_copy_and_keeps_the_world_latents():
    original = small_vae()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    logged = []
    kept = refit_vae(original, make_dataset(8, seed=0)[0], steps=4, batch_size=4, keep_weight=100.0, log=logged.append)
    free = refit_vae(original, make_dataset(8, seed=0)[0], steps=4, batch_size=4, keep_weight=0.0, log=lambda _: None)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # the original is untouched
    assert any(not torch.equal(before[k], v) for k, v in kept.state_dict().items())
    world = to_pixels(make_dataset(8, seed=0)[0])
    with torch.no_grad():
        ref = original.encode(world).latent_dist.mean
        drift = {name: (vae.encode(world).latent_dist.mean - ref).pow(2).mean().item()
                 for name, vae in (("kept", kept), ("free", free))}
    assert drift["kept"] < drift["free"]
    assert "world latent drift" in logged[-1]


def test_the_command_writes_the_base_with_the_new_vae(tmp_path):
    base = tmp_path / "base"
    small_vae().save_pretrained(base / "vae")
    (base / "unet").mkdir()
    (base / "unet" / "config.json").write_text("{}")
    assert main([str(base), str(tmp_path / "dest"), "--steps", "1", "--num_images", "8"]) == 0
    assert (tmp_path / "dest" / "unet" / "config.json").is_file()
    assert (tmp_path / "dest" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "dest" / "vae" / "config.json").read_text() == (base / "vae" / "config.json").read_text()


def test_the_decoder_term_measures_how_far_decoded_pictures_moved():
    original, moved = small_vae().eval(), small_vae().eval()
    with torch.no_grad():
        moved.decoder.conv_out.bias.add_(0.5)
    latents = torch.randn(2, 4, 16, 16)
    assert decoder_drift(original, original, latents).item() < 1e-4 < decoder_drift(moved, original, latents).item()


def test_the_decoder_keep_term_holds_the_pictures_of_generated_latents():
    original = small_vae()
    generated = torch.randn(8, 4, 16, 16)
    world = make_dataset(8, seed=0)[0]
    kept = refit_vae(original, world, steps=6, batch_size=4, generated=generated, decoder_keep_weight=100.0,
                     log=lambda _: None)
    free = refit_vae(original, world, steps=6, batch_size=4, generated=generated, log=lambda _: None)
    with torch.no_grad():
        moved = {name: decoder_drift(vae, original, generated).item() for name, vae in (("kept", kept), ("free", free))}
    assert moved["kept"] < moved["free"]


def test_the_command_refits_against_the_bases_own_generations(tiny_model, tmp_path, capsys):
    assert main([str(tiny_model), str(tmp_path / "dest"), "--steps", "1", "--num_images", "8",
                 "--decoder_keep_weight", "1", "--num_generated", "2"]) == 0
    assert "generated pictures' drift" in capsys.readouterr().out
    assert (tmp_path / "dest" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
