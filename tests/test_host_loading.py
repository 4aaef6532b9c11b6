"""The core imports as `sksbooth` from a host's folder of any name, with no install."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What ComfyUI's nodes.load_custom_node does with custom_nodes/<folder>/__init__.py.
COMFY_LOAD = """
import importlib.util, os, sys
path = sys.argv[1]
name = os.path.basename(path)
spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
"""

# What A1111's modules.script_loading.load_module does with extensions/<folder>/scripts/*.py.
A1111_LOAD = """
import importlib.util, os, sys
path = os.path.join(sys.argv[1], "scripts", "sksbooth_dreambooth.py")
spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
"""

CHECK = """
import sksbooth.config, sksbooth.events, sksbooth.errors
assert sksbooth.__file__.startswith(sys.argv[1]), sksbooth.__file__
assert sksbooth.config.TrainConfig.__module__ == "sksbooth.config"
generic = {"core", "config", "events", "errors", "data", "models", "train", "jobs"} & set(sys.modules)
assert not generic, generic
print("ok")
"""


def host_copy(tmp_path: Path, folder: str) -> Path:
    dest = tmp_path / folder
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"))
    return dest


def run_isolated(code: str, folder: Path) -> subprocess.CompletedProcess:
    # -S: no site-packages, so the pip-installed sksbooth cannot be what gets imported
    return subprocess.run([sys.executable, "-S", "-c", code, str(folder)], capture_output=True, text=True,
                          timeout=60, cwd=folder.parent)


def test_comfyui_loads_the_folder_under_any_name_and_core_is_sksbooth(tmp_path):
    folder = host_copy(tmp_path / "custom_nodes", "My DreamBooth nodes-v2")
    proc = run_isolated(COMFY_LOAD + CHECK, folder)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_a1111_script_shim_registers_core_as_sksbooth(tmp_path):
    folder = host_copy(tmp_path / "extensions", "sd-dreambooth-whatever")
    proc = run_isolated(A1111_LOAD + CHECK, folder)
    assert proc.stdout.strip() == "ok", proc.stderr
