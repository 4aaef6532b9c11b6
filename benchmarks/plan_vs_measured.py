"""`dreambooth plan` against the measured peak RSS of real training runs on CPU.

Builds the full-size SD 1.5 architecture with random weights once (a diffusers folder under /tmp,
fp32 storage), then runs `dreambooth train --max_train_steps 2` in a subprocess per configuration
(3 instance images, prior preservation with a pre-filled class folder, so nothing is generated)
and reads the child's peak RSS (ru_maxrss from os.wait4). Prints prediction, measured and ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/plan_vs_measured.py [--only NAME ...]

On CPU the "device" is the host RAM: the planner's CPU prediction includes the process baseline
(interpreter + torch/diffusers/transformers), and the frozen VAE and text encoder, which stay in RAM.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/plan_bench")
MODEL = WORK / "sd15-random"
GB = 2 ** 30

COMMON = ["--instance_prompt", "a photo of sks dog", "--class_prompt", "a photo of dog",
          "--with_prior_preservation", "--num_class_images", "3", "--train_batch_size", "1",
          "--max_train_steps", "2", "--attention", "sdpa", "--seed", "0", "--checkpointing_steps", "1000000"]

CONFIGS = {  # name: extra flags
    "lora-256": ["--use_lora", "--resolution", "256"],
    "lora-512": ["--use_lora", "--resolution", "512"],
    "lora-te-256": ["--use_lora", "--train_text_encoder", "--resolution", "256"],
    "lora-384": ["--use_lora", "--resolution", "384"],
    "lora-256-batch2": ["--use_lora", "--resolution", "256", "--train_batch_size", "2"],
    "full-gc-bf16-adafactor-256": ["--gradient_checkpointing", "--mixed_precision", "bf16",
                                   "--optimizer", "adafactor", "--resolution", "256"],
}


def random_model(build, seed):
    """Full-size, random weights, fast (as tests/models/test_single_file.py): fill from one random block."""
    from accelerate import init_empty_weights
    with init_empty_weights():
        model = build()
    params = list(model.named_parameters())
    block = torch.empty(max(p.numel() for _, p in params) + (1 << 20)).uniform_(
        -0.05, 0.05, generator=torch.Generator().manual_seed(seed))
    for i, (name, p) in enumerate(params):
        offset = (i * 7919) % (1 << 20)
        module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        module._parameters[name.rpartition(".")[2]] = torch.nn.Parameter(
            block[offset:offset + p.numel()].reshape(p.shape).clone(), requires_grad=False)
    return model


def build_model() -> Path:
    if (MODEL / "model_index.json").is_file():
        return MODEL
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel
    from sksbooth.models import single_file as sf
    cfg = sf.bundled_configs("sd1")
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
    unet = random_model(lambda: UNet2DConditionModel(**strip(cfg["unet"])), 0)
    vae = random_model(lambda: AutoencoderKL(**strip(cfg["vae"])), 1)
    te = random_model(lambda: CLIPTextModel(sf._clip_config(cfg["text_encoder"])), 2)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=sf.make_tokenizer("sd1"),
                                   scheduler=sf.make_scheduler_from_config(cfg["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    tmp = MODEL.with_name(MODEL.name + ".partial")
    pipe.save_pretrained(tmp)
    tmp.rename(MODEL)
    return MODEL


def image_folders() -> tuple[Path, Path]:
    from PIL import Image, ImageDraw
    folders = WORK / "instance", WORK / "class"
    for folder, colour in zip(folders, ((240, 200, 20), (20, 200, 240))):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            im = Image.new("RGB", (600, 560), (30, 30, 200))
            ImageDraw.Draw(im).ellipse((60 + 20 * i, 60, 400 + 20 * i, 400), fill=colour)
            im.save(folder / f"img_{i}.png")
    return folders


def flag(args: list[str], name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def predict(args: list[str]) -> int:
    batch = int(flag(args, "--train_batch_size", COMMON[COMMON.index("--train_batch_size") + 1]))
    from sksbooth.config import TrainConfig
    from sksbooth.plan import plan_memory
    c = TrainConfig(pretrained_model_name_or_path=str(MODEL), instance_data_dir="-", instance_prompt="-",
                    class_prompt="-", with_prior_preservation=True, train_batch_size=batch, attention="sdpa",
                    resolution=int(flag(args, "--resolution")), use_lora="--use_lora" in args,
                    train_text_encoder="--train_text_encoder" in args,
                    gradient_checkpointing="--gradient_checkpointing" in args,
                    mixed_precision=flag(args, "--mixed_precision"), optimizer=flag(args, "--optimizer", "adamw"))
    return plan_memory(c, device="cpu").peak


def guard(pid: int, limit: int = int(10.5 * GB)) -> None:
    """Stop the run (by its pid) if its RSS passes the limit: the machine is shared."""
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        rss = next((int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith("VmRSS:")), 0)
        if rss > limit:
            os.kill(pid, 9)
            return
        time.sleep(0.2)


def measure(name: str, extra: list[str], instance: Path, klass: Path) -> tuple[list[str], int, float]:
    out = WORK / "runs" / name
    cmd = [str(ROOT / ".venv" / "bin" / "dreambooth"), "train", "--pretrained_model_name_or_path", str(MODEL),
           "--instance_data_dir", str(instance), "--class_data_dir", str(klass), "--output_dir", str(out),
           *COMMON, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.time()
    log = open(WORK / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    threading.Thread(target=guard, args=(proc.pid,), daemon=True).start()
    _, status, usage = os.wait4(proc.pid, 0)
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:  # None: failed, or stopped by the guard
        print(f"{name} failed or passed the guard's limit (see {WORK / (name + '.log')})", flush=True)
        return cmd, None, time.time() - start
    return cmd, usage.ru_maxrss * 1024, time.time() - start  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=list(CONFIGS))
    p.add_argument("--build_only", action="store_true")
    a = p.parse_args()
    build_model()
    if a.build_only:
        return
    instance, klass = image_folders()
    rows = []
    print(f"{'configuration':<30s}{'predicted':>11s}{'measured':>11s}{'ratio':>8s}{'time':>8s}", flush=True)
    for name in a.only:
        cmd, peak, secs = measure(name, CONFIGS[name], instance, klass)
        pred = predict(CONFIGS[name])
        if peak is None:
            print(f"{name:<30s}{pred / GB:9.2f}GB{'> 10.5GB':>11s}", flush=True)
            continue
        rows.append((name, pred, peak, peak / pred, secs, cmd))
        print(f"{name:<30s}{pred / GB:9.2f}GB{peak / GB:9.2f}GB{peak / pred:8.3f}{secs:7.0f}s", flush=True)
        print("  " + " ".join(cmd), flush=True)
    ok = sum(abs(r[3] - 1) <= 0.15 for r in rows)
    print(f"{ok}/{len(rows)} within 15% of the prediction")


if __name__ == "__main__":
    main()
