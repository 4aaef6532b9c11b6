"""Writing the final model: a diffusers folder (full fine-tune) or LoRA weights."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import config_to_dict
from ..fsutil import atomic_dir, atomic_file
from .checkpoint import CONFIG_NAME


def save_final_model(parts, unet, text_encoder, config, out: Path) -> Path:
    if config.use_lora:
        return save_lora(unet, text_encoder, config, out)
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
    return target


def save_lora(unet, text_encoder, config, out: Path) -> Path:
    """diffusers-format LoRA (`pytorch_lora_weights.safetensors`), loadable by load_lora_weights."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder)) if config.train_text_encoder else None
    target = out / "pytorch_lora_weights.safetensors"
    with atomic_file(target) as tmp:
        StableDiffusionPipeline.save_lora_weights(str(tmp.parent), unet_lora_layers=unet_layers,
                                                  text_encoder_lora_layers=te_layers, weight_name=tmp.name,
                                                  safe_serialization=True)
    return target
