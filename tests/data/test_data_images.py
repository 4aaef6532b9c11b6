"""Reading user images: formats, EXIF orientation, odd modes, bad files, captions, folder errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sksbooth.data.images import ImageFolder, load_image, scan_image_folder, to_rgb
from sksbooth.errors import DataError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pixel(image: Image.Image, xy) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)[xy[1], xy[0]]


def close(actual, expected, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=np.int32) - np.asarray(expected)) <= tol))


def marked_image(size=(48, 24)) -> Image.Image:
    """Blue, with a 12x12 red block in the top-left corner: its position shows orientation."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, 12, 12))
    return im


# --- formats ------------------------------------------------------------------

@pytest.mark.parametrize("ext, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".png", "PNG"), (".webp", "WEBP")])
def test_reads_jpeg_png_webp(tmp_path, ext, fmt):
    path = tmp_path / f"photo{ext}"
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    marked_image().save(path, fmt, **kw)
    with Image.open(path) as raw:
        assert raw.format == fmt
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (48, 24)
    assert close(pixel(im, (3, 3)), RED, tol=40)
    assert close(pixel(im, (40, 18)), BLUE, tol=40)


# --- EXIF orientation ---------------------------------------------------------

# For each EXIF orientation, how to store an upright picture so a viewer shows it upright
# (the inverse of the transform the viewer applies).
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORE))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = marked_image()  # 48 wide, 24 high, red block top-left
    stored = upright.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:  # the file really is stored rotated, with the tag
        assert raw.size == stored.size
        assert raw.getexif().get(0x0112) == orientation

    im = load_image(path)
    assert im.size == (48, 24), "EXIF orientation ignored: image is not upright"
    assert close(pixel(im, (4, 4)), RED, tol=40), "the red mark is not in the top-left corner"
    for corner in [(44, 4), (4, 20), (44, 20)]:
        assert close(pixel(im, corner), BLUE, tol=40)


# --- colour modes -------------------------------------------------------------

def test_cmyk_jpeg_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    im.paste((255, 0, 255, 0), (8, 0, 16, 16))  # right half pure green
    im.save(path, "JPEG", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    assert close(pixel(rgb, (2, 8)), RED, tol=30)
    assert close(pixel(rgb, (13, 8)), GREEN, tol=30)


def test_rgba_transparent_goes_to_white(tmp_path):
    im = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (8, 0, 16, 16))  # opaque blue right half
    im.paste((0, 0, 0, 128), (0, 8, 8, 16))  # half-transparent black bottom-left
    path = tmp_path / "rgba.png"
    im.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    assert close(pixel(rgb, (2, 2)), WHITE, tol=0)
    assert close(pixel(rgb, (12, 2)), BLUE, tol=0)
    assert close(pixel(rgb, (2, 12)), (127, 127, 127), tol=2)


def test_la_transparent_goes_to_white():
    im = Image.new("LA", (8, 8), (0, 0))
    im.paste((50, 255), (4, 0, 8, 8))
    rgb = to_rgb(im)
    assert rgb.mode == "RGB"
    assert close(pixel(rgb, (1, 1)), WHITE, tol=0)
    assert close(pixel(rgb, (6, 1)), (50, 50, 50), tol=0)


def palette_image() -> Image.Image:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.paste(1, (8, 0, 16, 16))  # right half green
    im.paste(2, (0, 8, 8, 16))  # bottom-left blue
    return im


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    palette_image().save(path)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" not in raw.info
    rgb = load_image(path)
    assert close(pixel(rgb, (2, 2)), RED, tol=0)
    assert close(pixel(rgb, (12, 2)), GREEN, tol=0)
    assert close(pixel(rgb, (2, 12)), BLUE, tol=0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(tmp_path, fmt):
    path = tmp_path / f"palette.{fmt.lower()}"
    palette_image().save(path, fmt, transparency=0)  # index 0 (red) is transparent
    with Image.open(path) as raw:
        assert raw.mode == "P" and raw.info.get("transparency") == 0
        rgb = to_rgb(raw)
    assert close(pixel(rgb, (2, 2)), WHITE, tol=0)
    assert close(pixel(rgb, (12, 2)), GREEN, tol=0)
    assert close(pixel(rgb, (2, 12)), BLUE, tol=0)


def test_palette_png_with_transparency_loads(tmp_path):
    path = tmp_path / "palette.png"
    palette_image().save(path, transparency=0)
    rgb = load_image(path)
    assert close(pixel(rgb, (2, 2)), WHITE, tol=0)
    assert close(pixel(rgb, (12, 2)), GREEN, tol=0)


def test_rgb_png_with_transparent_colour_goes_to_white(tmp_path):
    im = Image.new("RGB", (16, 16), RED)
    im.paste(BLUE, (8, 0, 16, 16))
    path = tmp_path / "trns.png"
    im.save(path, transparency=RED)  # tRNS chunk: red pixels are transparent
    with Image.open(path) as raw:
        assert raw.mode == "RGB" and "transparency" in raw.info
    rgb = load_image(path)
    assert close(pixel(rgb, (2, 2)), WHITE, tol=0)
    assert close(pixel(rgb, (12, 2)), BLUE, tol=0)


def test_grayscale_to_rgb(tmp_path):
    im = Image.new("L", (16, 16), 100)
    im.paste(200, (8, 0, 16, 16))
    path = tmp_path / "gray.jpg"
    im.save(path, quality=95)
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    assert close(pixel(rgb, (2, 2)), (100, 100, 100), tol=3)
    assert close(pixel(rgb, (12, 2)), (200, 200, 200), tol=3)


def test_bilevel_to_rgb(tmp_path):
    im = Image.new("1", (16, 16), 0)
    im.paste(1, (8, 0, 16, 16))
    path = tmp_path / "bw.png"
    im.save(path)
    rgb = load_image(path)
    assert close(pixel(rgb, (2, 2)), (0, 0, 0), tol=0)
    assert close(pixel(rgb, (12, 2)), WHITE, tol=0)


def test_16bit_grayscale_png_maps_to_8bit(tmp_path):
    values = np.array([0, 32768, 65535, 1000, 257], dtype=np.uint16)
    arr = np.repeat(values, 8)[None, :].repeat(8, axis=0)  # 8 rows, 40 columns, 5 bands of 8
    path = tmp_path / "gray16.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # really 16 bits per pixel on disk
        assert np.asarray(raw).max() == 65535
    rgb = np.asarray(load_image(path), dtype=np.int32)
    assert rgb.shape == (8, 40, 3)
    got = rgb[4, 4::8]  # one pixel per band, all three channels equal
    assert (got == got[:, :1]).all()
    assert got[0, 0] == 0
    assert abs(got[1, 0] - 128) <= 1  # 32768 -> ~128 (not clipped to 255)
    assert got[2, 0] == 255  # 65535 -> 255
    assert got[3, 0] == 4  # 1000 / 65535 * 255 ~= 3.9 (a dark pixel stays dark)
    assert got[4, 0] == 1  # 257 -> 1


def test_32bit_int_and_float_modes():
    i32 = Image.fromarray(np.full((8, 8), 65535, dtype=np.int32))
    assert i32.mode == "I"
    assert pixel(to_rgb(i32), (1, 1)).tolist() == [255, 255, 255]
    f = Image.fromarray(np.full((8, 8), 128.0, dtype=np.float32))
    assert f.mode == "F"
    assert pixel(to_rgb(f), (1, 1)).tolist() == [128, 128, 128]


# --- bad files ------------------------------------------------------------------

def good_png(path):
    marked_image().save(path)
    return path


def test_bad_files_are_skipped_with_a_reason(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    good_png(folder / "good.png")
    marked_image().save(folder / "good2.webp", "WEBP")
    Image.new("RGB", (7, 30), RED).save(folder / "tiny.png")  # 7 px wide: too small
    Image.new("RGB", (4, 4), RED).save(folder / "tiny2.jpg")
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.webp").write_bytes(bytes(range(256)) * 4)
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "PNG")
    (folder / "truncated.png").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (folder / "caption.txt").write_text("not an image and not listed")
    (folder / ".hidden.png").write_bytes(b"junk")

    result = scan_image_folder(folder, "instance")
    assert [p.name for p in result.images] == ["good.png", "good2.webp"]
    assert set(result.skipped) == {"tiny.png", "tiny2.jpg", "notes.jpg", "empty.png", "garbage.webp",
                                   "truncated.jpg", "truncated.png"}
    assert "too small" in result.skipped["tiny.png"] and "7x30" in result.skipped["tiny.png"]
    assert "too small" in result.skipped["tiny2.jpg"]
    for name in ("notes.jpg", "empty.png", "garbage.webp", "truncated.jpg", "truncated.png"):
        assert "cannot read" in result.skipped[name], (name, result.skipped[name])
    assert "truncated" in result.skipped["truncated.jpg"]


def test_load_image_raises_data_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(DataError, match="bad.png: cannot read image"):
        load_image(bad)
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 7)).save(small)
    with pytest.raises(DataError, match=r"small.png: image is too small \(8x7 px\)"):
        load_image(small)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(ok)
    assert load_image(ok).size == (8, 8)  # 8 px is the minimum, and allowed


def test_missing_folder_says_what_to_do(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as e:
        scan_image_folder(missing, "instance")
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg and "Create it" in msg and "instance" in msg
    # not required: an empty result, no error (class folders are created and filled later)
    assert scan_image_folder(missing, "class", required=False).images == []


def test_empty_folder_says_what_to_do(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("put photos here")
    with pytest.raises(DataError) as e:
        scan_image_folder(folder, "instance")
    msg = str(e.value)
    assert "no usable images" in msg and "Add JPEG, PNG or WebP" in msg


def test_folder_of_only_bad_files_lists_them(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_text("x")
    Image.new("RGB", (3, 3)).save(folder / "b.png")
    with pytest.raises(DataError) as e:
        scan_image_folder(folder, "instance")
    msg = str(e.value)
    assert "no usable images" in msg and "2 unreadable" in msg and "a.png" in msg and "b.png" in msg


def test_uppercase_extensions_are_found(tmp_path):
    good_png(tmp_path / "UPPER.PNG")
    marked_image().save(tmp_path / "Photo.JPG", "JPEG")
    result = scan_image_folder(tmp_path, "instance")
    assert sorted(p.name for p in result.images) == ["Photo.JPG", "UPPER.PNG"]


# --- captions -----------------------------------------------------------------------

def test_captions_beside_images_with_prompt_fallback(tmp_path):
    for name in ("a", "b", "c", "d.v2"):
        good_png(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a photo of sks dog on a beach\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("   \n")  # blank caption -> fallback
    (tmp_path / "d.v2.txt").write_text("sks dog, café", encoding="utf-8")
    folder = scan_image_folder(tmp_path, "instance")
    captions = {p.name: folder.caption_for(p, "a photo of sks dog") for p in folder.images}
    assert captions == {"a.png": "a photo of sks dog on a beach", "b.png": "a photo of sks dog",
                        "c.png": "a photo of sks dog", "d.v2.png": "sks dog, café"}


def test_image_folder_caption_for_without_scan(tmp_path):
    img = good_png(tmp_path / "x.webp")
    (tmp_path / "x.txt").write_text("caption x")
    assert ImageFolder(tmp_path).caption_for(img, "fallback") == "caption x"
