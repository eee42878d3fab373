"""Frame a pet's face the way the AFHQ generators were trained: eyes level, at AFHQ's place and scale.

Projection reproduces a photo best when the photo is framed like the generator's training images.  AFHQ's
faces (StarGAN v2, Choi et al. 2020) are "vertically and horizontally aligned to have the eyes at the
center" (the paper's appendix A); the alignment code was never released.  This module cuts that framing out
of any photo from the positions of the two eyes (and, where known, the nose)::

    crop = crop_for_eyes(eye_a, eye_b, nose=None, framing=FRAMINGS["dog"])   # an oriented square, Crop
    face = cut(img, crop, 512)                                              # uint8 [512, 512, 3]

    aligned = align_photo(img, 512, method="eyes", eyes=(eye_a, eye_b))      # the same, with its record
    aligned = align_photo(img, 512, method="auto", detector=detector)        # eyes found by a Detector
    aligned = align_photo(img, 512, method="centre")                         # today's centre square
    aligned = align_photo(img, 512, method="box", box=CropBox(120, 40, 800)) # a square chosen by the user
    aligned.image, aligned.alignment.to_dict()                              # pixels, JSON for run.json

Coordinates.  Every position is in the continuous coordinates of the photo after EXIF rotation: (0, 0) is the
top-left corner of the top-left pixel, x grows to the right and y downwards, the centre of the pixel in
column j and row i is (j + 0.5, i + 0.5), and the photo spans [0, W] x [0, H].  A :class:`CropBox`
``(x, y, size)`` is therefore exactly the square [x, x + size] x [y, y + size].  (A user who types the column
and row of the pixel under the pupil is half a pixel off; that is far below what framing can notice.)

The framing (:class:`Framing`, :data:`FRAMINGS`).  Where the eyes sit in an aligned square, as fractions of
its side, was measured by hand on the 41 distinct AFHQ images that StarGAN v2's repository ships
(``assets/representative/afhq/{src,ref}/{cat,dog,wild}``, 512x512 each, github.com/clovaai/stargan-v2 at
commit 875b70a1): the pupil centres and the centre of the nose pad were read off each image against a 16-pixel
grid at twice the size (about +-3 px at 512).  The table and the script that turns it into these figures are
``benchmarks/measure_afhq_framing.py``; ``tests/test_align.py`` checks that the figures below are its output.
The figures are medians:

======  ===  =============  =====================  ==================  ============================
domain   n   eye distance   eye midpoint x, y      spread (sd) of the   eye-to-nose (perpendicular),
                                                   eye distance         largest seen
======  ===  =============  =====================  ==================  ============================
cat     15   0.303          0.50, 0.502            0.028               0.220
dog     11   0.297          0.50, 0.489            0.046               0.307
wild    15   0.273          0.50, 0.445            0.029               0.287
all     41   0.283          0.50, 0.489            0.036               0.307
======  ===  =============  =====================  ==================  ============================

Uncertainty, honestly: 41 images chosen by StarGAN v2's authors for their figures (probably more frontal than
the 15,000), annotated by one person; the median eye distance has a standard error of about 0.01 per domain,
and single AFHQ images differ from it by up to 30 % (head turned, long or short snout).  The horizontal
midpoint is set to exactly 0.5 (measured 0.492-0.499, within the annotation error), so that a photo and its
mirror image are framed alike.  AFHQ itself does not level the eyes (measured tilts up to 12 degrees, median
0); levelling them here moves a photo towards the centre of that distribution.  The figures could be refined
on a machine with the keypoint weights by running the detector over the generator's own samples (they are
aligned AFHQ faces); nobody has done so yet.

The nose.  It decides which way is up (the nose lies below the eyes: a photo of a pet lying upside down is
turned the right way) and guards the scale: when a head is turned, its eyes come closer in the photo and a
crop sized from them alone zooms in too far; the square is then enlarged until the nose is no further below
the eyes than in the AFHQ face where it was furthest (the last column above).  Without a nose, the eyes are
taken as upright (the eye on the left of the photo is the left one of the square).

Borders.  Where the square leaves the photo, the photo is mirrored at its edge, blurred and faded towards its
median colour with the distance from the edge, the technique of FFHQ's ``recreate_aligned_images``
(github.com/NVlabs/ffhq-dataset), re-implemented here; the share of the square that lies outside the photo
is recorded and reported.

Resampling.  The region of the photo under the square is resized with Pillow's Lanczos filter (antialiased
when shrinking) to ``supersample`` times the output resolution, rotated there with a bicubic filter, then
reduced to the output resolution with Lanczos again.  ``centre`` and ``box`` keep the exact pixels of
:func:`timemachine.images.square_crop` + :func:`timemachine.images.resize`, as before this module existed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageFilter

from timemachine.errors import ImageError
from timemachine.images import CropBox, centre_box, check_rgb_array, parse_crop, resize, square_crop
from timemachine.settings import AlignmentSettings

if TYPE_CHECKING:
    from timemachine.detect import AnimalDetection, Detector

Point = tuple[float, float]

#: How a photo was framed: eyes given by the user, eyes found by a detector, the centre square, a user's box.
METHODS = ("eyes", "auto", "centre", "box")
#: Eyes closer than this (photo pixels) cannot be aligned on.
MIN_EYE_DISTANCE = 4.0
#: A crop smaller than this share of the output resolution is upscaled so much that the user is told.
BLURRY_BELOW = 0.5
#: A share of the square outside the photo above this is reported in a notice (the record always has it).
OUTSIDE_NOTICE = 0.02
#: Work at this many times the output resolution before the final Lanczos reduction.
DEFAULT_SUPERSAMPLE = AlignmentSettings.supersample
# FFHQ's padding: the fade reaches the median colour 0.3 crop sides beyond the photo; blur sigma 0.02 sides.
_FADE_LENGTH = 0.3
_BLUR_SIGMA = 0.02


# ----------------------------------------------------------------------------------------------------------
# The framing


@dataclasses.dataclass(frozen=True)
class Framing:
    """Where the eyes of an aligned face sit, as fractions of the aligned square's side.

    Attributes:
        name:         what records call it ('cat', 'dog', 'wild', 'afhq').
        eye_distance: distance between the two eye centres / side, in (0, 1).
        eyes_x:       x of the eyes' midpoint / side (0 = left edge).
        eyes_y:       y of the eyes' midpoint / side (0 = top edge).
        nose_limit:   the largest distance of the nose below the eyes' midpoint (perpendicular to the eye line)
                      / side; None = the nose never changes the scale.
    """

    name: str
    eye_distance: float
    eyes_x: float
    eyes_y: float
    nose_limit: Optional[float]

    def __post_init__(self) -> None:
        values = [self.eye_distance, self.eyes_x, self.eyes_y] + ([] if self.nose_limit is None else [self.nose_limit])
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 < v < 1 for v in values):
            raise ValueError(f"framing {self.name!r}: every fraction must lie strictly between 0 and 1")
        half = self.eye_distance / 2
        if not (half < self.eyes_x < 1 - half):
            raise ValueError(f"framing {self.name!r}: both eyes must lie inside the square")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Measured on AFHQ (see the module docstring for how, and for the uncertainty).  ``afhq``: all 41 images.
FRAMINGS: dict[str, Framing] = {
    "cat": Framing("cat", eye_distance=0.303, eyes_x=0.5, eyes_y=0.502, nose_limit=0.220),
    "dog": Framing("dog", eye_distance=0.297, eyes_x=0.5, eyes_y=0.489, nose_limit=0.307),
    "wild": Framing("wild", eye_distance=0.273, eyes_x=0.5, eyes_y=0.445, nose_limit=0.287),
    "afhq": Framing("afhq", eye_distance=0.283, eyes_x=0.5, eyes_y=0.489, nose_limit=0.307),
}
DEFAULT_FRAMING = FRAMINGS["afhq"]


def framing_for(model: Optional[str]) -> Framing:
    """The framing for a model spec: 'afhqcat' (or any name containing 'cat') -> cat, likewise dog and wild;
    anything else (a file, an imported name, None) -> the framing of all AFHQ domains together."""
    text = (model or "").lower()
    for domain in ("cat", "dog", "wild"):
        if domain in text:
            return FRAMINGS[domain]
    return DEFAULT_FRAMING


# ----------------------------------------------------------------------------------------------------------
# The crop: an oriented square of the photo


@dataclasses.dataclass(frozen=True)
class Crop:
    """A square of the photo, possibly rotated, in photo coordinates (see the module docstring).

    Attributes:
        centre: (x, y) of the square's centre.
        size:   its side, in photo pixels (> 0).
        angle:  degrees by which the square's top edge is turned from the photo's x axis, clockwise as seen on
                screen (y points down); the aligned image is the photo turned by ``-angle``.  0 for a box.
    """

    centre: Point
    size: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        numbers = (*self.centre, self.size, self.angle)
        if len(self.centre) != 2 or not all(math.isfinite(float(v)) for v in numbers) or not self.size > 0:
            raise ValueError(f"a crop needs a finite centre, a positive size and a finite angle, got {self}")

    @classmethod
    def from_box(cls, box: CropBox) -> "Crop":
        half = box.size / 2
        return cls((box.x + half, box.y + half), float(box.size), 0.0)

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors (photo coordinates) along the square's rows (right) and columns (down)."""
        rad = math.radians(self.angle)
        right = np.array([math.cos(rad), math.sin(rad)])
        down = np.array([-math.sin(rad), math.cos(rad)])
        return right, down

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Points [N, 2] in the square's own coordinates (fractions of the side: (0, 0) top-left, (1, 1)
        bottom-right) -> photo coordinates [N, 2]."""
        right, down = self.axes()
        points = np.asarray(points, dtype=np.float64) - 0.5
        return np.asarray(self.centre) + self.size * (points[:, :1] * right + points[:, 1:2] * down)

    def from_photo(self, points: np.ndarray) -> np.ndarray:
        """Photo coordinates [N, 2] -> the square's own coordinates (inverse of :meth:`to_photo`)."""
        right, down = self.axes()
        offset = np.asarray(points, dtype=np.float64) - np.asarray(self.centre)
        return np.stack([offset @ right, offset @ down], axis=1) / self.size + 0.5

    def corners(self) -> np.ndarray:
        """[4, 2]: top-left, top-right, bottom-right, bottom-left of the square, in photo coordinates."""
        return self.to_photo(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64))

    def outside(self, width: int, height: int) -> float:
        """Share of the square's area that lies outside a ``width`` x ``height`` photo, in [0, 1]."""
        inside = _polygon_area(_clip_to_rectangle(self.corners(), width, height))
        share = 1.0 - inside / self.size ** 2
        return 0.0 if share < 1e-9 else float(min(1.0, share))  # 1e-9: rounding of a square that touches an edge

    def box(self) -> Optional[CropBox]:
        """The equivalent CropBox when the square is unrotated with whole-pixel corners; else None."""
        x, y = self.centre[0] - self.size / 2, self.centre[1] - self.size / 2
        if self.angle == 0 and all(float(v).is_integer() for v in (x, y, self.size)):
            return CropBox(int(x), int(y), int(self.size))
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"centre": [float(self.centre[0]), float(self.centre[1])], "size": float(self.size),
                "angle": float(self.angle), "corners": self.corners().tolist()}


def _clip_to_rectangle(polygon: np.ndarray, width: float, height: float) -> list[np.ndarray]:
    """Sutherland-Hodgman: the part of a convex polygon inside [0, width] x [0, height]."""
    points = [p for p in polygon]
    edges = ((0, 0.0, False), (0, float(width), True), (1, 0.0, False), (1, float(height), True))
    for axis, limit, keep_below in edges:
        clipped = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if _inside(current, axis, limit, keep_below):
                if not _inside(previous, axis, limit, keep_below):
                    clipped.append(_cross(previous, current, axis, limit))
                clipped.append(current)
            elif _inside(previous, axis, limit, keep_below):
                clipped.append(_cross(previous, current, axis, limit))
        points = clipped
        if not points:
            break
    return points


def _inside(p: np.ndarray, axis: int, limit: float, keep_below: bool) -> bool:
    """Whether point ``p`` lies on the kept side of the line ``p[axis] == limit``."""
    return bool(p[axis] <= limit) if keep_below else bool(p[axis] >= limit)


def _cross(a: np.ndarray, b: np.ndarray, axis: int, limit: float) -> np.ndarray:
    t = (limit - a[axis]) / (b[axis] - a[axis])
    return a + t * (b - a)


def _polygon_area(points: Sequence[np.ndarray]) -> float:
    if len(points) < 3:
        return 0.0
    xy = np.asarray(points)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


# ----------------------------------------------------------------------------------------------------------
# Geometry: from the eyes to the crop


def order_eyes(a: Point, b: Point, nose: Optional[Point] = None) -> tuple[Point, Point]:
    """The two eyes as (the one that ends on the left of the aligned image, the one on the right).

    With a nose, the order that puts the nose below the eye line; without one, the photo is taken as upright:
    the eye with the smaller x first (for an exactly vertical eye line, the upper one first).
    """
    a, b = (float(a[0]), float(a[1])), (float(b[0]), float(b[1]))
    if nose is not None:
        right = np.subtract(b, a)
        down = np.array([-right[1], right[0]])
        below = float(np.dot(np.subtract(nose, np.add(a, b) / 2), down))
        if below != 0:
            return (a, b) if below > 0 else (b, a)
    return (a, b) if (a[0], a[1]) <= (b[0], b[1]) else (b, a)


def crop_for_eyes(eye_a: Point, eye_b: Point, *, nose: Optional[Point] = None,
                  framing: Framing = DEFAULT_FRAMING) -> Crop:
    """The oriented square that puts the eyes level, ``framing.eye_distance`` apart and their midpoint at
    (``framing.eyes_x``, ``framing.eyes_y``) of the square.  The eyes may come in either order
    (:func:`order_eyes`); with a ``nose`` the square is enlarged, if needed, until the nose lies no more than
    ``framing.nose_limit`` of the side below the eyes.  Positions in photo coordinates; no photo needed.

    Raises ImageError for eyes that are not finite numbers or closer than :data:`MIN_EYE_DISTANCE` pixels.
    """
    for point in (eye_a, eye_b) + ((nose,) if nose is not None else ()):
        if len(point) != 2 or not all(math.isfinite(float(v)) for v in point):
            raise ImageError(f"the position {tuple(point)!r} is not two finite numbers")
    left, right_eye = order_eyes(eye_a, eye_b, nose)
    line = np.subtract(right_eye, left)
    distance = float(np.hypot(*line))
    if distance < MIN_EYE_DISTANCE:
        raise ImageError(f"the two eyes are {distance:.1f} pixels apart; they must be at least "
                         f"{MIN_EYE_DISTANCE:g} pixels apart to align the face (mark the centres of the two eyes)")
    right = line / distance
    down = np.array([-right[1], right[0]])
    midpoint = (np.asarray(left) + np.asarray(right_eye)) / 2
    size = distance / framing.eye_distance
    if nose is not None and framing.nose_limit is not None:
        below = float(np.dot(np.subtract(nose, midpoint), down))
        size = max(size, below / framing.nose_limit)
    centre = midpoint + size * ((0.5 - framing.eyes_x) * right + (0.5 - framing.eyes_y) * down)
    angle = math.degrees(math.atan2(right[1], right[0]))
    return Crop((float(centre[0]), float(centre[1])), float(size), angle)


# ----------------------------------------------------------------------------------------------------------
# Cutting the square out of the photo


def cut(img: np.ndarray, crop: Crop, resolution: int, *, supersample: int = DEFAULT_SUPERSAMPLE) -> np.ndarray:
    """The square ``crop`` of ``img`` (uint8 [H, W, 3]) resampled to uint8 [R, R, 3], R = ``resolution``.

    Where the square leaves the photo, the photo is mirrored at its edge, blurred and faded towards its median
    colour (see the module docstring).  The work is done at ``supersample`` x R and reduced with Lanczos.
    Memory beyond the photo itself: a few arrays of (2 x supersample x R)^2 pixels at most, whatever the
    photo's size (the region under the square is resampled to the work scale before anything else).

    Raises ImageError when the square does not touch the photo at all.
    """
    check_rgb_array(img)
    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 8:
        raise ValueError(f"supersample must be an integer from 1 to 8, got {supersample!r}")
    height, width = img.shape[:2]
    work = int(resolution * supersample)
    scale = work / crop.size                           # work pixels per photo pixel
    corners = crop.corners()
    margin = max(4.0, 4.0 / scale)                     # room for the filters, in photo pixels
    x0 = max(0, math.floor(corners[:, 0].min() - margin))
    y0 = max(0, math.floor(corners[:, 1].min() - margin))
    x1 = min(width, math.ceil(corners[:, 0].max() + margin))
    y1 = min(height, math.ceil(corners[:, 1].max() + margin))
    if x1 <= x0 or y1 <= y0 or crop.outside(width, height) >= 1.0:
        raise ImageError(f"the crop (centre {crop.centre[0]:.0f},{crop.centre[1]:.0f}, side {crop.size:.0f}) lies "
                         f"entirely outside the {width}x{height} photo")

    # The region under the square, resized so that the square's side becomes `work` pixels.
    region_w, region_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    sx, sy = region_w / (x1 - x0), region_h / (y1 - y0)
    # reducing_gap: shrink by whole factors with a box filter first, until within 3x of the target (Pillow's
    # documented "indistinguishable from fair resampling in most cases"), then Lanczos.
    region = Image.fromarray(np.ascontiguousarray(img)).resize((region_w, region_h), Image.Resampling.LANCZOS,
                                                              box=(x0, y0, x1, y1), reducing_gap=3.0)
    pixels = np.asarray(region)

    # Mirror the photo where the square leaves it (numpy's 'symmetric': reflection about the edge itself).
    in_region = np.stack([(corners[:, 0] - x0) * sx, (corners[:, 1] - y0) * sy], axis=1)
    pad_left = max(0, math.ceil(-in_region[:, 0].min()) + 4)
    pad_top = max(0, math.ceil(-in_region[:, 1].min()) + 4)
    pad_right = max(0, math.ceil(in_region[:, 0].max() - region_w) + 4)
    pad_bottom = max(0, math.ceil(in_region[:, 1].max() - region_h) + 4)
    outside = crop.outside(width, height) > 0
    median = np.median(pixels[::4, ::4].reshape(-1, 3), axis=0) if outside else None  # FFHQ fades to the median
    if pad_left or pad_top or pad_right or pad_bottom:
        pixels = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), mode="symmetric")

    # Output (work grid, edge coordinates o) -> photo: p = centre + (size / work) * ((o_x - work/2) right + ...)
    # -> padded region: q = ((p_x - x0) * sx + pad_left, (p_y - y0) * sy + pad_top).  Pillow's AFFINE maps output
    # edge coordinates to input edge coordinates: q = (a o_x + b o_y + c, d o_x + e o_y + f).
    right, down = crop.axes()
    step = crop.size / work
    origin = np.asarray(crop.centre) - (work / 2) * step * (right + down)
    a, b, c = right[0] * step * sx, down[0] * step * sx, (origin[0] - x0) * sx + pad_left
    d, e, f = right[1] * step * sy, down[1] * step * sy, (origin[1] - y0) * sy + pad_top
    warped = Image.fromarray(np.ascontiguousarray(pixels)).transform(
        (work, work), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BICUBIC)
    if median is not None:
        warped = Image.fromarray(_soften_border(np.asarray(warped), crop, width, height, median))
    out = warped if work == resolution else warped.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8).copy()


def _soften_border(pixels: np.ndarray, crop: Crop, width: int, height: int, median: np.ndarray) -> np.ndarray:
    """Blur the mirrored part of a warped square and fade it towards ``median`` with the distance from the photo.

    ``m`` is the signed distance of each pixel's photo position beyond the photo's edge, in units of
    ``_FADE_LENGTH`` crop sides (negative inside).  Blur weight ``clip(3 m + 1)``: full outside, easing off a
    third of the fade length inside the photo; fade weight ``clip(m)``.  Only the rows and columns that some
    weight reaches are touched.
    """
    work = pixels.shape[0]
    right, down = crop.axes()
    t = ((np.arange(work, dtype=np.float64) + 0.5) / work - 0.5) * crop.size  # along the square's axes
    across, along = t[None, :], t[:, None]                                   # columns, rows
    px = crop.centre[0] + across * right[0] + along * down[0]                # photo x of every pixel [work, work]
    py = crop.centre[1] + across * right[1] + along * down[1]
    beyond = np.maximum(np.maximum(-px, px - width), np.maximum(-py, py - height))
    m = (beyond / (_FADE_LENGTH * crop.size)).astype(np.float32)
    blur_weight = np.clip(3 * m + 1, 0, 1)
    rows, cols = np.flatnonzero(blur_weight.any(axis=1)), np.flatnonzero(blur_weight.any(axis=0))
    if rows.size == 0:
        return pixels
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    blurred = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(_BLUR_SIGMA * work)), np.float32)
    part = pixels[r0:r1, c0:c1].astype(np.float32)
    part += (blurred[r0:r1, c0:c1] - part) * blur_weight[r0:r1, c0:c1, None]
    part += (median.astype(np.float32) - part) * np.clip(m[r0:r1, c0:c1, None], 0, 1)
    result = pixels.copy()
    result[r0:r1, c0:c1] = np.clip(np.rint(part), 0, 255).astype(np.uint8)
    return result


# ----------------------------------------------------------------------------------------------------------
# The record and the whole step


@dataclasses.dataclass(frozen=True)
class Alignment:
    """What was done to frame one photo; :meth:`to_dict` is what projection.json and run.json hold.

    Attributes:
        method:     one of :data:`METHODS` (``auto`` only when a face was found; a fallback says ``centre``).
        requested:  the method asked for (``auto`` that fell back records method 'centre', requested 'auto').
        crop:       the square cut, in photo coordinates.
        photo_size: (W, H) of the photo after EXIF rotation.
        resolution: R, the side of the aligned image.
        eyes:       ((x, y) of the eye on the aligned image's left, (x, y) of the other), photo coordinates;
                    None for 'centre' and 'box'.
        nose:       (x, y) or None.
        framing:    the :class:`Framing` used ('eyes' and 'auto'), else None.
        outside:    share of the square outside the photo (filled by mirroring), in [0, 1].
        detection:  for 'auto': {'animals': number found, 'score': the chosen face's eye score, 'box': [x0, y0,
                    x1, y1], 'label': str, 'detector': str}; else None.
        notices:    one-line sentences for the user (fallbacks, several animals, border filled, blurry face).
    """

    method: str
    requested: str
    crop: Crop
    photo_size: tuple[int, int]
    resolution: int
    eyes: Optional[tuple[Point, Point]] = None
    nose: Optional[Point] = None
    framing: Optional[Framing] = None
    outside: float = 0.0
    detection: Optional[dict[str, Any]] = None
    notices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (numbers, strings, lists, dicts, None)."""
        return {
            "method": self.method,
            "requested": self.requested,
            "photo_size": [int(self.photo_size[0]), int(self.photo_size[1])],
            "resolution": int(self.resolution),
            "eyes": None if self.eyes is None else {"left": [float(v) for v in self.eyes[0]],
                                                    "right": [float(v) for v in self.eyes[1]]},
            "nose": None if self.nose is None else [float(v) for v in self.nose],
            "crop": self.crop.to_dict(),
            "framing": None if self.framing is None else self.framing.to_dict(),
            "outside": float(self.outside),
            "detection": None if self.detection is None else _plain(self.detection),
            "notices": list(self.notices),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Alignment":
        """Read back :meth:`to_dict`'s output (e.g. from projection.json); ImageError if it is malformed."""
        try:
            if not isinstance(data, dict) or data.get("method") not in METHODS or data.get("requested") not in METHODS:
                raise ValueError("unknown method")
            crop = data["crop"]
            eyes, nose, framing = data.get("eyes"), data.get("nose"), data.get("framing")
            detection = data.get("detection")
            if detection is not None and not isinstance(detection, dict):
                raise ValueError("detection is not a table")
            notices = data.get("notices", [])
            if not isinstance(notices, list) or not all(isinstance(n, str) for n in notices):
                raise ValueError("notices are not a list of text")
            width, height = (int(v) for v in _pair(data["photo_size"]))
            resolution = data["resolution"]
            if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
                raise ValueError("resolution is not a positive integer")
            return cls(
                method=data["method"], requested=data["requested"],
                crop=Crop(_pair(crop["centre"]), float(crop["size"]), float(crop["angle"])),
                photo_size=(width, height), resolution=resolution,
                eyes=None if eyes is None else (_pair(eyes["left"]), _pair(eyes["right"])),
                nose=None if nose is None else _pair(nose),
                framing=None if framing is None else Framing(**{k: framing[k] for k in (
                    "name", "eye_distance", "eyes_x", "eyes_y", "nose_limit")}),
                outside=float(data.get("outside", 0.0)), detection=detection, notices=tuple(notices))
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"the alignment record is malformed ({type(exc).__name__}: {exc})") from None


def _pair(value: Any) -> Point:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{value!r} is not a pair of numbers")
    x, y = (float(v) for v in value)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError("a position is not finite")
    return (x, y)


def _plain(value: Any) -> Any:
    """numpy scalars and tuples -> plain Python, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class AlignedPhoto:
    """The framed photo, uint8 [R, R, 3], and how it was framed."""

    image: np.ndarray
    alignment: Alignment


def align_photo(img: np.ndarray, resolution: int, *, method: str = "centre",
                eyes: Optional[tuple[Point, Point]] = None, nose: Optional[Point] = None,
                box: Optional[CropBox] = None, detector: Optional["Detector"] = None,
                detector_missing: Optional[str] = None, framing: Framing = DEFAULT_FRAMING,
                supersample: int = DEFAULT_SUPERSAMPLE, name: Optional[str] = None) -> AlignedPhoto:
    """Frame ``img`` (uint8 [H, W, 3], EXIF-oriented) for a generator of resolution R.

    method:
        'eyes'   align on ``eyes`` (two positions, either order) and ``nose`` (optional).
        'auto'   run ``detector`` and align on the largest face it finds.  Without a detector (``detector``
                 None; ``detector_missing`` then says why, e.g. that its weights are not downloaded) or when it
                 finds no face, the centre square is used and a notice says so.
        'centre' the centred square of side min(H, W), as :func:`timemachine.images.square_crop`.
        'box'    the square ``box`` (a CropBox, which must lie inside the photo).

    Raises ImageError for bad input: eyes outside the photo or too close together, a box outside the photo,
    an unknown method, or arguments that do not belong to the method.  ``name`` names the photo in errors.
    """
    check_rgb_array(img)
    _check_method_arguments(method, eyes=eyes, nose=nose, box=box)
    if method == "box":
        if box is None:
            raise ImageError("the 'box' alignment needs a crop box (X,Y,SIZE)")
        return _square(img, resolution, box, requested="box", notices=(), name=name)
    if method == "centre":
        return _square(img, resolution, None, requested="centre", notices=(), name=name)
    if method == "eyes":
        return _align_on_given_eyes(img, resolution, eyes, nose, framing, supersample, name)
    return _align_auto(img, resolution, detector, detector_missing, framing, supersample, name)


def _check_method_arguments(method: str, *, eyes: Optional[tuple[Point, Point]], nose: Optional[Point],
                            box: Optional[CropBox]) -> None:
    """``method`` is known, and only its own arguments (eyes and nose for 'eyes', box for 'box') are given."""
    if method not in METHODS:
        raise ImageError(f"unknown alignment {method!r}; use one of: {', '.join(METHODS)}")
    if eyes is not None and method != "eyes":
        raise ImageError(f"eye positions were given, but the alignment is {method!r}")
    if box is not None and method != "box":
        raise ImageError(f"a crop box was given, but the alignment is {method!r}")
    if nose is not None and method != "eyes":
        raise ImageError(f"a nose position was given, but the alignment is {method!r}")


def _align_on_given_eyes(img: np.ndarray, resolution: int, eyes: Optional[tuple[Point, Point]],
                         nose: Optional[Point], framing: Framing, supersample: int,
                         name: Optional[str]) -> AlignedPhoto:
    """'eyes': align on the two given eye positions (and the nose, if given), each inside the photo."""
    height, width = img.shape[:2]
    where = f" of {name}" if name else ""
    if eyes is None or len(eyes) != 2:
        raise ImageError("the 'eyes' alignment needs the positions of both eyes")
    for point in (*eyes, *((nose,) if nose is not None else ())):
        _check_inside(point, width, height, where)
    return _on_eyes(img, resolution, eyes[0], eyes[1], nose, framing, supersample, requested="eyes",
                    detection=None, notices=())


def _align_auto(img: np.ndarray, resolution: int, detector: Optional["Detector"], detector_missing: Optional[str],
                framing: Framing, supersample: int, name: Optional[str]) -> AlignedPhoto:
    """'auto': align on the largest usable face ``detector`` finds; the centre square, with a notice saying
    why, without a detector or without a usable face."""
    height, width = img.shape[:2]
    if detector is None:
        reason = detector_missing or "no eye detector is available"
        return _square(img, resolution, None, requested="auto", name=name, notices=(
            f"{reason}: the centre square was used instead of aligning on the eyes; "
            "give the eyes' positions to align the face",))
    detections = list(detector(img))
    faces = [d for d in detections if _usable(d, width, height)]
    if not faces:
        found = f"{len(detections)} animal{'s' if len(detections) != 1 else ''} but no two eyes" if detections \
            else "no animal face"
        return _square(img, resolution, None, requested="auto", name=name, notices=(
            f"the eye detector found {found} in the photo: the centre square was used; "
            "give the eyes' positions to align the face",))
    chosen = max(faces, key=lambda d: (d.eye_distance, d.eye_score))
    notices: tuple[str, ...] = ()
    if len(faces) > 1:
        notices = (f"the photo shows {len(faces)} animals' faces: aligned on the largest "
                   f"(eyes {chosen.eye_distance:.0f} pixels apart); give the eyes' positions to choose another",)
    detection = {"animals": len(faces), "score": float(chosen.eye_score), "box": [float(v) for v in chosen.box],
                 "label": chosen.label, "detector": getattr(detector, "name", type(detector).__name__)}
    nose_point = chosen.nose_position()
    if nose_point is not None and not (0 <= nose_point[0] <= width and 0 <= nose_point[1] <= height):
        nose_point = None
    return _on_eyes(img, resolution, chosen.left_eye.position, chosen.right_eye.position, nose_point, framing,
                    supersample, requested="auto", detection=detection, notices=notices)


def _usable(detection: "AnimalDetection", width: int, height: int) -> bool:
    """Both eyes confidently found, inside the photo, and far enough apart to align on."""
    eyes = (detection.left_eye, detection.right_eye)
    if not all(k.found and 0 <= k.x <= width and 0 <= k.y <= height for k in eyes):
        return False
    return detection.eye_distance >= MIN_EYE_DISTANCE


def _square(img: np.ndarray, resolution: int, box: Optional[CropBox], *, requested: str,
            notices: tuple[str, ...], name: Optional[str]) -> AlignedPhoto:
    """'centre' or 'box': the exact pixels of images.square_crop + images.resize."""
    height, width = img.shape[:2]
    if box is None:
        box = centre_box(width, height)
        method = "centre"
    else:
        method = "box"
    image = resize(square_crop(img, box, name=name), resolution)
    crop = Crop.from_box(box)
    notices = notices + _blur_notice(crop, resolution)
    return AlignedPhoto(image, Alignment(method=method, requested=requested, crop=crop, photo_size=(width, height),
                                         resolution=int(resolution), notices=notices))


def _on_eyes(img: np.ndarray, resolution: int, eye_a: Point, eye_b: Point, nose: Optional[Point],
             framing: Framing, supersample: int, *, requested: str, detection: Optional[dict],
             notices: tuple[str, ...]) -> AlignedPhoto:
    height, width = img.shape[:2]
    crop = crop_for_eyes(eye_a, eye_b, nose=nose, framing=framing)
    left, right = order_eyes(eye_a, eye_b, nose)
    outside = crop.outside(width, height)
    if outside > OUTSIDE_NOTICE:
        notices = notices + (f"{outside:.0%} of the aligned square lies beyond the photo's edge and was filled "
                             "with a blurred mirror image of the photo; a photo with more room around the head "
                             "would frame it better",)
    notices = notices + _blur_notice(crop, resolution)
    image = cut(img, crop, resolution, supersample=supersample)
    return AlignedPhoto(image, Alignment(method="eyes" if requested == "eyes" else "auto", requested=requested,
                                         crop=crop, photo_size=(width, height), resolution=int(resolution),
                                         eyes=(left, right), nose=nose, framing=framing, outside=outside,
                                         detection=detection, notices=notices))


def _blur_notice(crop: Crop, resolution: int) -> tuple[str, ...]:
    if crop.size < BLURRY_BELOW * resolution:
        return (f"the face spans only {crop.size:.0f} pixels of the photo, less than half of the {resolution} "
                "the model works at, so the aligned image is blurry; a closer or sharper photo will project better",)
    return ()


def _check_inside(point: Point, width: int, height: int, where: str) -> None:
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise ImageError(f"the position {point!r} is not two numbers") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ImageError(f"the position {point!r} is not two finite numbers")
    if not (0 <= x <= width and 0 <= y <= height):
        raise ImageError(f"the position {x:g},{y:g} lies outside the {width}x{height} pixels{where} "
                         "(after EXIF rotation)")


# ----------------------------------------------------------------------------------------------------------
# What a face asks for


@dataclasses.dataclass(frozen=True)
class AlignmentRequest:
    """How to frame one photo, as a face asked for it (:func:`request_from_options`, or the UI's marks).

    Attributes:
        method:   one of :data:`METHODS`.
        eyes:     the two eye positions for 'eyes' (either order), photo coordinates.
        nose:     optional, for 'eyes'.
        box:      the square for 'box'.
        explicit: the user chose the method.  An explicit 'auto' may download the eye detector's weights; the
                  default 'auto' uses them only when they are already present (see :func:`detect.find_detector`).
    """

    method: str = AlignmentSettings.crop
    eyes: Optional[tuple[Point, Point]] = None
    nose: Optional[Point] = None
    box: Optional[CropBox] = None
    explicit: bool = False

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`align_photo` (add ``detector``/``detector_missing`` for 'auto')."""
        return {"method": self.method, "eyes": self.eyes, "nose": self.nose, "box": self.box}


def request_from_options(crop: Optional[str] = None, eyes: Optional[str] = None, nose: Optional[str] = None,
                         settings: Optional[AlignmentSettings] = None) -> AlignmentRequest:
    """The request for the command line's ``--crop auto|centre|X,Y,SIZE``, ``--eyes LX,LY,RX,RY`` and
    ``--nose X,Y`` (each None when not given); without either, ``settings.crop`` (default 'auto').

    Raises ImageError for malformed values and for eyes given together with a crop (they choose the square
    in two different ways) or a nose without eyes.
    """
    settings = settings or AlignmentSettings()
    settings.validate()
    if eyes is not None:
        if crop is not None:
            raise ImageError("give either the eyes or a crop, not both: the eyes already decide the square")
        return AlignmentRequest("eyes", eyes=parse_eyes(eyes), nose=None if nose is None else parse_point(nose),
                                explicit=True)
    if nose is not None:
        raise ImageError("a nose position only helps together with the two eyes")
    if crop is None:
        return AlignmentRequest(settings.crop, explicit=False)
    choice = parse_crop_option(crop)
    if isinstance(choice, CropBox):
        return AlignmentRequest("box", box=choice, explicit=True)
    return AlignmentRequest(choice, explicit=True)


# ----------------------------------------------------------------------------------------------------------
# Parsing what users type


_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*"


def parse_eyes(text: str) -> tuple[Point, Point]:
    """``"LX,LY,RX,RY"`` (photo pixels, decimals allowed, e.g. ``"412,300,590,310"``) -> ((LX, LY), (RX, RY)).

    Which eye comes first does not matter (:func:`order_eyes`).  Only the syntax is checked here; whether the
    eyes lie in the photo is checked by :func:`align_photo`.  Raises ImageError.
    """
    match = re.fullmatch(",".join([_NUMBER] * 4), text)
    if match is None:
        raise ImageError(f"eyes {text!r} are not of the form LX,LY,RX,RY (four numbers of pixels, e.g. "
                         "412,300,590,310: the centres of the two eyes in the photo)")
    lx, ly, rx, ry = (float(v) for v in match.groups())
    if min(lx, ly, rx, ry) < 0:
        raise ImageError(f"eyes {text!r} have a negative coordinate; positions are counted from the photo's "
                         "top-left corner")
    return (lx, ly), (rx, ry)


def parse_point(text: str) -> Point:
    """``"X,Y"`` (photo pixels) -> (X, Y), e.g. a nose position.  Raises ImageError."""
    match = re.fullmatch(",".join([_NUMBER] * 2), text)
    if match is None:
        raise ImageError(f"position {text!r} is not of the form X,Y (two numbers of pixels, e.g. 500,420)")
    x, y = (float(v) for v in match.groups())
    if min(x, y) < 0:
        raise ImageError(f"position {text!r} has a negative coordinate")
    return (x, y)


def parse_crop_option(text: str) -> Union[str, CropBox]:
    """The ``--crop`` option: ``auto`` or ``centre`` (also ``center``) -> that word; ``X,Y,SIZE`` -> a CropBox."""
    word = text.strip().lower()
    if word in ("auto", "centre", "center"):
        return "centre" if word == "center" else word
    if re.fullmatch(r"[\s\d,+-]*", text):
        return parse_crop(text)
    raise ImageError(f"crop {text!r} is not 'auto', 'centre' or X,Y,SIZE (three whole numbers of pixels)")
