"""Writing the final model: a diffusers folder (full fine-tune) or LoRA weights."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import config_to_dict
from ..fsutil import atomic_dir, atomic_file
from .checkpoint import CONFIG_NAME


def save_final_model(parts, unet, text_encoder, config, out: Path, steps=None) -> Path:
    if config.use_lora:
        return save_lora(unet, text_encoder, config, out, steps)
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=text_encoder, tokenizer=parts.tokenizer, unet=unet,
                                   scheduler=parts.noise_scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    target = out / "model"
    with atomic_dir(target) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if config.skip_save_text_encoder:
            import shutil
            shutil.rmtree(tmp / "text_encoder")
        (tmp / CONFIG_NAME).write_text(json.dumps(config_to_dict(config), indent=2), encoding="utf-8")
    if getattr(config, "save_single_file", False):  # OUTPUT_DIR/<name>.safetensors for A1111/ComfyUI
        from ..models.single_file import save_trained_single_file
        save_trained_single_file(unet, parts.vae, text_encoder, parts.noise_scheduler, config, out, steps)
    return target


def save_lora(unet, text_encoder, config, out: Path, steps=None) -> Path:
    """The LoRA file: kohya format `<output_dir>/<name>.safetensors` (A1111, ComfyUI, diffusers) by
    default, or diffusers' `pytorch_lora_weights.safetensors` with lora_format="diffusers"."""
    import torch
    from ..models.lora_files import SAVE_DTYPES, kohya_metadata, lora_output_name, save_kohya_lora

    dtype = SAVE_DTYPES[getattr(config, "lora_save_precision", "fp32")]
    if getattr(config, "lora_format", "kohya") == "kohya":
        target = out / f"{lora_output_name(config)}.safetensors"
        with atomic_file(target) as tmp:
            save_kohya_lora(tmp, unet, text_encoder if config.train_text_encoder else None,
                            kohya_metadata(config, unet, steps), dtype)
        return target

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def cast(layers):
        return {k: v.detach().to("cpu", dtype) if torch.is_floating_point(v) else v for k, v in layers.items()}

    unet_layers = cast(convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    te_layers = (cast(convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder)))
                 if config.train_text_encoder else None)
    target = out / "pytorch_lora_weights.safetensors"
    with atomic_file(target) as tmp:
        StableDiffusionPipeline.save_lora_weights(str(tmp.parent), unet_lora_layers=unet_layers,
                                                  text_encoder_lora_layers=te_layers, weight_name=tmp.name,
                                                  safe_serialization=True,
                                                  # keeps lora_alpha when it differs from the rank
                                                  unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                                                  text_encoder_lora_adapter_metadata=(
                                                      text_encoder.peft_config["default"].to_dict()
                                                      if config.train_text_encoder else None))
    return target
