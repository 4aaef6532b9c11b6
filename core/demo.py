"""`dreambooth demo`: the whole DreamBooth job on a built-in default, with no model to download.

It builds a tiny random-weight Stable Diffusion model (cached in OUTPUT_DIR/base-model),
draws five photos of a toy robot with PIL, and fine-tunes with prior preservation,
sample grids, checkpoints and a loss plot. It shows every moving part in about a
minute on a laptop CPU; a random model draws noise, so the images mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

from PIL import Image, ImageDraw

DEMO_STEPS = 100
NUM_SUBJECT_IMAGES = 5
INSTANCE_PROMPT = "a photo of sks toy"
CLASS_PROMPT = "a photo of toy"
VALIDATION_PROMPTS = ("a photo of sks toy", "a photo of sks toy on the beach")


def draw_toy(rng: random.Random, size: int = 128) -> Image.Image:
    """A red toy robot with a yellow antenna ball and cyan eyes, placed and sized a little differently."""
    background = tuple(rng.randint(170, 235) for _ in range(3))
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    s = size / 128 * rng.uniform(0.85, 1.1)
    cx, cy = size / 2 + rng.uniform(-10, 10), size / 2 + rng.uniform(-6, 8)
    box = lambda x0, y0, x1, y1: (cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s)  # noqa: E731
    d.ellipse(box(-40, 44, 40, 54), fill=tuple(int(c * 0.7) for c in background))  # shadow
    d.rectangle(box(-26, -6, 26, 44), fill=(205, 30, 40), outline=(90, 10, 15), width=2)  # body
    d.rectangle(box(-20, -44, 20, -10), fill=(220, 45, 50), outline=(90, 10, 15), width=2)  # head
    d.line(box(0, -44, 0, -58), fill=(60, 60, 60), width=max(1, int(3 * s)))  # antenna
    d.ellipse(box(-6, -66, 6, -54), fill=(250, 210, 20))  # antenna ball
    for ex in (-10, 10):
        d.ellipse(box(ex - 5, -33, ex + 5, -23), fill=(40, 220, 230))  # eyes
    d.rectangle(box(-12, 8, 12, 26), fill=(250, 210, 20))  # chest panel
    for side in (-1, 1):  # arms and wheels
        d.rectangle(box(side * 26 + min(0, side * 10), 0, side * 26 + max(0, side * 10), 30), fill=(150, 20, 30))
        d.ellipse(box(side * 16 - 8, 40, side * 16 + 8, 56), fill=(30, 30, 30))
    return im.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC, fillcolor=background)


def make_subject_images(folder: Path, count: int = NUM_SUBJECT_IMAGES, seed: int = 0) -> Path:
    """Write `count` toy photos into `folder` (kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"toy_{i}.png"
        if not path.is_file():
            draw_toy(random.Random(seed * 1000 + i)).save(path)
    return folder


def ensure_base_model(folder: Path) -> Path:
    """Build the tiny random-weight model once; later runs reuse it."""
    if (folder / "model_index.json").is_file():
        return folder
    from .models.tiny import make_tiny_model
    print(f"Building a tiny random-weight Stable Diffusion model in {folder} ...")
    return make_tiny_model(folder)


def demo_config(out: Path, base: Path, subject: Path, steps: int):
    from .config import TrainConfig
    return TrainConfig(
        pretrained_model_name_or_path=str(base), instance_data_dir=str(subject), output_dir=str(out),
        instance_prompt=INSTANCE_PROMPT, class_prompt=CLASS_PROMPT, with_prior_preservation=True,
        num_class_images=4, sample_batch_size=4, resolution=64, train_batch_size=1, max_train_steps=steps,
        learning_rate=1e-3, lr_warmup_steps=0, seed=0, random_flip=True,
        checkpointing_steps=max(1, steps // 2), checkpoints_total_limit=2,
        validation_prompt="|".join(VALIDATION_PROMPTS), num_validation_images=4,
        validation_steps=max(1, steps // 2), num_validation_inference_steps=10)


def loss_summary(history_path: Path) -> tuple[float, float]:
    """Mean loss over the first and the last tenth of the run (at least one step each)."""
    losses = [json.loads(line)["loss"] for line in history_path.read_text(encoding="utf-8").splitlines() if line]
    k = max(1, math.ceil(len(losses) / 10))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def run_demo(output_dir: str | Path = "dreambooth-demo", max_train_steps: Optional[int] = None) -> int:
    """Train the demo end to end; returns a process exit code (0, or 130 when stopped)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Sleeping (not spinning) OpenMP threads: several times faster when other processes share the CPU.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective only if torch is not imported yet
    from .events import StopFlag
    from .progress import TqdmProgress
    from .train.loop import train

    out = Path(output_dir).expanduser().resolve()
    started = time.monotonic()
    base = ensure_base_model(out / "base-model")
    subject = make_subject_images(out / "subject")
    config = demo_config(out, base, subject, max_train_steps or DEMO_STEPS)
    print(f"Training on {NUM_SUBJECT_IMAGES} toy images in {subject} ({config.max_train_steps} steps, "
          f"prior preservation with {config.num_class_images} class images) ...")
    with StopFlag().handling_signals() as stop, TqdmProgress() as progress:
        result = train(config, callbacks=[progress], stop=stop)
    if result.stopped:
        print(f"Stopped at step {result.global_step}; checkpoint saved in {result.last_checkpoint}.")
        return 130
    print_report(out, result.model_path, time.monotonic() - started)
    return 0


def print_report(out: Path, model_path: Path, seconds: float) -> None:
    first, last = loss_summary(out / "loss_history.jsonl")
    print(f"""
Done in {seconds:.0f} s. Mean loss: {first:.4f} at the start -> {last:.4f} at the end.
  model:          {model_path}
  sample grids:   {out / 'samples'}
  loss plot:      {out / 'loss.png'}  (per step: {out / 'loss_history.jsonl'})
  checkpoints:    {out}/checkpoint-N
  class images:   {out / 'class_images'}
  subject images: {out / 'subject'}

Note: the demo's base model has tiny random weights, so every sample grid is noise.
It shows the pipeline works, not what DreamBooth can do. On a real checkpoint
(a local diffusers folder such as Stable Diffusion 1.5):

  dreambooth train --pretrained_model_name_or_path /path/to/stable-diffusion-v1-5 \\
    --instance_data_dir my_photos --instance_prompt "a photo of sks dog" \\
    --with_prior_preservation --class_prompt "a photo of dog" \\
    --output_dir my-dreambooth --max_train_steps 800 --learning_rate 5e-6 --train_batch_size 1
""")
