"""The host side of worker mode: start a worker, read its events, stop it.

    handle = start_worker("job.json", python=sys.executable, private_site="/path/to/deps")
    for event in handle:            # Event objects, live, ending with done/stopped/error
        ...
    handle.request_stop()           # from another thread (a cancel button): checkpoint and exit
    handle.wait()                   # -> 0 done, 130 stopped, 1 error

This module imports neither torch nor any job, so a host with old libraries can use it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping, Optional

from ..errors import ConfigError
from ..events import Event
from .bootstrap import worker_command
from .environment import worker_environment
from .protocol import TERMINAL_KINDS, decode_line, stop_file_for


class WorkerHandle:
    """A running worker: iterate it for events; stderr goes to `log_path` for error reports."""

    def __init__(self, process: subprocess.Popen, job_file: Path, stop_file: Path, log_path: Path, log):
        self.process, self.job_file, self.stop_file, self.log_path = process, job_file, stop_file, log_path
        self._log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> Optional[int]:
        """None while running, then the exit code (0 done, 130 stopped, 1 error, <0 killed by a signal)."""
        return self.process.poll()

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def events(self) -> Iterator[Event]:
        """Events as the worker writes them. If it dies without a terminal event, a last `error`
        event (type WorkerCrashed) quotes the end of its log, so callers always get an outcome."""
        ended = False
        for line in iter(self.process.stdout.readline, ""):
            event = decode_line(line)
            ended = ended or event.kind in TERMINAL_KINDS
            yield event
        code = self.wait()
        if not ended:
            yield Event("error", data={"type": "WorkerCrashed", "user_error": False, "message":
                                       f"The worker exited with code {code} without reporting a result. "
                                       f"End of its log {self.log_path}:\n{self.log_tail()}"})

    def request_stop(self) -> None:
        """Ask for a graceful stop (checkpoint, then exit 130) through the stop file the worker
        polls; if that file cannot be written, send SIGTERM, which the worker treats the same."""
        if self.returncode is not None:
            return
        try:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.write_text("stop\n", encoding="utf-8")
        except OSError:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the exit code; raises subprocess.TimeoutExpired after `timeout` seconds."""
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """Hard stop, no checkpoint: for a worker that ignores request_stop()."""
        if self.returncode is None:
            self.process.kill()
        self.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Kill the worker if still running and release its pipes and log file."""
        self.kill()
        self.process.stdout.close()

    def __enter__(self) -> "WorkerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _configured_stop_file(job_file: Path) -> Optional[str]:
    """The training config's stop_file, read without validating (the worker reports bad files)."""
    try:
        return json.loads(job_file.read_text(encoding="utf-8"))["config"].get("stop_file")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_private_site(private_site: Optional[str | Path]) -> None:
    """The private folder must exist and hold no torch: a torch there would replace the host's.

    (`pip install --target DIR accelerate` pulls torch in; install with --no-deps.)
    """
    if private_site is None:
        return
    folder = Path(private_site)
    if not folder.is_dir():
        raise ConfigError(f"The private package folder {folder} does not exist.")
    if (folder / "torch").exists():
        raise ConfigError(f"The private package folder {folder} contains torch, which would replace the host's "
                          "torch. Remove it (and any nvidia-* packages); install our dependencies with --no-deps.")


def start_worker(job_file: str | Path, python: str = sys.executable, private_site: Optional[str | Path] = None,
                 extra_env: Optional[Mapping[str, str]] = None, log_path: Optional[str | Path] = None,
                 cwd: Optional[str | Path] = None) -> WorkerHandle:
    """Start a worker on a job file written by sksbooth.config.save_job_file.

    `python`: the interpreter (the host's, so its torch is used). `private_site`: a
    folder from `pip install --target DIR` holding our dependencies but no torch; it
    is put first on the worker's PYTHONPATH. stderr goes to `log_path` (default
    JOB_FILE.log). Relative paths in the config resolve against `cwd` (default: ours).
    """
    job_file = Path(job_file).absolute()
    check_private_site(private_site)
    stop_file = stop_file_for(job_file, _configured_stop_file(job_file))
    if not stop_file.is_absolute():  # the worker resolves it against its own working directory
        stop_file = Path(cwd or Path.cwd()) / stop_file
    stop_file.unlink(missing_ok=True)  # a stale stop file would stop the new run at its first step
    log_path = Path(log_path) if log_path else job_file.with_name(job_file.name + ".log")
    log = open(log_path, "wb")
    try:
        process = subprocess.Popen(worker_command(python, job_file), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=log, cwd=cwd,
                                   env=worker_environment(private_site, extra_env),
                                   text=True, encoding="utf-8", errors="replace")
    except BaseException:
        log.close()
        raise
    return WorkerHandle(process, job_file, stop_file, log_path, log)
