"""Tiny random-weight Stable Diffusion pipelines, built offline (like diffusers' own tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..fsutil import atomic_dir
from .tokenizer import write_clip_tokenizer

TINY_RESOLUTION = 64  # pixels; the VAE below downsamples by 2, so latents are 32x32


def build_tiny_pipeline(seed: int = 0):
    """A StableDiffusionPipeline a few MB large, with the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    import tempfile

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_RESOLUTION // 2,
        in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=16,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77, projection_dim=32,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp)))
    # SD 1.x's training schedule
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _tiny_clip(hidden_size: int, hidden_act: str, projection_dim: int):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden_size,
                          intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=projection_dim,
                          hidden_act=hidden_act)


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline a few MB large, with SDXL's structure: a CLIP-L-style and a wider
    OpenCLIP-bigG-style text encoder (32 and 48 wide, like 768 and 1280: single-file loaders tell them
    apart by width), pooled text embeddings and size/crop time ids in the UNet's text_time embedding."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from .single_file import make_tokenizer

    torch.manual_seed(seed)
    time_dim, pooled_dim = 8, 48
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=TINY_RESOLUTION // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim, cross_attention_dim=32 + 48,
        norm_num_groups=16)
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, sample_size=TINY_RESOLUTION)
    text_encoder = CLIPTextModel(_tiny_clip(32, "quick_gelu", 32))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip(48, "gelu", pooled_dim))
    # SDXL base's schedule and sampler
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=make_tokenizer("sdxl"), tokenizer_2=make_tokenizer("sdxl", second=True),
                                     unet=unet, scheduler=scheduler)


TINY_BUILDERS = {"sd1": build_tiny_pipeline, "sdxl": build_tiny_sdxl_pipeline}


def make_tiny_model(dest: str | Path, seed: int = 0, arch: str = "sd1") -> Path:
    """Write a tiny pipeline (arch sd1 or sdxl) as a diffusers folder at `dest` (atomically)."""
    pipe = TINY_BUILDERS[arch](seed)
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return dest
