"""Find animals and their eyes in a photo: the detector interface and its ONNX implementation.

The interface (:class:`Detector`) is one call, so that a better detector can replace this one::

    detections = detector(img)          # img uint8 [H, W, 3] RGB -> list[AnimalDetection] (any order)

Each :class:`AnimalDetection` has the animal's box, a box score in [0, 1], a label, and its keypoints in photo
coordinates (:mod:`timemachine.align`: (0, 0) is the photo's top-left corner, a pixel is 1 x 1): at least both
eyes, the nose where the detector has one.  ``left_eye`` is the *animal's* left eye (AP-10K's convention),
which a face seen from the front shows on the right of the photo; :func:`timemachine.align.order_eyes`
sorts that out.

:class:`OnnxAnimalDetector` runs two networks with ``onnxruntime`` on the CPU, top-down as MMPose does:

1. **Boxes**: YOLOX (Megvii, Apache-2.0), trained on COCO, ONNX export of its 0.1.1rc0 release.  The photo
   is scaled to fit the network's square input (aspect kept, placed top-left, the rest grey 114), fed as BGR
   0-255 (YOLOX trains on OpenCV's channel order, without normalisation), and the raw output [1, N, 5 + 80]
   is decoded: per anchor of the stride-8/16/32 grids, centre = (offset + cell) x stride, size =
   exp(log-size) x stride, score = objectness x class probability (both already sigmoid-ed by the export).
   Only COCO's animal classes are kept (:data:`COCO_ANIMALS`), then class-agnostic non-maximum suppression.
   When no box passes, the whole photo is the box (a close-up of a face is often no "dog" to COCO).
2. **Keypoints**: RTMPose-m trained on AP-10K (OpenMMLab's MMPose, Apache-2.0; 17 keypoints, the first three
   left eye, right eye, nose).  Per box: MMPose's ``GetBBoxCenterScale`` (box enlarged 1.25 times) and
   ``TopdownAffine`` (the box widened to the input's aspect ratio, mapped onto the input with a bilinear
   filter), RGB normalised with ImageNet's mean and standard deviation, then the SimCC outputs
   [1, K, W x r], [1, K, H x r] are decoded as MMPose's ``SimCCLabel`` does without DARK: the arg-max bin
   of each axis divided by the split ratio r (2 for this model) is the keypoint in input pixels (MMPose's
   convention: the centre of pixel j is j), its score the smaller of the two maxima (a score <= 0 means not
   found), and the inverse affine map takes it back to the photo.

Weights (:func:`load_detector`): the zoo entries :data:`BOX_MODEL` and :data:`KEYPOINT_MODEL` of
``weights/manifest.json`` (kind ``keypoints``), downloaded and checked like every zoo file.  The keypoint
model comes as OpenMMLab's deployment zip; its one ``.onnx`` member is read into memory (size-bounded) and
given to onnxruntime as bytes, so no external-data file next to it is ever read.  The thresholds are MMPose's
and YOLOX's demo values; neither network's scores are calibrated probabilities.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
from PIL import Image

from timemachine.errors import TimemachineError, WeightsError, first_line, printable

if TYPE_CHECKING:
    import onnxruntime

    from timemachine.zoo import Zoo

Point = tuple[float, float]
ModelSource = Union[str, os.PathLike, bytes]

#: Zoo names of the two networks (weights/manifest.json).
BOX_MODEL = "animal-boxes"
KEYPOINT_MODEL = "animal-keypoints"
#: AP-10K's keypoints, in the order of the network's outputs.
AP10K_KEYPOINTS = ("left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
                   "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
                   "left_back_paw", "right_hip", "right_knee", "right_back_paw")
#: COCO class index -> name, for the classes that are animals (YOLOX's 80 outputs follow COCO's order).
COCO_ANIMALS = {14: "bird", 15: "cat", 16: "dog", 17: "horse", 18: "sheep", 19: "cow", 20: "elephant",
                21: "bear", 22: "zebra", 23: "giraffe"}
#: YOLOX's strides and the grey of its letterbox.
YOLOX_STRIDES = (8, 16, 32)
YOLOX_PAD = 114
#: MMPose's box enlargement before the affine crop (GetBBoxCenterScale's default).
BOX_PADDING = 1.25
#: ImageNet RGB mean and standard deviation, 0-255 scale (RTMPose's data preprocessor).
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)
#: Defaults: a box needs objectness x class >= 0.3 (YOLOX's demo uses 0.3), boxes overlapping more than IoU 0.45
#: are one animal (YOLOX's demo), a keypoint needs a SimCC score >= 0.3 (MMPose's demo threshold), at most
#: this many boxes get keypoints (the largest first).
BOX_THRESHOLD = 0.3
NMS_IOU = 0.45
KEYPOINT_THRESHOLD = 0.3
MAX_ANIMALS = 5
#: Largest ONNX model read (bytes).
MAX_MODEL_BYTES = 512 << 20


# ----------------------------------------------------------------------------------------------------------
# The interface


@dataclasses.dataclass(frozen=True)
class Keypoint:
    """A keypoint in photo coordinates with the detector's score; ``found`` = the score passed its threshold."""

    x: float
    y: float
    score: float
    found: bool

    @property
    def position(self) -> Point:
        return (float(self.x), float(self.y))


@dataclasses.dataclass(frozen=True)
class AnimalDetection:
    """One animal: its box [x0, y0, x1, y1] (photo coordinates), the box's score in [0, 1] (0 when the box is
    the whole photo because none was found), a label ('dog', 'cat', ..., or 'animal'), both eyes (the animal's
    left and right), the nose if the detector has one, and any other keypoints by name."""

    box: tuple[float, float, float, float]
    score: float
    label: str
    left_eye: Keypoint
    right_eye: Keypoint
    nose: Optional[Keypoint] = None
    others: dict[str, Keypoint] = dataclasses.field(default_factory=dict)

    @property
    def eye_distance(self) -> float:
        """Pixels between the two eyes (the size of the face, for choosing the largest)."""
        return float(np.hypot(self.left_eye.x - self.right_eye.x, self.left_eye.y - self.right_eye.y))

    @property
    def eye_score(self) -> float:
        return float(min(self.left_eye.score, self.right_eye.score))

    def nose_position(self) -> Optional[Point]:
        return self.nose.position if self.nose is not None and self.nose.found else None


@runtime_checkable
class Detector(Protocol):
    """Finds animals and their eyes: ``detector(img uint8 [H, W, 3]) -> list[AnimalDetection]``.

    ``name`` identifies the detector (and its weights) in records.  Raises TimemachineError subclasses only.
    """

    name: str

    def __call__(self, img: np.ndarray) -> list[AnimalDetection]:
        ...


# ----------------------------------------------------------------------------------------------------------
# Pre- and post-processing (pure numpy/Pillow: tested on their own)


def letterbox(img: np.ndarray, size: int, pil: Optional[Image.Image] = None) -> tuple[np.ndarray, float]:
    """YOLOX's input: ``img`` uint8 [H, W, 3] RGB scaled by r = min(size / H, size / W) to int(W r) x int(H r)
    (bilinear), placed at the top-left of a ``size`` x ``size`` canvas of grey 114, channels reversed to BGR,
    as float32 [1, 3, size, size] in 0-255.  Returns (tensor, r); photo = input / r.  ``pil``: ``img`` as a PIL
    image when the caller has it already."""
    height, width = img.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = max(1, int(width * ratio)), max(1, int(height * ratio))
    canvas = np.full((size, size, 3), YOLOX_PAD, dtype=np.uint8)
    pil = pil if pil is not None else Image.fromarray(np.ascontiguousarray(img))
    canvas[:new_h, :new_w] = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    bgr = canvas[..., ::-1].transpose(2, 0, 1)
    return np.ascontiguousarray(bgr, dtype=np.float32)[None], ratio


def decode_yolox(raw: np.ndarray, size: int, ratio: float, *, threshold: float = BOX_THRESHOLD,
                 iou: float = NMS_IOU, classes: Optional[dict[int, str]] = None) -> list[tuple[np.ndarray, float, str]]:
    """YOLOX's raw output [N, 5 + C] (N anchors of the stride-8, 16, 32 grids of a ``size`` input, row by row)
    -> [(box [x0, y0, x1, y1] in photo pixels, score, label)], best first, after class-agnostic NMS.

    Only the classes in ``classes`` (default :data:`COCO_ANIMALS`) count; an anchor's score is its objectness
    times its best such class's probability.
    """
    classes = COCO_ANIMALS if classes is None else classes
    cells = [(size // s, s) for s in YOLOX_STRIDES]
    expected = sum(n * n for n, _ in cells)
    if raw.ndim != 2 or raw.shape[0] != expected or raw.shape[1] < 5 + max(classes) + 1:
        raise WeightsError(f"the box network's output has shape {list(raw.shape)}, not [{expected}, 85] "
                           f"(YOLOX at {size}x{size})")
    grid = np.concatenate([np.stack(np.meshgrid(np.arange(n), np.arange(n)), axis=-1).reshape(-1, 2)
                           for n, _ in cells]).astype(np.float64)
    stride = np.concatenate([np.full(n * n, s, dtype=np.float64) for n, s in cells])[:, None]
    raw = raw.astype(np.float64)
    centre = (raw[:, :2] + grid) * stride
    extent = np.exp(np.clip(raw[:, 2:4], -20.0, 20.0)) * stride
    columns = np.array(sorted(classes))
    class_scores = raw[:, 4:5] * raw[:, 5 + columns]
    best = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(best)), best]
    keep = np.flatnonzero(scores >= threshold)
    boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1) / ratio
    chosen = non_maximum_suppression(boxes[keep], scores[keep], iou)
    return [(boxes[keep[i]], float(scores[keep[i]]), classes[int(columns[best[keep[i]]])]) for i in chosen]


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of ``boxes`` [N, 4] (x0, y0, x1, y1) kept, best score first: a box is dropped when its
    intersection-over-union with a better kept box exceeds ``iou``."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    kept: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        kept.append(int(i))
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        overlap = w * h / np.maximum(areas[i] + areas[rest] - w * h, 1e-12)
        order = rest[overlap <= iou]
    return kept


def box_to_centre_scale(box: Union[Sequence[float], np.ndarray], input_size: tuple[int, int],
                        padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """MMPose's GetBBoxCenterScale + TopdownAffine's aspect fix: box [x0, y0, x1, y1] -> (centre [2], scale
    [2] = (width, height) in photo pixels of the region that fills an input of ``input_size`` = (w, h)).

    The box is enlarged ``padding`` times, then widened or heightened (never shrunk) to the ratio w / h.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    bw, bh = (x1 - x0) * padding, (y1 - y0) * padding
    aspect = input_size[0] / input_size[1]
    scale = np.array([bw, bw / aspect]) if bw > bh * aspect else np.array([bh * aspect, bh])
    return centre, scale


def crop_input(img: np.ndarray, centre: np.ndarray, scale: np.ndarray, input_size: tuple[int, int],
               pil: Optional[Image.Image] = None) -> np.ndarray:
    """The keypoint network's input: the region ``centre`` +- ``scale`` / 2 of ``img`` (uint8 RGB) mapped onto
    ``input_size`` = (w, h) with a bilinear filter (black outside the photo, as OpenCV's warpAffine), normalised
    with :data:`RGB_MEAN` / :data:`RGB_STD`, as float32 [1, 3, h, w].  ``pil``: as in :func:`letterbox`.

    Input point q (pixels) <-> photo point ``centre + (q - (w, h) / 2) * scale / (w, h)``.
    """
    w, h = input_size
    step = scale / np.array([w, h], dtype=np.float64)
    origin = centre - scale / 2
    pil = pil if pil is not None else Image.fromarray(np.ascontiguousarray(img))
    warped = pil.transform(
        (w, h), Image.Transform.AFFINE, (step[0], 0.0, origin[0], 0.0, step[1], origin[1]),
        resample=Image.Resampling.BILINEAR)
    pixels = (np.asarray(warped, dtype=np.float32) - np.array(RGB_MEAN, np.float32)) / np.array(RGB_STD, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))[None]


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """SimCC outputs [K, Wx], [K, Wy] -> (locations [K, 2] in input pixels, scores [K]).

    Location: the arg-max bin of each axis / ``split_ratio``; score: the smaller of the two maxima.  A score
    <= 0 marks a keypoint as absent (its location is then -1, -1), as MMPose's ``get_simcc_maximum`` does.
    """
    x = np.argmax(simcc_x, axis=1).astype(np.float64)
    y = np.argmax(simcc_y, axis=1).astype(np.float64)
    scores = np.minimum(simcc_x.max(axis=1), simcc_y.max(axis=1)).astype(np.float64)
    locations = np.stack([x, y], axis=1) / split_ratio
    locations[scores <= 0] = -1
    return locations, scores


def input_to_photo(points: np.ndarray, centre: np.ndarray, scale: np.ndarray,
                   input_size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`crop_input`'s map: input pixels [K, 2] -> photo coordinates [K, 2]."""
    return centre + (np.asarray(points, np.float64) - np.array(input_size) / 2) * scale / np.array(input_size)


# ----------------------------------------------------------------------------------------------------------
# The ONNX detector


class OnnxAnimalDetector:
    """YOLOX boxes + RTMPose (AP-10K) keypoints with onnxruntime on the CPU; see the module docstring.

    Args:
        box_model, keypoint_model: a path (``.onnx``, or for the keypoints also OpenMMLab's ``.zip`` holding
            one ``.onnx``) or the model's bytes.
        box_threshold, keypoint_threshold, nms_iou, max_animals: see the module constants.
        threads: onnxruntime's intra-op threads (None: its default, all cores).
        name: what records call this detector.

    Raises WeightsError when a model cannot be read or does not have the expected inputs and outputs.
    """

    def __init__(self, box_model: ModelSource, keypoint_model: ModelSource, *,
                 box_threshold: float = BOX_THRESHOLD, keypoint_threshold: float = KEYPOINT_THRESHOLD,
                 nms_iou: float = NMS_IOU, max_animals: int = MAX_ANIMALS, threads: Optional[int] = None,
                 name: str = f"{BOX_MODEL}+{KEYPOINT_MODEL}"):
        self.name = name
        self.box_threshold, self.keypoint_threshold = float(box_threshold), float(keypoint_threshold)
        self.nms_iou, self.max_animals = float(nms_iou), int(max_animals)
        self._boxes = _session(box_model, "the animal box network", threads)
        self._keypoints = _session(keypoint_model, "the animal keypoint network", threads)
        self.box_size = self._check_box_signature()
        self.input_size, self.split_ratio, self.num_keypoints = self._check_keypoint_signature()

    def __call__(self, img: np.ndarray) -> list[AnimalDetection]:
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError("the detector takes a uint8 [H, W, 3] RGB image")
        height, width = img.shape[:2]
        pil = Image.fromarray(np.ascontiguousarray(img))   # once: every network input is cut from it
        found = self.boxes(img, pil)
        if not found:
            found = [(np.array([0.0, 0.0, width, height]), 0.0, "animal")]
        found.sort(key=lambda item: -float((item[0][2] - item[0][0]) * (item[0][3] - item[0][1])))
        return [self.keypoints(img, box, score, label, pil) for box, score, label in found[:self.max_animals]]

    def boxes(self, img: np.ndarray, pil: Optional[Image.Image] = None) -> list[tuple[np.ndarray, float, str]]:
        """The animals' boxes in ``img``: [(box [x0, y0, x1, y1], score, label)], clipped to the photo
        (``pil``: as in :func:`letterbox`)."""
        tensor, ratio = letterbox(img, self.box_size, pil)
        raw = _run(self._boxes, tensor, "the animal box network")[0]
        found = decode_yolox(np.asarray(raw)[0], self.box_size, ratio, threshold=self.box_threshold, iou=self.nms_iou)
        height, width = img.shape[:2]
        clipped = []
        for box, score, label in found:
            box = np.clip(box, 0, [width, height, width, height])
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                clipped.append((box, score, label))
        return clipped

    def keypoints(self, img: np.ndarray, box: np.ndarray, score: float, label: str,
                  pil: Optional[Image.Image] = None) -> AnimalDetection:
        """Keypoints of the animal in ``box`` (photo coordinates; ``pil``: as in :func:`letterbox`)."""
        centre, scale = box_to_centre_scale(box, self.input_size)
        simcc_x, simcc_y = _run(self._keypoints, crop_input(img, centre, scale, self.input_size, pil),
                                "the animal keypoint network")[:2]
        locations, scores = decode_simcc(np.asarray(simcc_x)[0], np.asarray(simcc_y)[0], self.split_ratio)
        # A SimCC location is in MMPose's pixel-index convention (the centre of input pixel j is j); crop_input
        # maps pixel edges (the centre of pixel j is j + 0.5): hence the half pixel.
        photo = input_to_photo(locations + 0.5, centre, scale, self.input_size)
        points = [Keypoint(float(x), float(y), float(s), bool(s >= self.keypoint_threshold and s > 0))
                  for (x, y), s in zip(photo, scores)]
        names = AP10K_KEYPOINTS[:len(points)]
        x0, y0, x1, y1 = (float(v) for v in box)
        return AnimalDetection(box=(x0, y0, x1, y1), score=float(score), label=label,
                               left_eye=points[0], right_eye=points[1], nose=points[2],
                               others={n: p for n, p in zip(names[3:], points[3:])})

    def _check_box_signature(self) -> int:
        inputs, outputs = self._boxes.get_inputs(), self._boxes.get_outputs()
        shape = _static(inputs[0].shape) if len(inputs) == 1 else None
        bad = WeightsError("the animal box network does not take one square [1, 3, S, S] image (S a multiple of "
                           "32) and give [1, N, 85] (N anchors of its stride-8, 16, 32 grids): it is not a YOLOX "
                           "export")
        if shape is None or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] % 32 \
                or len(outputs) < 1:
            raise bad
        size = int(shape[2])
        out = _static(outputs[0].shape)   # None when the export left it symbolic: decode_yolox checks it then
        if out is not None and (len(out) != 3 or out[1] != sum((size // s) ** 2 for s in YOLOX_STRIDES) or out[2] < 85):
            raise bad
        return size

    def _check_keypoint_signature(self) -> tuple[tuple[int, int], float, int]:
        inputs, outputs = self._keypoints.get_inputs(), self._keypoints.get_outputs()
        shape = _static(inputs[0].shape) if len(inputs) == 1 else None
        outs = [_static(o.shape) for o in outputs[:2]]
        bad = WeightsError("the animal keypoint network does not take one [1, 3, H, W] image and give two SimCC "
                           "outputs [1, K, W x r] and [1, K, H x r] with K >= 3: it is not an RTMPose export")
        if shape is None or len(shape) != 4 or shape[1] != 3 or len(outputs) < 2 or any(o is None for o in outs):
            raise bad
        h, w = shape[2], shape[3]
        (_, kx, wx), (_, ky, wy) = (o if o is not None and len(o) == 3 else (0, 0, 0) for o in outs)
        if kx != ky or kx < 3 or wx % w or wy % h or wx // w != wy // h or wx == 0:
            raise bad
        return (w, h), float(wx // w), kx


def _static(shape: Sequence[Any]) -> Optional[tuple[int, ...]]:
    """An ONNX shape with a symbolic batch dimension read as 1; None if another dimension is not fixed."""
    dims = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0:
            dims.append(1)
        else:
            return None
    return tuple(dims)


def _run(session: "onnxruntime.InferenceSession", tensor: np.ndarray, what: str) -> list[np.ndarray]:
    try:
        return session.run(None, {session.get_inputs()[0].name: tensor})
    except Exception as exc:  # onnxruntime raises its own exception types for anything that goes wrong
        raise WeightsError(f"{what} failed to run: {first_line(exc)}") from None


def _session(model: ModelSource, what: str, threads: Optional[int]) -> "onnxruntime.InferenceSession":
    try:
        import onnxruntime
    except ImportError:
        raise WeightsError("the eye detector needs the onnxruntime package (pip install onnxruntime)") from None
    data = model if isinstance(model, bytes) else read_onnx(model, what)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a damaged or foreign file: onnxruntime raises many kinds
        raise WeightsError(f"{what} is not a usable ONNX model: {first_line(exc)}") from None


def read_onnx(path: Union[str, os.PathLike], what: str = "the model", limit: int = MAX_MODEL_BYTES) -> bytes:
    """The bytes of an ONNX model: the file itself, or the one ``.onnx`` member of a zip (OpenMMLab's deployment
    packages; ``end2end.onnx`` if there are several).  At most ``limit`` bytes are read.  WeightsError otherwise."""
    path = Path(path)
    shown = printable(str(path))
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if m.filename.endswith(".onnx") and not m.is_dir()]
                preferred = [m for m in members if m.filename.rsplit("/", 1)[-1] == "end2end.onnx"]
                members = preferred or members
                if len(members) != 1:
                    raise WeightsError(f"{what} ({shown}) is a zip without exactly one ONNX model in it")
                if members[0].file_size > limit:
                    raise WeightsError(f"{what} ({shown}) holds a model larger than {limit >> 20} MiB")
                with archive.open(members[0]) as f:
                    data = f.read(limit + 1)
        else:
            if path.stat().st_size > limit:
                raise WeightsError(f"{what} ({shown}) is larger than {limit >> 20} MiB")
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except TimemachineError:
        raise
    except FileNotFoundError:
        raise WeightsError(f"{what} ({shown}) does not exist") from None
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError) as exc:
        raise WeightsError(f"{what} ({shown}) cannot be read: {first_line(exc)}") from None
    if len(data) > limit:
        raise WeightsError(f"{what} ({shown}) is larger than {limit >> 20} MiB")
    return data


# ----------------------------------------------------------------------------------------------------------
# From the zoo


def detector_files(zoo: "Zoo", *, download: bool,
                   progress: Optional[Callable[[str, int, Optional[int]], None]] = None) -> tuple[Path, Path]:
    """Local paths of the two zoo files (:data:`BOX_MODEL`, :data:`KEYPOINT_MODEL`), verified.

    ``download``: fetch what is missing (with ``progress(name, done_bytes, total_bytes)``); otherwise a missing
    file raises WeightsError at once.  Offline (the zoo's switch) or unreachable downloads raise WeightsError
    naming the URL and the path where the file may be placed by hand.
    """
    paths = []
    for name in (BOX_MODEL, KEYPOINT_MODEL):
        entry = zoo.entry(name)
        local = zoo.zoo_path(entry)
        if not download and not local.is_file():
            raise WeightsError(f"the eye detector's weights are not downloaded ({name}: {entry.url} -> {local})")
        report = (lambda done, total, _name=name: progress(_name, done, total)) if progress else None
        paths.append(zoo.ensure(name, progress=report))
    return paths[0], paths[1]


def load_detector(zoo: "Zoo", *, download: bool = True, threads: Optional[int] = None,
                  progress: Optional[Callable[[str, int, Optional[int]], None]] = None) -> OnnxAnimalDetector:
    """The zoo's detector, ready to call; see :func:`detector_files` for ``download`` and ``progress``."""
    box_path, keypoint_path = detector_files(zoo, download=download, progress=progress)
    return OnnxAnimalDetector(box_path, keypoint_path, threads=threads)


def find_detector(zoo: "Zoo", *, download: bool, threads: Optional[int] = None,
                  progress: Optional[Callable[[str, int, Optional[int]], None]] = None
                  ) -> tuple[Optional[OnnxAnimalDetector], Optional[str]]:
    """The zoo's detector, or None and why not, in words fit for an alignment notice (for 'auto').

    ``download`` as :func:`detector_files` (True for an explicit 'auto', False for the default).  Never raises
    for missing, unreachable or damaged weights, nor for a missing onnxruntime: those become the reason.
    """
    try:
        return load_detector(zoo, download=download, threads=threads, progress=progress), None
    except WeightsError as exc:
        if not download and "not downloaded" in str(exc):
            return None, "the eye detector's weights are not downloaded"
        return None, f"the eye detector is unavailable ({exc})"
