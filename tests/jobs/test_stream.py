"""The worker's stdout carries only event lines, whatever else the process prints."""

from __future__ import annotations

import json
import subprocess
import sys

NOISY_JOB = """
import os
from sksbooth.events import Event
from sksbooth.jobs.stream import EventStream, protocol_stdout
with protocol_stdout() as out:
    print("python noise")
    os.write(1, b"c-level noise\\n")  # as a C++ library would print
    stream = EventStream(out)
    stream(Event("step", 1, 2, {"loss": float("nan")}))
    stream(Event("done", 2, 2, {"model": "m"}))  # a job's own terminal event is held back...
    stream.finish("done", result={"ok": True})    # ...and merged into the one final line
print("stdout is restored")
"""


def test_stdout_carries_only_json_events_and_noise_goes_to_stderr():
    done = subprocess.run([sys.executable, "-c", NOISY_JOB], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *events, after = done.stdout.splitlines()
    step, final = (json.loads(line) for line in events)
    assert step["kind"] == "step" and step["data"]["loss"] == "nan"  # NaN is not JSON; sent as text
    assert final == {"kind": "done", "step": 2, "total": 2, "data": {"model": "m", "result": {"ok": True}}}
    assert after == "stdout is restored"
    assert "python noise" in done.stderr and "c-level noise" in done.stderr
