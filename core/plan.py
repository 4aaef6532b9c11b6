"""Predict the peak accelerator memory of a training configuration, before loading any weight.

Parameters are counted exactly by building the models on the `meta` device from their configs
(the bundled SD 1.x / 2.x / SDXL configs, or a diffusers folder's). Activations are the tensors
autograd saves for the backward pass, counted by running the UNet's forward on meta tensors
with a saved-tensors hook:

- math/sliced attention save every attention-probability matrix (slicing lowers the forward's
  transient peak, not what is saved for backward); sdpa/xformers save only q, k, v, the output
  and a log-sum-exp (flash / memory-efficient kernels), which the planner models with a stand-in;
- with gradient checkpointing only the blocks' inputs are saved, plus the largest single block
  recomputed during backward;
- fp16/bf16 autocast halves the activation bytes (an estimate: norms and softmax stay fp32).

Not counted: the CUDA context and allocator slack (typically 0.3-1 GB), text-encoder activations
(77 tokens: small), data. The numbers are an estimate to compare configurations, not a promise.

On CPU (`device="cpu"`) the "device" is the host RAM, so the plan also holds what really sits there:
the process itself (interpreter + torch/diffusers/transformers, measured once: see PROCESS_BASELINE),
and the frozen VAE and text encoder, which stay in RAM even with cached latents.

`fit_budget` walks candidate settings in quality order and returns the first that fits a budget.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from .errors import ConfigError

CONFIGS = Path(__file__).parent / "assets" / "configs"
ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")
GB = 2 ** 30
BYTES = {"fp16": 2, "bf16": 2}
# RSS of a Python process that has imported torch, diffusers, transformers, accelerate and the trainer
# (measured: 369 MB on Linux x86-64, torch 2.x CPU build); counted in CPU plans only.
PROCESS_BASELINE = 370 * 2 ** 20
# CPU only: RSS does not fall back when autograd frees saved activations during backward (glibc keeps the
# freed chunks) while the activation gradients are being allocated, so the process peaks above
# weights + saved activations. Calibrated from one measured run (benchmarks/plan_vs_measured.py, LoRA fp32
# at 256 px, batch 2: 0.43 GB above the plan for 0.98 GB of saved activations) and checked on the others.
CPU_BACKWARD_SLACK = 0.44


@dataclass
class MemoryPlan:
    device: dict[str, int] = field(default_factory=dict)  # bytes on the accelerator at the peak
    cpu: dict[str, int] = field(default_factory=dict)  # bytes held in CPU memory instead
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.device.values())

    def format(self) -> str:
        lines = ["Memory plan (estimate of the peak on the training device):"]
        lines += [f"  {k:<28s}{v / GB:8.2f} GB" for k, v in self.device.items()]
        lines.append(f"  {'= peak':<28s}{self.peak / GB:8.2f} GB")
        lines += [f"  {k + ' (CPU memory)':<28s}{v / GB:8.2f} GB" for k, v in self.cpu.items()]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def read_configs(source: str) -> dict[str, dict]:
    """{component: config dict} from an architecture name or a diffusers model folder."""
    folder = CONFIGS / source if source in ARCHS else Path(source)
    out = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for path in (folder / f"{name}.json", folder / name / "config.json"):
            if path.is_file():
                out[name] = json.loads(path.read_text(encoding="utf-8"))
                break
    if "unet" not in out:
        raise FileNotFoundError(f"No UNet config in {folder} (give one of {', '.join(ARCHS)} or a diffusers folder).")
    return out


def build_on_meta(configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    """The models with no memory behind their weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    models = {}
    with torch.device("meta"):
        models["unet"] = UNet2DConditionModel.from_config(configs["unet"])
        if "vae" in configs:
            models["vae"] = AutoencoderKL.from_config(configs["vae"])
        for name in ("text_encoder", "text_encoder_2"):
            if name in configs:
                c = {k: v for k, v in configs[name].items() if not k.startswith("_")}
                cls = CLIPTextModelWithProjection if "WithProjection" in str(c.get("architectures")) else CLIPTextModel
                models[name] = cls(CLIPTextConfig(**c))
    return models


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_params(unet, rank: int) -> int:
    """A (rank x in) and B (out x rank) per targeted attention projection, as setup.UNET_LORA_TARGETS."""
    total = 0
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") \
                and (not name.endswith(".0") or name.endswith("to_out.0")):
            total += rank * (m.in_features + m.out_features)
    return total


def optimizer_bytes(params: list[torch.Tensor], optimizer: str) -> int:
    if optimizer == "adafactor":  # factored second moment for matrices, full for vectors; no first moment
        return sum(4 * ((p.shape[:-1].numel() + (p.shape[:-2] + p.shape[-1:]).numel()) if p.dim() >= 2 else p.numel())
                   for p in params)
    n = sum(p.numel() for p in params)
    return n * (2 if optimizer == "adamw8bit" else 8)


class _EfficientAttention(torch.autograd.Function):
    """Stand-in for flash / memory-efficient attention: saves q, k, v, out and a log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(q.shape[:-1] + v.shape[-1:], device=q.device, dtype=q.dtype)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - planning never runs backward
        q, k, v, *_ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


class _PlanningProcessor:
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        b, h = q.shape[0], attn.heads
        split = lambda t: t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2)
        out = _EfficientAttention.apply(split(q), split(k), split(v)).transpose(1, 2).reshape(b, -1, h * (v.shape[-1] // h))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def unet_activation_bytes(unet, batch: int, latent_size: int, attention: str, checkpointing: bool,
                          text_width: Optional[int] = None) -> int:
    """Bytes autograd saves in one fp32 training forward of the UNet (measured on meta tensors)."""
    key = (batch, latent_size, attention in ("sdpa", "xformers", "auto"), checkpointing, text_width)
    cache = unet.__dict__.setdefault("_plan_activation_cache", {})  # fit_budget asks for the same shapes often
    if key not in cache:
        cache[key] = _unet_activation_bytes(unet, batch, latent_size, attention, checkpointing)
    return cache[key]


def _unet_activation_bytes(unet, batch: int, latent_size: int, attention: str, checkpointing: bool) -> int:
    from .models.attention import set_attention
    efficient = attention in ("sdpa", "xformers", "auto")
    if efficient:
        unet.set_attn_processor(_PlanningProcessor())
    else:
        set_attention(unet, "math", "cpu")  # sliced saves the same probabilities as math
    c = unet.config
    x = torch.empty(batch, c.in_channels, latent_size, latent_size, device="meta")
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    hidden = torch.empty(batch, 77, c.cross_attention_dim, device="meta")
    extra = {}
    if c.addition_embed_type == "text_time":  # SDXL: pooled text embedding and size/crop ids
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled, device="meta"),
                                      "time_ids": torch.empty(batch, 6, device="meta")}
    unet.train().requires_grad_(True)
    saved: dict[int, tuple] = {}
    block_bytes: dict[str, int] = {}
    current: list[str] = []

    weights = {id(p) for p in unet.parameters()}  # saved weights (and their views) are counted as weights

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) in weights or id(base) in weights:
            return tensor
        if id(tensor) not in saved:
            saved[id(tensor)] = (tensor, tensor.numel() * tensor.element_size())
            if current:
                block_bytes[current[-1]] = block_bytes.get(current[-1], 0) + saved[id(tensor)][1]
        return tensor

    hooks = []
    for name, m in unet.named_modules():  # the units diffusers checkpoints
        if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel"):
            hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: current.append(n)))
            hooks.append(m.register_forward_hook(lambda mod, a, o: current.pop() and None))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            unet(x, t, hidden, **extra)
    finally:
        for h in hooks:
            h.remove()
    total = sum(b for _, b in saved.values())
    if not checkpointing:
        return total
    inside = sum(block_bytes.values())
    return total - inside + max(block_bytes.values(), default=0) + _block_inputs(unet, batch, latent_size)


def _block_inputs(unet, batch: int, latent_size: int) -> int:
    """What checkpointing keeps: roughly each checkpointed unit's input feature map (fp32)."""
    total, size = 0, latent_size
    channels = list(unet.config.block_out_channels)
    layers = unet.config.layers_per_block
    layers = layers if isinstance(layers, int) else max(layers)
    for i, ch in enumerate(channels):  # down path: resnets and transformers at this scale; up path: one more
        total += (2 * layers + 1) * 2 * batch * ch * size * size * 4
        size = size // 2 if i < len(channels) - 1 else size
    return total


def plan_memory(config, source: Optional[str] = None, models: Optional[dict] = None,
                device: str = "cuda") -> MemoryPlan:
    """The plan for a TrainConfig; source: an arch name or model folder (default: the config's model).

    device: "cuda" (or any accelerator): the accelerator's memory; "cpu": the whole process's RAM."""
    models = models or build_on_meta(read_configs(source or config.pretrained_model_name_or_path))
    unet, plan = models["unet"], MemoryPlan()
    on_cpu = str(device).split(":")[0] == "cpu"
    if on_cpu:
        plan.device["process (python + libraries)"] = PROCESS_BASELINE
    low = BYTES.get(config.mixed_precision or "no", 4)
    texts = [models[n] for n in ("text_encoder", "text_encoder_2") if n in models]
    if config.use_lora:
        trained = [torch.empty(lora_params(unet, config.rank))]
        plan.device["UNet weights (frozen)"] = count(unet) * low
        plan.device["LoRA weights (fp32)"] = trained[0].numel() * 4
    else:
        trained = list(unet.parameters())
        plan.device["UNet weights (fp32)"] = count(unet) * 4
    if texts and (on_cpu or not config.pre_compute_text_embeddings):  # on CPU it stays in RAM regardless
        n = sum(count(t) for t in texts)
        if config.train_text_encoder and not config.use_lora:
            trained += [p for t in texts for p in t.parameters()]
        plan.device["text encoder weights"] = n * (4 if config.train_text_encoder and not config.use_lora else low)
    if "vae" in models and (on_cpu or not config.cache_latents):  # cached latents offload it to RAM
        plan.device["VAE weights"] = count(models["vae"]) * low
    n_trained = sum(p.numel() for p in trained)
    if low < 4 and not config.use_lora:  # autocast keeps a low-precision copy of each fp32 trained weight
        plan.device[f"{config.mixed_precision} weight copies (autocast)"] = n_trained * low
    optimizer = config.resolved_optimizer
    plan.device[f"optimizer state ({optimizer})"] = optimizer_bytes(trained, optimizer)
    batch = config.train_batch_size * (2 if config.with_prior_preservation else 1)
    factor = 2 ** (len(models["vae"].config.block_out_channels) - 1) if "vae" in models else 8
    acts = unet_activation_bytes(unet, batch, config.resolution // factor, config.resolved_attention,
                                 config.gradient_checkpointing)
    plan.device["UNet activations"] = acts * low // 4
    if on_cpu:
        plan.device["backward working set (CPU)"] = int(CPU_BACKWARD_SLACK * acts * low // 4)
    grads = n_trained * 4
    if getattr(config, "fused_backward_pass", False):  # one parameter's gradient at a time
        plan.device["gradients (one weight at a time, fused)"] = max((p.numel() for p in trained), default=0) * 4
    elif config.set_grads_to_none:
        # Gradients freed after each step: backward allocates them while it frees the saved activations,
        # so only the part of the gradients larger than the activations adds to the peak.
        freed = plan.device["UNet activations"] + plan.device.get("backward working set (CPU)", 0)
        plan.device["gradients beyond freed activations"] = max(0, grads - freed)
    else:
        plan.device["gradients (fp32)"] = grads
    if config.use_ema:
        plan.cpu["EMA weights"] = count(unet) * 4
    plan.notes.append(f"{n_trained / 1e6:.1f}M trained parameters; batch {batch} at {config.resolution} px; "
                      f"attention {config.resolved_attention}; " +
                      ("whole process on CPU." if on_cpu else "CUDA context and allocator slack not included."))
    return plan


def plan_for_components(config, parts, device: str = "cuda") -> Optional[MemoryPlan]:
    """The plan of a run whose models are loaded (their configs, rebuilt on meta); None if it cannot tell."""
    configs = {"unet": dict(parts.unet.config), "vae": dict(parts.vae.config)}
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(parts, name, None)
        if module is not None:
            configs[name] = module.config.to_dict()
    try:
        return plan_memory(config, models=build_on_meta(configs), device=device)
    except Exception:  # an exotic architecture must never stop training
        return None


_UNITS = {"B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": GB, "T": 2 ** 40}


def parse_size(text) -> int:
    """Bytes from "8GB", "8000MB", "12.5G", "512MiB" (binary units: 1 GB = 2**30 bytes; a bare number is GB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"Cannot read memory size {text!r}: write e.g. 8GB, 8000MB or 12.5G.")
    unit = m.group(2).upper() or ("B" if m.group(3) else "G")
    return int(float(m.group(1)) * _UNITS[unit])


def device_memory(device="cpu") -> Optional[int]:
    """Total memory of the training device: host RAM on CPU, the GPU's memory on CUDA; None if unknown."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        pass
    return None


def budget_warning(plan: MemoryPlan, budget=None, device="cpu") -> Optional[str]:
    """The warning training prints when the predicted peak exceeds the budget (default: the device's memory)."""
    limit = parse_size(budget) if budget else device_memory(device)
    if limit is None or plan.peak <= limit:
        return None
    what = f"--memory_budget {budget}" if budget else f"the {torch.device(device).type} device's memory"
    return (f"WARNING: this run is predicted to need {plan.peak / GB:.2f} GB at its peak, more than {what} "
            f"({limit / GB:.2f} GB); it may run out of memory. `dreambooth plan --memory_budget "
            f"{budget or f'{limit / GB:.1f}GB'}` suggests settings that fit.")


def candidate_settings(optimizer: str = "adafactor"):
    """(label, settings) in quality order: full + text encoder, full UNet, LoRA + text encoder, LoRA;
    within each, fewest memory savers first (none, checkpointing, bf16, the small optimizer, then pairs, then all)."""
    savers = [("gradient_checkpointing", True), ("mixed_precision", "bf16"), ("optimizer", optimizer),
              ("fused_backward_pass", True)]  # the last only for full fine-tunes: LoRA gradients are small
    subsets = [c for k in range(len(savers) + 1) for c in itertools.combinations(savers, k)]
    for use_lora in (False, True):
        for text in (True, False):
            for subset in subsets:
                if use_lora and ("fused_backward_pass", True) in subset:
                    continue
                yield {"use_lora": use_lora, "train_text_encoder": text, "gradient_checkpointing": False,
                       "mixed_precision": "no", "optimizer": "adamw", "use_8bit_adam": False,
                       "fused_backward_pass": False, **dict(subset)}


def as_flags(settings: dict) -> str:
    """The command-line fragment for a candidate's settings."""
    out = []
    for name in ("use_lora", "train_text_encoder", "gradient_checkpointing"):
        out += [f"--{name}"] if settings[name] else []
    out += [f"--mixed_precision {settings['mixed_precision']}", f"--optimizer {settings['optimizer']}"]
    out += ["--fused_backward_pass"] if settings.get("fused_backward_pass") else []
    return " ".join(out)


def fit_budget(config, budget, models: Optional[dict] = None, device: str = "cuda",
               source: Optional[str] = None):
    """The first candidate (in quality order) whose predicted peak fits the budget:
    (config, plan, flags), or None if nothing fits. budget: bytes or a size string ("8GB")."""
    budget = parse_size(budget) if isinstance(budget, str) else int(budget)
    models = models or build_on_meta(read_configs(source or config.pretrained_model_name_or_path))
    small = "adamw8bit" if str(device).startswith("cuda") and _has_bitsandbytes() else "adafactor"
    for settings in candidate_settings(small):
        try:
            candidate = replace(config, **settings)
        except ConfigError:  # e.g. --fused_backward_pass with gradient accumulation
            continue
        plan = plan_memory(candidate, models=models, device=device)
        if plan.peak <= budget:
            return candidate, plan, as_flags(settings)
    return None


def _has_bitsandbytes() -> bool:
    import importlib.util
    return importlib.util.find_spec("bitsandbytes") is not None


def main(argv=None) -> int:
    """`dreambooth plan --arch sd1|sd2|sd2-v|sdxl|MODEL_DIR [--device cpu] [--memory_budget 8GB] [training flags]`."""
    import argparse
    import dataclasses

    from .cli import add_config_arguments
    from .config import TrainConfig
    p = argparse.ArgumentParser(prog="dreambooth plan", description="Predict the peak memory of a training run; "
                                "with --memory_budget, pick the best settings that fit.")
    p.add_argument("--arch", default=None, help=f"{', '.join(ARCHS)} or a diffusers folder (default: the model).")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda: the GPU's memory; cpu: the whole process's RAM (default: cuda).")
    add_config_arguments(p, TrainConfig)
    args = vars(p.parse_args(argv))
    arch, device = args.pop("arch"), args.pop("device")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {"instance_data_dir": "-", "instance_prompt": "-", **{k: v for k, v in args.items() if k in names}}
    values.setdefault("pretrained_model_name_or_path", arch or "sd1")
    if "resolution" not in values:
        values["resolution"] = 1024 if (arch or values["pretrained_model_name_or_path"]) == "sdxl" else 512
    if values.get("with_prior_preservation") and not values.get("class_prompt"):
        values["class_prompt"] = "-"
    config = TrainConfig(**values)
    models = build_on_meta(read_configs(arch or config.pretrained_model_name_or_path))
    if not config.memory_budget:
        print(plan_memory(config, models=models, device=device).format())
        return 0
    budget = parse_size(config.memory_budget)
    found = fit_budget(config, budget, models=models, device=device)
    if found is None:
        least = min(plan_memory(replace(config, **s), models=models, device=device).peak
                    for s in candidate_settings())
        print(f"Nothing fits in {budget / GB:.2f} GB: the smallest candidate (LoRA, gradient checkpointing, bf16, "
              f"adafactor) needs {least / GB:.2f} GB at batch {config.train_batch_size}, {config.resolution} px. "
              "Lower --resolution or --train_batch_size, add --cache_latents / --pre_compute_text_embeddings, "
              "or use a machine with more memory.")
        return 1
    _, plan, flags = found
    print(plan.format())
    print(f"Fits in {budget / GB:.2f} GB (predicted peak {plan.peak / GB:.2f} GB) with:\n  {flags}")
    return 0
