"""Inference pipelines and samplers, named as A1111 and ComfyUI users know them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelLoadError
from .load import check_model_path
from .lora_files import apply_lora, find_lora_file, is_lora_file

DTYPES = {"no": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, None: torch.float32}


def make_scheduler(name: str, base_config):
    """A1111 sampler name -> a diffusers scheduler built from the model's scheduler config."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler)
    table = {
        "DDIM": (DDIMScheduler, {}),
        "Euler a": (EulerAncestralDiscreteScheduler, {}),
        "Euler": (EulerDiscreteScheduler, {}),
        "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
        "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
        "DDPM": (DDPMScheduler, {}),
        "PNDM": (PNDMScheduler, {}),
        "DPMSolverMultistepScheduler": (DPMSolverMultistepScheduler, {}),
        "DDPMScheduler": (DDPMScheduler, {}),
    }
    if name not in table:
        raise ModelLoadError(f"Unknown scheduler {name!r}; choose one of {', '.join(table)}.")
    cls, extra = table[name]
    return cls.from_config(base_config, **extra)


def resolve_model_dir(path: str, allow_pickle: bool = False) -> tuple[Path, Optional[Path]]:
    """A model argument -> (diffusers folder, optional LoRA file).

    Accepts a diffusers folder, one of our training outputs (full model in model/,
    or a LoRA file, kohya or diffusers format, whose base is named in the saved config),
    or the LoRA file of such an output itself (what `train` returns as the model path).
    """
    p = Path(path).expanduser()
    if (p / "model" / "model_index.json").is_file():
        return p / "model", None
    saved = (p.parent if p.is_file() else p) / "dreambooth_config.json"
    lora = None
    if saved.is_file():
        lora = (p if is_lora_file(p) else None) if p.is_file() else find_lora_file(p)
    if lora is not None:
        base = json.loads(saved.read_text(encoding="utf-8")).get("pretrained_model_name_or_path")
        return check_model_path(base, allow_pickle=allow_pickle), lora
    return check_model_path(str(p), allow_pickle=allow_pickle), None


def _folder_pipeline(root: Path, dtype: torch.dtype, variant: Optional[str]):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from .load import is_sdxl_folder
    if is_sdxl_folder(root):
        return StableDiffusionXLPipeline.from_pretrained(str(root), torch_dtype=dtype, variant=variant)
    return StableDiffusionPipeline.from_pretrained(str(root), torch_dtype=dtype, variant=variant,
                                                   safety_checker=None, requires_safety_checker=False)


def load_pipeline(path: str, dtype: torch.dtype = torch.float32, variant: Optional[str] = None,
                  lora_scale: float = 1.0, allow_pickle: bool = False):
    root, lora = resolve_model_dir(path, allow_pickle)
    try:
        if root.is_file():  # a single-file checkpoint (SD 1.x, 2.x or SDXL)
            from .single_file import build_pipeline, load_single_file
            pipe = build_pipeline(load_single_file(root, allow_pickle, dtype))
        else:
            pipe = _folder_pipeline(root, dtype, variant)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Cannot load the Stable Diffusion pipeline at {root}: {e}") from e
    if lora is not None:
        apply_lora(pipe, lora, lora_scale)  # kohya or diffusers format
        from ..train.token_embedding import EMBEDDINGS_DIR, load_embedding_files
        load_embedding_files(pipe, lora.parent / EMBEDDINGS_DIR)  # a LoRA run's --train_text_encoder_ti
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_from_parts(parts, unet, text_encoder, scheduler, text_encoder_2=None):
    """An SD (1.x/2.x) or SDXL pipeline around loaded components and the (trained) networks."""
    if text_encoder_2 is not None:
        from diffusers import StableDiffusionXLPipeline
        return StableDiffusionXLPipeline(vae=parts.vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=unet,
                                         scheduler=scheduler)
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(vae=parts.vae, text_encoder=text_encoder, tokenizer=parts.tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def native_resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor
