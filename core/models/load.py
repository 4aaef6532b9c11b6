"""Loading a base model's components from a diffusers folder, offline."""

from __future__ import annotations

import os
import re
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
    tokenizer_2: Any = None  # SDXL's second (OpenCLIP bigG) tokenizer and text encoder
    text_encoder_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None


TRUE_VALUES = ("1", "ON", "YES", "TRUE")  # as huggingface_hub reads its environment variables
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in TRUE_VALUES


def in_hub_cache(repo_id: str, revision: Optional[str] = None) -> bool:
    """Whether a hub model was downloaded before (its model_index.json is in the local cache)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except Exception:  # an odd id or a broken cache: treat as not cached
        return False
    return isinstance(found, str)


def check_model_path(path: Optional[str], revision: Optional[str] = None, allow_pickle: bool = False) -> Path:
    """Resolve a base-model path, with an actionable message for each way it can be wrong.

    Returns the local folder or single-file checkpoint (.safetensors; pickle files only
    with `allow_pickle`), or, for a hub id (`owner/name`), the id itself: with
    HF_HUB_OFFLINE set, only if the model is already in the local Hugging Face cache.
    """
    if not path:
        raise ModelLoadError("No base model given. Pass --pretrained_model_name_or_path DIR "
                             "(a diffusers folder or a .safetensors checkpoint); "
                             "`dreambooth make-tiny-model DIR` builds a test one.")
    path = str(path)
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() == ".safetensors":
            return p
        if p.suffix.lower() in SINGLE_FILE_SUFFIXES:
            from .single_file import PICKLE_FLAG
            if allow_pickle:
                return p
            raise ModelLoadError(f"{p} is a pickle checkpoint ({p.suffix}): loading a pickle file can run any "
                                 f"code it contains, so it is refused by default. Use a .safetensors version "
                                 f"of the model, or pass {PICKLE_FLAG} if you trust the file's source.")
        raise ModelLoadError(f"{p} is not a model: expected a diffusers folder with model_index.json "
                             "or a .safetensors checkpoint.")
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            hint = (" It looks like one of our output folders; use its model/ subfolder."
                    if (p / "model" / "model_index.json").is_file() else
                    " Pass the folder that holds model_index.json, unet/, vae/, text_encoder/ and tokenizer/.")
            raise ModelLoadError(f"{p} is not a diffusers model folder (no model_index.json).{hint}")
        return p
    looks_like_hub_id = bool(HUB_ID.match(path))
    if not looks_like_hub_id:
        raise ModelLoadError(f"Model path {p} does not exist. Pass an existing diffusers model folder "
                             "(one with model_index.json); `dreambooth make-tiny-model DIR` builds a test one.")
    if hub_offline() and not in_hub_cache(path, revision):
        raise ModelLoadError(f"{path!r} is not a local folder, and HF_HUB_OFFLINE is set, so it cannot be "
                             "downloaded (it is not in the Hugging Face cache either). Download the model once "
                             "with network access, or pass a local diffusers folder.")
    return Path(path)  # a hub id; from_pretrained fetches it, or reads it from the cache when offline


def load_components(path: str, revision: Optional[str] = None, variant: Optional[str] = None,
                    tokenizer_name: Optional[str] = None, allow_pickle: bool = False,
                    dtypes: Optional[dict] = None) -> SDComponents:
    """The base model's parts. `dtypes` ({"unet": torch.bfloat16, ...}) loads a diffusers folder's networks
    straight in the dtype training will hold them in: a frozen SDXL loaded as fp32 first would need
    twice the host memory for a moment (~14 GB instead of ~7 GB)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    resolved = check_model_path(path, revision, allow_pickle)
    if resolved.is_file():
        return components_from_single_file(resolved, tokenizer_name, allow_pickle)
    root = str(resolved)
    kw, dtypes = {"revision": revision}, dtypes or {}

    def net(cls, name):
        extra = {"torch_dtype": dtypes[name]} if dtypes.get(name) is not None else {}
        return cls.from_pretrained(root, subfolder=name, variant=variant, **kw, **extra)
    try:
        parts = SDComponents(
            tokenizer=CLIPTokenizer.from_pretrained(tokenizer_name or root, subfolder=None if tokenizer_name else "tokenizer", **kw),
            text_encoder=net(CLIPTextModel, "text_encoder"), vae=net(AutoencoderKL, "vae"),
            unet=net(UNet2DConditionModel, "unet"),
            noise_scheduler=DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw),
        )
        if is_sdxl_folder(resolved):
            from transformers import CLIPTextModelWithProjection
            parts.tokenizer_2 = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", **kw)
            parts.text_encoder_2 = net(CLIPTextModelWithProjection, "text_encoder_2")
        return parts
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"Cannot load the Stable Diffusion model at {root}: {e}") from e


def is_sdxl_folder(root: Path) -> bool:
    """A diffusers folder of an SDXL pipeline: model_index.json names a second text encoder."""
    import json
    index = Path(root) / "model_index.json"
    if not index.is_file():  # a hub id: its cached model_index.json, if any
        try:
            from huggingface_hub import try_to_load_from_cache
            found = try_to_load_from_cache(str(root), "model_index.json")
        except Exception:
            return False
        if not isinstance(found, str):
            return False
        index = Path(found)
    return bool((json.loads(index.read_text(encoding="utf-8")).get("text_encoder_2") or [None])[0])


def components_from_single_file(path: Path, tokenizer_name: Optional[str] = None,
                                allow_pickle: bool = False) -> SDComponents:
    """A .safetensors (or opted-in pickle) checkpoint: family detected from its tensors, configs bundled."""
    from diffusers import DDPMScheduler
    from .single_file import load_single_file
    model = load_single_file(path, allow_pickle)
    tokenizer = model.tokenizer
    if tokenizer_name:
        from transformers import CLIPTokenizer
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_name)
    return SDComponents(tokenizer=tokenizer, text_encoder=model.text_encoder, vae=model.vae, unet=model.unet,
                        noise_scheduler=DDPMScheduler.from_config(model.scheduler_config),
                        tokenizer_2=model.tokenizer_2, text_encoder_2=model.text_encoder_2)
