"""diffusers -> original (LDM) tensor names, as A1111 and ComfyUI load single-file checkpoints.

diffusers ships converters for LDM -> diffusers (used when loading, see single_file.py)
but none for the way back; this follows its reference script
`scripts/convert_diffusers_to_original_stable_diffusion.py`, generalised from its
hard-coded SD 1.x block counts to any UNet/VAE config (tiny test models, SD 2.x, SDXL).

Every mapping is a table of (diffusers part, LDM part) renames; the block indices are
computed from the config. Text encoders: CLIP ViT-L (SD 1.x, SDXL's first) keeps the
transformers 4.x names (`text_model.` prefix) whatever transformers is installed;
OpenCLIP (SD 2.x ViT-H, SDXL's bigG) fuses q/k/v into `in_proj_*`.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}

UNET_TOP = {  # diffusers -> LDM
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
UNET_RESNET = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.",
               "conv2.": "out_layers.3.", "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection."}
VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out.",
            # very old diffusers names
            "query.": "q.", "key.": "k.", "value.": "v.", "proj_attn.": "proj_out."}
VAE_TOP = {"conv_norm_out.": "norm_out."}
OPEN_CLIP_LAYER = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj.",
                   "self_attn.out_proj.": "attn.out_proj."}
OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature; unused by Stable Diffusion


def _rename(rest: str, table: Mapping[str, str], key: str) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(f"no LDM name for {key!r}")


def unet_key(key: str, config: Mapping) -> str:
    """One diffusers UNet2DConditionModel key -> its LDM name (without the model prefix)."""
    layers = config["layers_per_block"]
    layers = layers if isinstance(layers, int) else layers[0]
    for old, new in UNET_TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        base = 1 + i * (layers + 1)
        if kind == "resnets":
            return f"input_blocks.{base + j}.0.{_rename(rest, UNET_RESNET, key)}"
        if kind == "attentions":
            return f"input_blocks.{base + j}.1.{rest}"
        return f"input_blocks.{base + layers}.0.op.{rest.removeprefix('conv.')}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        base = i * (layers + 1)
        if kind == "resnets":
            return f"output_blocks.{base + j}.0.{_rename(rest, UNET_RESNET, key)}"
        if kind == "attentions":
            return f"output_blocks.{base + j}.1.{rest}"
        has_attention = "CrossAttn" in config["up_block_types"][i]
        return f"output_blocks.{base + layers}.{2 if has_attention else 1}.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_rename(rest, UNET_RESNET, key)}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    return {UNET_PREFIX + unet_key(k, config): v for k, v in state_dict.items()}


def vae_key(key: str, config: Mapping) -> str:
    n = len(config["block_out_channels"])
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)", key)
    if m:
        i, rest = int(m[1]), m[4]
        if m[3] is not None:
            return f"encoder.down.{i}.block.{m[3]}.{_rename(rest, VAE_RESNET, key) if rest.startswith('conv_shortcut') else rest}"
        return f"encoder.down.{i}.downsample.{rest}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", key)
    if m:
        i, rest = n - 1 - int(m[1]), m[4]
        if m[3] is not None:
            return f"decoder.up.{i}.block.{m[3]}.{_rename(rest, VAE_RESNET, key) if rest.startswith('conv_shortcut') else rest}"
        return f"decoder.up.{i}.upsample.{rest}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, kind, j, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "attentions":
            return f"{part}.mid.attn_1.{_rename(rest, VAE_ATTN, key)}"
        return f"{part}.mid.block_{j + 1}.{_rename(rest, VAE_RESNET, key) if rest.startswith('conv_shortcut') else rest}"
    m = re.match(r"(encoder|decoder)\.(.*)", key)
    if m and m[2].startswith("conv_norm_out."):
        return f"{m[1]}.{_rename(m[2], VAE_TOP, key)}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        name = vae_key(k, config)
        if ".mid.attn_1." in name and name.endswith(".weight") and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)  # LDM's attention uses 1x1 convolutions
        out[VAE_PREFIX + name] = v
    return out


def clip_l_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIP ViT-L text encoder: the LDM file carries transformers 4.x names (`text_model.`)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("text_projection."):
            continue  # not part of SD's CLIP-L
        name = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + name] = v
    pos = prefix + "text_model.embeddings.position_ids"
    if pos not in out:  # a buffer transformers no longer saves; original files carry it
        n = out[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]
        out[pos] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    return out


def open_clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str,
                     total_layers: int | None = None) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower (SD 2.x ViT-H, SDXL bigG): fused q/k/v, `resblocks`, transposed projection.

    SD 2.x's diffusers text encoder keeps 23 of OpenCLIP's 24 layers (SD uses the
    penultimate layer). The original file has all of them; with `total_layers` set,
    the missing last layers are written as dormant layers (zero residual branches, unit
    layer norms), which leave the penultimate output SD reads unchanged, and a unit
    text projection, so A1111 and ComfyUI find every tensor they expect.
    """
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[k]] = v
            continue
        if k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
        if not m:
            raise KeyError(f"no LDM name for OpenCLIP key {k!r}")
        i, rest = int(m[1]), m[2]
        q = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if q:
            qkv.setdefault(f"transformer.resblocks.{i}.attn.in_proj_{q[2]}", {})[q[1]] = v
            continue
        out[f"transformer.resblocks.{i}.{_rename(rest, OPEN_CLIP_LAYER, k)}"] = v
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"incomplete q/k/v for {name}")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    width = out["token_embedding.weight"].shape[1]
    dtype = out["token_embedding.weight"].dtype
    present = {int(m[1]) for k in out if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    for i in range(len(present), total_layers or 0):
        out.update(dormant_open_clip_layer(i, width, out[f"transformer.resblocks.0.mlp.c_fc.weight"].shape[0], dtype))
    if "text_projection" not in out and total_layers:
        out["text_projection"] = torch.eye(width, dtype=dtype)
    out.setdefault("logit_scale", torch.tensor(LOGIT_SCALE, dtype=dtype))
    return {prefix + k: v for k, v in out.items()}


def dormant_open_clip_layer(i: int, width: int, hidden: int, dtype) -> dict[str, torch.Tensor]:
    p = f"transformer.resblocks.{i}."
    z = lambda *s: torch.zeros(*s, dtype=dtype)  # noqa: E731
    return {p + "ln_1.weight": torch.ones(width, dtype=dtype), p + "ln_1.bias": z(width),
            p + "ln_2.weight": torch.ones(width, dtype=dtype), p + "ln_2.bias": z(width),
            p + "attn.in_proj_weight": z(3 * width, width), p + "attn.in_proj_bias": z(3 * width),
            p + "attn.out_proj.weight": z(width, width), p + "attn.out_proj.bias": z(width),
            p + "mlp.c_fc.weight": z(hidden, width), p + "mlp.c_fc.bias": z(hidden),
            p + "mlp.c_proj.weight": z(width, hidden), p + "mlp.c_proj.bias": z(width)}
