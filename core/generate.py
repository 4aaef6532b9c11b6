"""Image generation with a trained model: text-to-image, img2img and inpainting, with LoRAs.

PNGs carry the generation parameters in A1111's `parameters` text chunk (its PNG Info tab reads it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Optional

import torch
from PIL import Image, ImageFilter
from PIL.PngImagePlugin import PngInfo

from .config import GenerateConfig
from .errors import ConfigError, StopRequested
from .events import Callback, StopFlag, emit
from .models.pipeline import DTYPES, load_pipeline, make_scheduler, native_resolution, resolve_model_dir
from .train.report import save_png


def _quote(value) -> str:
    """A1111's infotext quoting: values with commas, colons or newlines become JSON strings."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_parameters(config: GenerateConfig, seed: int, width: int, height: int, model_name: Optional[str] = None,
                     model_hash: Optional[str] = None, loras: Iterable[tuple[str, float, str]] = ()) -> str:
    """The `parameters` text chunk that A1111's PNG Info reads.

    `loras` are (name, strength, short hash); they are written as A1111 writes them: `<lora:name:strength>`
    in the prompt and a `Lora hashes` entry, so "Send to txt2img" finds the same files.
    """
    loras = list(loras)
    prompt = config.prompt + "".join(f" <lora:{name}:{scale:g}>" for name, scale, _ in loras)
    lines = [prompt]
    if config.negative_prompt:
        lines.append(f"Negative prompt: {config.negative_prompt}")
    params = {"Steps": config.num_inference_steps, "Sampler": config.scheduler, "CFG scale": config.guidance_scale,
              "Seed": seed, "Size": f"{width}x{height}", "Model hash": model_hash,
              "Model": model_name or Path(config.model).name}
    if config.init_image:
        params["Denoising strength"] = config.strength
    if config.mask_image:
        params["Mask blur"] = config.mask_blur
    if loras:
        params["Lora hashes"] = ", ".join(f"{name}: {h}" for name, _, h in loras)
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


def _pickle_kw(config) -> dict:
    """Single-file .ckpt models need the user's consent to unpickle (allow_pickle_checkpoints)."""
    return {"allow_pickle": True} if getattr(config, "allow_pickle_checkpoints", False) else {}


def _lora_entry(path: Path, scale: float) -> tuple[str, float, str]:
    from .models.lora_files import addnet_hash
    return path.stem, scale, addnet_hash(path)[:12]  # A1111's shorthash of a .safetensors LoRA


def _model_name_and_hash(config: GenerateConfig) -> tuple[str, Optional[str]]:
    """A1111's Model (file or folder name) and, for a single-file model, Model hash (sha256, 10 digits)."""
    try:
        root, lora = resolve_model_dir(config.model, **_pickle_kw(config))
    except Exception:  # a pipe passed in for a model we cannot resolve: name only
        return Path(config.model).name, None
    if lora is None and (Path(config.model) / "model").is_dir():
        return Path(config.model).name, None  # our full fine-tune: the run's name
    if Path(root).is_file():
        from .models.hashing import cached_file_sha256, model_name, short_hash
        return model_name(root), short_hash(cached_file_sha256(root))
    return Path(root).name, None


def _open_image(path: Optional[str], what: str, mode: str) -> Optional[Image.Image]:
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--{what} {p} does not exist.")
    try:
        with Image.open(p) as im:
            return im.convert(mode)
    except OSError as e:
        raise ConfigError(f"--{what} {p} is not a readable image: {e}") from e


def _pipeline_for(pipe, config: GenerateConfig):
    """text-to-image, img2img or inpainting (SD or SDXL), sharing the loaded components."""
    import diffusers
    xl = "XL" if getattr(pipe, "text_encoder_2", None) is not None else ""
    if config.mask_image:
        run = getattr(diffusers, f"StableDiffusion{xl}InpaintPipeline").from_pipe(pipe)
    elif config.init_image:
        run = getattr(diffusers, f"StableDiffusion{xl}Img2ImgPipeline").from_pipe(pipe)
    else:
        run = pipe
    run.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    run.set_progress_bar_config(disable=True)
    return run


def _apply_trained_embeddings(pipe, lora: Path) -> None:
    """A LoRA file still in its training folder brings that run's --train_text_encoder_ti embeddings."""
    if (lora.parent / "dreambooth_config.json").is_file():
        from .train.token_embedding import EMBEDDINGS_DIR, load_embedding_files
        load_embedding_files(pipe, lora.parent / EMBEDDINGS_DIR)


def generate(config: GenerateConfig, callbacks: Iterable[Callback] = (), stop: Optional[StopFlag] = None,
             pipe=None) -> list[Path]:
    """Draw `num_images` images (image i with seed + i) and save them as PNGs."""
    callbacks = list(callbacks)
    init = _open_image(config.init_image, "init_image", "RGB")
    mask = _open_image(config.mask_image, "mask_image", "L")
    if init is not None and int(config.num_inference_steps * config.strength) < 1:
        raise ConfigError(f"--strength {config.strength} with --num_inference_steps {config.num_inference_steps} "
                          "leaves no denoising step; raise either.")
    loras = []
    if pipe is None:
        _, implicit = resolve_model_dir(config.model, **_pickle_kw(config))
        pipe = load_pipeline(config.model, DTYPES[config.precision], lora_scale=config.lora_scale,
                             **_pickle_kw(config))
        if implicit is not None:
            loras.append(_lora_entry(implicit, config.lora_scale))
        if config.lora:
            from .models.lora_files import apply_lora
            apply_lora(pipe, config.lora, config.lora_scale)
            _apply_trained_embeddings(pipe, Path(config.lora).expanduser())
            loras.append(_lora_entry(Path(config.lora).expanduser(), config.lora_scale))
    first_seed = config.seed if config.seed != -1 else random.randrange(2**32 - config.num_images)
    model_name, model_hash = _model_name_and_hash(config)
    run = _pipeline_for(pipe, config)
    size = native_resolution(pipe)
    # img2img/inpainting keep the init image's size unless one is given (the model needs multiples of 8)
    out_size = init.size if init is not None and not (config.width or config.height) else None
    width = config.width or (max(8, init.width // 8 * 8) if init is not None else size)
    height = config.height or (max(8, init.height // 8 * 8) if init is not None else size)
    extra = {}
    if init is not None:
        init = init.resize((width, height), Image.LANCZOS) if init.size != (width, height) else init
        extra.update(image=init, strength=config.strength)
    if mask is not None:
        mask = mask.resize((width, height), Image.LANCZOS) if mask.size != (width, height) else mask
        extra.update(mask_image=mask)
    if init is None or mask is not None:  # img2img takes the size from its image
        extra.update(width=width, height=height)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    emit(callbacks, "start", 0, config.num_images, job="generate")
    for start in range(0, config.num_images, config.batch_size):
        if stop is not None and stop.is_set():
            raise StopRequested(f"Generation stopped after {start} images.")
        seeds = [first_seed + i for i in range(start, min(start + config.batch_size, config.num_images))]
        with torch.no_grad():
            images = run(config.prompt, negative_prompt=config.negative_prompt or None,
                         num_images_per_prompt=len(seeds),
                         generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                         num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                         **extra).images
        for seed, image in zip(seeds, images):
            if mask is not None:  # as A1111: outside the (blurred) mask the photo stays as it was
                soft = mask.filter(ImageFilter.GaussianBlur(config.mask_blur)) if config.mask_blur else mask
                image = Image.composite(image, init, soft)
            if out_size is not None and image.size != out_size:
                image = image.resize(out_size, Image.LANCZOS)
            info = PngInfo()
            info.add_text("parameters", a1111_parameters(config, seed, image.width, image.height, model_name,
                                                         model_hash, loras))
            paths.append(save_png(image, out / f"{len(list(out.glob('*.png'))):05d}-{seed}.png", pnginfo=info))
        emit(callbacks, "progress", len(paths), config.num_images, job="generate")
    emit(callbacks, "done", len(paths), config.num_images, paths=[str(p) for p in paths])
    return paths
