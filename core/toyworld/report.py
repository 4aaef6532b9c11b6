"""The demo's grid and report: the world's checker scores the base and the fine-tuned model."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..fsutil import atomic_file, atomic_write_text
from .quality import CLASS_PROMPT, INSTANCE_PROMPT, SUBJECT_BACKGROUNDS, generate, score_dreambooth
from .world import on_background

ROWS = tuple(on_background(INSTANCE_PROMPT, b) for b in SUBJECT_BACKGROUNDS) + (CLASS_PROMPT,)
LABELS = {"subject_recognised": "subject recognised (checker)", "subject_fidelity": "subject fidelity (DINO-like)",
          "prompt_fidelity": "asked background drawn (CLIP-T-like)", "pres": "PRES (lower is better)",
          "div": "DIV (higher is more diverse)", "class_drift": "class prompt drawn as the subject",
          "class_is_toy": "class prompt drawn as a toy",
          "subject_nothing": "subject prompt drawn as no world object",
          "class_nothing": "class prompt drawn as no world object"}


def grid(images: list[Image.Image], columns: int) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * w, (i // columns) * h))
    return sheet


def save_grid(pipe, path: Path, real: list[Image.Image], columns: int = 6, seed: int = 0) -> Path:
    """First row: the subject's photos; then one row per prompt of ROWS."""
    first = (real + [Image.new("RGB", real[0].size, "white")] * columns)[:columns]
    images = first + generate(pipe, [p for p in ROWS for _ in range(columns)], seed=seed)
    with atomic_file(path) as tmp:
        grid(images, columns).resize((columns * 128, (len(ROWS) + 1) * 128), Image.NEAREST).save(tmp, format="PNG")
    return path


def load_images(folder: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(Path(folder).glob("*.png"))]


def table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, one column per metric."""
    names = list(LABELS)
    lines = ["| model | " + " | ".join(LABELS[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for model, scores in rows.items():
        lines.append(f"| {model} | " + " | ".join(f"{scores[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def write_demo_report(out: Path, base: Path, model: Path, subject_dir: Path, per_prompt: int = 8) -> Path:
    from .assets import load_pipeline, load_shipped_checker
    checker, real = load_shipped_checker(), load_images(subject_dir)
    scores = {}
    for name, path in (("base (before fine-tuning)", base), ("after DreamBooth", model)):
        pipe = load_pipeline(path)
        scores[name] = score_dreambooth(pipe, checker, real, per_prompt=per_prompt)
    save_grid(pipe, out / "grid.png", real)
    text = (f"Scored by the toy world's own checker, {per_prompt} images per prompt, fixed seeds.\n"
            f"Subject prompts: \"{INSTANCE_PROMPT} on a <colour> background\" for "
            f"{', '.join(SUBJECT_BACKGROUNDS)} (the subject was photographed on white and yellow only); "
            f"class prompt: \"{CLASS_PROMPT}\".\n\n" + table(scores) + "\n")
    return atomic_write_text(out / "report.md", text)
