"""Losses, noise and weighting as small pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_noise(latents: torch.Tensor, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like `latents`; `offset` adds per-channel constant noise (Guttenberg, 2023),
    which lets the model learn very dark and very bright images."""
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    if offset:
        shape = (latents.shape[0], latents.shape[1], 1, 1)
        noise = noise + offset * torch.randn(shape, generator=generator, dtype=latents.dtype).to(latents.device)
    return noise


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unknown prediction type {kind!r}")


def compute_snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_t^2 / sigma_t^2 of each timestep."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str, floor: float = 0.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023, arXiv 2303.09556); `floor` > 0 raises the x0-space
    weight of the noisiest steps to at least that (0: the paper's)."""
    clipped = torch.clamp(snr, min=floor, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def high_noise_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Weights whose x0-space value is min(1 + SNR, 1 + gamma) (v-prediction's own weighting, capped):
    unlike min-SNR they keep full weight on the noisiest steps, where only the prompt can decide the
    layout and the colours; pretraining from scratch learns the prompt much sooner with them."""
    x0_weight = torch.clamp(1 + snr, max=1 + gamma)
    return x0_weight / (snr + 1 if prediction_type == "v_prediction" else snr)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error, optionally weighted per sample."""
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def prior_preservation_loss(pred: torch.Tensor, target: torch.Tensor, weight: float,
                            sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The class-prior term of DreamBooth (Ruiz et al., 2022, eq. 2): weight x MSE on class images."""
    return weight * weighted_mse(pred, target, sample_weights)


def dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, num_instance: int, prior_loss_weight: float,
                    sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Instance MSE + prior loss over one batch laid out as [instance..., class...].

    Returns (total, instance_loss, prior_loss); prior_loss is 0 when the batch has no class part.
    """
    w_inst = sample_weights[:num_instance] if sample_weights is not None else None
    instance = weighted_mse(pred[:num_instance], target[:num_instance], w_inst)
    if pred.shape[0] == num_instance:
        return instance, instance, torch.zeros_like(instance)
    w_cls = sample_weights[num_instance:] if sample_weights is not None else None
    prior = prior_preservation_loss(pred[num_instance:], target[num_instance:], prior_loss_weight, w_cls)
    return instance + prior, instance, prior
