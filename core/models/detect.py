"""Which Stable Diffusion family a single-file checkpoint is, from its tensors alone (no network).

Families: "sd1" (SD 1.x), "sd2" (SD 2.x 512 px, epsilon), "sd2-v" (SD 2.x 768 px,
v-prediction), "sdxl" (SDXL base). The rules follow the keys diffusers' and ComfyUI's
loaders test: SDXL has a second (OpenCLIP bigG) text encoder under `conditioner.`,
SD 2.x has OpenCLIP ViT-H under `cond_stage_model.model.` and 1024-wide cross
attention, SD 1.x has CLIP ViT-L under `cond_stage_model.transformer.` and 768.
SD 2.x's two variants share every shape; the prediction type comes from metadata
(`modelspec.prediction_type`, ours), an explicit `v_pred` key, or else ComfyUI's
weight-statistics rule (std of the last attention block's norm1 bias > 0.09 means v).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

from ..errors import ModelLoadError

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")
DESCRIPTIONS = {"sd1": "SD 1.x", "sd2": "SD 2.x (512, epsilon)", "sd2-v": "SD 2.x (768, v-prediction)",
                "sdxl": "SDXL base"}
ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sd2-v": "stable-diffusion-v2-768-v",
                 "sdxl": "stable-diffusion-xl-v1-base"}
UNET = "model.diffusion_model."
V_STD_THRESHOLD = 0.09  # ComfyUI's supported_models.SD20.model_type


def cross_attention_width(shapes: Mapping[str, tuple]) -> Optional[int]:
    for k, s in shapes.items():
        if k.startswith(UNET) and k.endswith(".attn2.to_k.weight"):
            return int(s[-1])
    return None


def detect_family(shapes: Mapping[str, tuple], metadata: Optional[Mapping[str, str]] = None,
                  tensor=None, name: str = "checkpoint") -> str:
    """shapes: key -> shape of every tensor; tensor(key) loads one tensor (for SD 2.x's v test)."""
    metadata = metadata or {}
    has_unet = any(k.startswith(UNET) for k in shapes)
    has_vae = any(k.startswith("first_stage_model.") for k in shapes)
    width = cross_attention_width(shapes)
    if not (has_unet and has_vae) or width is None:
        what = ("a LoRA or other add-on" if any("lora" in k.lower() for k in list(shapes)[:200]) else
                "not a full Stable Diffusion checkpoint")
        raise ModelLoadError(f"{name} has no Stable Diffusion UNet + VAE in the original (LDM) layout "
                             f"({'model.diffusion_model.*' if not has_unet else 'first_stage_model.*'} missing): "
                             f"it is {what}. Pass a full SD 1.x, SD 2.x or SDXL checkpoint.")
    in_key = UNET + "input_blocks.0.0.weight"
    if in_key in shapes and shapes[in_key][1] != 4:
        raise ModelLoadError(f"{name} is an inpainting or other variant UNet ({shapes[in_key][1]} input channels); "
                             "only the base text-to-image models (4 latent channels) are supported.")
    if any(k.startswith("conditioner.embedders.1.model.") for k in shapes):
        return "sdxl"
    if any(k.startswith("conditioner.") for k in shapes):
        raise ModelLoadError(f"{name} looks like an SDXL refiner or another SGM model; only SDXL base is supported.")
    if any(k.startswith("cond_stage_model.model.") for k in shapes) or width == 1024:
        return "sd2-v" if is_v_prediction(shapes, metadata, tensor) else "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes) or width == 768:
        return "sd1"
    raise ModelLoadError(f"{name}: cannot tell the model family (cross-attention width {width}, no known text "
                         "encoder keys). Supported: SD 1.x, SD 2.x, SDXL base.")


def is_v_prediction(shapes, metadata, tensor) -> bool:
    declared = (metadata.get("modelspec.prediction_type") or "").lower()
    if declared:
        return declared in ("v", "v_prediction", "v-prediction")
    if "v_pred" in shapes:
        return True
    blocks = sorted((int(m[1]), k) for k in shapes
                    if (m := re.fullmatch(r"model\.diffusion_model\.output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias", k)))
    if not blocks or tensor is None:
        return False
    bias = tensor(blocks[-1][1]).float()
    return float(bias.std(unbiased=False)) > V_STD_THRESHOLD
