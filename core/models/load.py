"""Loading a base model's components from a diffusers folder, offline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelLoadError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class SDComponents:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any


def check_model_path(path: Optional[str]) -> Path:
    """Resolve a base-model path, with an actionable message for each way it can be wrong."""
    if not path:
        raise ModelLoadError("No base model given. Pass --pretrained_model_name_or_path DIR "
                             "(a diffusers folder); `dreambooth make-tiny-model DIR` builds a test one.")
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{p} is a single-file checkpoint; loading those is not supported yet. "
                                 "Convert it to a diffusers folder first (diffusers' "
                                 "scripts/convert_original_stable_diffusion_to_diffusers.py).")
        raise ModelLoadError(f"{p} is not a model: expected a diffusers folder with model_index.json.")
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            hint = " It looks like one of our output folders; use its model/ subfolder." if (p / "model" / "model_index.json").is_file() else ""
            raise ModelLoadError(f"{p} is not a diffusers model folder (no model_index.json).{hint}")
        return p
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if looks_like_hub_id and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ModelLoadError(f"{path!r} is not a local folder, and HF_HUB_OFFLINE is set, so it cannot be "
                             "downloaded. Download the model once with network access, or pass a local folder.")
    if not looks_like_hub_id:
        raise ModelLoadError(f"Model path {p} does not exist.")
    return Path(path)  # a hub id; from_pretrained fetches it (online only)


def load_components(path: str, revision: Optional[str] = None, variant: Optional[str] = None,
                    tokenizer_name: Optional[str] = None) -> SDComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = str(check_model_path(path))
    kw = {"revision": revision}
    try:
        return SDComponents(
            tokenizer=CLIPTokenizer.from_pretrained(tokenizer_name or root, subfolder=None if tokenizer_name else "tokenizer", **kw),
            text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", variant=variant, **kw),
            vae=AutoencoderKL.from_pretrained(root, subfolder="vae", variant=variant, **kw),
            unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", variant=variant, **kw),
            noise_scheduler=DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw),
        )
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"Cannot load the Stable Diffusion model at {root}: {e}") from e
