"""Losses and weights are small pure functions; check them against their definitions."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from sksbooth.train.losses import (compute_snr, diffusion_target, dreambooth_loss, high_noise_weights,
                                   min_snr_weights, prior_preservation_loss, sample_noise)


def test_dreambooth_loss_is_instance_mse_plus_weighted_class_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    total, instance, prior = dreambooth_loss(pred, target, num_instance=2, prior_loss_weight=0.5)
    expect_instance = ((pred[:2] - target[:2]) ** 2).mean()
    expect_prior = 0.5 * ((pred[2:] - target[2:]) ** 2).mean()
    torch.testing.assert_close(instance, expect_instance)
    torch.testing.assert_close(prior, expect_prior)
    torch.testing.assert_close(total, expect_instance + expect_prior)


def test_without_class_images_the_prior_term_is_zero():
    pred, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    total, instance, prior = dreambooth_loss(pred, target, num_instance=2, prior_loss_weight=1.0)
    assert prior.item() == 0 and total.item() == instance.item() == 1.0


def test_prior_preservation_loss_scales_with_its_weight():
    pred, target = torch.full((2, 3), 2.0), torch.zeros(2, 3)
    assert prior_preservation_loss(pred, target, 0.25).item() == pytest.approx(1.0)


def test_min_snr_weights_clamp_at_gamma():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))


def test_min_snr_floor_raises_only_the_noisiest_steps():
    snr = torch.tensor([0.05, 0.5, 50.0])
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "epsilon", floor=0.2), torch.tensor([0.2 / 0.05, 1.0, 0.1]))


def test_high_noise_weights_keep_the_noisiest_steps_at_x0_weight_one_plus_snr():
    snr = torch.tensor([0.01, 1.0, 50.0])
    # output MSE = x0 MSE x SNR (epsilon) or x (1 + SNR) (v); the x0 weight is min(1 + SNR, 1 + gamma)
    torch.testing.assert_close(high_noise_weights(snr, 5.0, "epsilon"), torch.tensor([1.01 / 0.01, 2.0, 6 / 50]))
    torch.testing.assert_close(high_noise_weights(snr, 5.0, "v_prediction"), torch.tensor([1.0, 1.0, 6 / 51]))


def test_snr_and_targets_follow_the_scheduler():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    t = torch.tensor([10, 500, 990])
    a = sched.alphas_cumprod[t]
    torch.testing.assert_close(compute_snr(sched, t), a / (1 - a))
    latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    v = a.sqrt().view(-1, 1, 1, 1) * noise - (1 - a).sqrt().view(-1, 1, 1, 1) * latents
    torch.testing.assert_close(diffusion_target(sched, latents, noise, t), v)
    eps = DDPMScheduler(prediction_type="epsilon")
    assert diffusion_target(eps, latents, noise, t) is noise


def test_offset_noise_adds_a_per_channel_constant():
    latents = torch.zeros(64, 4, 16, 16)
    plain = sample_noise(latents, torch.Generator().manual_seed(1))
    offset = sample_noise(latents, torch.Generator().manual_seed(1), offset=0.5)
    channel_means = (offset - plain[:, :, :1, :1]).mean(dim=(2, 3))  # roughly the added constants
    assert channel_means.std() > 0.2 and plain.mean(dim=(2, 3)).std() < 0.2


def test_out_of_memory_becomes_advice_that_names_the_memory_savers(tmp_path):
    from types import SimpleNamespace
    from sksbooth.errors import OutOfMemory
    from sksbooth.train.loop import out_of_memory_advice
    session = SimpleNamespace(global_step=7, last_checkpoint=tmp_path / "checkpoint-5",
                              config=SimpleNamespace(resolution=512, train_batch_size=2, with_prior_preservation=True))
    with pytest.raises(OutOfMemory, match="step 8.*--gradient_checkpointing.*checkpoint-5"):
        with out_of_memory_advice(session):
            raise torch.OutOfMemoryError("CUDA out of memory")
