"""The worker's stdout: a private copy of fd 1 for JSON lines, everything else sent to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional, TextIO

from ..events import Event
from .protocol import TERMINAL_KINDS, encode_event


@contextlib.contextmanager
def protocol_stdout() -> Iterator[TextIO]:
    """Yield a writer on the real stdout while fd 1 and sys.stdout point at stderr.

    Redirecting the file descriptor (not only sys.stdout) also catches prints from
    C++ code and libraries that grabbed sys.stdout early, so the host never has to
    parse anything but events.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    out = os.fdopen(os.dup(1), "w", encoding="ascii", newline="\n")
    os.dup2(2, 1)
    previous, sys.stdout = sys.stdout, sys.stderr
    try:
        yield out
    finally:
        out.close()
        sys.stdout = previous
        os.dup2(saved, 1)
        os.close(saved)


class EventStream:
    """A job callback writing each event as a JSON line, flushed at once.

    Terminal events a job emits itself (train's done/stopped, generate's done) are held
    back: the worker writes exactly one terminal line, last, merging their data.
    """

    def __init__(self, out: TextIO):
        self.out = out
        self.last: Optional[Event] = None
        self.held: Optional[Event] = None

    def __call__(self, event: Event) -> None:
        self.last = event
        if event.kind in TERMINAL_KINDS:
            self.held = event
        else:
            self.write(event)

    def write(self, event: Event) -> None:
        self.out.write(encode_event(event))
        self.out.flush()

    def finish(self, kind: str, **data) -> Event:
        """Write the terminal line: the job's own event of that kind (if any) merged with `data`."""
        held = self.held if self.held is not None and self.held.kind == kind else None
        base = held or self.last
        merged = {**(held.data if held else {}), **data}
        event = Event(kind, base.step if base else 0, base.total if base else 0, merged)
        self.write(event)
        return event
