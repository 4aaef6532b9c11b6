"""`python -m sksbooth.toyworld.vae_refit BASE DEST`: teach a toy-world base's VAE colours the world never
names, without moving the latents its UNet was trained on.

A VAE trained on the world's palette alone decodes the DreamBooth subject's orange and cyan as green and
blue, so fine-tuning can bind the subject's form but never its colours. This fine-tunes the VAE on half
world images, half random-colour pictures (world.random_colour_images), with an extra loss that keeps the
encoder's latents of world images where the original encoder put them: the UNet and text encoder of the
base stay valid as they are, as SD's VAE decoder fine-tunes keep SD usable. DEST is BASE with the new VAE.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..cpu_precision import cpu_autocast
from .pretrain import Log, StepBudget, cosine_lr_budget, cropped_batches, vae_loss
from .world import make_dataset, random_colour_images


def refit_loss(vae, original, world: torch.Tensor, pictures: torch.Tensor, keep_weight: float,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction (MSE + L1) of both halves, plus keep_weight x the drift of the world half's latents
    (in the UNet's scaled units). Returns (loss, drift)."""
    x, scale = torch.cat([world, pictures]), original.config.scaling_factor
    with cpu_autocast():
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample.float()
        with torch.no_grad():
            kept = original.encode(world).latent_dist.mean.float()
    drift = F.mse_loss(posterior.mean[:len(world)].float() * scale, kept * scale)
    loss = vae_loss(recon, x, posterior, kl_weight=1e-6) + keep_weight * drift
    return loss, drift


def decoder_drift(vae, original, latents: torch.Tensor) -> torch.Tensor:
    """How far the decoder's pictures of `latents` (in the UNet's scaled units) moved from the original's:
    the encoder keep term holds the world's own latents, but a base's generations are not exactly those,
    and a refit decoder can turn them into something else (a CLIP-style base's toys came out as the subject)."""
    z = latents / original.config.scaling_factor
    with cpu_autocast():
        drawn = vae.decode(z).sample.float()
        with torch.no_grad():
            kept = original.decode(z).sample.float()
    return F.mse_loss(drawn, kept)


@torch.no_grad()
def generated_latents(pipe, count: int, seed: int = 0, batch: int = 64) -> torch.Tensor:
    """The base's own samples, as latents (scaled units), for world training captions: what the decoder
    keep term holds in place."""
    _, captions, _ = make_dataset(count, seed + 1)
    chunks = []
    for start in range(0, count, batch):
        gen = torch.Generator().manual_seed(seed + start)
        chunks.append(pipe(captions[start:start + batch], num_inference_steps=20, guidance_scale=7.5, height=64,
                           width=64, generator=gen, output_type="latent").images.float())
    return torch.cat(chunks)


def refit_vae(original, world: np.ndarray, steps: int = 1200, batch_size: int = 32, lr: float = 1e-3,
              keep_weight: float = 1.0, seed: int = 0, log: Log = print, generated: torch.Tensor | None = None,
              decoder_keep_weight: float = 0.0):
    """A copy of `original` fine-tuned as the module says on `world` (uint8 world images, N x 64 x 64 x 3) and as
    many random-colour pictures; `original` is left as it was. With `generated` latents (generated_latents) and
    a `decoder_keep_weight`, the decoder's pictures of them are also kept as the original drew them."""
    original = original.float().eval().requires_grad_(False)
    vae = copy.deepcopy(original).train().requires_grad_(True)
    pictures = random_colour_images(len(world), seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0)
    sched = cosine_lr_budget(opt, StepBudget(steps, 0), warmup=50)
    gen, half = torch.Generator().manual_seed(seed), batch_size // 2
    pick = torch.Generator().manual_seed(seed + 1)  # its own stream: without it, the refit is as it was
    for step in range(steps):
        loss, drift = refit_loss(vae, original, *cropped_batches((world, pictures), half, gen), keep_weight, gen)
        drawn = ""
        if generated is not None and decoder_keep_weight > 0:
            moved = decoder_drift(vae, original, generated[torch.randint(len(generated), (half,), generator=pick)])
            loss = loss + decoder_keep_weight * moved
            drawn = f", generated pictures' drift {moved.item():.4f}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae refit step {step}: loss {loss.item():.4f}, world latent drift {drift.item():.4f}{drawn}")
    return vae.eval().requires_grad_(False)


def main(argv=None) -> int:
    from diffusers import AutoencoderKL
    from ..fsutil import atomic_dir
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("base", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--keep_weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_images", type=int, default=20_000, help="world images and random-colour pictures each")
    p.add_argument("--decoder_keep_weight", type=float, default=0.0,
                   help="> 0: also keep the decoder's pictures of the base's own generations (off in the shipped refit)")
    p.add_argument("--num_generated", type=int, default=256, help="generations for --decoder_keep_weight")
    args = p.parse_args(argv)
    world, _, _ = make_dataset(args.num_images, args.seed)
    generated, original = None, None
    if args.decoder_keep_weight > 0:  # the whole base is loaded anyway: its VAE is the one to refit
        from .assets import load_pipeline
        pipe = load_pipeline(args.base)
        generated, original = generated_latents(pipe, args.num_generated, args.seed), pipe.vae
    original = original or AutoencoderKL.from_pretrained(str(args.base / "vae"))
    vae = refit_vae(original, world, steps=args.steps,
                    keep_weight=args.keep_weight, seed=args.seed, generated=generated,
                    decoder_keep_weight=args.decoder_keep_weight)
    with atomic_dir(args.dest) as tmp:
        shutil.copytree(args.base, tmp, dirs_exist_ok=True)
        shutil.rmtree(Path(tmp) / "vae")
        vae.to(torch.float16).save_pretrained(Path(tmp) / "vae", safe_serialization=True)
        # only the weights change: the base's config, without the load path diffusers would add to it
        shutil.copy2(args.base / "vae" / "config.json", Path(tmp) / "vae" / "config.json")
    print(f"{args.dest}: {args.base} with the refitted VAE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
