"""The memory planner: exact parameter counts, and every saver lowers the part it should."""

from __future__ import annotations

import pytest

from sksbooth.config import TrainConfig
from sksbooth.plan import build_on_meta, count, plan_memory, read_configs


def cfg(arch="sd1", **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path=arch, instance_data_dir="-", instance_prompt="-", train_batch_size=1,
                resolution=1024 if arch == "sdxl" else 512)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sd1():
    return build_on_meta(read_configs("sd1"))


def test_parameter_counts_are_those_of_the_real_models(sd1):
    assert round(count(sd1["unet"]) / 1e6, 2) == 859.52  # SD 1.5 UNet
    assert round(count(sd1["vae"]) / 1e6, 2) == 83.65
    assert round(count(sd1["text_encoder"]) / 1e6, 2) == 123.06  # CLIP ViT-L/14 text tower
    xl = build_on_meta(read_configs("sdxl"))
    assert round(count(xl["unet"]) / 1e6, 1) == 2567.5
    assert round(count(xl["text_encoder_2"]) / 1e6, 1) == 694.7  # OpenCLIP bigG text tower + projection


def test_each_saver_lowers_its_part(sd1):
    plan = lambda **kw: plan_memory(cfg(**kw), models=sd1)
    act = lambda p: p.device["UNet activations"]
    base = plan(cache_latents=False, attention="math", set_grads_to_none=False)
    assert base.device["optimizer state (adamw)"] == 8 * 859_520_964
    assert base.device["gradients (fp32)"] == 4 * 859_520_964
    freed = plan(cache_latents=False, attention="math")  # gradients freed between steps (the default)
    assert base.peak - freed.peak == min(4 * 859_520_964, act(base))
    assert act(plan(attention="math", gradient_checkpointing=True)) < 0.25 * act(base)
    assert act(plan(attention="sdpa")) < act(base)
    assert act(plan(attention="sliced")) == act(base)  # slicing does not change what backward keeps
    assert act(plan(attention="math", mixed_precision="bf16")) == act(base) // 2
    opt = lambda p: next(v for k, v in p.device.items() if k.startswith("optimizer"))
    assert opt(plan(optimizer="adamw8bit")) == opt(base) // 4
    # transformers' Adafactor factors the last two dims: 3x3 convolutions barely shrink, so ~ 8-bit AdamW
    assert 0.2 * opt(base) < opt(plan(optimizer="adafactor")) < 0.3 * opt(base)
    assert "VAE weights" in base.device and "VAE weights" not in plan().device
    assert "text encoder weights" not in plan(pre_compute_text_embeddings=True).device
    assert plan(use_lora=True).peak < 0.5 * base.peak
    assert plan(use_ema=True).cpu["EMA weights"] == 4 * 859_520_964 and "EMA weights" not in plan(use_ema=True).device
    assert plan(train_text_encoder=True, set_grads_to_none=False).device["gradients (fp32)"] == \
        4 * (859_520_964 + 123_060_480)


def test_sdxl_plans_and_the_cli_prints_the_plan(capsys):
    from sksbooth.cli import main
    xl = plan_memory(cfg("sdxl", gradient_checkpointing=True, mixed_precision="bf16", optimizer="adafactor"))
    assert 15 * 2**30 < xl.peak < 40 * 2**30
    assert main(["plan", "--arch", "sd1", "--train_batch_size", "1", "--mixed_precision", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "= peak" in out and "optimizer state (adamw)" in out


def test_training_logs_the_plan(tiny_model, instance_dir, tmp_path):
    from sksbooth.train.loop import train
    logs = []
    train(TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                      instance_prompt="a photo of sks dog", output_dir=str(tmp_path / "out"), resolution=64,
                      train_batch_size=1, max_train_steps=1),
          [lambda e: logs.append(e.data.get("message", "")) if e.kind == "log" else None])
    assert any(m.startswith("Memory plan") and "= peak" in m for m in logs)


def test_parse_size():
    from sksbooth.plan import parse_size
    assert parse_size("8GB") == 8 * 2**30 == parse_size("8G") == parse_size("8 gib") == parse_size("8")
    assert parse_size("8000MB") == 8000 * 2**20
    assert parse_size("12.5G") == int(12.5 * 2**30)
    assert parse_size("512b") == 512
    for bad in ("", "GB", "8 XB", "-1GB", "eight"):
        with pytest.raises(ValueError):
            parse_size(bad)
    from sksbooth.errors import ConfigError
    with pytest.raises(ConfigError, match="--memory_budget"):
        cfg(memory_budget="lots")


def test_weights_saved_for_backward_are_not_activations(sd1):
    from sksbooth.plan import unet_activation_bytes
    tiny = unet_activation_bytes(sd1["unet"], 1, 4, "sdpa", False)  # 32 px: activations all but vanish
    assert tiny < 0.02 * 4 * count(sd1["unet"])


def test_cpu_plans_hold_the_whole_process(sd1):
    gpu, cpu = plan_memory(cfg(), models=sd1), plan_memory(cfg(), models=sd1, device="cpu")
    assert "VAE weights" not in gpu.device and "VAE weights" in cpu.device  # cached latents: the VAE stays in RAM
    assert cpu.device["process (python + libraries)"] > 0 and cpu.peak > gpu.peak
    assert "backward working set (CPU)" in cpu.device and "backward working set (CPU)" not in gpu.device
    full = plan_memory(cfg(mixed_precision="bf16"), models=sd1)
    assert full.device["bf16 weight copies (autocast)"] == 2 * 859_520_964


def test_memory_budget_prefers_quality_then_fewest_savers(sd1):
    from sksbooth.plan import fit_budget
    fit = lambda gb, **kw: fit_budget(cfg(**kw), gb * 2**30, models=sd1)
    config, plan, flags = fit(80)  # everything fits: full UNet + text encoder, no saver
    assert config.train_text_encoder and not config.use_lora and not config.gradient_checkpointing
    assert flags == "--train_text_encoder --mixed_precision no --optimizer adamw"
    from dataclasses import replace
    from sksbooth.plan import candidate_settings
    for gb in (12, 8, 5):
        config, plan, flags = fit(gb)
        assert plan.peak <= gb * 2**30
        order = list(candidate_settings())
        chosen = next(i for i, s in enumerate(order) if all(getattr(config, k) == v for k, v in s.items()))
        assert all(plan_memory(replace(cfg(), **s), models=sd1).peak > gb * 2**30 for s in order[:chosen])
        if gb == 12:  # SD 1.5 at 512 px: full UNet + text encoder with one saver
            assert not config.use_lora and config.train_text_encoder
        elif gb == 8:  # the full fine-tune still fits, with every saver incl. the fused backward pass
            assert not config.use_lora and flags.endswith("--fused_backward_pass")
        else:  # 5 GB: LoRA
            assert config.use_lora and flags.startswith("--use_lora")
    assert fit(0.5) is None


def test_cli_memory_budget(capsys):
    from sksbooth.cli import main
    assert main(["plan", "--arch", "sd1", "--train_batch_size", "1", "--memory_budget", "5GB"]) == 0
    assert "--use_lora" in capsys.readouterr().out
    assert main(["plan", "--arch", "sd1", "--train_batch_size", "1", "--memory_budget", "1GB"]) == 1
    assert "Nothing fits in 1.00 GB" in capsys.readouterr().out


def test_training_warns_when_the_plan_exceeds_the_budget(tiny_model, instance_dir, tmp_path):
    from sksbooth.plan import MemoryPlan, budget_warning
    from sksbooth.train.loop import train
    assert budget_warning(MemoryPlan(device={"x": 2**30}), "2GB") is None
    assert budget_warning(MemoryPlan(device={"x": 2**50}), None, "cpu").startswith("WARNING")  # > host RAM
    logs = []
    train(TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                      instance_prompt="a photo of sks dog", output_dir=str(tmp_path / "out"), resolution=64,
                      train_batch_size=1, max_train_steps=1, memory_budget="1MB"),
          [lambda e: logs.append(e.data.get("message", "")) if e.kind == "log" else None])
    assert any(m.startswith("WARNING") and "--memory_budget 1MB" in m for m in logs)
