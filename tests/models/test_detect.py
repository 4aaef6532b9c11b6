"""Family detection from the tensors alone: SD 1.x, SD 2.x (512 epsilon / 768 v), SDXL base; clear errors otherwise."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sksbooth.errors import ModelLoadError
from sksbooth.models import single_file as sf
from sksbooth.models.detect import V_STD_THRESHOLD, detect_family


def shapes_of(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def ldm_state(pipe, family=None):
    return sf.to_ldm_state_dict(pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                                family=family, dtype=torch.float32)


def tiny_pipe(tiny_model):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline.from_pretrained(str(tiny_model))


def test_sd1(tiny_model):
    state = ldm_state(tiny_pipe(tiny_model))
    assert detect_family(shapes_of(state)) == "sd1"


def test_sdxl(tiny_sdxl):
    state = ldm_state(tiny_sdxl)
    assert any(k.startswith("conditioner.embedders.1.model.") for k in state)
    assert detect_family(shapes_of(state)) == "sdxl"


def test_sd2_epsilon_and_v_from_metadata(tiny_sd2):
    shapes = shapes_of(ldm_state(tiny_sd2, "sd2"))
    assert detect_family(shapes, {"modelspec.prediction_type": "epsilon"}) == "sd2"
    assert detect_family(shapes, {"modelspec.prediction_type": "v"}) == "sd2-v"
    assert detect_family({**shapes, "v_pred": ()}) == "sd2-v"  # the marker key some tools add


def test_sd2_v_from_the_weights_alone(tiny_sd2):
    """No metadata: ComfyUI's rule, the std of the last attention block's norm1 bias (v models > 0.09)."""
    state = ldm_state(tiny_sd2, "sd2")
    key = max((k for k in state if k.endswith(".1.transformer_blocks.0.norm1.bias") and "output_blocks" in k),
              key=lambda k: int(k.split(".")[3]))
    n = state[key].numel()
    for std, family in ((0.02, "sd2"), (0.3, "sd2-v")):
        state[key] = torch.linspace(-1, 1, n) / torch.linspace(-1, 1, n).std(unbiased=False) * std
        assert detect_family(shapes_of(state), tensor=state.__getitem__) == family
    assert V_STD_THRESHOLD == 0.09


def test_full_size_sd2_shapes_without_text_encoder_keys_by_width():
    """Cross-attention width alone: 768 is SD 1.x, 1024 SD 2.x (e.g. a file with its text encoder pruned)."""
    base = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3)}
    for width, family in ((768, "sd1"), (1024, "sd2")):
        shapes = {**base, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width)}
        assert detect_family(shapes) == family


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v", "sdxl"])
def test_detected_from_the_saved_file(family, tiny_model, request, tmp_path):
    pipe = {"sd1": lambda: tiny_pipe(tiny_model), "sd2": lambda: request.getfixturevalue("tiny_sd2"),
            "sd2-v": lambda: request.getfixturevalue("tiny_sd2_v"), "sdxl": lambda: request.getfixturevalue("tiny_sdxl")}[family]()
    path, _ = sf.save_single_file(tmp_path / "m.safetensors", pipe.unet, pipe.vae, pipe.text_encoder,
                                  getattr(pipe, "text_encoder_2", None), pipe.scheduler)
    reader = sf.CheckpointReader(path)
    assert detect_family(reader.shapes, reader.metadata, reader.tensor) == family


def test_errors(tiny_model, tmp_path):
    state = ldm_state(tiny_pipe(tiny_model))
    no_vae = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(ModelLoadError, match="first_stage_model"):
        detect_family(shapes_of(no_vae))
    inpaint = dict(shapes_of(state))
    k = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint[k] = (inpaint[k][0], 9, 3, 3)
    with pytest.raises(ModelLoadError, match="inpainting"):
        detect_family(inpaint)
    refiner = {**shapes_of(state), "conditioner.embedders.0.model.ln_final.weight": (32,)}
    with pytest.raises(ModelLoadError, match="refiner"):
        detect_family(refiner)
    vae_only = tmp_path / "vae.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("first_stage_model.")}, str(vae_only))
    with pytest.raises(ModelLoadError, match="not a full Stable Diffusion checkpoint"):
        sf.load_single_file(vae_only)
