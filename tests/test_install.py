"""install.py: mode detection, torch choice, and host mode never installing torch (no pip is run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inst(monkeypatch, tmp_path):
    """install.py as a module, its folder moved to tmp_path/repo."""
    spec = importlib.util.spec_from_file_location("sksbooth_install_script", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    monkeypatch.setattr(module, "ROOT", repo)
    monkeypatch.setattr(module, "DEPS", repo / ".deps")
    monkeypatch.setattr(module, "VENV", repo / ".venv")
    return module


@pytest.mark.parametrize("req", ["torch", "torch>=2.1", "Torch==2.13.0+cpu", "torchvision", "triton==3.1",
                                 "nvidia-cudnn-cu12==9.1.0.70", "nvidia_cublas_cu12", "xformers"])
def test_torch_family(inst, req):
    assert inst.is_torch_family(req)


@pytest.mark.parametrize("req", ["diffusers>=0.32", "torchmetrics", "tomli; python_version < '3.11'", "numpy"])
def test_not_torch_family(inst, req):
    assert not inst.is_torch_family(req)


def test_version_tuple(inst):
    assert inst.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert inst.version_tuple("2.1.0a0") == (2, 1)
    assert inst.version_tuple("") == ()


def test_torch_command_cpu_and_gpu(inst, monkeypatch):
    monkeypatch.delenv("TORCH_INDEX_URL", raising=False)
    assert inst.torch_command(Path("py"), gpu=False)[-1] == "torch==2.13.0"
    assert inst.torch_command(Path("py"), gpu=True)[-1] == "torch>=2.1"
    monkeypatch.setenv("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu")
    assert inst.torch_command(Path("py"), gpu=False)[-2:] == ["--index-url", "https://download.pytorch.org/whl/cpu"]


def test_modes(inst, monkeypatch, tmp_path):
    args = lambda **kw: type("A", (), {"host": False, "venv": False, **kw})  # noqa: E731
    assert inst.choose_mode(args(host=True)) == "host"
    assert inst.choose_mode(args(venv=True)) == "venv"
    assert inst.choose_mode(args()) == "venv"
    comfy = tmp_path / "ComfyUI" / "custom_nodes" / "sksbooth"
    comfy.mkdir(parents=True)
    monkeypatch.setattr(inst, "ROOT", comfy)
    assert inst.choose_mode(args()) == "host"


def test_a1111_detected_by_import_launch(inst, monkeypatch, tmp_path):
    webui = tmp_path / "webui"
    (webui / "modules").mkdir(parents=True)
    (webui / "launch.py").write_text("")
    assert not inst.under_a1111()
    monkeypatch.syspath_prepend(str(webui))  # what A1111's PYTHONPATH does
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    assert inst.under_a1111()


def fake_pip(calls, resolved):
    """Stands in for `run`: answers a dry run with `resolved`, records every command."""
    def run(cmd, what, hint=""):
        calls.append(cmd)
        if "--report" in cmd:
            items = [{"metadata": {"name": n, "version": v}} for n, v in resolved]
            Path(cmd[cmd.index("--report") + 1]).write_text(json.dumps({"install": items}))
        if "--target" in cmd:
            Path(cmd[cmd.index("--target") + 1]).mkdir(parents=True)
    return run


def test_host_mode_never_installs_torch(inst, monkeypatch):
    calls = []
    resolved = [("diffusers", "0.42.1"), ("torch", "2.13.0"), ("nvidia-cudnn-cu12", "9.1"), ("triton", "3.1"),
                ("transformers", "5.23.0")]
    monkeypatch.setattr(inst, "run", fake_pip(calls, resolved))
    monkeypatch.setattr(inst, "host_torch_version", lambda: "2.3.1+cu121")
    inst.install_host()
    dry_run, target = calls
    assert not any(inst.is_torch_family(a) for a in dry_run[dry_run.index("-c") + 2:])  # requirements asked for
    assert "--no-deps" in target
    assert target[target.index("--target") + 2:] == ["diffusers==0.42.1", "transformers==5.23.0"]
    assert (inst.DEPS / ".sksbooth-installed").is_file()
    calls.clear()
    inst.install_host()  # second run: stamp matches, pip is not called
    assert calls == []


def test_install_into_deps_refuses_torch(inst):
    with pytest.raises(inst.InstallError):
        inst.install_into_deps(["diffusers==0.42.1", "torch==2.13.0"])
