"""Every attention backend usable here matches plain math attention, forward and backward."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from sksbooth.config import TrainConfig
from sksbooth.errors import ConfigError
from sksbooth.models.attention import BACKENDS, available_backends, resolve_attention, set_attention


@pytest.fixture(scope="module")
def tiny_unet():
    from sksbooth.models.tiny import build_tiny_pipeline
    return build_tiny_pipeline().unet


def run(unet, backend: str, device: str = "cpu"):
    unet = copy.deepcopy(unet).to(device)
    assert set_attention(unet, backend, device) == backend
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g).to(device)
    t = torch.tensor([10, 700]).to(device)
    hidden = torch.randn(2, 77, 32, generator=g).to(device)
    hidden.requires_grad_(True)
    out = unet(x, t, hidden).sample
    probe = torch.randn(out.shape, generator=g).to(device)
    (out * probe).sum().backward()
    grads = {n: p.grad.detach().cpu() for n, p in unet.named_parameters()}
    return out.detach().cpu(), grads, hidden.grad.cpu()


def test_every_available_backend_matches_math_in_outputs_and_gradients(tiny_unet):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = available_backends(device)
    assert {"sdpa", "sliced", "math"} <= set(backends)
    ref_out, ref_grads, ref_hidden = run(tiny_unet, "math", device)
    for backend in backends:
        out, grads, hidden_grad = run(tiny_unet, backend, device)
        assert relative_error(out, ref_out) < 1e-5, backend
        assert relative_error(hidden_grad, ref_hidden) < 1e-4, backend
        for name, g in ref_grads.items():
            assert relative_error(grads[name], g) < 1e-4, (backend, name, relative_error(grads[name], g))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over the whole tensor: fp32 summation order differs between kernels."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def test_backends_install_their_processor_in_every_attention_layer(tiny_unet):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor
    expected = {"sdpa": AttnProcessor2_0, "sliced": SlicedAttnProcessor, "math": AttnProcessor}
    unet = copy.deepcopy(tiny_unet)
    for backend, cls in expected.items():
        set_attention(unet, backend, "cpu")
        procs = unet.attn_processors
        assert procs and all(type(p) is cls for p in procs.values()), backend


def test_auto_picks_the_best_available_and_unusable_choices_fail_clearly():
    assert resolve_attention("auto", "cpu") == "sdpa"  # xformers is CUDA-only
    with pytest.raises(ConfigError, match="xformers"):
        resolve_attention("xformers", "cpu")
    assert set(BACKENDS) | {"auto"} == set(TrainConfig.__dataclass_fields__["attention"].metadata["choices"])


def test_the_xformers_flag_maps_to_the_xformers_backend(tmp_path):
    base = dict(pretrained_model_name_or_path="m", instance_data_dir="d", instance_prompt="p")
    assert TrainConfig(**base, enable_xformers_memory_efficient_attention=True).resolved_attention == "xformers"
    assert TrainConfig(**base).resolved_attention == "auto"
    with pytest.raises(ConfigError, match="conflicts"):
        TrainConfig(**base, enable_xformers_memory_efficient_attention=True, attention="sliced")
    if importlib.util.find_spec("xformers") is None:
        from sksbooth.train.setup import check_optional_features
        with pytest.raises(ConfigError, match="pip install xformers"):
            check_optional_features(TrainConfig(**base, attention="xformers"))


def test_training_records_the_backend_in_the_saved_config_and_logs(tiny_model, instance_dir, tmp_path):
    import json
    from sksbooth.train.loop import train
    logs = []
    cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                      instance_prompt="a photo of sks dog", output_dir=str(tmp_path / "out"), resolution=64,
                      train_batch_size=1, max_train_steps=1)  # attention="auto"
    result = train(cfg, [lambda e: logs.append(e.data.get("message")) if e.kind == "log" else None])
    assert "Attention backend: sdpa" in logs
    for saved in (result.model_path / "dreambooth_config.json", tmp_path / "out" / "dreambooth_config.json"):
        assert json.loads(saved.read_text())["attention"] == "sdpa"
