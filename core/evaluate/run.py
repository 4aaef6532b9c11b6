"""`dreambooth evaluate OUTPUT_DIR`: the paper's metrics for a trained model, with DINO and CLIP
weights the user has locally.

Draws `num_images` images per subject prompt (the instance prompt, alone and in a few contexts)
and per class prompt with fixed seeds, then reports DINO and CLIP-I (subject fidelity, against the
instance photos), CLIP-T (prompt fidelity), PRES (class generations against the instance photos,
DINO) and DIV (1 - DINO cosine between class generations; the paper uses LPIPS, which needs weights
we cannot assume). Results go to OUTPUT_DIR/evaluation.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

from ..errors import ConfigError
from ..fsutil import atomic_write_text
from .features import ClipFeatures, DinoFeatures
from .metrics import div, pres, prompt_fidelity, subject_fidelity

CONTEXTS = ("", " on the beach", " in the snow", " on a wooden table")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class EvaluateConfig:
    output_dir: str
    dino_model: str
    clip_model: str
    num_images: int = 4
    contexts: tuple[str, ...] = CONTEXTS
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    resolution: Optional[int] = None  # default: the training resolution


def training_record(output_dir: Path) -> dict:
    path = output_dir / "dreambooth_config.json"
    if not path.is_file():
        raise ConfigError(f"{output_dir} is not a training output folder (no dreambooth_config.json); "
                          "pass the --output_dir of a finished `dreambooth train`.")
    record = json.loads(path.read_text(encoding="utf-8"))
    if not (output_dir / "model" / "model_index.json").is_file():
        raise ConfigError(f"{output_dir / 'model'} holds no trained model yet; finish (or resume) the training first.")
    return record


def real_images(folder: str) -> list[Image.Image]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
    if not files:
        raise ConfigError(f"No subject photos found in {folder} (the training's --instance_data_dir).")
    return [Image.open(p).convert("RGB") for p in files]


def draw(pipe, prompts: list[str], config: EvaluateConfig, size: int) -> list[Image.Image]:
    import torch
    images = []
    for i, prompt in enumerate(prompts):
        gens = [torch.Generator().manual_seed(config.seed + i * 1000 + k) for k in range(config.num_images)]
        images += pipe([prompt] * config.num_images, num_inference_steps=config.num_inference_steps,
                       guidance_scale=config.guidance_scale, generator=gens, height=size, width=size).images
    return images


def score(pipe, real: list[Image.Image], prompts: list[str], class_prompt: str, dino: DinoFeatures,
          clip: ClipFeatures, config: EvaluateConfig, size: int) -> dict[str, float]:
    """The five metrics for `pipe`: subject prompts against the real photos, the class prompt's spread."""
    subject = draw(pipe, prompts, config, size)
    klass = draw(pipe, [class_prompt], config, size)
    real_dino, subject_clip = dino.images(real), clip.images(subject)
    return {
        "DINO": subject_fidelity(dino.images(subject), real_dino),
        "CLIP-I": subject_fidelity(subject_clip, clip.images(real)),
        "CLIP-T": prompt_fidelity(subject_clip, clip.texts([p for p in prompts for _ in range(config.num_images)])),
        "PRES": pres(dino.images(klass), real_dino),
        "DIV": div(dino.images(klass)),
    }


def evaluate(config: EvaluateConfig) -> dict[str, float]:
    from ..models.pipeline import load_pipeline
    out = Path(config.output_dir).expanduser()
    record = training_record(out)
    if not record.get("class_prompt"):
        raise ConfigError("The training had no --class_prompt, so PRES and DIV cannot be measured.")
    dino, clip = DinoFeatures(config.dino_model), ClipFeatures(config.clip_model)  # fail fast on bad paths
    real = real_images(record["instance_data_dir"])
    pipe = load_pipeline(str(out / "model"))
    pipe.set_progress_bar_config(disable=True)
    size = config.resolution or int(record.get("resolution") or 512)
    prompts = [record["instance_prompt"] + c for c in config.contexts]
    scores = score(pipe, real, prompts, record["class_prompt"], dino, clip, config, size)
    atomic_write_text(out / "evaluation.json", json.dumps(
        {"scores": scores, "prompts": prompts, "class_prompt": record["class_prompt"],
         "num_images": config.num_images, "seed": config.seed, "dino_model": str(config.dino_model),
         "clip_model": str(config.clip_model)}, indent=1))
    return scores
