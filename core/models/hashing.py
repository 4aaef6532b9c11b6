"""Model hashes as A1111 shows them: sha256 of the whole file, short hash = its first 10 hex digits."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(sha256: str) -> str:
    """A1111's `shorthash` (what its UI and PNG parameters show as `Model hash`)."""
    return sha256[:10]


def legacy_model_hash(path: str | Path) -> str:
    """A1111's old 8-digit hash (sha256 of 64 KiB at offset 1 MiB), still seen in old PNG infos."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def model_name(path: str | Path) -> str:
    """A1111's checkpoint title without the hash: the file name without its suffix."""
    return Path(path).stem


def model_title(path: str | Path, sha256: str) -> str:
    """As A1111's checkpoint dropdown shows it: `name.safetensors [shorthash]`."""
    return f"{Path(path).name} [{short_hash(sha256)}]"
