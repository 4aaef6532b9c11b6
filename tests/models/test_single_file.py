"""Single-file checkpoints: diffusers <-> one .safetensors in the original (LDM) layout, offline."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sksbooth.errors import ModelLoadError
from sksbooth.models import single_file as sf
from sksbooth.models.hashing import file_sha256, legacy_model_hash, model_title, short_hash

DATA = Path(__file__).parent / "data"


def header(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata()


def reference_keys(name):
    """An independent key/shape list (see data/make_ldm_key_lists.py for how it was made)."""
    out = {}
    for line in (DATA / name).read_text().splitlines():
        k, shape = line.split("\t")
        out[k] = json.loads(shape)
    return out


def assert_same_modules(a, b, names, dtype=None):
    for name in names:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), (name, sorted(set(sa) ^ set(sb))[:5])
        for k in sa:
            want = sa[k].to(dtype) if dtype is not None and sa[k].is_floating_point() else sa[k]
            assert sb[k].dtype == want.dtype and torch.equal(sb[k], want), f"{name}.{k} differs"


def load_pipe(folder):
    from diffusers import DiffusionPipeline
    return DiffusionPipeline.from_pretrained(str(folder))


# ----------------------------------------------------------------------------- tiny round trips

def test_tiny_round_trip_fp32_is_exact(tiny_model, tmp_path):
    single, sha = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "tiny.safetensors", precision="fp32")
    assert sha == hashlib.sha256(single.read_bytes()).hexdigest()
    back = sf.single_file_to_diffusers(single, tmp_path / "back")
    a, b = load_pipe(tiny_model), load_pipe(back)
    assert_same_modules(a, b, ("unet", "vae", "text_encoder"))
    assert dict(a.scheduler.config) == dict(b.scheduler.config)
    assert b.tokenizer("a photo of sks dog").input_ids == a.tokenizer("a photo of sks dog").input_ids
    # and the round trip is stable: writing the reloaded model again gives the same tensors
    again, _ = sf.diffusers_folder_to_single_file(back, tmp_path / "again.safetensors", precision="fp32")
    s1, s2 = sf.CheckpointReader(single), sf.CheckpointReader(again)
    assert s1.shapes == s2.shapes
    t1, t2 = s1.tensors(("",)), s2.tensors(("",))
    assert all(torch.equal(t1[k], t2[k]) for k in t1)


def test_tiny_round_trip_fp16_equals_the_cast_weights(tiny_model, tmp_path):
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "tiny16.safetensors")  # fp16 default
    shapes, meta = header(single)
    with safe_open(str(single), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if not k.endswith("position_ids")} == {torch.float16}
    assert meta["sksbooth.precision"] == "fp16" and meta["sksbooth.family"] == "sd1"
    model = sf.load_single_file(single, dtype=torch.float16)
    assert_same_modules(load_pipe(tiny_model), model, ("unet", "vae", "text_encoder"), dtype=torch.float16)


@pytest.mark.parametrize("family", ["sd2", "sd2-v", "sdxl"])
def test_tiny_sd2_and_sdxl_round_trip(family, request, tmp_path):
    pipe = request.getfixturevalue({"sd2": "tiny_sd2", "sd2-v": "tiny_sd2_v", "sdxl": "tiny_sdxl"}[family])
    te2 = getattr(pipe, "text_encoder_2", None)
    path, _ = sf.save_single_file(tmp_path / f"{family}.safetensors", pipe.unet, pipe.vae, pipe.text_encoder, te2,
                                  pipe.scheduler, "fp32")
    shapes, meta = header(path)
    assert meta["sksbooth.family"] == family
    model = sf.load_single_file(path)
    assert model.family == family
    names = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if te2 is not None else ())
    assert_same_modules(pipe, model, names)
    assert model.scheduler_config["prediction_type"] == pipe.scheduler.config.prediction_type
    assert not any("q_proj" in k or "self_attn" in k for k in shapes if ".model." in k)  # OpenCLIP: fused in_proj
    if family == "sdxl":
        assert shapes["conditioner.embedders.1.model.text_projection"] == [48, 48]
        assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in shapes
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in shapes
        assert "model.diffusion_model.label_emb.0.0.weight" in shapes
    else:  # SD 2.x files hold all of OpenCLIP's layers; diffusers keeps all but the last
        assert shapes["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] == [96, 32]
        assert "cond_stage_model.model.transformer.resblocks.2.ln_1.weight" in shapes
        assert "cond_stage_model.model.transformer.resblocks.3.ln_1.weight" not in shapes
        assert shapes["cond_stage_model.model.text_projection"] == [32, 32]
        assert shapes["cond_stage_model.model.logit_scale"] == []
    out = sf.build_pipeline(model)("a photo", num_inference_steps=1, height=64, width=64, output_type="np",
                                   generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(out)).all()


def test_clip_keys_carry_transformers_4_names(tiny_model, tmp_path):
    """transformers 5 names CLIP's tensors without `text_model.`; the file must carry the original names."""
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "t.safetensors")
    shapes, _ = header(single)
    clip = [k for k in shapes if k.startswith("cond_stage_model.")]
    assert clip and all(k.startswith("cond_stage_model.transformer.text_model.") for k in clip)
    assert shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] == [1, 77]


def test_loads_files_whose_clip_keys_lack_text_model(tiny_model, tmp_path):
    """A file written by diffusers' converter script under transformers 5 (no `text_model.`) still loads exactly."""
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "t.safetensors", precision="fp32")
    state = sf.CheckpointReader(single).tensors(("",))
    p = "cond_stage_model.transformer."
    renamed = {(p + k[len(p + "text_model."):] if k.startswith(p + "text_model.") else k): v for k, v in state.items()}
    assert p + "embeddings.token_embedding.weight" in renamed
    odd = tmp_path / "no_text_model_prefix.safetensors"
    save_file(renamed, str(odd), metadata=header(single)[1])  # our metadata carries the tiny configs
    model = sf.load_single_file(odd)
    assert_same_modules(load_pipe(tiny_model), model, ("text_encoder", "unet"))


# ----------------------------------------------------------------------------- metadata and hashes

def test_metadata_and_a1111_hash(tiny_model, tmp_path):
    dest = tmp_path / "my-model.safetensors"
    path, sha = sf.diffusers_folder_to_single_file(tiny_model, dest, metadata={"sksbooth.steps": 7})
    assert sha == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert short_hash(sha) == sha[:10] and len(short_hash(sha)) == 10
    assert model_title(path, sha) == f"my-model.safetensors [{sha[:10]}]"
    assert len(legacy_model_hash(path)) == 8
    _, meta = header(path)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["sksbooth.steps"] == "7" and meta["sksbooth.base_model"] == tiny_model.name
    unet_file = tiny_model / "unet" / "diffusion_pytorch_model.safetensors"
    assert meta["sksbooth.base_model_hash"] == file_sha256(unet_file)[:10]
    assert set(json.loads(meta[sf.CONFIGS_KEY])) == {"unet", "vae", "text_encoder", "scheduler"}
    assert not list(tmp_path.glob(".*.tmp*")), "atomic write left a temporary file"


# ----------------------------------------------------------------------------- refusing and errors

def test_pickle_checkpoints_are_refused_unless_opted_in(tiny_model, tmp_path):
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "t.safetensors", precision="fp32")
    state = sf.CheckpointReader(single).tensors(("",))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, ckpt)
    from sksbooth.models.load import check_model_path, load_components
    for load in (lambda: sf.load_single_file(ckpt), lambda: load_components(str(ckpt))):
        with pytest.raises(ModelLoadError) as e:
            load()
        assert "--allow_pickle_checkpoints" in str(e.value) and "run any code" in str(e.value)
    assert check_model_path(str(ckpt), allow_pickle=True) == ckpt
    tiny_configs = json.loads(header(single)[1][sf.CONFIGS_KEY])  # a pickle file has no metadata to carry them
    model = sf.load_single_file(ckpt, allow_pickle=True, configs=tiny_configs)  # torch.load(weights_only=True)
    assert_same_modules(load_pipe(tiny_model), model, ("unet", "vae", "text_encoder"))


def test_truncated_file(tiny_model, tmp_path):
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "t.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(single.read_bytes()[: single.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        sf.load_single_file(cut)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        sf.load_single_file(tiny)


@pytest.mark.parametrize("content", [b"\0" * 64, b"PK\x03\x04 a zip file renamed" + b"x" * 100,
                                     b"<html>404 not found</html>" * 10])
def test_foreign_file(tmp_path, content):
    f = tmp_path / "download.safetensors"
    f.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid safetensors file|truncated"):
        sf.load_single_file(f)


def test_valid_safetensors_that_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8)}, str(f))
    with pytest.raises(ModelLoadError, match="LoRA or other add-on"):
        sf.load_single_file(f)
    g = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(g))
    with pytest.raises(ModelLoadError, match="not a full Stable Diffusion checkpoint"):
        sf.load_single_file(g)


def test_damaged_checkpoint_missing_tensors(tiny_model, tmp_path):
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "t.safetensors")
    state = sf.CheckpointReader(single).tensors(("",))
    del state["model.diffusion_model.out.2.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=header(single)[1])
    with pytest.raises(ModelLoadError, match="UNet"):
        sf.load_single_file(broken)


# ----------------------------------------------------------------------------- full-size SD 1.5 and SD 2.x layouts

def random_model(build, dtype=torch.float16, seed=0):
    """A full-size model with random weights, fast: built on the meta device, then every parameter
    filled from one shared block of random numbers at a different offset (memcpy speed, no NaNs),
    so no two tensors hold the same values and a swapped pair would be caught."""
    from accelerate import init_empty_weights
    with init_empty_weights():
        model = build()
    params = list(model.named_parameters())
    largest = max(p.numel() for _, p in params)
    block = torch.empty(largest + (1 << 20), dtype=dtype).uniform_(-0.05, 0.05,
                                                                   generator=torch.Generator().manual_seed(seed))
    for i, (name, p) in enumerate(params):
        offset = (i * 7919) % (1 << 20)
        data = block[offset:offset + p.numel()].reshape(p.shape).clone()
        module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        module._parameters[name.rpartition(".")[2]] = torch.nn.Parameter(data, requires_grad=False)
    return model


def sd_models(family, dtype=torch.float16, meta=False):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    cfg = sf.bundled_configs(family)
    builders = (lambda: UNet2DConditionModel(**{k: v for k, v in cfg["unet"].items() if not k.startswith("_")}),
                lambda: AutoencoderKL(**{k: v for k, v in cfg["vae"].items() if not k.startswith("_")}),
                lambda: CLIPTextModel(sf._clip_config(cfg["text_encoder"])))
    if meta:
        with init_empty_weights(include_buffers=True):
            return [b() for b in builders], cfg
    return [random_model(b, dtype, seed=i) for i, b in enumerate(builders)], cfg


def test_full_size_sd15_round_trip_and_original_key_layout(tmp_path):
    """SD 1.5's architecture at full size (random weights, fp16 storage): exact round trip, and every
    tensor name and shape is the original checkpoint's, per the list made from the original ldm code."""
    from diffusers import DDIMScheduler
    start = time.monotonic()
    (unet, vae, te), cfg = sd_models("sd1")
    path, sha = sf.save_single_file(tmp_path / "sd15-random.safetensors", unet, vae, te, None,
                                    DDIMScheduler.from_config(cfg["scheduler"]), "fp16")
    shapes, meta = header(path)
    assert shapes == reference_keys("sd15_ldm_keys.txt")
    assert meta["sksbooth.family"] == "sd1" and len(sha) == 64
    # the configs bundled for SD 1.x (what a file from elsewhere, without our metadata, loads with)
    model = sf.load_single_file(path, dtype=torch.float16, configs=sf.bundled_configs("sd1"))
    assert model.family == "sd1"
    for name, original in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        sa, sb = original.state_dict(), getattr(model, name).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs"
    print(f"full-size SD 1.5 round trip: {time.monotonic() - start:.1f} s")
    path.unlink()  # 2 GB: do not leave it in pytest's kept temp folders


def test_sd2_key_layout_matches_the_original(tmp_path):
    """SD 2.x (OpenCLIP ViT-H, fused q/k/v, 24 layers where diffusers keeps 23): names and shapes
    match the list made from the original ldm + open_clip code. Shapes only (meta tensors)."""
    (unet, vae, te), cfg = sd_models("sd2", meta=True)
    state = sf.to_ldm_state_dict(unet, vae, te, family="sd2")
    assert {k: list(v.shape) for k, v in state.items()} == reference_keys("sd2_ldm_keys.txt")


def test_loading_our_file_is_silent(tiny_model, tmp_path, recwarn, caplog):
    """No warnings from diffusers/transformers while loading: every tensor is used, none is missing."""
    import logging
    single, _ = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "t.safetensors")
    recwarn.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sf.build_pipeline(sf.load_single_file(single, dtype=torch.float16))
    assert not [str(w.message) for w in recwarn.list]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_from_single_file_reads_our_file(family, tiny_model, request, tmp_path):
    """A second loader, diffusers' own from_single_file (given the config folder offline), gets the same weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    if family == "sd1":
        pipe, folder = load_pipe(tiny_model), tiny_model
    else:
        pipe, folder = request.getfixturevalue(f"tiny_{family}"), tmp_path / "folder"
        pipe.save_pretrained(folder)
    path, _ = sf.save_single_file(tmp_path / f"{family}.safetensors", pipe.unet, pipe.vae, pipe.text_encoder,
                                  getattr(pipe, "text_encoder_2", None), pipe.scheduler, "fp32")
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    other = cls.from_single_file(str(path), config=str(folder), local_files_only=True)
    names = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ())
    assert_same_modules(pipe, other, names)


def test_bundled_sdxl_configs_build_an_sdxl_shaped_file():
    """SDXL base at full size, shapes only: the bundled configs build it and the saved layout is detected."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from sksbooth.models.detect import detect_family
    cfg = sf.bundled_configs("sdxl")
    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel(**{k: v for k, v in cfg["unet"].items() if not k.startswith("_")})
        vae = AutoencoderKL(**{k: v for k, v in cfg["vae"].items() if not k.startswith("_")})
        te = CLIPTextModel(sf._clip_config(cfg["text_encoder"]))
        te2 = CLIPTextModelWithProjection(sf._clip_config(cfg["text_encoder_2"]))
    state = sf.to_ldm_state_dict(unet, vae, te, te2)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert detect_family(shapes) == "sdxl"
    # well-known SDXL base shapes
    assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert shapes["model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"] == (1280, 2048)
    assert shapes["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert shapes["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert shapes["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert "model.diffusion_model.output_blocks.8.0.skip_connection.weight" in shapes
    assert not any(k.startswith("model.diffusion_model.input_blocks.9") for k in shapes)
