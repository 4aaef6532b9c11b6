"""The worker process: run one saved job, streaming its events as JSON lines on stdout.

    python -m sksbooth.jobs.worker JOB_FILE      (or: dreambooth worker JOB_FILE)

Exit codes: 0 done, 130 stopped (a resumable checkpoint was saved), 1 error.
SIGINT/SIGTERM or the stop file (JOB_FILE.stop, or a training config's stop_file)
stop the job gracefully; a second signal interrupts at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

from ..config import load_job_file
from ..errors import DreamBoothError, StopRequested
from ..events import StopFlag
from .environment import loaded_modules
from .protocol import EXIT_CODES, stop_file_for
from .runner import run_job
from .stream import EventStream, protocol_stdout


def run_worker(job_file: str | Path) -> int:
    """Run the job saved in `job_file`; return the exit code matching its terminal event."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with protocol_stdout() as out:
        stream = EventStream(out)
        kind, data = _run(Path(job_file), stream)
        final = stream.finish(kind, **data, environment=loaded_modules())
    return EXIT_CODES[final.kind]


def _run(job_file: Path, stream: EventStream) -> tuple[str, dict]:
    """Load and run the job; map its outcome to a terminal event (kind, data)."""
    stop_file = stop_file_for(job_file)
    try:
        job, config = load_job_file(job_file)
        stop_file = stop_file_for(job_file, getattr(config, "stop_file", None))
        stop = StopFlag(stop_file)
        restore = stop.install_signal_handlers()
        try:
            result = run_job(job, config, [stream], stop)
        finally:
            restore()
    except StopRequested as e:
        return "stopped", {"reason": str(e), "checkpoint": None}
    except KeyboardInterrupt:  # a second signal: stop now, without a checkpoint
        return "stopped", {"reason": "interrupted", "checkpoint": None}
    except DreamBoothError as e:  # its message is written for the user; no traceback needed
        return "error", {"message": str(e), "type": type(e).__name__, "user_error": True}
    except Exception as e:
        traceback.print_exc()  # to stderr, which the host keeps in the worker's log
        return "error", {"message": f"{type(e).__name__}: {e}", "type": type(e).__name__, "user_error": False}
    finally:
        # A stop file outlives the run it stopped; left behind, it would stop the resumed run at once.
        with contextlib.suppress(OSError):
            stop_file.unlink(missing_ok=True)
    return ("stopped" if result.get("stopped") else "done"), {"result": result}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sksbooth.jobs.worker JOB_FILE", file=sys.stderr)
        return 2
    return run_worker(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
