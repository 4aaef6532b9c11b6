"""The worker's wire format, shared by the worker and the host-side client.

stdout carries only JSON lines, one Event each (`Event.to_dict()`); the last line is
a terminal event (done, stopped or error) and the exit code repeats it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from ..events import Event

EXIT_DONE, EXIT_ERROR, EXIT_STOPPED = 0, 1, 130  # 130 = 128 + SIGINT, what shells expect after Ctrl-C
EXIT_CODES = {"done": EXIT_DONE, "error": EXIT_ERROR, "stopped": EXIT_STOPPED}
TERMINAL_KINDS = frozenset(EXIT_CODES)


def stop_file_for(job_file: str | Path, configured: Optional[str] = None) -> Path:
    """The file whose appearance stops the job: the config's stop_file (training), else JOB_FILE.stop."""
    if configured:
        return Path(configured)
    job_file = Path(job_file)
    return job_file.with_name(job_file.name + ".stop")


def _plain(value: Any) -> Any:
    """JSON has no NaN/inf (a diverging loss would make an unparsable line): send them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def encode_event(event: Event) -> str:
    """One line of ASCII JSON (ASCII so the host's console encoding never matters)."""
    return json.dumps(_plain(event.to_dict()), ensure_ascii=True, default=str) + "\n"


def decode_line(line: str) -> Event:
    """Parse a stdout line; anything that is not an event becomes a `log` event marked unparsed."""
    text = line.rstrip("\r\n")
    try:
        data = json.loads(text)
        return Event(kind=str(data["kind"]), step=int(data.get("step", 0)), total=int(data.get("total", 0)),
                     data=dict(data.get("data") or {}))
    except (ValueError, TypeError, KeyError):
        return Event(kind="log", data={"message": text, "unparsed": True})
