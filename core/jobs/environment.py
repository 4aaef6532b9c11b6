"""Where a worker's libraries come from: its PYTHONPATH, and a report of what it loaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

# The libraries whose origin matters when a host pins older versions of them.
REPORTED_MODULES = ("torch", "diffusers", "transformers", "accelerate", "peft", "huggingface_hub",
                    "tokenizers", "safetensors")


def worker_environment(private_site: Optional[str | Path] = None, extra_env: Optional[Mapping[str, str]] = None,
                       base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The host's environment with `private_site` first on PYTHONPATH.

    PYTHONPATH entries precede site-packages on sys.path, so packages in the private
    folder shadow the host's (older transformers, accelerate, diffusers) while
    anything the folder lacks, torch above all, still comes from the host.
    """
    env = dict(os.environ if base is None else base)
    paths = [str(Path(private_site).resolve())] if private_site else []
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])  # after ours: the host may rely on it, but must not shadow us
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"  # the stderr log is readable while the worker runs
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # silences a fork warning of tokenizers
    env.update(extra_env or {})
    return env


def loaded_modules() -> dict:
    """Version and file of each reported library the job imported (none is imported here)."""
    report = {}
    for name in REPORTED_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            report[name] = {"version": getattr(module, "__version__", None),
                            "path": getattr(module, "__file__", None)}
    return {"python": sys.executable, "python_version": sys.version.split()[0], "modules": report}
