"""Events a job emits, and the stop flag it polls.

A job never calls a UI: it hands events to callbacks. The CLI maps them to tqdm,
the worker to JSON lines, ComfyUI to its ProgressBar, A1111 to shared.state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional


@dataclass(frozen=True)
class Event:
    """kind: start | progress | step | sample | checkpoint | log | done | error | stopped."""

    kind: str
    step: int = 0
    total: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


Callback = Callable[[Event], None]


def emit(callbacks: Iterable[Callback], kind: str, step: int = 0, total: int = 0, **data: Any) -> Event:
    event = Event(kind=kind, step=step, total=total, data=data)
    for callback in callbacks:
        callback(event)
    return event


class StopFlag:
    """Set by a cancel button, a signal or a stop file; polled by jobs between steps."""

    def __init__(self, stop_file: Optional[str | Path] = None):
        self._event = threading.Event()
        self.stop_file = Path(stop_file) if stop_file else None
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        self.reason = self.reason or reason
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self.request(f"stop file {self.stop_file} appeared")
        return self._event.is_set()

    def install_signal_handlers(self, signals=(signal.SIGINT, signal.SIGTERM)) -> Callable[[], None]:
        """Turn Ctrl-C / SIGTERM into a graceful stop; a second Ctrl-C interrupts at once.

        Returns a function that restores the previous handlers.
        """
        previous = {s: signal.getsignal(s) for s in signals}

        def handler(signum, frame):
            if self._event.is_set():
                signal.signal(signum, previous[signum])
                raise KeyboardInterrupt
            self.request(f"signal {signal.Signals(signum).name}")

        for s in signals:
            signal.signal(s, handler)
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    @contextlib.contextmanager
    def handling_signals(self):
        """Within the block, Ctrl-C and SIGTERM request a graceful stop instead of killing the job."""
        restore = self.install_signal_handlers()
        try:
            yield self
        finally:
            restore()
