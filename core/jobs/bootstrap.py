"""How the worker process finds `sksbooth` without an install.

The source folder is `core/`, so nothing on sys.path makes `import sksbooth` work in
a host's Python (A1111, ComfyUI) unless the package was pip-installed. Putting a
parent folder on PYTHONPATH would not help (it holds `core`, not `sksbooth`), and a
site-packages folder on PYTHONPATH could bring a second torch. So the worker is
started with `python -c BOOTSTRAP PACKAGE_DIR JOB_FILE`: BOOTSTRAP registers exactly
that one folder as the package `sksbooth` via importlib, then runs
`sksbooth.jobs.worker` as `__main__`, which is what `python -m sksbooth.jobs.worker
JOB_FILE` does for an installed package. The worker thus always runs the very code
the host loaded, installed or not.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_NAME = "sksbooth"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # core/ (or site-packages/sksbooth when installed)

# Plain statements joined by ";" so the code survives any platform's command-line quoting.
BOOTSTRAP = "; ".join((
    "import importlib.util, os, runpy, sys",
    # `-c` puts the working folder first on sys.path; a host's (ComfyUI has a top-level
    # utils/) must not shadow any library.
    "sys.path.remove('') if sys.path[:1] == [''] else None",
    "package_dir = sys.argv.pop(1)",
    f"spec = importlib.util.spec_from_file_location({PACKAGE_NAME!r}, os.path.join(package_dir, '__init__.py'), "
    "submodule_search_locations=[package_dir])",
    "module = importlib.util.module_from_spec(spec)",
    f"sys.modules[{PACKAGE_NAME!r}] = module",
    "spec.loader.exec_module(module)",
    f"runpy.run_module('{PACKAGE_NAME}.jobs.worker', run_name='__main__', alter_sys=True)",
))


def worker_command(python: str, job_file: str | Path, package_dir: str | Path = PACKAGE_DIR) -> list[str]:
    """argv that runs the worker on `job_file` with interpreter `python`."""
    return [str(python), "-c", BOOTSTRAP, str(package_dir), str(job_file)]
