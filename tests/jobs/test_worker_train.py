"""Training in a worker process: live JSON events, a model on disk, graceful stops that resume."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from sksbooth.jobs.client import start_worker
from sksbooth.jobs.protocol import TERMINAL_KINDS


def kinds(events, kind):
    return [e for e in events if e.kind == kind]


def assert_clean_stream(events):
    """Every stdout line was an event, and exactly one terminal event came, last."""
    assert not [e.data["message"] for e in events if e.data.get("unparsed")]
    assert [e.kind for e in events if e.kind in TERMINAL_KINDS] == [events[-1].kind]


def test_train_job_streams_json_events_live_and_saves_the_model(train_job, drain):
    handle = start_worker(train_job(max_train_steps=3, checkpointing_steps=2))
    running_at_step = {}
    events = drain(handle, lambda e, h: running_at_step.setdefault(e.step, h.returncode is None)
                   if e.kind == "step" else None)

    assert_clean_stream(events)
    # log lines (attention backend, memory plan) may come first; the first progress event is the start
    first = next(e for e in events if e.kind != "log")
    assert first.kind == "start" and first.total == 3
    assert [e.step for e in kinds(events, "step")] == [1, 2, 3]
    assert all(isinstance(e.data["loss"], float) for e in kinds(events, "step"))
    assert running_at_step[1], "events must arrive while the worker runs, not when it exits"
    assert [Path(e.data["path"]).name for e in kinds(events, "checkpoint")] == ["checkpoint-2"]
    done = events[-1]
    assert done.kind == "done" and handle.wait() == 0
    model = Path(done.data["result"]["model_path"])
    assert (model / "model_index.json").is_file() and (model / "unet").is_dir()
    assert done.data["environment"]["modules"]["torch"]["version"]


def stop_after_first_step(method):
    def on_event(event, handle):
        if event.kind == "step" and event.step == 1:
            if method == "file":
                handle.request_stop()
            else:
                os.kill(handle.pid, signal.SIGTERM)
    return on_event


def assert_stopped_with_checkpoint(handle, events, total) -> int:
    assert_clean_stream(events)
    stopped = events[-1]
    assert stopped.kind == "stopped" and handle.wait() == 130
    assert 1 <= stopped.step < total, "the stop must land mid-run"
    checkpoint = Path(stopped.data["checkpoint"])
    assert checkpoint.name == f"checkpoint-{stopped.step}" and (checkpoint / "trainer_state_0.pt").is_file()
    assert not kinds(events, "done") and stopped.data["result"]["model_path"] is None
    return stopped.step


def test_stop_file_saves_a_checkpoint_and_the_rerun_resumes_to_the_end(train_job, drain):
    handle = start_worker(train_job(max_train_steps=4, checkpointing_steps=100))
    events = drain(handle, stop_after_first_step("file"))
    at = assert_stopped_with_checkpoint(handle, events, 4)
    assert "stop file" in events[-1].data["reason"]
    assert not handle.stop_file.exists(), "a leftover stop file would stop the resumed run at once"

    handle = start_worker(train_job(max_train_steps=4, checkpointing_steps=100, resume_from_checkpoint="latest"))
    events = drain(handle)
    assert_clean_stream(events)
    assert events[-1].kind == "done" and handle.wait() == 0
    assert kinds(events, "start")[0].step == at
    assert [e.step for e in kinds(events, "step")] == list(range(at + 1, 5))
    assert (Path(events[-1].data["result"]["model_path"]) / "model_index.json").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be caught on Windows")
def test_sigterm_saves_a_checkpoint_and_exits_130(train_job, drain):
    handle = start_worker(train_job(max_train_steps=4, checkpointing_steps=100))
    events = drain(handle, stop_after_first_step("sigterm"))
    assert_stopped_with_checkpoint(handle, events, 4)
    assert "SIGTERM" in events[-1].data["reason"]
