"""kohya LoRA files: every trained layer gets a name A1111/ComfyUI resolve, and the file reproduces the adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sksbooth.config import TrainConfig, config_to_dict
from sksbooth.models.lora_files import (addnet_hash, kohya_unet_name, read_metadata, unet_ldm_module_name)
from sksbooth.models.pipeline import load_pipeline, resolve_model_dir
from sksbooth.train.save import save_lora
from sksbooth.train.setup import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, add_lora

RANK, ALPHA = 4, 8  # alpha != rank, so a file that drops or misreads alpha fails


def sd15_shaped_unet():
    """SD 1.5's block layout (4 blocks, 2 layers each, attention in the first three) with tiny widths."""
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(block_out_channels=(16, 16, 32, 32), layers_per_block=2, cross_attention_dim=16,
                                norm_num_groups=8, attention_head_dim=4, sample_size=8)


def ldm_unet_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under LDM names (`model.diffusion_model.input_blocks...`), via our module mapping."""
    out = {}
    for key, value in unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        out[f"model.diffusion_model.{unet_ldm_module_name(module, unet.config)}.{leaf}"] = value
    return out


@pytest.mark.parametrize("layout", ["tiny", "sd15"])
def test_ldm_names_are_the_ones_diffusers_single_file_converter_reads(layout, tiny_model):
    """diffusers' own LDM->diffusers converter (used for A1111/ComfyUI checkpoints) rebuilds the UNet exactly
    from our LDM names: the names we derive are the original model's module names."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet") if layout == "tiny" else sd15_shaped_unet()
    converted = convert_ldm_unet_checkpoint(ldm_unet_state_dict(unet), dict(unet.config))
    original = unet.state_dict()
    assert set(converted) == set(original)
    assert all(torch.equal(converted[k], original[k]) for k in original)


def test_the_documented_sd15_example():
    unet = sd15_shaped_unet()
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert unet_ldm_module_name(name, unet.config) == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert kohya_unet_name(name, unet.config) == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert unet_ldm_module_name("up_blocks.3.attentions.2.proj_out", unet.config) == "output_blocks.11.1.proj_out"
    assert unet_ldm_module_name("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
                                unet.config) == "middle_block.1.transformer_blocks.0.attn2.to_out.0"


# --- helpers: a base with "trained" adapters (random, so every layer matters) --------------------

def base_parts(tiny_model):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None, requires_safety_checker=False)


def with_adapters(pipe, seed: int = 1):
    add_lora(pipe.unet, RANK, ALPHA, UNET_LORA_TARGETS)
    add_lora(pipe.text_encoder, RANK, ALPHA, TEXT_LORA_TARGETS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_" in name:  # lora_B starts at zero; make the adapters do something
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return pipe


def predictions(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(text embeddings, UNet noise prediction) for a fixed prompt, latent and timestep."""
    g = torch.Generator().manual_seed(0)
    ids = pipe.tokenizer(["a photo of sks dog"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    size = pipe.unet.config.sample_size
    x = torch.randn(1, 4, size, size, generator=g)
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0]
        return emb, pipe.unet(x, torch.tensor([700]), emb).sample


def lora_config(tiny_model, out: Path, **kw) -> TrainConfig:
    return TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir="unused",
                       instance_prompt="a photo of sks dog", output_dir=str(out), use_lora=True, rank=RANK,
                       lora_alpha=ALPHA, train_text_encoder=True, resolution=64, max_train_steps=5, seed=3, **kw)


def save_run(pipe, config: TrainConfig) -> Path:
    """What a LoRA run leaves in its output folder: the saved config and the LoRA file."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dreambooth_config.json").write_text(json.dumps(config_to_dict(config)))
    return save_lora(pipe.unet, pipe.text_encoder, config, out)


@pytest.fixture(scope="module")
def tuned(tiny_model):
    """(base predictions, fine-tuned predictions, the fine-tuned pipeline)."""
    base = predictions(base_parts(tiny_model))
    pipe = with_adapters(base_parts(tiny_model))
    return base, predictions(pipe), pipe


# --- the names -------------------------------------------------------------------------------------

# How ComfyUI (comfy/lora.py, model_lora_keys_clip) names the SD 1.x CLIP layers a LoRA may patch:
# lora_te_text_model_encoder_layers_{b}_{part} for b < 32 and these parts, if the checkpoint has the weight.
COMFY_CLIP_PARTS = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                    "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                    "self_attn.out_proj": "self_attn_out_proj"}


def accepted_unet_names(unet) -> dict[str, tuple]:
    """{kohya name: weight shape} for every weight of the LDM UNet, the way A1111 and ComfyUI build their maps:
    ComfyUI maps lora_unet_<key minus .weight, dots as underscores> for each diffusion_model.* weight; A1111
    turns lora_unet_ into diffusion_model_ and looks the result up among the LDM model's module names."""
    names = {}
    for key, value in ldm_unet_state_dict(unet).items():
        if key.endswith(".weight"):
            module = key[len("model.diffusion_model."):-len(".weight")]
            names["lora_unet_" + module.replace(".", "_")] = tuple(value.shape)
    return names


def accepted_text_encoder_names(text_encoder) -> dict[str, tuple]:
    """The original CLIP checkpoint stores text_model.encoder.layers.N...; transformers 5 drops `text_model.`."""
    sd = {("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in text_encoder.state_dict().items()}
    names = {}
    for b in range(32):
        for part, lora_part in COMFY_CLIP_PARTS.items():
            weight = sd.get(f"text_model.encoder.layers.{b}.{part}.weight")
            if weight is not None:
                names[f"lora_te_text_model_encoder_layers_{b}_{lora_part}"] = tuple(weight.shape)
    return names


def test_every_trained_layer_gets_a_name_a1111_and_comfyui_resolve(tiny_model, tuned, tmp_path):
    from peft.tuners.lora import LoraLayer
    _, _, pipe = tuned
    path = save_run(pipe, lora_config(tiny_model, tmp_path / "my-subject"))
    assert path == tmp_path / "my-subject" / "my-subject.safetensors"
    weights = load_file(path)
    unet_ok = accepted_unet_names(base_parts(tiny_model).unet)
    te_ok = accepted_text_encoder_names(base_parts(tiny_model).text_encoder)
    modules = {k.split(".", 1)[0] for k in weights}
    for name in modules:
        assert set(k for k in weights if k.split(".", 1)[0] == name) == {
            f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
        accepted = unet_ok if name.startswith("lora_unet_") else te_ok
        assert name in accepted, f"{name} names no module of the model"
        down, up = weights[f"{name}.lora_down.weight"], weights[f"{name}.lora_up.weight"]
        assert (up.shape[0], down.shape[1]) == accepted[name][:2]  # it names a module of the right shape
        assert down.shape[0] == RANK and weights[f"{name}.alpha"].item() == ALPHA
    trained = sum(isinstance(m, LoraLayer) for m in pipe.unet.modules()) + \
        sum(isinstance(m, LoraLayer) for m in pipe.text_encoder.modules())
    assert len(modules) == trained  # one name per trained layer, none lost or merged
    assert {n for n in modules if n.startswith("lora_unet_")} >= {
        "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_output_blocks_1_1_transformer_blocks_0_attn2_to_v"}
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj" in modules


def test_kohya_metadata(tiny_model, tuned, tmp_path):
    _, _, pipe = tuned
    path = save_run(pipe, lora_config(tiny_model, tmp_path / "run"))
    meta = read_metadata(path)
    assert meta["ss_network_dim"] == str(RANK) and meta["ss_network_alpha"] == str(ALPHA)
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_module"] == "networks.lora"
    assert json.loads(meta["sksbooth_config"])["instance_prompt"] == "a photo of sks dog"
    assert meta["sshs_model_hash"] == addnet_hash(path)  # A1111's hash of the tensors, metadata excluded
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor(f.keys()[0]).dtype == torch.float16  # the default lora_save_precision


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_kohya_file_at_strength_1_reproduces_the_fine_tuned_predictions(tiny_model, tuned, tmp_path, precision, tol):
    (base_emb, base_eps), (tuned_emb, tuned_eps), pipe = tuned
    out = tmp_path / "run"
    lora = save_run(pipe, lora_config(tiny_model, out, lora_save_precision=precision))
    assert resolve_model_dir(str(out)) == (tiny_model, lora)  # `generate --model OUT` finds the LoRA and its base
    assert resolve_model_dir(str(lora)) == (tiny_model, lora)  # so does the file `train` returns as its model path
    assert (tuned_eps - base_eps).abs().max() > 0.1 and (tuned_emb - base_emb).abs().max() > 0.1
    emb, eps = predictions(load_pipeline(str(out), lora_scale=1.0))
    assert (emb - tuned_emb).abs().max() < tol * max(1.0, tuned_emb.abs().max().item())
    assert (eps - tuned_eps).abs().max() < tol * max(1.0, tuned_eps.abs().max().item())
    emb0, eps0 = predictions(load_pipeline(str(out), lora_scale=0.0))
    assert torch.allclose(emb0, base_emb, atol=1e-5) and torch.allclose(eps0, base_eps, atol=1e-5)
    half_emb, _ = predictions(load_pipeline(str(out), lora_scale=0.5))
    assert 0.2 < ((half_emb - base_emb).norm() / (tuned_emb - base_emb).norm()).item() < 0.8


def test_diffusers_format_option_keeps_peft_keys_and_alpha(tiny_model, tuned, tmp_path):
    _, (tuned_emb, tuned_eps), pipe = tuned
    out = tmp_path / "run"
    path = save_run(pipe, lora_config(tiny_model, out, lora_format="diffusers", lora_save_precision="fp32"))
    assert path == out / "pytorch_lora_weights.safetensors"
    assert all(k.startswith(("unet.", "text_encoder.")) for k in load_file(path))
    emb, eps = predictions(load_pipeline(str(out)))
    assert (emb - tuned_emb).abs().max() < 1e-3 and (eps - tuned_eps).abs().max() < 1e-3


@pytest.mark.parametrize("layout", ["tiny", "sd15"])
def test_agrees_with_the_single_file_ldm_names(layout, tiny_model):
    """The LoRA names and the single-file checkpoint writer (models/ldm_keys.py) name the same modules alike."""
    ldm_keys = pytest.importorskip("sksbooth.models.ldm_keys")
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet") if layout == "tiny" else sd15_shaped_unet()
    for key in unet.state_dict():
        module, _, leaf = key.rpartition(".")
        assert ldm_keys.unet_key(key, dict(unet.config)) == f"{unet_ldm_module_name(module, unet.config)}.{leaf}"


def test_sd15_lora_names_are_keys_of_a_real_sd15_checkpoint():
    """Against the key list of the original SD 1.5 checkpoint (tests/models/data, from the ldm code): each layer
    we train on SD 1.5 gets a kohya name whose module is in the checkpoint, with the weight's shape."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from sksbooth.models.lora_files import kohya_text_encoder_name
    listing = Path(__file__).parent / "data" / "sd15_ldm_keys.txt"
    if not listing.is_file():
        pytest.skip("no SD 1.5 key list")
    shapes = {}
    for line in listing.read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(json.loads(shape))
    configs = Path(__import__("sksbooth").__file__).parent / "assets" / "configs" / "sd1"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((configs / "unet.json").read_text()))
        text_encoder = CLIPTextModel(CLIPTextConfig(**json.loads((configs / "text_encoder.json").read_text())))

    def targets(model, suffixes):  # the layers PEFT adapts for these target names
        return [(n, m) for n, m in model.named_modules() if any(n == s or n.endswith("." + s) for s in suffixes)]

    unet_layers, te_layers = targets(unet, UNET_LORA_TARGETS), targets(text_encoder, TEXT_LORA_TARGETS)
    assert len(unet_layers) == 16 * 2 * 4 and len(te_layers) == 12 * 4  # 16 transformer blocks, 12 CLIP layers
    for name, module in unet_layers:
        key = kohya_unet_name(name, unet.config)
        ldm = "model.diffusion_model." + key[len("lora_unet_"):]
        matches = [k for k in shapes if k.endswith(".weight") and k[:-len(".weight")].replace(".", "_") == ldm.replace(".", "_")]
        assert len(matches) == 1, key
        assert shapes[matches[0]] == tuple(module.weight.shape)
    for name, module in te_layers:
        key = kohya_text_encoder_name(name)
        assert key.startswith("lora_te_text_model_encoder_layers_")
        original = "cond_stage_model_transformer_" + key[len("lora_te_"):]
        matches = [k for k in shapes if k.endswith(".weight") and k[:-len(".weight")].replace(".", "_") == original]
        assert len(matches) == 1 and shapes[matches[0]] == tuple(module.weight.shape), key
