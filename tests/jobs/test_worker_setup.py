"""How a worker starts and fails: readable errors, no install needed, private packages first."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sksbooth.config import GenerateConfig, save_job_file
from sksbooth.errors import ConfigError
from sksbooth.jobs.bootstrap import worker_command
from sksbooth.jobs.client import start_worker
from sksbooth.jobs.runner import run_job


def test_bad_instance_folder_ends_with_a_readable_error(train_job, drain, tmp_path):
    missing = tmp_path / "no-such-photos"
    handle = start_worker(train_job(instance_data_dir=str(missing)))
    events = drain(handle)
    error = events[-1]
    assert error.kind == "error" and handle.wait() == 1
    assert error.data["type"] == "DataError" and error.data["user_error"] is True
    assert str(missing) in error.data["message"] and "does not exist" in error.data["message"]
    assert not [e for e in events if e.data.get("unparsed")]


def bad_job_file(tmp_path) -> Path:
    path = tmp_path / "paint.json"
    path.write_text(json.dumps({"job": "paint", "config": {}}), encoding="utf-8")
    return path


# Three ways to start a worker. With `-S` no site-packages (and so no editable install of
# sksbooth) is visible: only the bootstrap can make `core/` importable as `sksbooth`.
LAUNCHES = {
    "bootstrap-without-site": lambda job: [sys.executable, "-S", *worker_command(sys.executable, job)[1:]],
    "python-m": lambda job: [sys.executable, "-m", "sksbooth.jobs.worker", str(job)],
    "cli": lambda job: [sys.executable, "-m", "sksbooth.cli", "worker", str(job)],
}


@pytest.mark.parametrize("launch", LAUNCHES)
def test_every_launch_writes_one_json_error_line_and_exits_1(launch, tmp_path):
    done = subprocess.run(LAUNCHES[launch](bad_job_file(tmp_path)), capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    event = json.loads(lines[0])
    assert event["kind"] == "error" and event["data"]["type"] == "ConfigError" and "'paint'" in event["data"]["message"]
    assert done.returncode == 1


def test_without_site_sksbooth_is_not_importable_except_through_the_bootstrap():
    plain = subprocess.run([sys.executable, "-S", "-c", "import sksbooth"], capture_output=True, timeout=60)
    assert plain.returncode != 0


def private_copy(package: str, dest: Path, marker: str) -> str:
    """Copy an installed pure-Python package and its dist-info into `dest`, with its version
    changed to VERSION+marker, as `pip install --target dest` of another release would leave it."""
    dist = importlib.metadata.distribution(package)
    version = f"{dist.version}+{marker}"
    source = Path(importlib.util.find_spec(package).origin).parent
    shutil.copytree(source, dest / package)
    info = next(Path(dist.locate_file("")).glob(f"{package}-{dist.version}.dist-info"))
    shutil.copytree(info, dest / f"{package}-{version}.dist-info")
    for path, pattern in ((dest / package / "__init__.py", r'__version__ = "[^"]+"'),
                          (dest / f"{package}-{version}.dist-info" / "METADATA", r"(?m)^Version: .+$")):
        text = path.read_text(encoding="utf-8")
        new = '__version__ = "%s"' % version if path.name == "__init__.py" else f"Version: {version}"
        path.write_text(re.sub(pattern, new, text, count=1), encoding="utf-8")
    return version


def test_private_site_shadows_host_packages_while_torch_stays_the_hosts(tiny_model, tmp_path, drain):
    private = tmp_path / "private-site"
    version = private_copy("accelerate", private, "private")
    job = save_job_file(tmp_path / "gen.json", "generate", GenerateConfig(
        model=str(tiny_model), prompt="a photo of sks dog", num_images=1, batch_size=1, num_inference_steps=2,
        output_dir=str(tmp_path / "gen")))
    handle = start_worker(job, private_site=private)
    events = drain(handle)
    done = events[-1]
    assert done.kind == "done" and handle.wait() == 0, handle.log_tail()
    modules = done.data["environment"]["modules"]
    assert Path(modules["accelerate"]["path"]).is_relative_to(private.resolve())
    assert modules["accelerate"]["version"] == version
    assert modules["torch"]["path"] == importlib.util.find_spec("torch").origin
    assert not Path(modules["diffusers"]["path"]).is_relative_to(private.resolve())
    assert Path(done.data["result"]["paths"][0]).is_file()


def test_run_job_returns_a_json_able_result_and_checks_its_config(tiny_model, tmp_path):
    seen = []
    result = run_job("class-images", dict(pretrained_model_name_or_path=str(tiny_model), class_prompt="a dog",
                                          class_data_dir=str(tmp_path / "class"), num_class_images=2,
                                          sample_batch_size=2, num_inference_steps=1, resolution=64), [seen.append])
    assert json.loads(json.dumps(result)) == result
    assert result["num_images"] == 2 and len(list((tmp_path / "class").glob("*.png"))) == 2
    assert [e.kind for e in seen] == ["start", "progress"]
    with pytest.raises(ConfigError, match="Unknown job"):
        run_job("paint", {})
    with pytest.raises(ConfigError, match="ClassImagesConfig"):
        run_job("class-images", GenerateConfig(model="m", prompt="p"))


def test_the_hosts_working_folder_does_not_shadow_libraries(tmp_path, drain):
    """`python -c` puts the working folder first on sys.path; a host's folder with a module
    named like a library (ComfyUI has utils/) must not replace it in the worker."""
    host_folder = tmp_path / "host"
    host_folder.mkdir()
    (host_folder / "json.py").write_text("raise ImportError('the host folder shadowed json')\n")
    handle = start_worker(bad_job_file(tmp_path), cwd=host_folder)
    events = drain(handle)
    assert [e.kind for e in events] == ["error"], handle.log_tail()
    assert events[0].data["type"] == "ConfigError" and handle.wait() == 1


def test_a_private_site_holding_torch_is_refused(tmp_path):
    (tmp_path / "private" / "torch").mkdir(parents=True)
    with pytest.raises(ConfigError, match="contains torch"):
        start_worker(bad_job_file(tmp_path), private_site=tmp_path / "private")


@pytest.mark.skipif(sys.platform == "win32", reason="exit codes of killed processes differ on Windows")
def test_a_worker_that_dies_without_a_result_still_ends_the_stream_with_an_error(train_job, drain):
    handle = start_worker(train_job())
    handle.kill()  # long before the job could finish: no terminal line was written
    events = drain(handle)
    assert events[-1].kind == "error" and events[-1].data["type"] == "WorkerCrashed"
    assert "exited with code -9" in events[-1].data["message"] and handle.returncode == -9
