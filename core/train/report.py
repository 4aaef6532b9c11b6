"""What people look at: the loss plot and sample grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

from ..fsutil import atomic_file


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    return grid


def save_png(image: Image.Image, path: Path, pnginfo=None) -> Path:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=pnginfo)
    return path


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_loss_plot(history: list[dict], path: Path) -> Path | None:
    """Loss per step (raw and smoothed), instance and prior parts, as a PNG."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    loss = [h["loss"] for h in history]
    window = max(1, len(loss) // 20)
    ax.plot(steps, loss, color="#bbbbbb", linewidth=0.8, label="loss")
    ax.plot(steps, moving_average(loss, window), color="#1f77b4", linewidth=2, label=f"loss (mean of {window})")
    if any(h.get("prior_loss") for h in history):
        ax.plot(steps, moving_average([h["instance_loss"] for h in history], window), color="#2ca02c", label="instance")
        ax.plot(steps, moving_average([h["prior_loss"] for h in history], window), color="#d62728", label="prior")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("DreamBooth training loss")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
