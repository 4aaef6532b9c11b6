"""VAE-latent caching: encode every training image once, then train without the VAE.

What is cached is the VAE posterior's parameters (mean and log-variance), not one sample of it.
Each step still draws a fresh latent, `mean + std * randn(generator=noise_rng)`, exactly as the
uncached path's `latent_dist.sample(generator=noise_rng)` does. So:

- the per-step posterior noise (a small augmentation) is kept, as in uncached training;
- a cached and an uncached run with centre crops consume the same random numbers and give the
  same losses, and resume stays bit-exact: the only RNG involved is noise_rng, already checkpointed;
- building the cache is deterministic and draws no random numbers at all.
The cost is twice the memory of one sample (8 channels instead of 4: ~128 KB per 512 px image).

Crops: a cached image has one crop, so with caching every image is centre-cropped once, whatever
--center_crop says (random crops need --no-cache_latents). Flips stay random: with --random_flip
both orientations are cached, and the dataset picks one per (seed, epoch, index) as before.
"""

from __future__ import annotations

import torch

from ..data.images import load_image
from ..data.transforms import prepare_image
from ..events import emit
from .memory import offload


def latents_for_step(batch: dict, vae, device, dtype, generator: torch.Generator) -> torch.Tensor:
    """Scaled latents of the batch: from the cache, or by encoding its pixels."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    with torch.no_grad():
        if "latent_params" in batch:
            params = batch["latent_params"].to(device)
        else:
            params = vae.encode(batch["pixel_values"].to(device, dtype=dtype)).latent_dist.parameters
        return DiagonalGaussianDistribution(params).sample(generator=generator) * vae.config.scaling_factor


@torch.no_grad()
def cache_latents(dataset, vae, device, dtype, callbacks=(), batch_size: int = 4) -> dict:
    """Fill dataset.latent_cache {(kind, index, flipped): posterior params on CPU}; then free the VAE."""
    if not dataset.center_crop:
        emit(callbacks, "log", message="cache_latents: every image is centre-cropped once (random crops "
                                       "need --no-cache_latents).")
    keys, pixels = [], []
    for kind, index, path in dataset.cache_sources():
        image = prepare_image(load_image(path), dataset.resolution, True, False, None)
        for flipped in ((False, True) if dataset.random_flip else (False,)):
            keys.append((kind, index, flipped))
            pixels.append(image.flip(-1) if flipped else image)
    cache = {}
    for start in range(0, len(pixels), batch_size):
        chunk = torch.stack(pixels[start:start + batch_size]).to(device, dtype=dtype)
        params = vae.encode(chunk).latent_dist.parameters.cpu()
        cache.update(zip(keys[start:start + batch_size], params))
    dataset.latent_cache = cache
    offload(vae)
    emit(callbacks, "log", message=f"Cached the latents of {len(cache)} images; the VAE left the {device} device.")
    return cache
