"""`dreambooth toyworld-pretrain DEST` (or `python -m sksbooth.toyworld.make DEST`): train the world's checker and pretrain the toy-world base
into DEST (checker.safetensors, base/ and MADE.md, which records how they were made)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write_text
from .checker import accuracy, save_checker, train_checker
from .pretrain import PretrainConfig, pretrain


def parse(argv) -> tuple[Path, PretrainConfig, int]:
    p = argparse.ArgumentParser(prog="dreambooth toyworld-pretrain", description=__doc__)
    p.add_argument("dest", type=Path)
    p.add_argument("--checker_steps", type=int, default=600, help="0 keeps the checker already in DEST")
    for f in dataclasses.fields(PretrainConfig):
        kind = type(f.default)
        if kind is tuple:
            p.add_argument(f"--{f.name}", type=lambda v: tuple(int(c) for c in v.split(",")), default=f.default)
        else:
            p.add_argument(f"--{f.name}", type=kind, default=f.default)
    args = vars(p.parse_args(argv))
    dest, checker_steps = args.pop("dest"), args.pop("checker_steps")
    return dest, PretrainConfig(**args), checker_steps


def main(argv=None) -> int:
    dest, config, checker_steps = parse(argv)
    started = time.monotonic()
    log = lambda s: print(f"[{(time.monotonic() - started) / 60:5.1f} min] {s}", flush=True)  # noqa: E731
    if checker_steps:
        checker = train_checker(steps=checker_steps, seed=config.seed)
        save_checker(checker, dest)
        log(f"checker: accuracy on fresh world images {accuracy(checker)}")
    made = pretrain(dest / "base", config, log)
    made["command"] = "python -m sksbooth.toyworld.make " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(dest / "made.json", json.dumps(made, indent=1))
    log(f"done: {made}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
