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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

CONFIGS = Path(__file__).parent / "assets" / "configs"
ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")
GB = 2 ** 30
BYTES = {"fp16": 2, "bf16": 2}


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

    def pack(tensor):
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


def plan_memory(config, source: Optional[str] = None, models: Optional[dict] = None) -> MemoryPlan:
    """The plan for a TrainConfig; source: an arch name or model folder (default: the config's model)."""
    models = models or build_on_meta(read_configs(source or config.pretrained_model_name_or_path))
    unet, plan = models["unet"], MemoryPlan()
    low = BYTES.get(config.mixed_precision or "no", 4)
    texts = [models[n] for n in ("text_encoder", "text_encoder_2") if n in models]
    if config.use_lora:
        trained = [torch.empty(lora_params(unet, config.rank))]
        plan.device["UNet weights (frozen)"] = count(unet) * low
        plan.device["LoRA weights (fp32)"] = trained[0].numel() * 4
    else:
        trained = list(unet.parameters())
        plan.device["UNet weights (fp32)"] = count(unet) * 4
    if texts and not config.pre_compute_text_embeddings:
        n = sum(count(t) for t in texts)
        if config.train_text_encoder and not config.use_lora:
            trained += [p for t in texts for p in t.parameters()]
        plan.device["text encoder weights"] = n * (4 if config.train_text_encoder and not config.use_lora else low)
    if "vae" in models and not config.cache_latents:
        plan.device["VAE weights"] = count(models["vae"]) * low
    n_trained = sum(p.numel() for p in trained)
    plan.device["gradients (fp32)"] = n_trained * 4
    optimizer = config.resolved_optimizer
    plan.device[f"optimizer state ({optimizer})"] = optimizer_bytes(trained, optimizer)
    batch = config.train_batch_size * (2 if config.with_prior_preservation else 1)
    factor = 2 ** (len(models["vae"].config.block_out_channels) - 1) if "vae" in models else 8
    acts = unet_activation_bytes(unet, batch, config.resolution // factor, config.resolved_attention,
                                 config.gradient_checkpointing)
    plan.device["UNet activations"] = acts * low // 4
    if config.use_ema:
        plan.cpu["EMA weights"] = count(unet) * 4
    plan.notes.append(f"{n_trained / 1e6:.1f}M trained parameters; batch {batch} at {config.resolution} px; "
                      f"attention {config.resolved_attention}; CUDA context and allocator slack not included.")
    return plan


def plan_for_components(config, parts) -> Optional[MemoryPlan]:
    """The plan of a run whose models are loaded (their configs, rebuilt on meta); None if it cannot tell."""
    configs = {"unet": dict(parts.unet.config), "vae": dict(parts.vae.config)}
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(parts, name, None)
        if module is not None:
            configs[name] = module.config.to_dict()
    try:
        return plan_memory(config, models=build_on_meta(configs))
    except Exception:  # an exotic architecture must never stop training
        return None


def main(argv=None) -> int:
    """`dreambooth plan --arch sd1|sd2|sd2-v|sdxl|MODEL_DIR [training flags]`."""
    import argparse
    import dataclasses

    from .cli import add_config_arguments
    from .config import TrainConfig
    p = argparse.ArgumentParser(prog="dreambooth plan", description="Predict the peak memory of a training run.")
    p.add_argument("--arch", default=None, help=f"{', '.join(ARCHS)} or a diffusers folder (default: the model).")
    add_config_arguments(p, TrainConfig)
    args = vars(p.parse_args(argv))
    arch = args.pop("arch")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {"instance_data_dir": "-", "instance_prompt": "-", **{k: v for k, v in args.items() if k in names}}
    values.setdefault("pretrained_model_name_or_path", arch or "sd1")
    if "resolution" not in values:
        values["resolution"] = 1024 if (arch or values["pretrained_model_name_or_path"]) == "sdxl" else 512
    config = TrainConfig(**values)
    print(plan_memory(config, source=arch).format())
    return 0
