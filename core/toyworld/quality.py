"""Scoring a pipeline in the toy world with the world's own checker, on fixed seeds.

Base: does a full caption draw the asked shape, colour and background? DreamBooth: are subject-prompt
generations the subject (and on the asked background), how close they are to the real subject
photos (subject fidelity), and does the class prompt still draw diverse toys (PRES, DIV, drift)?
"""

from __future__ import annotations

import random
from typing import Optional

import torch

from ..evaluate.metrics import div, pres, subject_fidelity
from .checker import NOTHING, SHAPE_LABELS, Checker, to_tensor
from .world import COLOUR_NAMES, SHAPES, SUBJECT, on_background, random_scene

INSTANCE_PROMPT = "a photo of a sks toy"
CLASS_PROMPT = "a photo of a toy"
SUBJECT_BACKGROUNDS = ("red", "green", "blue", "purple")  # none of them in the subject photos


@torch.no_grad()
def generate(pipe, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 7.5, batch: int = 32):
    """PIL images, one per prompt; image i uses seed + i, so results do not depend on the batch size."""
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=64, width=64).images
    return images


@torch.no_grad()
def judge(checker: Checker, images) -> dict[str, torch.Tensor]:
    out = checker(to_tensor(images))
    return {"shape": out["shape"].argmax(1), "colour": out["colour"].argmax(1),
            "background": out["background"].argmax(1), "features": out["features"]}


def base_prompts(count: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [random_scene(rng, rng.choice(SHAPES)) for _ in range(count)]


def score_base(pipe, checker: Checker, count: int = 96, seed: int = 0, **gen) -> dict[str, float]:
    """Fractions of full-caption generations that show the asked shape, colour and background."""
    scenes = base_prompts(count, seed)
    verdict = judge(checker, generate(pipe, [s.caption() for s in scenes], seed=seed, **gen))
    asked = {"shape": [SHAPE_LABELS.index(s.shape) for s in scenes],
             "colour": [COLOUR_NAMES.index(s.colour) for s in scenes],
             "background": [COLOUR_NAMES.index(s.background) for s in scenes]}
    return {k: (verdict[k] == torch.tensor(v)).float().mean().item() for k, v in asked.items()}


def score_dreambooth(pipe, checker: Checker, real_subject, per_prompt: int = 8, seed: int = 0,
                     instance_prompt: str = INSTANCE_PROMPT, class_prompt: str = CLASS_PROMPT,
                     class_images: Optional[list] = None, **gen) -> dict[str, float]:
    """The paper's Table 1/3 metrics in the toy world (features: the checker's), plus the checker's
    verdicts: subject recognised, asked background drawn, class prompt drifting to the subject."""
    prompts = [on_background(instance_prompt, b) for b in SUBJECT_BACKGROUNDS for _ in range(per_prompt)]
    subject = judge(checker, generate(pipe, prompts, seed=seed, **gen))
    asked_bg = torch.tensor([COLOUR_NAMES.index(b) for b in SUBJECT_BACKGROUNDS for _ in range(per_prompt)])
    class_images = class_images or generate(pipe, [class_prompt] * (2 * per_prompt), seed=seed + 10_000, **gen)
    klass = judge(checker, class_images)
    real = judge(checker, real_subject)["features"]
    subject_label, nothing = SHAPE_LABELS.index(SUBJECT), SHAPE_LABELS.index(NOTHING)
    return {
        "subject_fidelity": subject_fidelity(subject["features"], real),
        "subject_recognised": (subject["shape"] == subject_label).float().mean().item(),
        "prompt_fidelity": (subject["background"] == asked_bg).float().mean().item(),
        "pres": pres(klass["features"], real),
        "div": div(klass["features"]),
        "class_drift": (klass["shape"] == subject_label).float().mean().item(),
        "class_is_toy": (klass["shape"] == SHAPE_LABELS.index("toy")).float().mean().item(),
        # a failed model draws bands or smears, not objects; DIV over those would read as diversity
        "subject_nothing": (subject["shape"] == nothing).float().mean().item(),
        "class_nothing": (klass["shape"] == nothing).float().mean().item(),
    }
