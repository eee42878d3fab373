"""Pet photos in and out: open, validate, orient, crop, resize; conversion to and from generator tensors.

Every photo goes through the same steps (:func:`prepare_photo` does them all)::

    load_image(source)        -> uint8 [H, W, 3] sRGB, EXIF orientation applied, alpha composited
    square_crop(img, box)     -> uint8 [S, S, 3]   centred, or an explicit CropBox (see parse_crop)
    resize(img, resolution)   -> uint8 [R, R, 3]   Lanczos, as NVIDIA's dataset_tool prepared AFHQ
    to_tensor(img)            -> float32 [1, 3, R, R] in [-1, 1], the generator's image range

and back: ``from_tensor(G(z))`` -> uint8 [N, R, R, 3] rounded as NVIDIA's generate.py does;
:func:`save_png` writes a result atomically.

Sources are a path, ``bytes``, or a binary file-like object (e.g. a Streamlit upload).  Everything a user
can get wrong (missing file, not an image, truncated data, decompression bomb, too small, crop outside the
photo) raises :class:`~timemachine.errors.ImageError` with one sentence naming the file and the problem.

Reading is deliberately strict and bounded:

* the file is read whole, up to ``max_bytes``, then decoded from memory;
* only photo formats are tried (:data:`SUPPORTED_FORMATS`): no EPS (which would run Ghostscript) or other
  exotic decoders;
* the pixel count is checked from the header, before any pixel is decoded (``max_pixels``); Pillow's own
  global guard (``PIL.Image.MAX_IMAGE_PIXELS``) is left as it is and its error also becomes an ImageError;
* truncated or corrupt data fails (``verify()`` + ``load()``); ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set;
* Pillow's warnings about the file are silenced while it is decoded (``warnings.catch_warnings``, which
  swaps the process-wide filters: harmless here, but not something to rely on in other threads meanwhile).

HEIC/HEIF (and AVIF where Pillow lacks it) are read when the optional ``pillow-heif`` package is installed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import warnings
from typing import TYPE_CHECKING, BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from timemachine import fs
from timemachine.errors import ImageError, first_line, printable

if TYPE_CHECKING:
    import torch

PathLike = Union[str, os.PathLike]
ImageSource = Union[PathLike, bytes, bytearray, memoryview, BinaryIO]

#: Photos smaller than this on either side (after EXIF rotation) are refused.
MIN_SIDE = 64
#: Largest file read, in bytes (50 MiB).
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Largest photo decoded, in pixels: covers 108-megapixel phone sensors; about 360 MB once decoded as RGB.
DEFAULT_MAX_PIXELS = 120_000_000
#: Colour that transparent areas are composited onto (sRGB, 0-255).
DEFAULT_BACKGROUND = (255, 255, 255)

#: Pillow format names tried when opening.  HEIF is present only with pillow-heif.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "JPEG2000", "HEIF")

# What Pillow raises on damaged data: OSError ("image file is truncated", codec errors), SyntaxError and
# struct.error (malformed headers and chunks), ValueError, EOFError, and RuntimeError (the AVIF decoder).
# Only Pillow calls sit inside the try blocks that catch these, so none of our own bugs is hidden.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, RuntimeError)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

_heif_checked = False


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A square region of an (EXIF-oriented) photo: top-left corner ``(x, y)`` and side ``size``, in pixels."""

    x: int
    y: int
    size: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.size}"


def parse_crop(text: str) -> CropBox:
    """Parse the CLI's ``--crop X,Y,SIZE`` (whole pixels, e.g. ``"120,40,800"``) into a :class:`CropBox`.

    Only the syntax and signs are checked here; whether the box fits a photo is checked by :func:`square_crop`.
    Raises ImageError, which argparse does not catch: call it from the command's handler, not as ``type=``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", text)
    if match is None:
        if re.fullmatch(r"\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*", text):
            raise ImageError(f"crop {text!r} has a negative number; X and Y must be 0 or more and SIZE positive")
        raise ImageError(f"crop {text!r} is not of the form X,Y,SIZE (three whole numbers of pixels, "
                         "e.g. 120,40,800)")
    x, y, size = (int(group) for group in match.groups())
    if size == 0:
        raise ImageError(f"crop {text!r} has SIZE 0; the side of the square must be positive")
    return CropBox(x, y, size)


def load_image(source: ImageSource, *, name: Optional[str] = None, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               background: Sequence[int] = DEFAULT_BACKGROUND) -> np.ndarray:
    """Read a photo as it is meant to be seen: uint8 [H, W, 3], sRGB, EXIF orientation applied.

    ``source`` is a path, bytes, or a binary file-like object; ``name`` is what error messages call it
    (default: the path, the file object's ``.name``, or "the image").  Transparent pixels (RGBA, LA,
    palette or tRNS transparency) are composited onto ``background`` (sRGB, 0-255).  16-bit grey is
    rounded to 8 bits (65535 -> 255, 32768 -> 128); 16-bit colour is reduced by Pillow to its high byte.
    CMYK and RGB photos with an embedded ICC profile are converted to sRGB through it (a damaged profile
    is ignored, as viewers do).  Of animations and multi-page files the first frame is read.

    Raises ImageError when the source cannot be read, is not an image in :data:`SUPPORTED_FORMATS`, is
    truncated or damaged, is larger than ``max_bytes`` or ``max_pixels``, or is smaller than
    :data:`MIN_SIDE` pixels on a side.
    """
    _check_background(background)
    data, name = _read_source(source, name, max_bytes)
    image = _decode(data, name, max_pixels)
    return np.array(_to_srgb(image, name, background), dtype=np.uint8)


def centre_box(width: int, height: int) -> CropBox:
    """The centred ``min(width, height)`` square of a ``width`` x ``height`` image."""
    size = min(height, width)
    return CropBox((width - size) // 2, (height - size) // 2, size)


def square_crop(img: np.ndarray, box: Optional[CropBox] = None, *, name: Optional[str] = None) -> np.ndarray:
    """Cut a square out of uint8 [H, W, 3]: the centred ``min(H, W)`` square, or ``box``. Returns uint8 [S, S, 3].

    ``box`` is in the pixel coordinates of ``img`` (the photo after EXIF rotation).  A box that does not lie
    inside the image, or whose side is below :data:`MIN_SIDE`, raises ImageError (``name`` names the photo).
    The result is a new contiguous array.
    """
    check_rgb_array(img)
    height, width = img.shape[:2]
    if box is None:
        box = centre_box(width, height)
    where = f" of {name}" if name else ""
    if box.x < 0 or box.y < 0 or box.x + box.size > width or box.y + box.size > height:
        raise ImageError(f"crop box {box} (X,Y,SIZE) does not fit inside the {width}x{height} pixels{where} "
                         f"(after EXIF rotation); X+SIZE must be at most {width} and Y+SIZE at most {height}")
    if box.size < MIN_SIDE:
        raise ImageError(f"crop box {box}{where} is {box.size} pixels wide; the square must be at least "
                         f"{MIN_SIDE} pixels")
    return np.ascontiguousarray(img[box.y:box.y + box.size, box.x:box.x + box.size])


def resize(img: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a square uint8 [S, S, 3] to uint8 [R, R, 3] with a Lanczos filter (up or down), R = ``resolution``.

    Works in sRGB values, as NVIDIA's dataset_tool did when it prepared the AFHQ training images.
    """
    check_rgb_array(img)
    if img.shape[0] != img.shape[1]:
        raise ValueError(f"resize expects a square image, got {img.shape[1]}x{img.shape[0]}; crop it first")
    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if img.shape[0] == resolution:
        return img.copy()
    resized = Image.fromarray(np.ascontiguousarray(img)).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8).copy()


def prepare_photo(source: ImageSource, resolution: int, crop: Optional[CropBox] = None, *,
                  name: Optional[str] = None, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  background: Sequence[int] = DEFAULT_BACKGROUND) -> np.ndarray:
    """Load, orient, validate, square-crop (centred unless ``crop``) and resize: uint8 [R, R, 3].

    The arguments are those of :func:`load_image`, :func:`square_crop` and :func:`resize`.
    """
    _check_background(background)
    data, name = _read_source(source, name, max_bytes)
    img = np.asarray(_to_srgb(_decode(data, name, max_pixels), name, background), dtype=np.uint8)
    return resize(square_crop(img, crop, name=name), resolution)


def to_tensor(img: np.ndarray, device: Union[str, "torch.device"] = "cpu") -> "torch.Tensor":
    """uint8 [H, W, 3] (or a batch [N, H, W, 3]) -> float32 [1, 3, H, W] (or [N, 3, H, W]) in [-1, 1].

    The mapping ``x / 127.5 - 1`` is the one StyleGAN2-ADA's training loop applies to dataset images.
    """
    import torch

    if img.dtype != np.uint8 or img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"to_tensor expects uint8 [H, W, 3] or [N, H, W, 3], got {img.dtype} {list(img.shape)}")
    batch = img[None] if img.ndim == 3 else img
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2)
    return (x.to(torch.float32) / 127.5 - 1).contiguous()


def from_tensor(x: "torch.Tensor") -> np.ndarray:
    """Generator output float [N, 3, H, W], nominally in [-1, 1] -> uint8 [N, H, W, 3] (numpy, on the CPU).

    Rounds as NVIDIA's generate.py: ``(x * 127.5 + 128).clamp(0, 255)`` truncated to uint8, i.e. round to
    nearest of ``(x + 1) * 127.5``; values outside [-1, 1] are clipped.
    """
    import torch

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"from_tensor expects [N, 3, H, W], got {list(x.shape)}")
    pixels = (x.detach().permute(0, 2, 3, 1).to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return pixels.cpu().numpy()


def save_png(img: np.ndarray, path: PathLike) -> None:
    """Write uint8 [H, W, 3] to ``path`` as PNG, atomically (:class:`timemachine.fs.PendingFile`: a random
    temporary name beside ``path`` that no planted link can redirect, flushed to disk, renamed over ``path``),
    so readers never see a half-written file.

    Raises ImageError when the file cannot be written (missing directory, no permission, disk full).
    """
    check_rgb_array(img)
    path = os.fspath(path)
    try:
        with fs.PendingFile(path) as pending:
            with pending.open("wb") as f:
                Image.fromarray(np.ascontiguousarray(img)).save(f, format="PNG")
    except OSError as exc:
        raise ImageError(f"cannot write {printable(path)}: {exc.strerror or exc}") from exc


# ----------------------------------------------------------------------------------------------------------
# Reading


def _read_source(source: ImageSource, name: Optional[str], max_bytes: int) -> tuple[bytes, str]:
    """The source's bytes (at most ``max_bytes``) and the name messages use for it."""
    limit = f"the limit of {_megabytes(max_bytes)}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = printable(name or "the image")
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = printable(name or str(path))
        data = _read_path(path, name, max_bytes)
    elif hasattr(source, "read"):
        name = printable(name or str(getattr(source, "name", "") or "the image"))
        try:
            data = source.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"{name} cannot be read: {exc.strerror or exc}") from exc
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"load_image needs a binary file object; read() returned {type(data).__name__}")
        data = bytes(data)
    else:
        raise TypeError(f"load_image takes a path, bytes or a binary file object, not {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageError(f"{name} is larger than {limit}")
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    return data, name


def _read_path(path: str, name: str, max_bytes: int) -> bytes:
    import stat

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{name} does not exist") from None
    except OSError as exc:
        raise ImageError(f"{name} cannot be read: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{name} is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{name} is not a regular file")
    if info.st_size > max_bytes:
        raise ImageError(f"{name} is {_megabytes(info.st_size)}, larger than the limit of {_megabytes(max_bytes)}")
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"{name} cannot be read: {exc.strerror or exc}") from exc


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def _register_heif() -> None:
    """Let Pillow read HEIC/HEIF (and AVIF, if Pillow cannot) when the optional pillow-heif is installed."""
    global _heif_checked
    if _heif_checked:
        return
    _heif_checked = True
    try:
        import pillow_heif
    except ImportError:
        return
    pillow_heif.register_heif_opener()
    from PIL import features

    if not features.check("avif") and hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()


def _open(data: bytes) -> ImageFile.ImageFile:
    Image.init()
    formats = [name for name in SUPPORTED_FORMATS if name in Image.OPEN]  # those this Pillow can read
    return Image.open(io.BytesIO(data), formats=formats)


def _decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open, size-check, verify and fully decode ``data``; EXIF orientation applied.  Any mode."""
    _register_heif()
    try:
        with warnings.catch_warnings():
            # Pillow warns above its global MAX_IMAGE_PIXELS; our own check below, made from the header
            # before any pixel is decoded, is the limit that applies (Pillow's error at twice its limit stays).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Damaged but decodable files ("Corrupt EXIF data", "Invalid APNG"): we decode or raise, not warn.
            warnings.simplefilter("ignore", UserWarning)
            image = _open(data)
            _check_size(image.size, name, max_pixels)
            image.verify()  # chunk CRCs and structure (PNG); the image must be reopened afterwards
            image = _open(data)
            image.load()
            _check_size(image.size, name, max_pixels)
            try:
                ImageOps.exif_transpose(image, in_place=True)
            except _DECODE_ERRORS:
                pass  # damaged EXIF: show the pixels as stored, as browsers and viewers do
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has more pixels than Pillow's safety limit of "
                         f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels (a possible decompression "
                         "bomb); reduce it first") from None
    except UnidentifiedImageError:
        raise ImageError(_unidentified_message(data, name)) from None
    except _DECODE_ERRORS as exc:
        detail = first_line(exc)
        raise ImageError(f"{name} is truncated or damaged and cannot be decoded ({detail})") from None
    return image


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more than "
                         f"the limit of {max_pixels / 1e6:g} megapixels (a guard against decompression bombs); "
                         "reduce it first")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height} pixels; photos must be at least {MIN_SIDE} pixels "
                         "on each side")


def _unidentified_message(data: bytes, name: str) -> str:
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypmsf1", b"ftypavif"):
        return (f"{name} is a HEIC/AVIF photo and this installation cannot read it; "
                "install pillow-heif (pip install pillow-heif) or convert it to JPEG")
    return (f"{name} is not an image in a supported format "
            "(JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF; HEIC with pillow-heif)")


# ----------------------------------------------------------------------------------------------------------
# Colour


def _to_srgb(image: Image.Image, name: str, background: Sequence[int]) -> Image.Image:
    """Any decoded image -> mode 'RGB' in sRGB: 16 bits to 8, ICC profile applied, alpha composited."""
    icc_profile = image.info.get("icc_profile")
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bits(image)
    if image.mode == "F":
        raise ImageError(f"{name} holds floating-point samples, which timemachine cannot read as a photo")
    if image.mode == "CMYK":
        image = _cmyk_to_rgb(image, icc_profile)
        icc_profile = None
    elif image.mode not in ("L", "LA", "RGB", "RGBA") or "transparency" in image.info:
        try:
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        except ValueError:
            raise ImageError(f"{name} uses the colour mode {image.mode}, which timemachine cannot convert "
                             "to RGB") from None
    if icc_profile and image.mode in ("RGB", "RGBA"):
        image = _rgb_profile_to_srgb(image, icc_profile)
    if image.mode in ("LA", "RGBA"):
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, tuple(int(c) for c in background) + (255,))
        image = Image.alpha_composite(backdrop, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """16-bit grey ('I;16*', or 'I' holding 16-bit values) -> 'L' or 'LA' with 0-65535 rounded to 0-255.

    (Pillow's own convert clips these to 255 instead of scaling.)  A tRNS grey level becomes alpha.
    """
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    grey = Image.fromarray(((values + 128) // 257).astype(np.uint8))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey


def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.createProfile("sRGB")


def _transform_to_srgb(image: Image.Image, icc_profile: bytes) -> Optional[Image.Image]:
    """``image`` ('RGB' or 'CMYK') converted to sRGB 'RGB' through its ICC profile; None if the profile is
    unusable (damaged, or for another colour space) - viewers then show the values as they are, and so do we."""
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without LittleCMS
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(image, source, _srgb_profile(),
                                         renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _cmyk_to_rgb(image: Image.Image, icc_profile: Optional[bytes]) -> Image.Image:
    converted = _transform_to_srgb(image, icc_profile) if icc_profile else None
    return converted if converted is not None else image.convert("RGB")


def _rgb_profile_to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    converted = _transform_to_srgb(image.convert("RGB"), icc_profile)
    if converted is None:
        return image
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _check_background(background: Sequence[int]) -> None:
    if len(background) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in background):
        raise ValueError(f"background must be three integers in 0-255 (sRGB), got {background!r}")


def check_rgb_array(img: np.ndarray) -> None:
    """Raise ValueError unless ``img`` is a uint8 [H, W, 3] array."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        description = f"{img.dtype} {list(img.shape)}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected a uint8 [H, W, 3] image array, got {description}")
