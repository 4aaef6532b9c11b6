"""Class images for prior preservation: reuse what the folder has, generate the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch

from .config import ClassImagesConfig
from .data.images import ImageFolder, scan_image_folder
from .errors import ConfigError, StopRequested
from .events import Callback, StopFlag, emit
from .fsutil import atomic_write_text
from .models.pipeline import DTYPES, load_pipeline, native_resolution
from .train.report import save_png


def missing_class_indices(folder: Path, have: int, want: int, unreadable: Iterable[str] = ()) -> list[int]:
    """Indices k of the images to generate, as `class_{k:05d}.png` names not yet taken.

    A name in `unreadable` (a corrupt or truncated file) is free again: it is regenerated.
    """
    unreadable = set(unreadable)
    needed, k, out = want - have, 0, []
    while len(out) < needed:
        name = f"class_{k:05d}.png"
        if name in unreadable or not (folder / name).exists():
            out.append(k)
        k += 1
    return out


def class_prompts(config: ClassImagesConfig) -> list[str]:
    """--class_prompt, or the non-blank lines of --class_prompts_file."""
    if not config.class_prompts_file:
        return [config.class_prompt]
    path = Path(config.class_prompts_file).expanduser()
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"--class_prompts_file {path} holds no prompt; write one class prompt per line.")
    return lines


def generate_class_images(config: ClassImagesConfig, callbacks: Iterable[Callback] = (),
                          stop: Optional[StopFlag] = None, pipe=None) -> ImageFolder:
    """Top up `config.class_data_dir` to `num_class_images`; image k is drawn with seed + k
    (and with prompt k of --class_prompts_file, cycling, its caption written beside it).

    Each new image gets a JSON sidecar with its prompt, seed and settings. Stopping
    keeps every image already written (a rerun continues where it stopped).
    """
    callbacks = list(callbacks)
    folder = Path(config.class_data_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    existing = scan_image_folder(folder, "class", required=False)
    todo = missing_class_indices(folder, len(existing.images), config.num_class_images, existing.skipped)
    if not todo:
        return existing
    prompts = class_prompts(config)
    if pipe is None:
        pipe = load_pipeline(config.pretrained_model_name_or_path, DTYPES[config.prior_generation_precision],
                             variant=config.variant, allow_pickle=config.allow_pickle_checkpoints)
    size = config.resolution or native_resolution(pipe)
    emit(callbacks, "start", 0, len(todo), job="class-images", folder=str(folder))
    for start in range(0, len(todo), config.sample_batch_size):
        if stop is not None and stop.is_set():
            raise StopRequested(f"Class-image generation stopped after {start} of {len(todo)} images; "
                                "run again to continue.")
        batch = todo[start:start + config.sample_batch_size]
        generators = [torch.Generator("cpu").manual_seed(config.seed + k) for k in batch]
        batch_prompts = [prompts[k % len(prompts)] for k in batch]
        with torch.no_grad():
            images = pipe(batch_prompts, generator=generators,
                          num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                          height=size, width=size).images
        for k, prompt, image in zip(batch, batch_prompts, images):
            path = folder / f"class_{k:05d}.png"
            sidecar = {"prompt": prompt, "seed": config.seed + k, "steps": config.num_inference_steps,
                       "guidance_scale": config.guidance_scale, "size": size,
                       "model": str(config.pretrained_model_name_or_path)}
            atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2))
            if config.class_prompts_file:  # before the image: no image without its caption
                atomic_write_text(path.with_suffix(".txt"), prompt)
            save_png(image, path)
        emit(callbacks, "progress", start + len(batch), len(todo), job="class-images")
    return scan_image_folder(folder, "class")
