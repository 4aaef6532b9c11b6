"""LoRA files that A1111, ComfyUI and diffusers all load: the kohya format, from PEFT adapters.

A kohya LoRA names each adapted layer after the module of the *original* (LDM) Stable
Diffusion model, with dots turned into underscores:

    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight   (rank x in)
    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight     (out x rank)
    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha              (scalar)
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight         (text encoder)
    lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight        (SDXL: CLIP-L)
    lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight        (SDXL: OpenCLIP bigG)

The applied delta is up @ down * alpha / rank, which is PEFT's lora_B @ lora_A * lora_alpha / r.
A1111 (extensions-builtin/Lora) and ComfyUI (comfy/lora.py) both accept these names for every
layer of the LDM model, whatever the UNet's layout; diffusers converts them back when it is
given the UNet's config (`apply_lora` below does that).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ModelLoadError
from .ldm_keys import unet_key

UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_"
SDXL_TEXT_ENCODER_PREFIXES = ("lora_te1_", "lora_te2_")  # kohya's sdxl_train_network names
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

def unet_ldm_module_name(name: str, unet_config: Any) -> str:
    """A diffusers UNet2DConditionModel module path -> the same module's path in the LDM UNet.

    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_q`
    for SD 1.x/2.x. The single-file saver's tensor-name mapping does the work, so a LoRA
    always names the same module the saved checkpoint has.
    """
    per_block = unet_config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ModelLoadError(f"UNets with per-block layer counts ({per_block}) are not supported for kohya LoRA names.")
    try:
        return unet_key(name + ".weight", unet_config).removesuffix(".weight")
    except KeyError as e:
        raise ModelLoadError(f"No LDM name for UNet module {name!r} ({e}).") from e


def kohya_unet_name(name: str, unet_config: Any) -> str:
    return UNET_PREFIX + unet_ldm_module_name(name, unet_config).replace(".", "_")


def kohya_text_encoder_name(name: str, prefix: str = TEXT_ENCODER_PREFIX) -> str:
    """A CLIPTextModel module path -> `lora_te_text_model_encoder_layers_0_self_attn_q_proj`.

    The name is the one in the original CLIP text model (`text_model.encoder...`), which is
    what A1111 and ComfyUI look up; transformers 5 drops the `text_model.` level, so it is
    put back here.
    """
    if not name.startswith("text_model."):
        name = "text_model." + name
    return prefix + name.replace(".", "_")


def peft_lora_layers(model, adapter: Optional[str] = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module path: (down, up, alpha)} for every PEFT LoRA layer of `model`; alpha = scaling * rank."""
    from peft.tuners.lora import LoraLayer

    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        names = [adapter] if adapter else list(module.lora_A.keys())
        if len(names) != 1:
            raise ModelLoadError(f"{name} has adapters {names}; pass the one to save.")
        a = names[0]
        if getattr(module, "use_dora", {}).get(a):
            raise ModelLoadError("DoRA adapters cannot be written as a kohya LoRA.")
        down, up = module.lora_A[a].weight, module.lora_B[a].weight
        layers[name] = (down.detach(), up.detach(), float(module.scaling[a]) * down.shape[0])
    return layers


def kohya_state_dict(unet, text_encoder=None, dtype: torch.dtype = torch.float32,
                     text_encoder_2=None) -> dict[str, torch.Tensor]:
    """The kohya LoRA tensors for the PEFT adapters on `unet` (and the text encoders given).

    SDXL (a second text encoder): the encoders are named lora_te1_ and lora_te2_, as kohya's
    SDXL scripts write them and A1111/ComfyUI read them.
    """
    sd: dict[str, torch.Tensor] = {}
    sources = [(unet, lambda n: kohya_unet_name(n, unet.config))]
    sdxl = text_encoder_2 is not None or is_sdxl_unet(unet)
    prefixes = SDXL_TEXT_ENCODER_PREFIXES if sdxl else (TEXT_ENCODER_PREFIX,)
    for encoder, prefix in zip((text_encoder, text_encoder_2), prefixes):
        if encoder is not None:
            sources.append((encoder, lambda n, prefix=prefix: kohya_text_encoder_name(n, prefix)))
    for model, rename in sources:
        for name, (down, up, alpha) in peft_lora_layers(model).items():
            key = rename(name)
            if key + ".lora_down.weight" in sd:
                raise ModelLoadError(f"Two layers map to the same kohya name {key}.")
            sd[key + ".lora_down.weight"] = down.to("cpu", dtype).contiguous()
            sd[key + ".lora_up.weight"] = up.to("cpu", dtype).contiguous()
            sd[key + ".alpha"] = torch.tensor(alpha, dtype=dtype)
    if not sd:
        raise ModelLoadError("The model has no LoRA adapters to save.")
    return sd


def is_sdxl_unet(unet) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def base_model_version(unet) -> str:
    """kohya's ss_base_model_version: sdxl_base_v1-0 for SDXL's UNet (text_time embedding), sd_v2 for
    1024-wide cross attention (OpenCLIP-H), else sd_v1."""
    if is_sdxl_unet(unet):
        return "sdxl_base_v1-0"
    return "sd_v2" if unet.config.cross_attention_dim == 1024 else "sd_v1"


MODELSPEC_ARCHITECTURES = {"sd_v1": "stable-diffusion-v1/lora", "sd_v2": "stable-diffusion-v2-512/lora",
                           "sdxl_base_v1-0": "stable-diffusion-xl-v1-base/lora"}


def kohya_metadata(config, unet, steps: Optional[int] = None) -> dict[str, str]:
    """kohya-style `ss_*` metadata (A1111's Lora tab and Civitai read it), plus our whole config."""
    from ..config import config_to_dict

    version = base_model_version(unet)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.resolved_lora_alpha),
        "ss_base_model_version": version,
        "ss_v2": str(version == "sd_v2"),
        "ss_sd_model_name": Path(str(config.pretrained_model_name_or_path)).name,
        "ss_output_name": lora_output_name(config),
        "ss_training_comment": f"DreamBooth: {config.instance_prompt}",
        "ss_learning_rate": str(config.learning_rate),
        "ss_max_train_steps": str(config.max_train_steps),
        "ss_num_epochs": str(config.num_train_epochs),
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_seed": str(config.seed),
        "ss_mixed_precision": str(config.mixed_precision or "no"),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_network_train_text_encoder_only": "False",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_prior_loss_weight": str(config.prior_loss_weight if config.with_prior_preservation else 0.0),
        "ss_training_finished_at": str(datetime.now(timezone.utc).timestamp()),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURES[version],
        "modelspec.implementation": "diffusers",
        "modelspec.title": lora_output_name(config),
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "sksbooth_config": json.dumps(config_to_dict(config), sort_keys=True),
    }
    if steps is not None:
        meta["ss_steps"] = str(steps)
    return meta


def lora_output_name(config) -> str:
    """The LoRA's name as A1111/ComfyUI users will type it: the output folder's name."""
    name = re.sub(r"[^\w.-]+", "_", Path(config.output_dir).resolve().name).strip("._")
    return name or "lora"


def save_kohya_lora(path: Path, unet, text_encoder, metadata: dict[str, str],
                    dtype: torch.dtype = torch.float16, text_encoder_2=None) -> Path:
    """Write the kohya LoRA to `path` (any temp path; the caller renames it into place)."""
    from safetensors.torch import save_file

    tensors = kohya_state_dict(unet, text_encoder, dtype, text_encoder_2)
    meta = dict(metadata)
    meta["sshs_model_hash"] = _sha256(_safetensors_payload(tensors))
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


def _safetensors_payload(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save
    return _data_after_header(save(tensors))


def _data_after_header(blob: bytes) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 + n:]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def addnet_hash(path: str | Path) -> str:
    """The hash A1111 shows for a .safetensors LoRA ("Lora hashes"): sha256 of the tensor data, metadata excluded."""
    m = hashlib.sha256()
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            m.update(chunk)
    return m.hexdigest()


def is_kohya_lora(path: str | Path) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:
        return False
    return bool(keys) and all(k.startswith((UNET_PREFIX, TEXT_ENCODER_PREFIX) + SDXL_TEXT_ENCODER_PREFIXES) for k in keys)


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def apply_lora(pipe, path: str | Path, scale: float = 1.0, adapter_name: Optional[str] = None) -> None:
    """Load a kohya or diffusers LoRA file into `pipe` and fuse it at strength `scale`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"LoRA file not found: {path}")
    # SDXL pipelines pass their UNet config to the kohya converter themselves
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    kw = {"unet_config": pipe.unet.config} if is_kohya_lora(path) and not sdxl else {}
    adapter_name = adapter_name or "sksbooth_" + hashlib.md5(str(path.resolve()).encode()).hexdigest()[:8]
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name, **kw)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"Cannot apply the LoRA {path} to this model: {e}") from e
    pipe.fuse_lora(lora_scale=scale, adapter_names=[adapter_name])


def find_lora_file(folder: str | Path) -> Optional[Path]:
    """The LoRA a training run wrote into `folder`: a kohya file or pytorch_lora_weights.safetensors (newest wins)."""
    found = [f for f in Path(folder).glob("*.safetensors") if is_lora_file(f)]
    return max(found, key=lambda f: f.stat().st_mtime) if found else None


def is_lora_file(path: str | Path) -> bool:
    """A LoRA file: kohya keys, or diffusers' pytorch_lora_weights.safetensors."""
    path = Path(path)
    return path.suffix == ".safetensors" and (path.name == "pytorch_lora_weights.safetensors" or is_kohya_lora(path))
