"""Single-file checkpoints (.safetensors) as A1111 (models/Stable-diffusion) and ComfyUI
(models/checkpoints) keep them: load any SD 1.x / 2.x / SDXL base file offline, and
save a diffusers model as one file in the original (LDM) key layout.

Loading uses diffusers' own LDM -> diffusers converters with configs bundled in
sksbooth/assets/configs (or the exact configs we stored in the file's metadata), so
no hub access is needed. Saving uses ldm_keys (diffusers has no saver).
Pickle checkpoints (.ckpt/.pt/.bin/.pth) can run code when loaded and are refused
unless the caller opts in (--allow_pickle_checkpoints).
"""

from __future__ import annotations

import json
import struct
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..errors import ModelLoadError
from ..fsutil import atomic_file
from . import ldm_keys
from .detect import ARCHITECTURES, DESCRIPTIONS, detect_family
from .hashing import cached_file_sha256, file_sha256, model_name, short_hash

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_FLAG = "--allow_pickle_checkpoints"
CONFIGS_KEY = "sksbooth.diffusers_configs"
MAX_HEADER = 100 * 1024 * 1024
PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class SingleFileModel:
    """The diffusers components of a single-file checkpoint."""
    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    metadata: dict = field(default_factory=dict)
    path: Optional[Path] = None


def is_single_file(path) -> bool:
    p = Path(str(path)).expanduser()
    return p.is_file() and p.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES


# ----------------------------------------------------------------------------- reading

def read_safetensors_header(path: Path) -> tuple[dict, dict]:
    """-> (tensor entries, metadata). A truncated or foreign file raises ModelLoadError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path} is not a safetensors file (only {size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n + 8 > size:
            raise ModelLoadError(f"{path} is not a valid safetensors file: its header claims {n} bytes "
                                 f"but the file has {size}. It is truncated (an interrupted download?) "
                                 "or another kind of file renamed .safetensors.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path} is not a valid safetensors file (unreadable header: {e}).") from e
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} is not a valid safetensors file (header is not a table).")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, entry in header.items():
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as e:
            raise ModelLoadError(f"{path} is not a valid safetensors file (bad entry {name!r}).") from e
    if 8 + n + end > size:
        raise ModelLoadError(f"{path} is truncated: its tensors need {8 + n + end} bytes but the file has {size}. "
                             "Download or copy it again.")
    return header, metadata


class CheckpointReader:
    """Lazy access to a checkpoint's tensors: shapes without loading, tensors on demand."""

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path = path
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelLoadError(
                    f"{path} is a pickle checkpoint ({suffix}). Loading a pickle file can run any code it "
                    f"contains, so it is refused by default. Prefer a .safetensors version of the model; if "
                    f"you trust this file's source, pass {PICKLE_FLAG} to load it.")
            self._dict = load_pickle_state_dict(path)
            self.metadata: dict = {}
            self.shapes = {k: tuple(v.shape) for k, v in self._dict.items()}
        elif suffix == ".safetensors":
            header, self.metadata = read_safetensors_header(path)
            self.shapes = {k: tuple(v.get("shape", ())) for k, v in header.items()}
            self._dict = None
        else:
            raise ModelLoadError(f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors.")

    def tensor(self, key: str) -> torch.Tensor:
        if self._dict is not None:
            return self._dict[key]
        from safetensors import safe_open
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(key)

    def tensors(self, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        keys = [k for k in self.shapes if k.startswith(prefixes)]
        if self._dict is not None:
            return {k: self._dict[k] for k in keys}
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in keys}
        except SafetensorError as e:
            raise ModelLoadError(f"Cannot read {self.path}: {e}") from e


def load_pickle_state_dict(path: Path) -> dict:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the user opted in; a full unpickle is the documented fallback
        import warnings
        warnings.warn(f"{path} needs full unpickling ({e.__class__.__name__}); loading it because "
                      f"{PICKLE_FLAG} was given.")
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise ModelLoadError(f"Cannot load the pickle checkpoint {path}: {e2}") from e2
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(data).__name__}).")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------- configs

def bundled_configs(family: str) -> dict:
    folder = resources.files("sksbooth") / "assets" / "configs" / family
    out = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        f = folder / f"{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text(encoding="utf-8"))
    return out


def file_configs(metadata: Mapping[str, str], family: str) -> dict:
    """Exact configs we stored when saving (fine-tunes of odd sizes, tiny test models), else bundled ones."""
    raw = metadata.get(CONFIGS_KEY)
    if raw:
        try:
            stored = json.loads(raw)
            if isinstance(stored, dict) and {"unet", "vae", "text_encoder", "scheduler"} <= set(stored):
                return stored
        except json.JSONDecodeError:
            pass
    return bundled_configs(family)


def make_tokenizer(family: str, second: bool = False):
    from transformers import CLIPTokenizer
    from .tokenizer import write_clip_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp)))
    if family.startswith("sd2") or second:
        tok.pad_token = "!"  # OpenCLIP's tokenizers pad with "!" (id 0)
    return tok


# ----------------------------------------------------------------------------- loading

def _assign(model, state: dict, what: str, path: Path, dtype: torch.dtype = torch.float32):
    """Load a converted state dict into a model built on the meta device; every tensor must be there."""
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ModelLoadError(f"{path}: the {what} is incomplete ({len(missing)} tensors missing, e.g. "
                             f"{', '.join(missing[:3])}); the file is damaged or of another architecture.")
    bad = [k for k in wanted if tuple(wanted[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ModelLoadError(f"{path}: the {what}'s tensor {k} has shape {tuple(state[k].shape)}, expected "
                             f"{tuple(wanted[k].shape)}; the file does not match the {what} config.")
    model.load_state_dict({k: state[k].to(dtype) if state[k].is_floating_point() else state[k] for k in wanted},
                          strict=True, assign=True)
    return model


def _empty(build):
    from accelerate import init_empty_weights
    with init_empty_weights():
        return build()


def _clip_model(cls, config: dict, state: dict, what: str, path: Path, dtype: torch.dtype):
    from transformers import CLIPTextConfig
    cfg = CLIPTextConfig.from_dict({k: v for k, v in config.items() if k not in ("architectures",)})
    model = _empty(lambda: cls(cfg))
    # Files name CLIP-L's tensors with or without `text_model.` (transformers 4.x vs 5.x naming);
    # bring them to the naming of the installed transformers, so neither loads as random weights.
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    if hasattr(model, "text_model"):  # transformers < 5, or CLIPTextModelWithProjection
        state = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in state.items()}
    return _assign(model, state, what, path, dtype).eval()


def load_single_file(path, allow_pickle: bool = False, dtype: torch.dtype = torch.float32,
                     configs: Optional[dict] = None) -> SingleFileModel:
    """Load a checkpoint's components. `configs` ({"unet": ..., "vae": ..., "text_encoder": ...,
    "scheduler": ...}) overrides the ones stored in the file or bundled for its family."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"Checkpoint {path} does not exist.")
    reader = CheckpointReader(path, allow_pickle)
    family = detect_family(reader.shapes, reader.metadata, reader.tensor, name=str(path))
    configs = configs or file_configs(reader.metadata, family)

    unet_cfg = {k: v for k, v in configs["unet"].items() if not k.startswith("_")}
    unet = _empty(lambda: UNet2DConditionModel(**unet_cfg))
    state = reader.tensors((ldm_keys.UNET_PREFIX,))
    try:
        converted = convert_ldm_unet_checkpoint(state, dict(unet.config))
    except (KeyError, IndexError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: the UNet does not match the {DESCRIPTIONS[family]} layout ({e}).") from e
    del state
    unet = _assign(unet, converted, "UNet", path, dtype).eval()
    del converted

    vae_cfg = {k: v for k, v in configs["vae"].items() if not k.startswith("_")}
    vae = _empty(lambda: AutoencoderKL(**vae_cfg))
    state = reader.tensors(("first_stage_model.",))
    try:
        converted = convert_ldm_vae_checkpoint(state, dict(vae.config))
    except (KeyError, IndexError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: the VAE does not match the expected layout ({e}).") from e
    vae = _assign(vae, converted, "VAE", path, dtype).eval()
    del state, converted

    text_encoder_2 = tokenizer_2 = None
    if family == "sdxl":
        state = reader.tensors((ldm_keys.CLIP_L_PREFIX["sdxl"],))
        text_encoder = _clip_model(CLIPTextModel, configs["text_encoder"], convert_ldm_clip_checkpoint(state),
                                   "text encoder", path, dtype)
        state = reader.tensors((ldm_keys.OPEN_CLIP_PREFIX["sdxl"],))
        te2 = _empty(lambda: CLIPTextModelWithProjection(_clip_config(configs["text_encoder_2"])))
        converted = convert_open_clip_checkpoint(te2, state, prefix=ldm_keys.OPEN_CLIP_PREFIX["sdxl"])
        text_encoder_2 = _assign(te2, converted, "second text encoder", path, dtype).eval()
        tokenizer_2 = make_tokenizer(family, second=True)
    elif family.startswith("sd2"):
        state = reader.tensors((ldm_keys.OPEN_CLIP_PREFIX["sd2"],))
        te = _empty(lambda: CLIPTextModel(_clip_config(configs["text_encoder"])))
        converted = convert_open_clip_checkpoint(te, state, prefix=ldm_keys.OPEN_CLIP_PREFIX["sd2"])
        if not hasattr(te, "text_model"):
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        text_encoder = _assign(te, converted, "text encoder", path, dtype).eval()
    else:
        state = reader.tensors((ldm_keys.CLIP_L_PREFIX["sd1"],))
        text_encoder = _clip_model(CLIPTextModel, configs["text_encoder"], convert_ldm_clip_checkpoint(state),
                                   "text encoder", path, dtype)
    del state
    return SingleFileModel(family=family, unet=unet, vae=vae, text_encoder=text_encoder,
                           tokenizer=make_tokenizer(family), scheduler_config=dict(configs["scheduler"]),
                           text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, metadata=dict(reader.metadata),
                           path=path)


def _clip_config(config: dict):
    from transformers import CLIPTextConfig
    return CLIPTextConfig.from_dict({k: v for k, v in config.items() if k != "architectures"})


def make_scheduler_from_config(config: dict, default_cls=None):
    import diffusers
    cls = default_cls or getattr(diffusers, config.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return cls.from_config(config)


def build_pipeline(model: SingleFileModel):
    """A diffusers pipeline (SD or SDXL) from a loaded single file."""
    scheduler = make_scheduler_from_config(model.scheduler_config)
    if model.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline
        pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder,
                                         text_encoder_2=model.text_encoder_2, tokenizer=model.tokenizer,
                                         tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler)
    else:
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                       unet=model.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    return pipe


# ----------------------------------------------------------------------------- saving

def diffusers_family(unet, text_encoder, text_encoder_2=None, scheduler_config: Optional[Mapping] = None) -> str:
    if text_encoder_2 is not None or getattr(unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    # SD 2.x: OpenCLIP text encoder (gelu; OpenAI's CLIP-L uses quick_gelu), 1024-wide cross attention at full size
    if getattr(text_encoder.config, "hidden_act", "quick_gelu") == "gelu" or unet.config.cross_attention_dim == 1024:
        v = (scheduler_config or {}).get("prediction_type") == "v_prediction"
        return "sd2-v" if v else "sd2"
    return "sd1"


def to_ldm_state_dict(unet, vae, text_encoder, text_encoder_2=None, family: Optional[str] = None,
                      dtype: torch.dtype = torch.float16, scheduler_config=None) -> dict[str, torch.Tensor]:
    family = family or diffusers_family(unet, text_encoder, text_encoder_2, scheduler_config)
    def cast(sd):  # meta tensors (shape-only models) stay as they are
        return {k: v.detach() if v.is_meta else (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
                for k, v in sd.items()}
    out = ldm_keys.unet_to_ldm(cast(unet.state_dict()), dict(unet.config))
    out.update(ldm_keys.vae_to_ldm(cast(vae.state_dict()), dict(vae.config)))
    te = cast(text_encoder.state_dict())
    if family == "sdxl":
        out.update(ldm_keys.clip_l_to_ldm(te, ldm_keys.CLIP_L_PREFIX["sdxl"]))
        out.update(ldm_keys.open_clip_to_ldm(cast(text_encoder_2.state_dict()), ldm_keys.OPEN_CLIP_PREFIX["sdxl"]))
    elif family.startswith("sd2"):
        layers = text_encoder.config.num_hidden_layers + 1  # diffusers drops OpenCLIP's last layer
        out.update(ldm_keys.open_clip_to_ldm(te, ldm_keys.OPEN_CLIP_PREFIX["sd2"], total_layers=layers))
    else:
        out.update(ldm_keys.clip_l_to_ldm(te, ldm_keys.CLIP_L_PREFIX["sd1"]))
    return {k: v.contiguous() for k, v in out.items()}


def _config_dict(config) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") and not isinstance(config, dict) else dict(config)
    return json.loads(json.dumps(d, default=str))


def save_single_file(dest, unet, vae, text_encoder, text_encoder_2=None, scheduler=None, precision: str = "fp16",
                     metadata: Optional[Mapping[str, Any]] = None) -> tuple[Path, str]:
    """Write one .safetensors in the original layout, atomically. Returns (path, sha256)."""
    from safetensors.torch import save_file
    from .. import __version__
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    sched_cfg = _config_dict(scheduler.config) if scheduler is not None else {}
    family = diffusers_family(unet, text_encoder, text_encoder_2, sched_cfg)
    state = to_ldm_state_dict(unet, vae, text_encoder, text_encoder_2, family, PRECISIONS[precision], sched_cfg)
    configs = {"unet": _config_dict(unet.config), "vae": _config_dict(vae.config),
               "text_encoder": _config_dict(text_encoder.config), "scheduler": sched_cfg or bundled_configs(family)["scheduler"]}
    if text_encoder_2 is not None:
        configs["text_encoder_2"] = _config_dict(text_encoder_2.config)
    prediction = "v" if family == "sd2-v" or sched_cfg.get("prediction_type") == "v_prediction" else "epsilon"
    meta = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": ARCHITECTURES[family],
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if family == "sdxl"
            else "https://github.com/Stability-AI/stablediffusion",
            "modelspec.prediction_type": prediction, "modelspec.title": Path(dest).stem,
            "modelspec.resolution": f"{unet.config.sample_size * 8}x{unet.config.sample_size * 8}",
            "sksbooth.version": __version__, "sksbooth.family": family, "sksbooth.precision": precision,
            CONFIGS_KEY: json.dumps(configs, sort_keys=True)}
    for k, v in (metadata or {}).items():
        if v is not None:
            meta[k] = v if isinstance(v, str) else json.dumps(v, default=str)
    dest = Path(dest)
    with atomic_file(dest) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return dest, file_sha256(dest)


def base_model_info(path) -> dict[str, str]:
    """Name and A1111 short hash of a base model: the file's for a single file, the UNet weights' for a folder."""
    if not path:
        return {}
    p = Path(str(path)).expanduser()
    info = {"sksbooth.base_model": model_name(p) if p.is_file() else p.name or str(path)}
    target = p if p.is_file() else next((f for f in (p / "unet").glob("diffusion_pytorch_model*.safetensors")), None) \
        if p.is_dir() else None
    if target is not None and target.is_file():
        info["sksbooth.base_model_hash"] = short_hash(cached_file_sha256(target))
        if p.is_dir():
            info["sksbooth.base_model_hash_of"] = str(target.relative_to(p))
    return info


# ----------------------------------------------------------------------------- conversions

def diffusers_folder_to_single_file(src, dest, precision: str = "fp16", metadata=None) -> tuple[Path, str]:
    from diffusers import DiffusionPipeline
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    try:  # loaded in the file's precision: SDXL read as fp32 first needs ~19 GB of RAM instead of ~7
        pipe = DiffusionPipeline.from_pretrained(str(src), torch_dtype=PRECISIONS[precision])
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Cannot load the diffusers model at {src}: {e}") from e
    if getattr(pipe, "text_encoder", None) is None:
        raise ModelLoadError(f"{src} has no text encoder (saved with --skip_save_text_encoder?); "
                             "a single-file checkpoint needs one.")
    meta = {**base_model_info(src), **(metadata or {})}
    return save_single_file(dest, pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                            pipe.scheduler, precision, meta)


def single_file_to_diffusers(src, dest, allow_pickle: bool = False) -> Path:
    from ..fsutil import atomic_dir
    model = load_single_file(src, allow_pickle)
    pipe = build_pipeline(model)
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return dest


def trained_single_file_path(config) -> Path:
    """OUTPUT_DIR/<name>.safetensors, named after the output folder (what A1111/ComfyUI list)."""
    out = Path(config.output_dir)
    return out / f"{out.resolve().name or 'dreambooth-model'}.safetensors"


def save_trained_single_file(unet, vae, text_encoder, scheduler, config, out: Path,
                             steps: Optional[int] = None, text_encoder_2=None) -> tuple[Path, str]:
    """The end of a full fine-tune: OUTPUT_DIR/<name>.safetensors with the run's metadata.

    Metadata (strings, as safetensors stores them): sksbooth version, base model name and
    A1111 short hash, prompts, steps and the whole TrainConfig as JSON.
    """
    import logging
    from ..config import config_to_dict
    name = trained_single_file_path(config).stem
    meta = {**base_model_info(config.pretrained_model_name_or_path),
            "sksbooth.instance_prompt": config.instance_prompt, "sksbooth.class_prompt": config.class_prompt,
            "sksbooth.steps": str(steps if steps is not None else config.max_train_steps),
            "sksbooth.config": json.dumps(config_to_dict(config), sort_keys=True, default=str),
            "modelspec.title": name, "modelspec.description": f"DreamBooth: {config.instance_prompt}"}
    path, sha = save_single_file(Path(out) / f"{name}.safetensors", unet, vae, text_encoder, text_encoder_2, scheduler,
                                 config.save_precision, meta)
    logging.getLogger("sksbooth").info("Saved %s [%s] (sha256 %s)", path, short_hash(sha), sha)
    return path, sha
