"""Resumable checkpoints: accelerate's save_state plus our own trainer state, written atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..config import config_to_dict
from ..errors import ConfigError
from ..fsutil import atomic_write_text

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CONFIG_NAME = "dreambooth_config.json"


def write_run_config(folder: Path, config) -> Path:
    """The run's config as CONFIG_NAME in `folder`: beside every output, it names the base and the settings."""
    return atomic_write_text(Path(folder) / CONFIG_NAME, json.dumps(config_to_dict(config), indent=2))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temp folders of interrupted saves are ignored)."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))


def resolve_resume(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """'latest' -> newest checkpoint or None; a name or path -> that folder, which must exist."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = output_dir / resume
    if not (path.is_dir() and (path / "trainer_state_0.pt").is_file()):
        available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise ConfigError(f"Checkpoint {resume!r} not found (checkpoints in {output_dir}: {available}). "
                          "Use --resume_from_checkpoint latest to take the newest.")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, trainer_state: dict, config, limit: Optional[int]) -> Path:
    """Every rank must call this. The folder appears under its final name only when complete."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(trainer_state, tmp / f"trainer_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_run_config(tmp, config)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, limit: Optional[int]) -> list[Path]:
    if not limit:
        return []
    found = list_checkpoints(output_dir)
    removed = found[:-limit] if len(found) > limit else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    state_file = path / f"trainer_state_{accelerator.process_index}.pt"
    if not state_file.is_file():  # resumed on more processes than saved with
        state_file = path / "trainer_state_0.pt"
    return torch.load(state_file, weights_only=False)
