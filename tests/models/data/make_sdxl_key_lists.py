"""How sdxl_ldm_keys.txt and sdxl_kohya_lora_keys.txt were produced (not run by the tests).

They come from ComfyUI's own code (Comfy-Org/ComfyUI at commit a125cd84, 2025-10-12), independently
of our converter (sksbooth.models.ldm_keys) and of diffusers:

- sdxl_ldm_keys.txt: every tensor (name<TAB>shape) of an SDXL base checkpoint as ComfyUI's
  CheckpointSave writes it: its SDXL UNet (comfy.supported_models.SDXL with the UNet config ComfyUI
  detects for SDXL base), its SDXL text encoders (comfy.sdxl_clip.SDXLClipModel: CLIP-L and
  OpenCLIP bigG) and its SD VAE, built on the meta device and renamed by the model config's
  process_{unet,clip,vae}_state_dict_for_saving, the functions comfy.sd.save_checkpoint calls.
  Left out, as in our SD 1.x/2.x lists: schedule buffers (none exist here).
- sdxl_kohya_lora_keys.txt: every kohya LoRA layer name ComfyUI's LoRA loader accepts for this model
  (comfy.lora.model_lora_keys_unet + model_lora_keys_clip: lora_unet_*, lora_te1_*, lora_te2_*),
  restricted to the kohya-style names: UNet layers under their LDM names (ComfyUI's diffusers-named
  aliases, lora_unet_down_blocks_..., are dropped).

Reproduce (in a throwaway folder; nothing of it is committed): extract ComfyUI's comfy/ folder,
`pip install --target deps --no-deps einops torchsde trampoline`, then
    PYTHONPATH=deps:COMFYUI_DIR python make_sdxl_key_lists.py OUT_DIR   (ComfyUI then runs in its --cpu mode)
"""

import sys
from pathlib import Path

import torch


def dump(pairs, path):
    lines = sorted(pairs)
    Path(path).write_text("\n".join(lines) + "\n")
    print(path, len(lines))


def main(out):
    import comfy.options
    comfy.options.enable_args_parsing()  # reads --cpu from sys.argv
    import comfy.ldm.models.autoencoder
    import comfy.lora
    import comfy.model_detection
    import comfy.sdxl_clip
    import comfy.supported_models
    # ComfyUI's SDXL base UNet config (comfy/model_detection.py, unet_config_from_diffusers_unet)
    unet_config = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
                   'legacy': False, 'num_classes': 'sequential', 'adm_in_channels': 2816, 'dtype': torch.float16,
                   'in_channels': 4, 'model_channels': 320, 'num_res_blocks': [2, 2, 2],
                   'transformer_depth': [0, 0, 2, 2, 10, 10], 'channel_mult': [1, 2, 4], 'transformer_depth_middle': 10,
                   'use_linear_in_transformer': True, 'context_dim': 2048, 'num_head_channels': 64,
                   'transformer_depth_output': [0, 0, 0, 2, 2, 2, 10, 10, 10],
                   'use_temporal_attention': False, 'use_temporal_resblock': False}
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    assert isinstance(model_config, comfy.supported_models.SDXL), type(model_config)
    model = model_config.get_model({}, device="meta")
    unet_sd = model_config.process_unet_state_dict_for_saving(model.diffusion_model.state_dict())
    clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16)
    clip_sd = model_config.process_clip_state_dict_for_saving(clip.state_dict())
    ddconfig = {'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
                'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}
    with torch.device("meta"):  # comfy.sd.VAE builds the SD VAE so
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    vae_sd = model_config.process_vae_state_dict_for_saving(vae.state_dict())
    full = {**unet_sd, **clip_sd, **vae_sd}
    dump([f"{k}\t{list(v.shape)}" for k, v in full.items()], Path(out) / "sdxl_ldm_keys.txt")

    keys = comfy.lora.model_lora_keys_unet(model, {})
    keys = comfy.lora.model_lora_keys_clip(clip, keys)
    # ComfyUI also accepts diffusers-named aliases (lora_unet_down_blocks_...); kohya names are the LDM ones
    ldm_modules = {"lora_unet_" + k[len("model.diffusion_model."):].rpartition(".")[0].replace(".", "_")
                   for k in unet_sd}
    dump([k for k in keys if k in ldm_modules or k.startswith(("lora_te1_", "lora_te2_"))],
         Path(out) / "sdxl_kohya_lora_keys.txt")


if __name__ == "__main__":
    out_dir = sys.argv[1]
    sys.argv = [sys.argv[0], "--cpu"]
    main(out_dir)
