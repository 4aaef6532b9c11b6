"""Run our trainer and diffusers' examples/dreambooth/train_dreambooth.py side by side on the same job.

    python benchmarks/compare_diffusers.py PATH/TO/train_dreambooth.py [--model DIR] [--steps 20]
        [--resolution 64] [--batch 1] [--mixed_precision no|bf16] [--extra "--gradient_checkpointing"]

The diffusers script is not part of this repository: pass the path of a copy (for example
`git --git-dir=<diffusers clone>/.git show HEAD:examples/dreambooth/train_dreambooth.py > /tmp/x.py`).
Without --model a tiny random-weight model is built (sksbooth make-tiny-model), and without
--instance_dir synthetic subject images are drawn, so the comparison runs offline anywhere.
If torchvision cannot be imported (e.g. no matching wheel), the script runs through a small
launcher that gives it a PIL/numpy stand-in for the four transforms it uses.

Reported per trainer: wall time (including start-up and model loading), seconds per step
(from a second run with twice the steps: (t_2N - t_N) / N, so start-up cancels out) and the peak
resident memory of the training process.
"""

from __future__ import annotations

import argparse
import json
import os
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


def draw_instances(folder: Path, n: int = 4) -> Path:
    from PIL import Image, ImageDraw
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (96, 80), (30, 30, 200))
        ImageDraw.Draw(im).ellipse((10 + 4 * i, 10, 60 + 4 * i, 60), fill=(240, 200, 20))
        im.save(folder / f"subject_{i}.png")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("diffusers_script", help="Path of diffusers' examples/dreambooth/train_dreambooth.py.")
    p.add_argument("--model", help="A diffusers model folder (default: a tiny random model).")
    p.add_argument("--instance_dir", help="Subject images (default: synthetic).")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--extra", default="", help="More flags given to both trainers, e.g. '--gradient_checkpointing'.")
    p.add_argument("--work", help="Working folder (default: a temporary one).")
    a = p.parse_args()

    work = Path(a.work or tempfile.mkdtemp(prefix="dreambooth-bench-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    model = a.model
    if model is None:
        model = str(work / "tiny-sd")
        if not Path(model).exists():
            subprocess.run([sys.executable, "-m", "sksbooth.cli", "make-tiny-model", model], env=env, check=True,
                           stdout=subprocess.DEVNULL)
    instances = a.instance_dir or str(draw_instances(work / "instance"))
    diffusers_env, script = dict(env), [a.diffusers_script]
    try:
        import torchvision  # noqa: F401
    except Exception:
        (work / "tv_transforms_shim.py").write_text(TORCHVISION_SHIM)
        (work / "run_with_shim.py").write_text(RUN_WITH_SHIM)
        script = [str(work / "run_with_shim.py"), a.diffusers_script]

    def common(out: Path, steps: int) -> list[str]:
        return ["--pretrained_model_name_or_path", model, "--instance_data_dir", instances,
                "--instance_prompt", "a photo of sks dog", "--output_dir", str(out), "--resolution", str(a.resolution),
                "--train_batch_size", str(a.batch), "--max_train_steps", str(steps), "--learning_rate", "1e-4",
                "--lr_warmup_steps", "0", "--seed", "0", "--checkpointing_steps", "100000",
                "--mixed_precision", a.mixed_precision, *shlex.split(a.extra)]

    trainers = {
        "diffusers": lambda out, n: ([sys.executable, *script, *common(out, n)], diffusers_env),
        "sksbooth": lambda out, n: ([sys.executable, "-m", "sksbooth.cli", "train", *common(out, n)], env),
        "sksbooth (no latent cache)": lambda out, n: ([sys.executable, "-m", "sksbooth.cli", "train",
                                                       *common(out, n), "--no-cache_latents"], env),
    }
    print(f"{a.steps} steps, {a.resolution} px, batch {a.batch}, mixed precision {a.mixed_precision}, model {model}")
    print(f"{'trainer':28s}{'wall s':>9s}{'s/step':>9s}{'peak RSS MB':>13s}")
    for i, (name, make) in enumerate(trainers.items()):
        runs = []
        for n in (a.steps, 2 * a.steps):
            cmd, run_env = make(work / f"out-{i}-{n}", n)
            runs.append(measured(cmd, run_env, work / f"log-{i}-{n}.txt"))
        per_step = (runs[1]["seconds"] - runs[0]["seconds"]) / a.steps
        print(f"{name:28s}{runs[0]['seconds']:9.1f}{per_step:9.3f}{max(r['peak_MB'] for r in runs):13d}", flush=True)
    print(f"logs and outputs in {work}")


if __name__ == "__main__":
    main()
