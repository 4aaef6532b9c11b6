"""Writing the final model: a diffusers folder (full fine-tune) or LoRA weights."""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_dir, atomic_file
from .checkpoint import write_run_config


def save_final_model(parts, unet, text_encoder, config, out: Path, steps=None, text_encoder_2=None) -> Path:
    """The trained model: a diffusers folder (+ single file), or the LoRA file. SDXL when text_encoder_2 is given."""
    if config.train_text_encoder_ti:
        merge_identifier_embeddings(parts, (text_encoder, text_encoder_2), config, out)
    if config.use_lora:
        return save_lora(unet, text_encoder, config, out, steps, text_encoder_2)
    from ..models.pipeline import pipeline_from_parts
    pipe = pipeline_from_parts(parts, unet, text_encoder, parts.noise_scheduler, text_encoder_2)
    target = out / "model"
    with atomic_dir(target) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if config.skip_save_text_encoder:
            import shutil
            for name in ("text_encoder", "text_encoder_2"):
                shutil.rmtree(tmp / name, ignore_errors=True)
        write_run_config(tmp, config)
    if getattr(config, "save_single_file", False):  # OUTPUT_DIR/<name>.safetensors for A1111/ComfyUI
        from ..models.single_file import save_trained_single_file
        save_trained_single_file(unet, parts.vae, text_encoder, parts.noise_scheduler, config, out, steps,
                                 text_encoder_2)
    return target


def merge_identifier_embeddings(parts, encoders, config, out: Path) -> None:
    """--train_text_encoder_ti: the trained rows go into the encoders' own tables, so a full model
    saves in the base's layout; a LoRA run, which saves no text encoder, writes them as embedding files."""
    from .token_embedding import merge_token_rows
    if config.use_lora:
        save_identifier_embeddings(parts, encoders, config, out)
    for encoder in encoders:
        if encoder is not None:
            merge_token_rows(encoder)


def save_identifier_embeddings(parts, encoders, config, out: Path) -> None:
    """A LoRA run's --train_text_encoder_ti rows, as training has them now, as OUT/embeddings/<word>.safetensors
    (at the end of the run, or for a best checkpoint kept mid-run)."""
    from .token_embedding import save_embedding_files, trained_token_rows
    pairs = [(e, t) for e, t in zip(encoders, (parts.tokenizer, parts.tokenizer_2)) if e is not None]
    rows = [trained_token_rows(encoder) for encoder, _ in pairs]
    if pairs and all(r is not None for r in rows):
        save_embedding_files(out, config.identifier_words, [t for _, t in pairs], rows)


def save_lora(unet, text_encoder, config, out: Path, steps=None, text_encoder_2=None) -> Path:
    """The LoRA file: kohya format `<output_dir>/<name>.safetensors` (A1111, ComfyUI, diffusers) by
    default, or diffusers' `pytorch_lora_weights.safetensors` with lora_format="diffusers"."""
    import torch
    from ..models.lora_files import SAVE_DTYPES, kohya_metadata, lora_output_name, save_kohya_lora

    dtype = SAVE_DTYPES[getattr(config, "lora_save_precision", "fp32")]
    encoders = (text_encoder, text_encoder_2) if config.train_text_encoder else (None, None)
    if getattr(config, "lora_format", "kohya") == "kohya":
        target = out / f"{lora_output_name(config)}.safetensors"
        with atomic_file(target) as tmp:
            save_kohya_lora(tmp, unet, encoders[0], kohya_metadata(config, unet, steps), dtype, encoders[1])
        return target

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        return {k: v.detach().to("cpu", dtype) if torch.is_floating_point(v) else v for k, v in sd.items()}

    # lora_alpha is kept in the adapter metadata when it differs from the rank
    kw = {"unet_lora_layers": layers(unet), "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict()}
    for name, model in zip(("text_encoder", "text_encoder_2"), encoders):
        if model is not None:
            kw[f"{name}_lora_layers"] = layers(model)
            kw[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
    target = out / "pytorch_lora_weights.safetensors"
    pipeline = StableDiffusionXLPipeline if text_encoder_2 is not None else StableDiffusionPipeline
    with atomic_file(target) as tmp:
        pipeline.save_lora_weights(str(tmp.parent), weight_name=tmp.name, safe_serialization=True, **kw)
    return target
