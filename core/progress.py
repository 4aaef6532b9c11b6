"""Terminal progress: maps job events to a tqdm bar."""

from __future__ import annotations

from tqdm.auto import tqdm

from .events import Event


class TqdmProgress:
    """A callback: start opens a bar, step/progress advance it, other events print a line."""

    def __init__(self):
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.close()
            self.bar = tqdm(total=event.total, initial=event.step, desc=event.data.get("job", ""), dynamic_ncols=True)
        elif event.kind in ("step", "progress") and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            if "loss" in event.data:
                self.bar.set_postfix(loss=f"{event.data['loss']:.4f}", lr=f"{event.data.get('lr', 0):.2e}")
        elif event.kind in ("sample", "checkpoint", "log", "stopped"):
            text = event.data.get("path") or event.data.get("message") or event.data.get("reason", "")
            tqdm.write(f"[{event.kind} {event.step}] {text}")
        elif event.kind == "done":
            self.close()
