#!/usr/bin/env python3
"""Install sksbooth (DreamBooth for Stable Diffusion).

    python install.py           standalone: .venv beside this file, torch, then `pip install -e .[test]`
    python install.py --host    inside a host app's Python: non-torch dependencies into ./.deps
    python install.py --venv    force standalone mode, even inside a host's folder

Standalone mode creates `.venv` next to this file and picks torch before the project:
without an NVIDIA GPU (no `nvidia-smi`, no /proc/driver/nvidia) it installs the CPU
build `torch==2.13.0` (set TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu,
where the default index only has CUDA builds); with a GPU, the default torch. The
project's `torch>=2.1` is then already satisfied, and torch is pinned to what is
installed while the project installs, so nothing replaces it.

Host mode never creates a venv and NEVER installs, upgrades or removes torch. It is
chosen automatically when AUTOMATIC1111's web UI runs this file (A1111 runs an
extension's install.py with its own Python; `import launch` works there) or when
ComfyUI-Manager runs it (this folder sits in ComfyUI's custom_nodes/). It asks pip
what our dependencies need beyond what the host already has (a dry run, with torch
pinned to the host's version), drops torch and its CUDA companions from that list,
and installs exactly that list with `pip install --target .deps --no-deps`. The host's
own packages are untouched; our code puts `.deps` on its path when it runs.

Re-running is quick: each mode keeps a stamp and skips work that is already done.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
DEPS = ROOT / ".deps"
CPU_TORCH = "torch==2.13.0"
MIN_TORCH = (2, 1)
MIN_PYTHON = (3, 10)
# Never installed in host mode: the host's torch stack stays as it is.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton", "xformers", "pytorch-triton"}
TORCH_PREFIXES = ("nvidia-",)


class InstallError(Exception):
    """A step failed; the message says which and what to do."""


# --- helpers ---------------------------------------------------------------------------

def say(text: str) -> None:
    print(f"[install] {text}", flush=True)


def run(cmd: list[str], what: str, hint: str = "") -> None:
    """Run a command, showing it; raise InstallError naming the step if it fails."""
    print("  $ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        raise InstallError(f"{what} failed (exit code {code}).{' ' + hint if hint else ''}")


def output(cmd: list[str]) -> str:
    """stdout of a quick query, or '' if it fails."""
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); stops at the first part that is not a number."""
    parts = []
    for piece in re.split(r"[.+]", version):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_torch_family(requirement_or_name: str) -> bool:
    name = normalize(re.split(r"[\s<>=!~;\[(@]", requirement_or_name.strip(), maxsplit=1)[0])
    return name in TORCH_FAMILY or name.startswith(TORCH_PREFIXES)


def project_dependencies() -> list[str]:
    """`[project] dependencies` of pyproject.toml (tomllib on 3.11+, pip's tomli on 3.10)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip vendors tomli
        from pip._vendor import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def fingerprint(*parts: str) -> str:
    data = (ROOT / "pyproject.toml").read_bytes() + "\n".join(parts).encode()
    return hashlib.sha256(data).hexdigest()


def stamp_matches(stamp: Path, key: str) -> bool:
    return stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == key


# --- mode detection ---------------------------------------------------------------------

def under_a1111() -> bool:
    """A1111 runs install.py with PYTHONPATH set to its root, where launch.py lives."""
    spec = importlib.util.find_spec("launch")
    if spec is not None and spec.origin and (Path(spec.origin).parent / "modules").is_dir():
        return True
    return ROOT.parent.name == "extensions" and (ROOT.parent.parent / "launch.py").is_file()


def under_comfyui() -> bool:
    """ComfyUI-Manager runs install.py from the node's folder inside ComfyUI/custom_nodes."""
    return ROOT.parent.name == "custom_nodes"


def has_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


# --- standalone mode --------------------------------------------------------------------

def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def installed_version(python: Path | str, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return output([str(python), "-c", code])


def ensure_venv() -> Path:
    python = venv_python()
    if python.is_file():
        say(f"Using the existing virtual environment {VENV}")
    else:
        say(f"Creating a virtual environment in {VENV}")
        run([sys.executable, "-m", "venv", str(VENV)], "Creating the virtual environment",
            "On Debian/Ubuntu: sudo apt install python3-venv.")
    if version_tuple(installed_version(python, "pip")) < (21, 3):  # editable installs need PEP 660
        say("Upgrading pip in the virtual environment (21.3+ is needed for editable installs)")
        run([str(python), "-m", "pip", "install", "--upgrade", "pip>=21.3"], "Upgrading pip")
    return python


def torch_command(python: Path, gpu: bool) -> list[str]:
    if gpu:
        return [str(python), "-m", "pip", "install", f"torch>={'.'.join(map(str, MIN_TORCH))}"]
    cmd = [str(python), "-m", "pip", "install", CPU_TORCH]
    if os.environ.get("TORCH_INDEX_URL"):
        cmd += ["--index-url", os.environ["TORCH_INDEX_URL"]]
    return cmd


def ensure_torch(python: Path) -> str:
    """Install torch first (CPU build without a GPU); returns its version."""
    version = installed_version(python, "torch")
    if version and version_tuple(version) >= MIN_TORCH:
        say(f"torch {version} is already installed")
        return version
    gpu = has_cuda_gpu()
    say(f"{'An NVIDIA GPU was found: installing the default torch' if gpu else 'No CUDA GPU: installing the CPU build ' + CPU_TORCH}")
    run(torch_command(python, gpu), "Installing torch",
        "Check your network or pip configuration; TORCH_INDEX_URL selects another PyTorch index.")
    version = installed_version(python, "torch")
    if not version:
        raise InstallError("torch is still not importable after installing it.")
    return version


def install_project(python: Path, torch_version: str) -> None:
    """`pip install -e .[test]` with torch pinned to the installed build."""
    stamp = VENV / ".sksbooth-installed"
    key = fingerprint(torch_version, sys.version)
    if stamp_matches(stamp, key) and installed_version(python, "sksbooth"):
        say("sksbooth and its dependencies are already installed (pyproject.toml unchanged)")
        return
    say("Installing sksbooth (editable) and its dependencies")
    with tempfile.TemporaryDirectory() as tmp:
        pin = Path(tmp) / "torch-pin.txt"
        pin.write_text(f"torch=={torch_version}\n", encoding="utf-8")
        run([str(python), "-m", "pip", "install", "-c", str(pin), "-e", ".[test]"], "Installing the project")
    stamp.write_text(key + "\n", encoding="utf-8")


def install_standalone() -> None:
    python = ensure_venv()
    torch_version = ensure_torch(python)
    install_project(python, torch_version)
    bin_dir = venv_python().parent
    say(f"Done (torch {torch_version}). Next:\n"
        f"  {bin_dir / 'dreambooth'} demo       # the whole job on a built-in default\n"
        f"  {venv_python()} -m pytest       # the tests")


# --- host mode (A1111, ComfyUI) ---------------------------------------------------------

def host_torch_version() -> str:
    try:
        import importlib.metadata as metadata
        return metadata.version("torch")
    except Exception:
        return ""


def resolve_missing(requirements: list[str], torch_version: str) -> list[str]:
    """Ask pip (dry run, host environment) which `name==version` our requirements still need."""
    with tempfile.TemporaryDirectory() as tmp:
        report, pin = Path(tmp) / "report.json", Path(tmp) / "torch-pin.txt"
        pin.write_text(f"torch=={torch_version}\n" if torch_version else "", encoding="utf-8")
        try:
            run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                 "-c", str(pin), *requirements], "Resolving dependencies (dry run)")
        except InstallError as e:
            raise InstallError(f"{e} It needs pip 22.2+ (for --report) and access to the package index; "
                               f"the host's pip is {pip_version()}.") from None
        items = json.loads(report.read_text(encoding="utf-8")).get("install", [])
    return [f"{it['metadata']['name']}=={it['metadata']['version']}" for it in items]


def pip_version() -> str:
    text = output([sys.executable, "-m", "pip", "--version"])  # "pip 23.2.1 from ..."
    return text.split()[1] if len(text.split()) > 1 else "unknown"


def host_install_list(resolved: list[str]) -> list[str]:
    """The resolved packages minus torch and its CUDA companions."""
    return sorted((r for r in resolved if not is_torch_family(r)), key=str.lower)


def install_into_deps(packages: list[str]) -> None:
    """`pip install --target` into a fresh folder, swapped in only when complete."""
    if any(is_torch_family(p) for p in packages):  # cannot happen (filtered above); a last guard
        raise InstallError(f"Refusing to install torch packages into {DEPS}: {packages}")
    tmp = ROOT / ".deps.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if packages:
        run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tmp), *packages],
            f"Installing {len(packages)} packages into {DEPS}")
    tmp.mkdir(exist_ok=True)
    shutil.rmtree(DEPS, ignore_errors=True)
    os.replace(tmp, DEPS)


def check_host_torch(version: str) -> None:
    if not version:
        say("WARNING: the host Python has no torch; host mode will not install one. "
            "Install the host app's torch first (or use standalone mode: python install.py --venv).")
    elif version_tuple(version) < MIN_TORCH:
        say(f"WARNING: the host's torch {version} is older than {'.'.join(map(str, MIN_TORCH))}; "
            "it is left as it is, but training may fail. Update the host app.")
    else:
        say(f"The host's torch {version} is used as it is (never replaced)")


def install_host() -> None:
    torch_version = host_torch_version()
    say(f"Host mode: python {sys.executable}; private dependency folder {DEPS}")
    check_host_torch(torch_version)
    stamp = DEPS / ".sksbooth-installed"
    key = fingerprint(torch_version, sys.executable, sys.version, platform.platform())
    if stamp_matches(stamp, key):
        say("Dependencies are already installed (pyproject.toml and host unchanged)")
        return
    requirements = [r for r in project_dependencies() if not is_torch_family(r)]
    packages = host_install_list(resolve_missing(requirements, torch_version))
    say("Needed beyond the host's packages: " + (", ".join(packages) or "nothing"))
    install_into_deps(packages)
    stamp.write_text(key + "\n", encoding="utf-8")
    say(f"Done: {len(packages)} packages in {DEPS}; torch and the host's packages were not touched.")


# --- entry point ------------------------------------------------------------------------

def choose_mode(args) -> str:
    if args.host:
        return "host"
    if args.venv:
        return "venv"
    if under_a1111():
        say("Run by AUTOMATIC1111's web UI: using host mode")
        return "host"
    if under_comfyui():
        say("Inside ComfyUI's custom_nodes: using host mode")
        return "host"
    return "venv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--host", action="store_true", help="install non-torch dependencies into ./.deps")
    group.add_argument("--venv", action="store_true", help="force standalone mode (.venv beside this file)")
    args = parser.parse_args(argv)
    try:
        if sys.version_info < MIN_PYTHON:
            raise InstallError(f"Python {'.'.join(map(str, MIN_PYTHON))}+ is needed; this is {platform.python_version()}.")
        install_host() if choose_mode(args) == "host" else install_standalone()
    except InstallError as e:
        print(f"[install] ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
