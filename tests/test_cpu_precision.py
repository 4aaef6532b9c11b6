"""bf16 autocast only where the CPU has bf16 instructions: elsewhere it is emulated and ~8x slower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sksbooth.cpu_precision import cpu_has_fast_bf16, slow_bf16_warning
from sksbooth.toyworld.pretrain import PretrainConfig, train_vae
from sksbooth.toyworld.world import make_dataset


def cpuinfo_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    line = next(l for l in info.read_text().splitlines() if l.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def test_the_check_agrees_with_the_cpus_own_flags():
    flags = cpuinfo_flags()
    assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_a_bf16_run_on_the_cpu_is_warned_about_only_where_it_is_emulated():
    emulated = not cpu_has_fast_bf16()
    assert (slow_bf16_warning("cpu", "bf16") is not None) == emulated
    assert slow_bf16_warning("cpu", "no") is None and slow_bf16_warning("cpu", None) is None
    assert slow_bf16_warning("cuda:0", "bf16") is None  # GPUs do bf16 in hardware


def test_the_toy_world_vae_trains_in_bf16_only_where_the_cpu_has_it():
    conv_dtypes = set()

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            conv_dtypes.add(output.dtype)

    images, _, _ = make_dataset(8, seed=0)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        train_vae(images, PretrainConfig(vae_steps=1, vae_batch_size=2), log=lambda _: None)
    finally:
        handle.remove()
    assert conv_dtypes == ({torch.bfloat16} if cpu_has_fast_bf16() else {torch.float32})


def test_toyworld_pretrain_warns_of_bf16_where_it_is_emulated():
    from sksbooth.toyworld.pretrain import train_denoiser
    latents, ids = torch.randn(4, 4, 8, 8), torch.full((4, 77), 49407)
    ids[:, 0] = 49406
    lines = []
    config = PretrainConfig(unet_steps=1, unet_batch_size=2, text_width=32, unet_channels=(32, 64), mixed_precision="bf16")
    train_denoiser(latents, ids, ids[0], config, log=lines.append)
    assert any("emulated in software" in line for line in lines) == (not cpu_has_fast_bf16())
