"""Whether this CPU does bf16 arithmetic in hardware.

bf16 autocast is a speed-up only where the CPU has bf16 instructions (AVX512-BF16, or AMX tiles): on
such a machine a bf16 matmul ran ~3.8x faster than fp32 and the toy world's VAE trained 2.2x faster. On
a CPU without them (seen here: an AMD EPYC with AVX2 only) torch converts every bf16 operand in software,
and the same VAE step took 16.7 s in bf16 against 2.1 s in fp32: a fixed time budget then buys an eighth
of the training.
"""

from __future__ import annotations

from typing import Optional

import torch


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX. torch exposes the check only as private helpers, so a
    torch without them counts as "no": the cost of a wrong "no" is fp32 speed, of a wrong "yes" 8x slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def cpu_autocast():
    """bf16 autocast on the CPU where it has bf16 instructions, a no-op (fp32) elsewhere."""
    return torch.autocast("cpu", torch.bfloat16, enabled=cpu_has_fast_bf16())


def cpu_autocast_name() -> str:
    """What `cpu_autocast` does on this machine, for logs and MADE.md."""
    return "bf16 autocast" if cpu_has_fast_bf16() else "fp32"


def slow_bf16_warning(device, mixed_precision: Optional[str]) -> Optional[str]:
    """A message for a bf16 run on a CPU that would emulate it; None otherwise."""
    if mixed_precision != "bf16" or torch.device(device).type != "cpu" or cpu_has_fast_bf16():
        return None
    return ("--mixed_precision bf16 on this CPU (no AVX512-BF16 or AMX) is emulated in software and runs several "
            "times slower than fp32; use --mixed_precision no here unless memory forces bf16.")
