"""Model hashes as A1111 shows them: sha256 of the whole file, short hash = its first 10 hex digits."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_cache_file() -> Path:
    """Where file hashes are remembered: $SKSBOOTH_CACHE_DIR, else $XDG_CACHE_HOME/sksbooth, else ~/.cache/sksbooth."""
    root = os.environ.get("SKSBOOTH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sksbooth"
    return Path(root) / "hashes.json"


def cached_file_sha256(path: str | Path) -> str:
    """file_sha256, remembered per (path, size, mtime) as A1111's cache.json does.

    Hashing a 2-7 GB checkpoint takes seconds to minutes, and generate writes the hash into every
    image's parameters. A changed file (size or mtime) is hashed again; an unwritable cache only
    costs the time.
    """
    from ..fsutil import atomic_write_text
    path = Path(path).resolve()
    stat, cache_file = path.stat(), hash_cache_file()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = file_sha256(path)
    cache[key] = {"stamp": stamp, "sha256": sha}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps(cache, indent=1))
    except OSError:
        pass
    return sha


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
