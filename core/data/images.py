"""Reading user images robustly: EXIF rotation, odd modes, bad files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MIN_SIDE = 8


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (CMYK, RGBA, LA, P, L, 1, I;16, I, F) to 8-bit RGB.

    Transparent pixels go on white, as most viewers show them.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "1", "L", "RGB") and image.info.get("transparency") is not None:
        # a palette entry or a colour (PNG tRNS chunk, GIF) marks transparent pixels
        image = image.convert("RGBA")
    elif image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image, apply its EXIF orientation, return 8-bit RGB. Raises DataError if unusable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            image = ImageOps.exif_transpose(im)
            rgb = to_rgb(image)
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path.name}: cannot read image ({type(e).__name__}: {e})") from e
    if min(rgb.size) < MIN_SIDE:
        raise DataError(f"{path.name}: image is too small ({rgb.size[0]}x{rgb.size[1]} px)")
    return rgb


@dataclass
class ImageFolder:
    """The readable images of a folder, their captions, and what had to be skipped."""

    folder: Path
    images: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> reason

    def caption_for(self, image: Path, fallback: str) -> str:
        """`name.txt` beside `name.png` holds the caption; else the fallback prompt."""
        sidecar = image.with_suffix(".txt")
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text
        return fallback


def list_image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def scan_image_folder(folder: str | Path, role: str, required: bool = True) -> ImageFolder:
    """Find the readable images in `folder`, verifying each one.

    `role` names the folder in messages ("instance", "class"). With `required`, a
    missing or empty folder (or one with no readable image) is a DataError saying
    what to do.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        if required:
            raise DataError(f"The {role} image folder {folder} does not exist. "
                            f"Create it and put your {role} photos (JPEG, PNG or WebP) in it.")
        return ImageFolder(folder)
    result = ImageFolder(folder)
    for path in list_image_files(folder):
        try:
            load_image(path)
            result.images.append(path)
        except DataError as e:
            result.skipped[path.name] = str(e).split(": ", 1)[-1]
    if required and not result.images:
        found = f" ({len(result.skipped)} unreadable: {', '.join(result.skipped)})" if result.skipped else ""
        raise DataError(f"The {role} image folder {folder} has no usable images{found}. "
                        f"Add JPEG, PNG or WebP photos ({', '.join(IMAGE_EXTENSIONS)}).")
    return result
