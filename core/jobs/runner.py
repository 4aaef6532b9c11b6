"""run_job(): one entry point for every job, returning a small JSON-able result.

Job modules are imported on first use so that a worker can report a bad job file,
and a host can import this module, without loading torch.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Optional

from ..config import JOB_CONFIGS, config_from_dict
from ..errors import ConfigError
from ..events import Callback, StopFlag


def _train(config, callbacks, stop) -> dict:
    from ..train.loop import train
    r = train(config, callbacks, stop)
    return {"job": "train", "stopped": r.stopped, "output_dir": str(r.output_dir), "global_step": r.global_step,
            "model_path": str(r.model_path) if r.model_path else None,
            "last_checkpoint": str(r.last_checkpoint) if r.last_checkpoint else None}


def _class_images(config, callbacks, stop) -> dict:
    from ..class_images import generate_class_images
    folder = generate_class_images(config, callbacks, stop)
    return {"job": "class-images", "stopped": False, "folder": str(folder.folder),
            "num_images": len(folder.images), "skipped": dict(folder.skipped)}


def _generate(config, callbacks, stop) -> dict:
    from ..generate import generate
    paths = generate(config, callbacks, stop)
    return {"job": "generate", "stopped": False, "paths": [str(p) for p in paths]}


JOBS = MappingProxyType({"train": _train, "class-images": _class_images, "generate": _generate})


def run_job(job: str, config, callbacks: Iterable[Callback] = (), stop: Optional[StopFlag] = None) -> dict:
    """Run `job` ("train", "class-images" or "generate") with its config (a dataclass or a dict).

    Stopping a train job returns {"stopped": True, ...}; the other jobs raise StopRequested.
    """
    if job not in JOBS:
        raise ConfigError(f"Unknown job {job!r}; expected one of {', '.join(JOBS)}.")
    cls = JOB_CONFIGS[job]
    if isinstance(config, dict):
        config = config_from_dict(cls, config)
    elif not isinstance(config, cls):
        raise ConfigError(f"Job {job!r} needs a {cls.__name__}, got {type(config).__name__}.")
    return JOBS[job](config, list(callbacks), stop)
