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
from ..data.transforms import crop_to_tensor, fit_and_crop
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
    """Fill dataset.latent_cache {(kind, index, flipped, size): (posterior params on CPU, time ids)};
    then free the VAE. Images of one size are encoded together (bucketed images differ in size)."""
    if not dataset.center_crop:
        emit(callbacks, "log", message="cache_latents: every image is centre-cropped once (random crops "
                                       "need --no-cache_latents).")
    by_size: dict = {}
    for kind, index, path, size in dataset.cache_sources():
        image = load_image(path)
        cropped, corner = fit_and_crop(image, *size, True, None)
        for flipped in ((False, True) if dataset.random_flip else (False,)):
            by_size.setdefault(size, []).append(((kind, index, flipped, size),
                                                 *crop_to_tensor(image.size, cropped, corner, flipped)))
    cache = {}
    for entries in by_size.values():
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            pixels = torch.stack([pixels for _, pixels, _ in chunk]).to(device, dtype=dtype)
            params = vae.encode(pixels).latent_dist.parameters.cpu()
            cache.update((key, (p, time_ids)) for (key, _, time_ids), p in zip(chunk, params))
    dataset.latent_cache = cache
    offload(vae)
    emit(callbacks, "log", message=f"Cached the latents of {len(cache)} images; the VAE left the {device} device.")
    return cache
