"""How sd15_ldm_keys.txt and sd2_ldm_keys.txt were produced (not run by the tests).

They list every tensor (name<TAB>shape) of an original-layout Stable Diffusion
checkpoint's three networks, taken from the ORIGINAL implementations, independently
of our converter (sksbooth.models.ldm_keys) and of diffusers:

- UNet and VAE: the `ldm` package of Stability-AI/stablediffusion, as shipped on PyPI
  by `stable-diffusion-sdkit==2.1.5` (openaimodel.UNetModel, model.Encoder/Decoder plus
  AutoencoderKL's quant_conv/post_quant_conv), instantiated with the parameters of
  v1-inference.yaml (SD 1.x) and v2-inference-v.yaml (SD 2.x).
- SD 2.x text encoder: `open_clip_torch` ViT-H-14 with its vision tower deleted, as
  ldm's FrozenOpenCLIPEmbedder does (`cond_stage_model.model.*`).
- SD 1.x text encoder: transformers' CLIP ViT-L/14 text tower, read through
  CLIPTextModelWithProjection (which keeps the `text_model.` wrapper), under
  `cond_stage_model.transformer.`, plus `text_model.embeddings.position_ids` [1, 77],
  a buffer that transformers < 4.31 (the versions SD 1.x was released with) saved.

The diffusion schedule buffers of LatentDiffusion (betas, alphas_cumprod, ...) are
derived from the config, not weights, and are left out of both lists.

Reproduce (in a throwaway folder; nothing of it is committed):
    pip download --no-deps stable-diffusion-sdkit==2.1.5 einops open-clip-torch ftfy -d wheels
    unzip each wheel into site/, then: PYTHONPATH=site python make_ldm_key_lists.py OUT_DIR
Two import-only stand-ins were needed on a CPU machine without them: omegaconf (ldm
only imports `omegaconf.listconfig.ListConfig` for an isinstance test) and torchvision
(open_clip imports its image transforms at import time; a module whose attributes
are dummy classes). Neither affects any tensor name or shape. transformers' CLIP
classes were imported before the torchvision stand-in was installed.
"""

import sys
from pathlib import Path

import torch


def dump(sd, path):
    lines = [f"{k}\t{list(v.shape)}" for k, v in sorted(sd.items())]
    Path(path).write_text("\n".join(lines) + "\n")
    print(path, len(lines))


def unet_vae(context_dim, sd2):
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    kw = dict(num_head_channels=64, use_linear_in_transformer=True) if sd2 else dict(num_heads=8)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                     num_res_blocks=2, channel_mult=[1, 2, 4, 4], use_spatial_transformer=True, transformer_depth=1,
                     context_dim=context_dim, use_checkpoint=True, legacy=False, **kw)
    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    out = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    vae = {**{"encoder." + k: v for k, v in Encoder(**dd).state_dict().items()},
           **{"decoder." + k: v for k, v in Decoder(**dd).state_dict().items()},
           **{"quant_conv." + k: v for k, v in torch.nn.Conv2d(8, 8, 1).state_dict().items()},
           **{"post_quant_conv." + k: v for k, v in torch.nn.Conv2d(4, 4, 1).state_dict().items()}}
    out.update({"first_stage_model." + k: v for k, v in vae.items()})
    return out


def main(dest):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    with torch.device("meta"):
        sd1 = unet_vae(768, sd2=False)
        te = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                        num_hidden_layers=12, max_position_embeddings=77,
                                                        vocab_size=49408, projection_dim=768))
    sd1.update({"cond_stage_model.transformer." + k: v for k, v in te.state_dict().items() if k.startswith("text_model.")})
    sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77)
    dump(sd1, Path(dest) / "sd15_ldm_keys.txt")

    import open_clip
    with torch.device("meta"):
        sd2 = unet_vae(1024, sd2=True)
        clip = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    del clip.visual
    sd2.update({"cond_stage_model.model." + k: v for k, v in clip.state_dict().items()})
    dump(sd2, Path(dest) / "sd2_ldm_keys.txt")


if __name__ == "__main__":
    main(sys.argv[1])
