"""`python -m sksbooth.toyworld.look MODEL OUT.png`: the demo's prompts drawn by MODEL, each picture captioned
with what the checker says it is, so a person can check the judge's verdicts by eye.

The judge is itself a small model: twice it was found calling failures successes (any off-palette toy
"the subject", bands "a toy"), and both times only the pictures showed it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from ..fsutil import atomic_file
from .checker import SHAPE_LABELS
from .world import COLOUR_NAMES

CELL = 128


def verdict_sheet(images: list[Image.Image], verdicts: dict, columns: int) -> Image.Image:
    """Pictures at CELL px in rows of `columns`, each with "<shape> / <background>" under it."""
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * CELL, rows * (CELL + 14)), "white")
    d = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % columns) * CELL, (i // columns) * (CELL + 14)
        sheet.paste(im.resize((CELL, CELL), Image.NEAREST), (x, y))
        label = f"{SHAPE_LABELS[int(verdicts['shape'][i])]} / {COLOUR_NAMES[int(verdicts['background'][i])]}"
        d.text((x + 3, y + CELL + 1), label, fill="black")
    return sheet


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", type=Path, help="a toy-world base or a fine-tuned model (what `train` returns)")
    p.add_argument("out", type=Path, help="the PNG to write")
    p.add_argument("--checker", type=Path, default=None, help="a folder with checker.safetensors (default: shipped)")
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from .assets import load_pipeline, load_shipped_checker
    from .checker import load_checker
    from .quality import generate, judge
    from .report import ROWS
    checker = load_checker(args.checker) if args.checker else load_shipped_checker()
    images = generate(load_pipeline(args.model), [r for r in ROWS for _ in range(args.columns)], seed=args.seed)
    with atomic_file(args.out) as tmp:
        verdict_sheet(images, judge(checker, images), args.columns).save(tmp, format="PNG")
    print(f"rows: {', '.join(ROWS)}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
