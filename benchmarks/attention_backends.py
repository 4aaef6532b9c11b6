"""Time and peak memory of one SD attention layer, forward + backward, per attention backend.

Each backend runs in its own process so that peak RSS (CPU) / max_memory_allocated (CUDA) is its own.
Default shape: SD 1.x's first self-attention at 512 px (4096 tokens, 320 channels, 8 heads of 40).

    python benchmarks/attention_backends.py [--tokens 4096] [--dtype bf16] [--batch 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(backend: str, tokens: int, channels: int, heads: int, batch: int, dtype: str, repeats: int) -> dict:
    import resource
    import time

    import torch
    from diffusers.models.attention_processor import Attention, SlicedAttnProcessor

    from sksbooth.models.attention import BACKENDS, resolve_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolve_attention(backend, device)  # raises if not usable here
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    torch.manual_seed(0)
    attn = Attention(channels, heads=heads, dim_head=channels // heads).to(device, dt)
    # a lone layer: the sliced factory (per-layer slice sizes for a whole model) is replayed by hand
    attn.set_processor(SlicedAttnProcessor(max(1, heads // 2)) if backend == "sliced" else BACKENDS[backend].make(attn))
    x = torch.randn(batch, tokens, channels, device=device, dtype=dt, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        attn(x).float().pow(2).mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    return {"backend": backend, "dtype": dtype, "seconds": min(times[1:]), "peak_extra_MB": round(peak / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--channels", type=int, default=320)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["xformers", "sdpa", "sliced", "math"])
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.tokens, a.channels, a.heads, a.batch, a.dtype, a.repeats)))
        return
    for backend in a.backends:
        cmd = [sys.executable, __file__, "--one", backend, "--tokens", str(a.tokens), "--channels", str(a.channels),
               "--heads", str(a.heads), "--batch", str(a.batch), "--dtype", a.dtype, "--repeats", str(a.repeats)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            print(f"{backend:9s} unavailable: {run.stderr.strip().splitlines()[-1] if run.stderr else '?'}")
        else:
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{backend:9s} {r['dtype']}  {r['seconds'] * 1000:8.1f} ms  peak +{r['peak_extra_MB']} MB")


if __name__ == "__main__":
    main()
