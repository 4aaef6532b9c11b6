"""The shipped base's VAE can carry the DreamBooth subject's colours, which the world never names: a VAE
that decodes the subject's cyan head as blue caps how closely any fine-tune can draw the subject."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from sksbooth.toyworld.assets import base_path
from sksbooth.toyworld.checker import to_tensor
from sksbooth.toyworld.world import SUBJECT_BODY, SUBJECT_HEAD, subject_images


def mean_decoded_colour(photos: torch.Tensor, decoded: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """The mean decoded RGB (0-255) over the pixels that are `rgb` (within the world's jitter) in the photos."""
    photos, decoded = (photos + 1) * 127.5, (decoded + 1) * 127.5
    mask = (photos - torch.tensor(rgb).view(1, 3, 1, 1)).abs().amax(dim=1) < 15
    return torch.stack([decoded[:, c][mask].mean() for c in range(3)])


def test_the_shipped_vae_keeps_the_subjects_cyan_head():
    vae = AutoencoderKL.from_pretrained(str(base_path() / "vae"), torch_dtype=torch.float32).eval()
    photos = to_tensor(subject_images(5, seed=0))
    with torch.no_grad():
        decoded = vae.decode(vae.encode(photos).latent_dist.mean).sample.clamp(-1, 1)
    head = mean_decoded_colour(photos, decoded, SUBJECT_HEAD)
    body = mean_decoded_colour(photos, decoded, SUBJECT_BODY)
    print(f"cyan {SUBJECT_HEAD} decoded as {head.round().tolist()}, orange {SUBJECT_BODY} as {body.round().tolist()}")
    # the palette-only VAE decoded cyan as blue, (31, 98, 214); the refit one gives (10, 191, 209). The striped
    # orange body is still darker and greener in both ((174, 146, 43), (162, 134, 22)): not asserted
    assert (head - torch.tensor(SUBJECT_HEAD)).abs().max() < 40
