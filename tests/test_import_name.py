"""The package is imported as `sksbooth` only: no generic top-level names, no host-app imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import sksbooth, sksbooth.train.loop, sksbooth.cli
print(json.dumps({"modules": sorted(sys.modules), "file": sksbooth.__file__}))
"""

GENERIC = {"core", "data", "models", "train", "jobs"}
HOST_APPS = ("comfy", "modules", "gradio")  # ComfyUI, AUTOMATIC1111, their UI toolkit


def test_import_leaves_no_generic_module_names(tmp_path):
    # run from an unrelated folder, so that the repository root is not on sys.path
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    modules = set(out["modules"])
    assert Path(out["file"]).resolve() == (ROOT / "core" / "__init__.py").resolve()
    assert {"sksbooth", "sksbooth.train.loop", "sksbooth.cli", "sksbooth.data.images"} <= modules
    leaked = sorted(m for m in modules if m.split(".")[0] in GENERIC)
    assert not leaked, f"generic top-level module names in sys.modules: {leaked}"
    host = sorted(m for m in modules if m.split(".")[0] in HOST_APPS)
    assert not host, f"sksbooth imported host-app modules: {host}"
    assert "clip" not in modules  # the CLIP vocabulary file is read, the package never imported


def test_no_source_file_imports_a_host_app_or_core():
    """Static check over every source file, including modules the import above does not reach."""
    import ast
    bad = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in HOST_APPS or top in GENERIC:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not bad, "\n".join(bad)
