"""Where the shipped toy-world files live (package data), and loading them."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError

ASSETS = Path(__file__).resolve().parent.parent / "models" / "assets" / "toyworld"


def base_path() -> Path:
    """The shipped toy-world base: a diffusers StableDiffusionPipeline folder (fp16)."""
    path = ASSETS / "base"
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"The toy-world base is missing from {path}. Reinstall sksbooth, or make it with "
                             f"`python -m sksbooth.toyworld.make {ASSETS}` (about 40 minutes on 2 CPU cores).")
    return path


def load_pipeline(path: str | Path | None = None):
    """A fp32 StableDiffusionPipeline (CPU) of the base, a fine-tuned model folder, or a LoRA run's output
    folder or LoRA file (fused into the base the run's config names): whatever `train` returns as model_path."""
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from ..models.pipeline import load_pipeline as load_any
    pipe = load_any(str(path or base_path()), torch.float32)
    # the folder keeps the DDPM training schedule; DPM-Solver samples it well in 20 steps
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


def load_shipped_checker():
    from .checker import load_checker
    if not (ASSETS / "checker.safetensors").is_file():
        raise ModelLoadError(f"The toy-world checker is missing from {ASSETS}; reinstall sksbooth.")
    return load_checker(ASSETS)
