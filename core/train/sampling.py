"""Validation sample grids written during training."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.pipeline import make_scheduler, pipeline_from_parts
from .report import image_grid, save_png


@torch.no_grad()
def write_sample_grid(components, unet, text_encoder, text_encoder_2=None, *, config, step: int, out_dir: Path,
                      dtype) -> Path:
    """One row per validation prompt, `num_validation_images` columns, fixed seeds across steps."""
    pipe = pipeline_from_parts(components, unet, text_encoder,
                               make_scheduler(config.validation_scheduler, components.noise_scheduler.config),
                               text_encoder_2)
    pipe.set_progress_bar_config(disable=True)
    images = []
    was_training = unet.training
    unet.eval()
    for prompt in config.validation_prompts:
        generators = [torch.Generator("cpu").manual_seed((config.seed or 0) + i)
                      for i in range(config.num_validation_images)]
        with torch.autocast(unet.device.type, dtype=dtype, enabled=dtype != torch.float32):
            images += pipe(prompt, num_images_per_prompt=config.num_validation_images, generator=generators,
                           num_inference_steps=config.num_validation_inference_steps,
                           height=config.resolution, width=config.resolution).images
    unet.train(was_training)
    return save_png(image_grid(images, columns=config.num_validation_images), out_dir / f"step-{step:06d}.png")
