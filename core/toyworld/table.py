"""`python -m sksbooth.toyworld.table OUT`: the toy world's version of the paper's Tables 1 and 3.

Scores the shipped base (or `--base DIR`), then DreamBooth on it with and without prior preservation (the demo's
settings), with the world's checker, and writes OUT/table.md. A 300-step fine-tune on five photos is
sensitive to its seed, so each DreamBooth row is the mean over several training seeds (`--seeds`),
with the per-seed subject recognition beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write_text


def dreambooth(out: Path, base: Path, subject: Path, steps: int, prior: bool, seed: int) -> Path:
    import dataclasses
    from ..demo import demo_config
    from ..train.loop import train
    config = dataclasses.replace(demo_config(out, base, subject, steps, prior=prior), seed=seed)
    return train(config).model_path


def mean_scores(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the demo's)")
    p.add_argument("--per_prompt", type=int, default=16)
    p.add_argument("--base", type=Path, default=None,
                   help="a toy-world base folder to score instead of the shipped one (e.g. a vae_refit output)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(7)),
                   help="training seeds to average over (three were too few: their mean was 78%%, seven's 62%%)")
    p.add_argument("--prior_only", action="store_true",
                   help="skip the rows without prior preservation: half the time, for screening a candidate base")
    args = p.parse_args(argv)
    from ..demo import DEMO_STEPS, make_subject_images
    from .assets import base_path, load_pipeline, load_shipped_checker
    from .quality import score_base, score_dreambooth
    from .report import load_images, table
    started, steps = time.monotonic(), args.steps or DEMO_STEPS
    base, checker = args.base or base_path(), load_shipped_checker()
    subject = make_subject_images(args.out / "subject")
    real = load_images(subject)
    base_pipe = load_pipeline(base)
    base_only = score_base(base_pipe, checker, count=6 * args.per_prompt)
    rows = {"base": score_dreambooth(base_pipe, checker, real, per_prompt=args.per_prompt)}
    per_seed = {}
    variants = (("DreamBooth, prior preservation", True), ("DreamBooth, no prior preservation", False))
    for name, prior in variants[:1] if args.prior_only else variants:
        runs = []
        for seed in args.seeds:
            model = dreambooth(args.out / f"{'prior' if prior else 'no-prior'}-seed{seed}", base, subject, steps,
                               prior, seed)
            runs.append(score_dreambooth(load_pipeline(model), checker, real, per_prompt=args.per_prompt))
        rows[name], per_seed[name] = mean_scores(runs), runs
    recognised = "\n".join(f"- {name}: " + ", ".join(f"{r['subject_recognised']:.0%}" for r in runs)
                           for name, runs in per_seed.items())
    command = "python -m sksbooth.toyworld.table " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# Toy world: base vs DreamBooth (fixed seeds, scored by the world's checker)\n\n"
            f"Command: `{command}` ({(time.monotonic() - started) / 60:.0f} min on 2 CPU cores; {steps} fine-tuning "
            f"steps; {args.per_prompt} images per prompt; DreamBooth rows: the mean over training seeds "
            f"{', '.join(map(str, args.seeds))}).\n\nBase, full captions "
            f"({6 * args.per_prompt} prompts): asked shape {base_only['shape']:.0%}, colour {base_only['colour']:.0%}, "
            f"background {base_only['background']:.0%}.\n\n" + table(rows)
            + f"\n\nSubject recognised, seed by seed:\n{recognised}\n")
    atomic_write_text(args.out / "table.md", text)
    record = {"base_prompts": base_only, "rows": rows, "seeds": args.seeds, "per_seed": per_seed}
    atomic_write_text(args.out / "table.json", json.dumps(record, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
