"""Tiny SD 2.x- and SDXL-shaped pipelines (same key structure as the real ones), built offline."""

from __future__ import annotations

import pytest
import torch


def tiny_clip_config(hidden_act="quick_gelu", layers=2, projection_dim=32, hidden_size=32):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden_size,
                          intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=layers,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=projection_dim,
                          hidden_act=hidden_act)


def tiny_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, layers_per_block=1,
                         norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=64)


def build_tiny_sd2(v_prediction: bool = False, seed: int = 0):
    """SD 2.x structure: OpenCLIP-style text encoder (gelu), linear projections in the transformers."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel
    from sksbooth.models.single_file import make_tokenizer
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=16, attention_head_dim=(2, 4), use_linear_projection=True)
    text_encoder = CLIPTextModel(tiny_clip_config("gelu"))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                              prediction_type="v_prediction" if v_prediction else "epsilon")
    return StableDiffusionPipeline(unet=unet, vae=tiny_vae(), text_encoder=text_encoder, tokenizer=make_tokenizer("sd2"),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny_sdxl(seed: int = 0):
    """SDXL structure: two text encoders (CLIP-L style and a wider OpenCLIP bigG style), text_time embedding.

    The widths differ as in SDXL (768 and 1280): diffusers' loader tells the two apart by width."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from sksbooth.models.single_file import make_tokenizer
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 48,
                                cross_attention_dim=32 + 48, norm_num_groups=16)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(tiny_clip_config()),
                                     text_encoder_2=CLIPTextModelWithProjection(tiny_clip_config("gelu", projection_dim=48, hidden_size=48)),
                                     tokenizer=make_tokenizer("sdxl"), tokenizer_2=make_tokenizer("sdxl", second=True),
                                     unet=unet, scheduler=scheduler)


@pytest.fixture(scope="session")
def tiny_sd2():
    return build_tiny_sd2()


@pytest.fixture(scope="session")
def tiny_sdxl():
    return build_tiny_sdxl()


@pytest.fixture(scope="session")
def tiny_sd2_v():
    return build_tiny_sd2(v_prediction=True, seed=1)
