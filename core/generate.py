"""Text-to-image generation with a trained model; PNGs carry A1111-style parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from PIL.PngImagePlugin import PngInfo

from .config import GenerateConfig
from .errors import StopRequested
from .events import Callback, StopFlag, emit
from .models.pipeline import DTYPES, load_pipeline, make_scheduler, native_resolution
from .train.report import save_png


def a1111_parameters(config: GenerateConfig, seed: int, width: int, height: int) -> str:
    """The `parameters` text chunk that A1111's PNG Info reads."""
    lines = [config.prompt]
    if config.negative_prompt:
        lines.append(f"Negative prompt: {config.negative_prompt}")
    lines.append(f"Steps: {config.num_inference_steps}, Sampler: {config.scheduler}, CFG scale: {config.guidance_scale}, "
                 f"Seed: {seed}, Size: {width}x{height}, Model: {Path(config.model).name}")
    return "\n".join(lines)


def generate(config: GenerateConfig, callbacks: Iterable[Callback] = (), stop: Optional[StopFlag] = None,
             pipe=None) -> list[Path]:
    """Draw `num_images` images (image i with seed + i) and save them as PNGs."""
    callbacks = list(callbacks)
    pipe = pipe or load_pipeline(config.model, DTYPES[config.precision])
    pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    size = native_resolution(pipe)
    width, height = config.width or size, config.height or size
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    emit(callbacks, "start", 0, config.num_images, job="generate")
    for start in range(0, config.num_images, config.batch_size):
        if stop is not None and stop.is_set():
            raise StopRequested(f"Generation stopped after {start} images.")
        seeds = [config.seed + i for i in range(start, min(start + config.batch_size, config.num_images))]
        with torch.no_grad():
            images = pipe(config.prompt, negative_prompt=config.negative_prompt or None,
                          num_images_per_prompt=len(seeds),
                          generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                          num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                          width=width, height=height).images
        for seed, image in zip(seeds, images):
            info = PngInfo()
            info.add_text("parameters", a1111_parameters(config, seed, width, height))
            paths.append(save_png(image, out / f"{len(list(out.glob('*.png'))):05d}-{seed}.png", pnginfo=info))
        emit(callbacks, "progress", len(paths), config.num_images, job="generate")
    emit(callbacks, "done", len(paths), config.num_images, paths=[str(p) for p in paths])
    return paths
