"""Run our trainer and diffusers' examples/dreambooth/train_dreambooth.py side by side on the same job.

    python benchmarks/compare_diffusers.py PATH/TO/train_dreambooth.py [--model DIR] [--steps 20]
        [--resolution 64] [--batch 1] [--mixed_precision no|bf16] [--extra "--gradient_checkpointing"]
        [--with_prior_preservation] [--floor] [--no_uncached] [--repeats 2]

The diffusers script is not part of this repository: pass the path of a copy (for example
`git --git-dir=<diffusers clone>/.git show HEAD:examples/dreambooth/train_dreambooth.py > /tmp/x.py`).
Without --model a tiny random-weight model is built (sksbooth make-tiny-model), and without
--instance_dir synthetic subject images are drawn, so the comparison runs offline anywhere.
If torchvision cannot be imported (e.g. no matching wheel), the script runs through a small
launcher that gives it a PIL/numpy stand-in for the four transforms it uses.

Reported per trainer: wall time of a whole run (start-up, model loading, training, saving), seconds
per step in the steady state (read from each trainer's own progress bar: from the end of step 1 to
the end of the last step, divided by the steps between; so start-up, first-step warm-up and saving
are left out alike for both), and the peak resident memory of the training process; then the ratios
ours / diffusers'. Runs alternate (diffusers, ours, diffusers, ours, ... for --repeats rounds) so a
drift in machine load touches all trainers alike; the figures are medians over the rounds.
With --with_prior_preservation both trainers get the same pre-filled class folder (nothing is
generated). --floor also times the UNet's forward + backward alone on the same batch (latents
and text embeddings given), the floor a trainer with cached latents and embeddings approaches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCHVISION_SHIM = '''"""Stand-in for the torchvision.transforms used by diffusers' DreamBooth script (PIL + numpy)."""
import enum, random
import numpy as np
import torch
from PIL import Image

class InterpolationMode(enum.Enum):
    BILINEAR = Image.Resampling.BILINEAR
    BICUBIC = Image.Resampling.BICUBIC

class Compose:
    def __init__(self, ts): self.ts = ts
    def __call__(self, x):
        for t in self.ts: x = t(x)
        return x

class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR): self.size, self.mode = size, interpolation
    def __call__(self, im):
        w, h = im.size; s = self.size / min(w, h)
        return im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), self.mode.value)

class CenterCrop:
    def __init__(self, size): self.size = size
    def __call__(self, im):
        w, h = im.size; l, t = (w - self.size) // 2, (h - self.size) // 2
        return im.crop((l, t, l + self.size, t + self.size))

class RandomCrop(CenterCrop):
    def __call__(self, im):
        w, h = im.size; l, t = random.randint(0, w - self.size), random.randint(0, h - self.size)
        return im.crop((l, t, l + self.size, t + self.size))

class ToTensor:
    def __call__(self, im):
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

class Normalize:
    def __init__(self, mean, std): self.mean, self.std = mean[0], std[0]
    def __call__(self, x): return (x - self.mean) / self.std
'''

# transformers and diffusers are imported first, so they record torchvision as absent and never reach
# for its other modules; only then does the script's `from torchvision import transforms` find the shim.
RUN_WITH_SHIM = '''import runpy, sys, types
from pathlib import Path
import diffusers, transformers  # noqa: F401  (their optional-package checks run now)
import diffusers.training_utils, diffusers.optimization  # noqa: F401
sys.path.insert(0, str(Path(__file__).parent))
import tv_transforms_shim
sys.modules["torchvision"] = types.ModuleType("torchvision")
sys.modules["torchvision"].transforms = tv_transforms_shim
sys.modules["torchvision.transforms"] = tv_transforms_shim
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
'''

MEASURE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
           "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
           "'peak_MB': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))")


def measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Run cmd in a fresh wrapper process, so the peak RSS is that of this run alone."""
    with open(log, "w") as f:
        out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise SystemExit(f"failed ({result['rc']}): {shlex.join(cmd)}\nsee {log}")
    return result


def draw_images(folder: Path, n: int, colour: tuple, prefix: str) -> Path:
    from PIL import Image, ImageDraw
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (96, 80), (30, 30, 200))
        ImageDraw.Draw(im).ellipse((10 + 4 * i, 10, 60 + 4 * i, 60), fill=colour)
        im.save(folder / f"{prefix}_{i}.png")
    return folder


FLOOR = """import json, sys, time, torch
from diffusers import UNet2DConditionModel
model, images, px, dtype, gc, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", int(sys.argv[6])
unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
unet.set_attn_processor(__import__("diffusers.models.attention_processor", fromlist=["x"]).AttnProcessor2_0())
if gc:
    unet.enable_gradient_checkpointing()
unet.train()
g = torch.Generator().manual_seed(0)
x = torch.randn(images, 4, px // 8, px // 8, generator=g)
t = torch.randint(0, 1000, (images,), generator=g)
ctx = torch.randn(images, 77, unet.config.cross_attention_dim, generator=g)
autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
times = []
for i in range(steps + 1):
    start = time.perf_counter()
    with autocast:
        loss = torch.nn.functional.mse_loss(unet(x, t, ctx).sample.float(), x)
    loss.backward()
    unet.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds_per_step": sum(times[1:]) / steps}))
"""


def unet_floor(model: str, images: int, resolution: int, mixed_precision: str, gradient_checkpointing: bool,
               steps: int, env: dict) -> float:
    """Seconds for one UNet forward + backward on `images` latents (first iteration not counted)."""
    out = subprocess.run([sys.executable, "-c", FLOOR, model, str(images), str(resolution), mixed_precision,
                          "1" if gradient_checkpointing else "0", str(steps)], env=env, check=True,
                         stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("diffusers_script", help="Path of diffusers' examples/dreambooth/train_dreambooth.py.")
    p.add_argument("--model", help="A diffusers model folder (default: a tiny random model).")
    p.add_argument("--instance_dir", help="Subject images (default: synthetic).")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--with_prior_preservation", action="store_true")
    p.add_argument("--extra", default="", help="More flags given to both trainers, e.g. '--gradient_checkpointing'.")
    p.add_argument("--ours_extra", default="", help="Also run ours with these extra flags (a third row).")
    p.add_argument("--floor", action="store_true", help="Also time the UNet forward + backward alone.")
    p.add_argument("--no_uncached", action="store_true", help="Skip our run without latent caching.")
    p.add_argument("--repeats", type=int, default=2, help="Rounds of alternating runs (figures are medians).")
    p.add_argument("--work", help="Working folder (default: a temporary one).")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="dreambooth-bench-"))
    # Our CLI makes idle OpenMP threads sleep rather than spin (far faster on a shared CPU); give
    # diffusers' script the same setting, so the comparison is of the trainers, not of that knob.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
               OMP_WAIT_POLICY="PASSIVE")
    model = a.model
    if model is None:
        model = str(work / "tiny-sd")
        if not Path(model).exists():
            subprocess.run([sys.executable, "-m", "sksbooth.cli", "make-tiny-model", model], env=env, check=True,
                           stdout=subprocess.DEVNULL)
    instances = a.instance_dir or str(draw_images(work / "instance", 4, (240, 200, 20), "subject"))
    prior = []
    if a.with_prior_preservation:
        classes = draw_images(work / "class", 4, (20, 200, 90), "class")
        prior = ["--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", "a photo of dog",
                 "--num_class_images", "4", "--prior_loss_weight", "1.0"]
    script = [a.diffusers_script]
    try:
        import torchvision  # noqa: F401
    except Exception:
        (work / "tv_transforms_shim.py").write_text(TORCHVISION_SHIM)
        (work / "run_with_shim.py").write_text(RUN_WITH_SHIM)
        script = [str(work / "run_with_shim.py"), a.diffusers_script]

    common = ["--pretrained_model_name_or_path", model, "--instance_data_dir", instances,
              "--instance_prompt", "a photo of sks dog", "--resolution", str(a.resolution),
              "--train_batch_size", str(a.batch), "--max_train_steps", str(a.steps), "--learning_rate", "1e-4",
              "--lr_warmup_steps", "0", "--seed", "0", "--checkpointing_steps", "100000",
              "--mixed_precision", a.mixed_precision, *prior, *shlex.split(a.extra)]
    ours = [sys.executable, "-m", "sksbooth.cli", "train", *common]
    trainers = {"diffusers": [sys.executable, *script, *common], "sksbooth": ours}
    if not a.no_uncached:
        trainers["sksbooth (no latent cache)"] = [*ours, "--no-cache_latents"]
    if a.ours_extra:  # an opt-in saver of ours that diffusers' script lacks, e.g. --fused_backward_pass
        trainers[f"sksbooth {a.ours_extra}"] = [*ours, *shlex.split(a.ours_extra)]
    print(f"{a.steps} steps, {a.resolution} px, batch {a.batch}{' + class images' if prior else ''}, "
          f"mixed precision {a.mixed_precision}, extra flags {a.extra!r}, model {model}", flush=True)
    runs = {name: [] for name in trainers}
    for round_ in range(a.repeats):
        for i, (name, cmd) in enumerate(trainers.items()):
            log = work / f"log-{i}-{round_}.txt"
            result = measured([*cmd, "--output_dir", str(work / f"out-{i}-{round_}")], env, log)
            result["per_step"] = steady_seconds_per_step(log.read_text(errors="replace"))
            runs[name].append(result)
            print(f"  round {round_ + 1}: {name}: {result['per_step']:.2f} s/step, {result['peak_MB']} MB, "
                  f"{result['seconds']:.0f} s", flush=True)
    medians = report(runs)
    if a.floor:
        images = a.batch * (2 if prior else 1)
        floor = unet_floor(model, images, a.resolution, a.mixed_precision, "--gradient_checkpointing" in a.extra,
                           max(2, min(a.steps, 4)), env)
        print(f"UNet forward+backward alone ({images} images): {floor:.3f} s; sksbooth s/step / floor = "
              f"{medians['sksbooth'] / floor:.2f}")
    print(f"logs and outputs in {work}")


PROGRESS = re.compile(r"(?:Steps|train):\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)")


def steady_seconds_per_step(log: str) -> float:
    """From a progress bar's elapsed times: (elapsed at the last step - at step 1) / (steps - 1)."""
    elapsed = {}
    for m in PROGRESS.finditer(log):
        step, hours, minutes, seconds = int(m.group(1)), int(m.group(3) or 0), int(m.group(4)), int(m.group(5))
        elapsed[step] = hours * 3600 + minutes * 60 + seconds  # the last print of each step wins
    last = max(elapsed, default=0)
    if last < 2 or 1 not in elapsed:
        raise SystemExit("could not read the steps' times from the progress bar; use --steps 3 or more")
    return (elapsed[last] - elapsed[1]) / (last - 1)


def report(runs: dict) -> dict:
    per_step = {name: statistics.median(r["per_step"] for r in rs) for name, rs in runs.items()}
    peak = {name: max(r["peak_MB"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    print(f"{'trainer':40s}{'wall s':>9s}{'s/step':>9s}{'peak RSS MB':>13s}{'s/step ratio':>14s}{'peak ratio':>12s}")
    for name in runs:
        print(f"{name:40s}{wall[name]:9.1f}{per_step[name]:9.2f}{peak[name]:13d}"
              f"{per_step[name] / per_step['diffusers']:14.2f}{peak[name] / peak['diffusers']:12.2f}", flush=True)
    return per_step


if __name__ == "__main__":
    main()
