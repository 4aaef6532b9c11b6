"""Attention backends: swappable diffusers processors, chosen once when the model loads.

A small registry maps a name to an availability check and a processor factory:

- xformers: memory-efficient kernels; needs the optional `xformers` package and CUDA.
- sdpa:     torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient on GPU).
- sliced:   plain attention computed a few heads at a time (lower peak memory, slower).
- math:     plain attention in one batched matmul; the reference the others are tested against.

`auto` takes the first available of AUTO_ORDER (fastest first). Sliced is never picked by `auto`:
it only saves memory, at a speed cost, so it must be asked for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError

from ..config import ATTENTION_CHOICES  # one list, for the CLI and this registry
AUTO_ORDER = ("xformers", "sdpa", "math")


@dataclass(frozen=True)
class Backend:
    name: str
    unavailable: Callable[[torch.device], Optional[str]]  # None when usable, else why not
    make: Callable[[torch.nn.Module], object]  # model -> one processor, or {processor name: processor}


def _xformers_unavailable(device: torch.device) -> Optional[str]:
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install xformers)"
    if device.type != "cuda":
        return f"xformers needs a CUDA device (training runs on {device.type})"
    return None


def _make_xformers(model):
    from diffusers.models.attention_processor import XFormersAttnProcessor
    return XFormersAttnProcessor()


def _sdpa_unavailable(device: torch.device) -> Optional[str]:
    return None if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "needs torch >= 2.0"


def _make_sdpa(model):
    from diffusers.models.attention_processor import AttnProcessor2_0
    return AttnProcessor2_0()


def _make_sliced(model):
    """Half the heads per slice in every layer, as diffusers' set_attention_slice("auto") does."""
    from diffusers.models.attention_processor import SlicedAttnProcessor
    processors = {}
    for name, module in _attention_modules(model).items():
        processors[name] = SlicedAttnProcessor(max(1, module.heads // 2))
    return processors


def _make_math(model):
    from diffusers.models.attention_processor import AttnProcessor
    return AttnProcessor()


BACKENDS: dict[str, Backend] = {
    "xformers": Backend("xformers", _xformers_unavailable, _make_xformers),
    "sdpa": Backend("sdpa", _sdpa_unavailable, _make_sdpa),
    "sliced": Backend("sliced", lambda device: None, _make_sliced),
    "math": Backend("math", lambda device: None, _make_math),
}


def _attention_modules(model) -> dict:
    """{processor name as in model.attn_processors: the Attention module holding it}."""
    return {f"{name}.processor": m for name, m in model.named_modules() if hasattr(m, "set_processor")
            and hasattr(m, "get_processor")}


def available_backends(device) -> list[str]:
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.unavailable(device) is None]


def resolve_attention(name: str, device) -> str:
    """The backend `name` stands for on `device`; an explicit but unusable choice is an error."""
    device = torch.device(device)
    if name == "auto":
        return next(n for n in AUTO_ORDER if BACKENDS[n].unavailable(device) is None)
    if name not in BACKENDS:
        raise ConfigError(f"Unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_CHOICES)}.")
    reason = BACKENDS[name].unavailable(device)
    if reason:
        raise ConfigError(f"--attention {name}: {reason}. Use --attention auto to take the best available "
                          f"({resolve_attention('auto', device)} here).")
    return name


def set_attention(model, name: str, device) -> str:
    """Install the backend's processors in every attention layer of `model`; returns the backend used."""
    chosen = resolve_attention(name, device)
    if hasattr(model, "set_attn_processor") and _attention_modules(model):
        model.set_attn_processor(BACKENDS[chosen].make(model))
    return chosen
