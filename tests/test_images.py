"""timemachine.images: reading every kind of photo, refusing bad ones, cropping, resizing, tensors, saving.

The corpus is generated here (no binary fixtures): Pillow writes most files; 16-bit RGB PNGs, a
decompression-bomb header and two ICC profiles are assembled byte by byte.
"""

from __future__ import annotations

import io
import os
import pathlib
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, features

from timemachine import images
from timemachine.errors import ImageError
from timemachine.images import (
    CropBox,
    from_tensor,
    load_image,
    parse_crop,
    prepare_photo,
    resize,
    save_png,
    square_crop,
    to_tensor,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ----------------------------------------------------------------------------------------------------------
# Corpus builders


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient(width: int = 96, height: int = 80) -> np.ndarray:
    """A smooth uint8 [H, W, 3] test photo (compresses well, survives JPEG nearly intact)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
                    axis=-1).astype(np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG assembled by hand: IHDR with a correct CRC, one IDAT of ``raw_rows`` (filter bytes included), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw_rows))
            + png_chunk(b"IEND", b""))


def rgb16_png(values: np.ndarray) -> bytes:
    """16-bit RGB PNG (colour type 2, which Pillow cannot write) from uint16 [H, W, 3]."""
    height, width, _ = values.shape
    rows = b"".join(b"\0" + values[row].astype(">u2").tobytes() for row in range(height))
    return png_bytes(width, height, 16, 2, rows)


def _s15fixed16(value: float) -> bytes:
    return struct.pack(">i", int(round(value * 65536)))


def _icc(device_class: bytes, colour_space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal ICC v2.1 profile: 128-byte header, tag table, tag data."""
    table, data, offset = [], b"", 128 + 4 + 12 * len(tags)
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table.append(struct.pack(">4sII", signature, offset + len(data), len(body)))
        data += body
    d50 = _s15fixed16(0.9642) + _s15fixed16(1.0) + _s15fixed16(0.8249)
    header = (struct.pack(">I4sI4s4s4s", offset + len(data), b"\0" * 4, 0x02100000, device_class, colour_space,
                          pcs) + b"\0" * 12 + b"acsp" + b"\0" * 28 + d50 + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + b"".join(table) + data


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15fixed16(x) + _s15fixed16(y) + _s15fixed16(z)


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + b"\0" * 78


def swapped_primaries_profile() -> bytes:
    """An RGB display profile whose red and green primaries are sRGB's green and red: red pixels mean green."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, int(2.2 * 256))
    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)  # sRGB, D50
    return _icc(b"mntr", b"RGB ", b"XYZ ", [
        (b"desc", _desc_tag("red-green swapped")), (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz_tag(*green)), (b"gXYZ", _xyz_tag(*red)), (b"bXYZ", _xyz_tag(*blue)),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def cyan_prints_red_profile() -> bytes:
    """A CMYK printer profile (lut8 A2B0 to Lab) in which cyan ink looks red; a naive conversion gives cyan."""
    clut = b""
    for c in (0, 1):
        for _m in (0, 1):
            for _y in (0, 1):
                for k in (0, 1):
                    # Lab encoded in lut8: L 0..100 -> 0..255, a and b -128..127 -> 0..255.
                    clut += bytes((0, 128, 128) if k else (138, 208, 195) if c else (255, 128, 128))
    identity = bytes(range(256))
    matrix = b"".join(_s15fixed16(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3
    return _icc(b"prtr", b"CMYK", b"Lab ", [
        (b"desc", _desc_tag("cyan prints red")), (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)), (b"A2B0", lut)])


def marked_photo(width: int = 120, height: int = 80) -> np.ndarray:
    """Blue uint8 [H, W, 3] with a red 20x20 block in the top-left corner, to see where rotations put it."""
    img = np.zeros((height, width, 3), np.uint8)
    img[...] = BLUE
    img[:20, :20] = RED
    return img


def corner_colours(img: np.ndarray) -> dict[str, tuple[int, ...]]:
    h, w = img.shape[:2]
    points = {"top_left": (5, 5), "top_right": (5, w - 6), "bottom_left": (h - 6, 5), "bottom_right": (h - 6, w - 6)}
    return {where: tuple(int(v) for v in img[y, x]) for where, (y, x) in points.items()}


def close(actual, expected, tolerance: int = 6) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, np.int32) - np.asarray(expected, np.int32)) <= tolerance))


def assert_one_line_error(excinfo, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------------------------------------
# Valid photos


def test_rgb_png_is_exact_and_sources_agree(tmp_path):
    img = gradient()
    data = encode(Image.fromarray(img), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), io.BytesIO(data), str(path), path):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (80, 96, 3) and out.flags.writeable
        np.testing.assert_array_equal(out, img)


def test_rgb_jpeg():
    img = gradient()
    out = load_image(encode(Image.fromarray(img), "JPEG", quality=95))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 2


def test_webp_lossless():
    img = gradient()
    np.testing.assert_array_equal(load_image(encode(Image.fromarray(img), "WEBP", lossless=True)), img)


def test_grey_png():
    out = load_image(encode(Image.new("L", (64, 70), 100), "PNG"))
    assert out.shape == (70, 64, 3)
    assert np.all(out == 100)


def test_sixteen_bit_grey_png_scales_to_eight_bits():
    levels = np.array([0, 257, 32768, 65535], np.uint16)  # -> 0, 1, 128, 255
    values = np.repeat(levels, 16)[None, :].repeat(64, axis=0)  # 64x64, four vertical bands
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    data = encode(image, "PNG")
    assert data[24] == 16  # IHDR bit depth
    out = load_image(data)
    np.testing.assert_array_equal(out[0, ::16, 0], [0, 1, 128, 255])
    assert np.all(out == out[..., :1])


def test_sixteen_bit_rgb_png_scales_to_eight_bits():
    values = np.zeros((64, 64, 3), np.uint16)
    values[:, :32] = (65535, 32768, 0)
    values[:, 32:] = (0, 65535, 32768)
    out = load_image(rgb16_png(values))
    assert tuple(out[10, 10]) == (255, 128, 0)
    assert tuple(out[10, 50]) == (0, 255, 128)


def test_palette_png_with_transparency_is_composited_on_background():
    indices = np.zeros((64, 64), np.uint8)
    indices[:, 32:] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = load_image(data, background=(10, 20, 30))
    assert tuple(out[5, 5]) == (10, 20, 30)
    assert tuple(out[5, 50]) == RED


def test_grey_with_alpha_is_composited():
    grey = Image.new("L", (64, 64), 200)
    alpha = Image.fromarray(np.repeat(np.array([0, 255], np.uint8), 32)[None, :].repeat(64, axis=0))
    out = load_image(encode(Image.merge("LA", (grey, alpha)), "PNG"), background=(0, 0, 255))
    assert tuple(out[5, 5]) == (0, 0, 255)
    assert tuple(out[5, 50]) == (200, 200, 200)


def test_rgba_fully_transparent_pixels_become_background_and_partial_ones_blend():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :, :3] = RED
    rgba[:, :20, 3] = 0      # fully transparent (its colour must not leak through)
    rgba[:, 20:40, 3] = 128  # half
    rgba[:, 40:, 3] = 255    # opaque
    out = load_image(encode(Image.fromarray(rgba), "PNG"), background=(0, 255, 0))
    assert tuple(out[5, 5]) == GREEN
    assert close(out[5, 30], (128, 127, 0), tolerance=1)
    assert tuple(out[5, 50]) == RED
    assert tuple(load_image(encode(Image.fromarray(rgba), "PNG"))[5, 5]) == WHITE  # default background


def test_cmyk_jpeg_without_profile():
    cmyk = Image.new("CMYK", (64, 64), (0, 0, 0, 0))
    cmyk.paste((255, 0, 0, 0), (32, 0, 64, 64))
    out = load_image(encode(cmyk, "JPEG", quality=95))
    assert close(out[5, 5], WHITE)
    assert close(out[5, 50], (0, 255, 255))


def test_cmyk_jpeg_with_icc_profile_is_converted_through_it():
    cmyk = Image.new("CMYK", (64, 64), (255, 0, 0, 0))  # cyan ink: red under this profile
    out = load_image(encode(cmyk, "JPEG", quality=95, icc_profile=cyan_prints_red_profile()))
    assert close(out[32, 32], RED, tolerance=20), out[32, 32]


def test_rgb_with_icc_profile_is_converted_to_srgb():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    swapped = load_image(encode(image, "PNG", icc_profile=swapped_primaries_profile()))
    assert swapped[5, 5, 1] > 150 and swapped[5, 5, 0] < 60, swapped[5, 5]  # red in that space is green in sRGB
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert close(load_image(encode(image, "PNG", icc_profile=srgb))[5, 5], (200, 30, 30), tolerance=2)


def test_damaged_icc_profile_is_ignored():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    out = load_image(encode(image, "PNG", icc_profile=b"not an icc profile at all" * 8))
    assert tuple(out[5, 5]) == (200, 30, 30)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, GREEN, BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 3
    out = load_image(buffer.getvalue())
    assert out.shape == (64, 64, 3) and np.all(out == RED)


@pytest.mark.parametrize("orientation, shape, red_corner", [
    (1, (80, 120, 3), "top_left"),
    (3, (80, 120, 3), "bottom_right"),   # rotated 180
    (6, (120, 80, 3), "top_right"),      # stored rotated 90 counter-clockwise: turn clockwise
    (8, (120, 80, 3), "bottom_left"),    # stored rotated 90 clockwise: turn counter-clockwise
])
def test_exif_orientation_is_applied(orientation, shape, red_corner):
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_image(encode(Image.fromarray(marked_photo()), "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == shape
    for where, colour in corner_colours(out).items():
        assert close(colour, RED if where == red_corner else BLUE, tolerance=30), (where, colour)


# ----------------------------------------------------------------------------------------------------------
# Invalid inputs: one line, naming the file and the problem


def write(tmp_path: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("content", [
    b"Hello, this is a text file and not a photo of a dog.\n",
    b"<!DOCTYPE html><html><body><img src='dog.jpg'></body></html>\n",
    b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='512' height='512'>"
    b"<circle cx='256' cy='256' r='200'/></svg>\n",
], ids=["text", "html", "svg"])
def test_non_images_renamed_jpg(tmp_path, content):
    path = write(tmp_path, "dog.jpg", content)
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, str(path), "not an image")


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.jpg", b"")
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, str(path), "empty")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    data = encode(Image.fromarray(gradient(256, 256)), fmt)
    path = write(tmp_path, f"cut.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, str(path), "truncated")


@pytest.mark.parametrize("size", [(1, 1), (63, 200), (200, 63)])
def test_too_small(tmp_path, size):
    path = write(tmp_path, "tiny.png", encode(Image.new("RGB", size), "PNG"))
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, str(path), f"{size[0]}x{size[1]}", "at least 64")


def test_exactly_minimum_size_is_accepted():
    assert load_image(encode(Image.new("RGB", (64, 64)), "PNG")).shape == (64, 64, 3)


def test_png_header_claiming_40000_squared_fails_fast(tmp_path):
    # A valid IHDR (correct CRC) for 40000x40000 RGB and a few bytes of data: 4.8 GB if it were decoded.
    data = png_bytes(40000, 40000, 8, 2, b"\0" * 100)
    assert len(data) < 200
    path = write(tmp_path, "bomb.png", data)
    start = time.perf_counter()
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert time.perf_counter() - start < 1.0
    assert_one_line_error(excinfo, str(path), "decompression bomb")


def test_pixel_limit_is_per_call_and_leaves_pillow_alone():
    data = encode(Image.new("RGB", (200, 100)), "PNG")
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as excinfo:
        load_image(data, max_pixels=19_999)
    assert_one_line_error(excinfo, "200x100", "limit of 0.019999 megapixels", "decompression bomb")
    assert load_image(data, max_pixels=20_000).shape == (100, 200, 3)
    assert Image.MAX_IMAGE_PIXELS == before


def test_pixel_limit_above_pillows_warning_threshold_raises_no_warning(monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow warns above 10k, errors above 20k
    data = encode(Image.new("RGB", (150, 100)), "PNG")  # 15k pixels
    assert load_image(data, max_pixels=16_000).shape == (100, 150, 3)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.raises(ImageError) as excinfo:
        load_image(encode(Image.new("RGB", (150, 150)), "PNG"), max_pixels=10**9)  # Pillow's own error
    assert_one_line_error(excinfo, "decompression bomb")


def test_file_larger_than_default_limit_is_refused_without_reading(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(images.DEFAULT_MAX_BYTES + 1)  # sparse: nothing is written or read
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, str(path), "larger than the limit", "50.0 MB")


def test_size_limit_is_configurable_for_every_kind_of_source(tmp_path):
    data = encode(Image.fromarray(gradient()), "PNG")
    path = write(tmp_path, "photo.png", data)
    for source in (path, data, io.BytesIO(data)):
        with pytest.raises(ImageError) as excinfo:
            load_image(source, max_bytes=len(data) - 1)
        assert_one_line_error(excinfo, "larger than")
        assert load_image(source if not isinstance(source, io.BytesIO) else io.BytesIO(data),
                          max_bytes=len(data)).shape == (80, 96, 3)


def test_directory(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        load_image(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "directory")


def test_missing_path(tmp_path):
    path = tmp_path / "no such dog.jpg"
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_one_line_error(excinfo, str(path), "does not exist")


def test_names_of_uploads_in_messages():
    upload = io.BytesIO(b"not an image")
    upload.name = "rex.jpg"
    with pytest.raises(ImageError) as excinfo:
        load_image(upload)
    assert_one_line_error(excinfo, "rex.jpg")
    with pytest.raises(ImageError) as excinfo:
        load_image(b"not an image")
    assert_one_line_error(excinfo, "the image")
    with pytest.raises(ImageError) as excinfo:
        load_image(b"not an image", name="upload 3 (bella.png)")
    assert_one_line_error(excinfo, "upload 3 (bella.png)")
    with pytest.raises(ImageError) as excinfo:
        load_image(b"not an image", name="line one\nline two")
    assert_one_line_error(excinfo, "line one\\nline two")


def test_formats_that_are_not_photos_are_refused():
    # EPS would run Ghostscript; ICO is a real Pillow format but not a photo format we open.
    with pytest.raises(ImageError) as excinfo:
        load_image(encode(Image.new("RGB", (64, 64)), "ICO"))
    assert_one_line_error(excinfo, "not an image in a supported format")


def test_heic_without_plugin_says_what_to_install():
    """In a fresh interpreter where pillow-heif cannot be imported (whether or not it is installed here)."""
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from timemachine.images import load_image, ImageError\n"
        "try:\n"
        "    load_image(b'\\0\\0\\0\\x18ftypheic\\0\\0\\0\\0mif1heic' + b'\\0' * 64, name='IMG_0001.HEIC')\n"
        "except ImageError as exc:\n"
        "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert "\n" not in message and "IMG_0001.HEIC" in message and "pillow-heif" in message


def test_heic_with_plugin_is_read():
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif not installed (the 'heic' extra)")
    pillow_heif.register_heif_opener()
    photo = gradient(96, 80)
    out = load_image(encode(Image.fromarray(photo), "HEIF", quality=95), name="IMG_0002.HEIC")
    assert out.shape == (80, 96, 3)
    assert np.abs(out.astype(int) - photo.astype(int)).mean() < 6                   # lossy, but the same picture


def test_unsupported_arguments_are_bugs_not_user_errors():
    with pytest.raises(TypeError):
        load_image(12345)
    with pytest.raises(TypeError):
        load_image(io.StringIO("text"))
    with pytest.raises(ValueError):
        load_image(encode(Image.new("RGB", (64, 64)), "PNG"), background=(0, 0, 256))
    with pytest.raises(ValueError):
        load_image(encode(Image.new("RGB", (64, 64)), "PNG"), background=(0, 0, 0, 0))


# ----------------------------------------------------------------------------------------------------------
# Fuzzing: damaged bytes give an array or an ImageError, never another exception (Issue 8.4)


def _fuzz_seed(fmt: str) -> bytes:
    if fmt == "GIF":
        return encode(Image.fromarray(gradient(64, 64)).convert("P"), "GIF")
    return encode(Image.fromarray(gradient(64, 64)), fmt, **({"quality": 80} if fmt == "JPEG" else {}))


_FUZZ_SEEDS = {fmt: _fuzz_seed(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "AVIF")
               if fmt != "AVIF" or features.check("avif")}


def _check_array_or_image_error(data: bytes) -> None:
    try:
        out = load_image(data)
    except ImageError as exc:
        assert "\n" not in str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert min(out.shape[:2]) >= images.MIN_SIDE


@pytest.mark.parametrize("fmt", sorted(_FUZZ_SEEDS))
@settings(max_examples=120, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_bytes(fmt, data):
    seed = bytearray(_FUZZ_SEEDS[fmt])
    mutations = data.draw(st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)),
                                   min_size=1, max_size=6))
    for position, value in mutations:
        seed[position] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(seed))))
    _check_array_or_image_error(bytes(seed[:cut]))


# ----------------------------------------------------------------------------------------------------------
# Cropping


def numbered(width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] whose channels are x mod 256, y mod 256, 0: every crop is recognisable."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, np.zeros_like(x)], axis=-1).astype(np.uint8)


def test_centred_crop_of_landscape_and_portrait():
    landscape = numbered(160, 100)
    crop = square_crop(landscape)
    assert crop.shape == (100, 100, 3) and crop.flags.c_contiguous
    np.testing.assert_array_equal(crop, landscape[:, 30:130])
    portrait = numbered(100, 161)  # odd margin: the extra row goes to the bottom
    np.testing.assert_array_equal(square_crop(portrait), portrait[30:130, :])
    square = numbered(70, 70)
    np.testing.assert_array_equal(square_crop(square), square)


def test_explicit_crop_box():
    img = numbered(200, 150)
    crop = square_crop(img, CropBox(x=30, y=10, size=100))
    np.testing.assert_array_equal(crop, img[10:110, 30:130])
    np.testing.assert_array_equal(square_crop(img, CropBox(100, 50, 100)), img[50:150, 100:200])  # touches edges


@pytest.mark.parametrize("box", [CropBox(101, 50, 100), CropBox(0, 51, 100), CropBox(0, 0, 151),
                                 CropBox(-1, 0, 100), CropBox(500, 500, 64)])
def test_crop_box_outside_image(box):
    with pytest.raises(ImageError) as excinfo:
        square_crop(numbered(200, 150), box, name="rex.jpg")
    assert_one_line_error(excinfo, "rex.jpg", "200x150", "does not fit")


def test_crop_box_too_small():
    with pytest.raises(ImageError) as excinfo:
        square_crop(numbered(200, 150), CropBox(0, 0, 63))
    assert_one_line_error(excinfo, "at least 64")


@pytest.mark.parametrize("text, box", [("120,40,800", CropBox(120, 40, 800)), (" 0, 0 ,64 ", CropBox(0, 0, 64))])
def test_parse_crop(text, box):
    assert parse_crop(text) == box
    assert str(box) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["", "1,2", "1,2,3,4", "a,b,c", "1.5,2,100", "1;2;100", "10,20,", "0x10,0,64",
                                  "-1,0,100", "0,-5,100", "0,0,-64", "0,0,0"])
def test_parse_crop_rejects_bad_strings(text):
    with pytest.raises(ImageError) as excinfo:
        parse_crop(text)
    assert_one_line_error(excinfo, repr(text))


# ----------------------------------------------------------------------------------------------------------
# Resizing, the whole preparation, tensors, saving


@pytest.mark.parametrize("size, resolution", [(300, 128), (64, 128), (128, 128), (100, 37)])
def test_resize_shape_and_dtype(size, resolution):
    out = resize(gradient(size, size), resolution)
    assert out.shape == (resolution, resolution, 3) and out.dtype == np.uint8


def test_lanczos_of_constant_image_stays_constant():
    for size, resolution in ((300, 128), (64, 512)):
        constant = np.full((size, size, 3), (13, 200, 77), np.uint8)
        assert np.all(resize(constant, resolution) == (13, 200, 77))


def test_resize_is_lanczos():
    img = gradient(256, 256)
    expected = np.asarray(Image.fromarray(img).resize((100, 100), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resize(img, 100), expected)


def test_resize_rejects_non_square_and_bad_resolution():
    with pytest.raises(ValueError):
        resize(gradient(100, 80), 64)
    with pytest.raises(ValueError):
        resize(gradient(64, 64), 0)


def test_prepare_photo_orients_crops_and_resizes(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed as 80 wide, 120 high, red block top-right
    path = write(tmp_path, "rotated.jpg", encode(Image.fromarray(marked_photo()), "JPEG", quality=95,
                                                   exif=exif.tobytes()))
    out = prepare_photo(path, 64, CropBox(x=0, y=0, size=80))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    corners = corner_colours(out)
    assert close(corners["top_right"], RED, tolerance=30) and close(corners["top_left"], BLUE, tolerance=30)
    centred = prepare_photo(path, 64)  # rows 20..100 of the displayed photo: no red left
    assert centred[..., 0].max() < 60
    with pytest.raises(ImageError) as excinfo:
        prepare_photo(path, 64, CropBox(0, 0, 100))  # fits the stored 120x80, not the displayed 80x120
    assert_one_line_error(excinfo, str(path), "80x120")


def test_tensor_round_trip_is_exact():
    img = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).__mod__(256).astype(np.uint8)
    x = to_tensor(img)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 16, 16)
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    assert torch.equal(x[0, 0, 0, 0], torch.tensor(-1.0))
    back = from_tensor(x)
    assert back.dtype == np.uint8 and back.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(back[0], img)
    batch = np.stack([img, 255 - img])
    np.testing.assert_array_equal(from_tensor(to_tensor(batch)), batch)


def test_from_tensor_rounds_and_clamps_like_generate_py():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    official = (x.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    out = from_tensor(x)
    np.testing.assert_array_equal(out, official)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 0, 64, 128, 191, 255, 255])


def test_tensor_functions_reject_wrong_shapes():
    with pytest.raises(ValueError):
        to_tensor(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError):
        to_tensor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(3, 8, 8))


def test_save_png_round_trip_and_overwrite(tmp_path):
    path = tmp_path / "result.png"
    save_png(gradient(), path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), gradient())
    save_png(255 - gradient(), str(path))
    np.testing.assert_array_equal(load_image(path), 255 - gradient())
    assert sorted(os.listdir(tmp_path)) == ["result.png"]  # no temporary file left behind


def test_save_png_gets_ordinary_permissions(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "result.png"
    save_png(gradient(), path)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_save_png_failure_is_an_image_error_and_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(ImageError) as excinfo:
        save_png(gradient(), tmp_path / "missing" / "result.png")
    assert_one_line_error(excinfo, "result.png")
    path = tmp_path / "result.png"
    path.write_bytes(b"previous result")

    class Boom(Exception):
        pass

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"half a png")
        raise Boom()

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(Boom):
        save_png(gradient(), path)
    monkeypatch.undo()
    assert path.read_bytes() == b"previous result"  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["result.png"]


def test_save_png_rejects_wrong_arrays(tmp_path):
    with pytest.raises(ValueError):
        save_png(np.zeros((8, 8, 3), np.float32), tmp_path / "x.png")
    assert not os.listdir(tmp_path)
