"""The eye detector (timemachine.detect) and the 'auto' alignment built on it.

The real networks cannot be downloaded here: their pre- and post-processing are tested on cases computed by
hand, and the whole detector runs under onnxruntime on ONNX stand-ins with the real signatures
(tests/onnx_standins.py): a YOLOX-shaped model whose raw output is chosen anchor by anchor, and an
RTMPose-shaped model that "sees" pure red, green and blue dots as left eye, right eye and nose.  The zoo path
is exercised for real against a local HTTP server.  Fallbacks use plain Python detectors with fixed keypoints.
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import threading
import zipfile

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import onnx_standins as standins  # noqa: E402
from timemachine import align, detect  # noqa: E402
from timemachine.detect import AnimalDetection, Keypoint, OnnxAnimalDetector  # noqa: E402
from timemachine.errors import WeightsError  # noqa: E402

BOX_SIZE = 416
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def dots(width: int, height: int, marks: dict, radius: int = 2) -> np.ndarray:
    """A black photo with square dots of pure colour centred on the given pixels (column, row)."""
    img = np.zeros((height, width, 3), np.uint8)
    for (col, row), colour in marks.items():
        img[row - radius:row + radius + 1, col - radius:col + radius + 1] = colour
    return img


@functools.lru_cache(maxsize=None)
def keypoint_model() -> bytes:
    return standins.keypoint_standin(256, 256)


def dog_box_model() -> bytes:
    """One dog at stride-32 cell (5, 4): centre (5.5, 4.5) cells, 6 x 5 cells, objectness 0.9 x dog 0.8; an
    overlapping cat that NMS removes, a confident person that is no animal, and a weak bird below threshold."""
    size = BOX_SIZE
    rows = {
        standins.anchor_index(size, 32, 5, 4): standins.yolox_row(0.5, 0.5, 6, 5, 0.9, 16, 0.8),
        standins.anchor_index(size, 32, 5, 5): standins.yolox_row(0.5, 0.2, 6, 5, 0.8, 15, 0.7),
        standins.anchor_index(size, 16, 2, 2): standins.yolox_row(0.0, 0.0, 2, 2, 0.99, 0, 0.99),
        standins.anchor_index(size, 8, 40, 40): standins.yolox_row(0.5, 0.5, 3, 3, 0.5, 14, 0.5),
    }
    return standins.box_standin(size, rows)


# ----------------------------------------------------------------------------------------------------------
# Pre- and post-processing, by hand


def test_decode_simcc_by_hand():
    simcc_x = np.array([[0.1, 0.2, 0.9, 0.3], [0.0, -0.5, -0.1, -0.2]], np.float32)
    simcc_y = np.array([[0.7, 0.1, 0.0, 0.0], [-0.3, -0.1, -0.4, -0.9]], np.float32)
    locations, scores = detect.decode_simcc(simcc_x, simcc_y, split_ratio=2.0)
    np.testing.assert_allclose(locations, [[1.0, 0.0], [-1, -1]])   # bin 2 / 2 = 1; bin 0 / 2 = 0; absent
    np.testing.assert_allclose(scores, [0.7, -0.1], rtol=1e-6)      # the smaller of the two maxima


def test_decode_yolox_by_hand():
    model_rows = {standins.anchor_index(BOX_SIZE, 32, 5, 4): standins.yolox_row(0.5, 0.5, 6, 5, 0.9, 16, 0.8),
                  standins.anchor_index(BOX_SIZE, 32, 5, 5): standins.yolox_row(0.5, 0.2, 6, 5, 0.8, 15, 0.7),
                  standins.anchor_index(BOX_SIZE, 16, 2, 2): standins.yolox_row(0, 0, 2, 2, 0.99, 0, 0.99),
                  standins.anchor_index(BOX_SIZE, 8, 1, 1): standins.yolox_row(0, 0, 1, 1, 0.5, 14, 0.5)}
    raw = np.zeros((standins.anchors(BOX_SIZE), 85), np.float32)
    for index, row in model_rows.items():
        raw[index] = row
    found = detect.decode_yolox(raw, BOX_SIZE, ratio=0.5)
    assert len(found) == 1                       # the cat overlaps the dog (IoU 0.76), the person is no animal,
    box, score, label = found[0]                 # the bird scores 0.25 < 0.3
    assert label == "dog" and score == pytest.approx(0.72)
    # centre (5 + 0.5) x 32 = 176, (4 + 0.5) x 32 = 144; size 6 x 32 = 192 by 5 x 32 = 160; photo = input / 0.5
    np.testing.assert_allclose(box, np.array([176 - 96, 144 - 80, 176 + 96, 144 + 80]) / 0.5, rtol=1e-6)
    found = detect.decode_yolox(raw, BOX_SIZE, ratio=0.5, iou=0.9)
    assert [f[2] for f in found] == ["dog", "cat"]
    with pytest.raises(WeightsError, match="not \\[3549, 85\\]"):
        detect.decode_yolox(raw[:10], BOX_SIZE, 1.0)


def test_non_maximum_suppression_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float64)
    scores = np.array([0.5, 0.9, 0.7, 0.6])
    assert detect.non_maximum_suppression(boxes, scores, iou=0.5) == [1, 2]
    assert detect.non_maximum_suppression(boxes, scores, iou=0.95) == [1, 2, 3, 0]


def test_letterbox_scales_places_top_left_and_reverses_channels():
    img = np.zeros((200, 400, 3), np.uint8)
    img[..., 0] = 10   # red
    img[..., 2] = 30   # blue
    tensor, ratio = detect.letterbox(img, 64)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32 and ratio == pytest.approx(0.16)
    assert tensor[0, :, :32, :].tolist() == [[[30.0] * 64] * 32, [[0.0] * 64] * 32, [[10.0] * 64] * 32]  # B, G, R
    assert np.all(tensor[0, :, 32:, :] == detect.YOLOX_PAD)


def test_box_to_centre_scale_follows_mmpose():
    centre, scale = detect.box_to_centre_scale([100, 50, 300, 150], (256, 256))
    np.testing.assert_allclose(centre, [200, 100])
    np.testing.assert_allclose(scale, [250, 250])        # 200 x 1.25 = 250 wide; made square
    centre, scale = detect.box_to_centre_scale([0, 0, 60, 200], (192, 256))
    np.testing.assert_allclose(scale, [187.5, 250])      # 200 x 1.25 = 250 high; widened to 3:4


def test_crop_input_and_its_inverse_agree_on_a_dot():
    img = dots(300, 200, {(210, 80): RED}, radius=1)   # pixels 209-211, 79-81
    centre, scale = np.array([150.0, 100.0]), np.array([150.0, 150.0])    # 1 input px = 150 / 50 photo px
    tensor = detect.crop_input(img, centre, scale, (50, 50))
    assert tensor.shape == (1, 3, 50, 50)
    red = tensor[0, 0]
    row, col = np.unravel_index(np.argmax(red), red.shape)
    # input pixel (45, 18) samples photo (75 + 45.5 x 3, 25 + 18.5 x 3) = (211.5, 80.5): the centre of a red pixel;
    # its neighbours sample 208.5 and 214.5 (not red)
    assert (col, row) == (45, 18)
    back = detect.input_to_photo(np.array([[col + 0.5, row + 0.5]]), centre, scale, (50, 50))
    np.testing.assert_allclose(back, [[211.5, 80.5]])
    background = tensor[0, :, 0, 0]
    np.testing.assert_allclose(background, -np.array(detect.RGB_MEAN) / np.array(detect.RGB_STD), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The whole detector on ONNX stand-ins


def test_onnx_detector_finds_the_box_and_the_eyes():
    detector = OnnxAnimalDetector(dog_box_model(), keypoint_model())
    assert detector.box_size == BOX_SIZE and detector.input_size == (256, 256) and detector.split_ratio == 2
    # 640 x 480: ratio 416 / 640 = 0.65; the dog's box is (176 +- 96, 144 +- 80) / 0.65 in the photo.
    eyes_and_nose = {(250, 200): RED, (300, 205): GREEN, (272, 250): BLUE}
    found = detector(dots(640, 480, eyes_and_nose, radius=1))
    assert len(found) == 1
    dog = found[0]
    np.testing.assert_allclose(dog.box, np.array([80, 64, 272, 224]) / 0.65, rtol=1e-5)
    assert dog.label == "dog" and dog.score == pytest.approx(0.72)
    # One input pixel is 1.25 x 295.4 / 256 = 1.44 photo pixels: the dots are found within that.
    for keypoint, (col, row) in ((dog.left_eye, (250, 200)), (dog.right_eye, (300, 205)), (dog.nose, (272, 250))):
        assert keypoint.found
        assert abs(keypoint.x - (col + 0.5)) <= 1.5 and abs(keypoint.y - (row + 0.5)) <= 1.5
    assert not dog.others["neck"].found and set(dog.others) == set(detect.AP10K_KEYPOINTS[3:])


def test_without_a_box_the_whole_photo_is_searched():
    detector = OnnxAnimalDetector(standins.box_standin(BOX_SIZE, {}), keypoint_model())
    found = detector(dots(300, 400, {(100, 150): RED, (180, 150): GREEN}))
    assert len(found) == 1 and found[0].box == (0.0, 0.0, 300.0, 400.0) and found[0].score == 0.0
    assert found[0].label == "animal" and found[0].left_eye.found and not found[0].nose.found
    assert abs(found[0].left_eye.x - 100.5) <= 2.5 and abs(found[0].right_eye.y - 150.5) <= 2.5


def test_auto_alignment_with_the_onnx_detector_records_what_it_found():
    detector = OnnxAnimalDetector(dog_box_model(), keypoint_model(), name="standin")
    img = dots(640, 480, {(250, 200): RED, (300, 205): GREEN, (272, 250): BLUE}, radius=1)
    result = align.align_photo(img, 64, method="auto", detector=detector, framing=align.FRAMINGS["dog"])
    a = result.alignment
    assert a.method == "auto" and a.requested == "auto" and a.notices == ()
    assert a.detection["detector"] == "standin" and a.detection["label"] == "dog" and a.detection["animals"] == 1
    assert abs(a.eyes[0][0] - 250.5) <= 1.5 and abs(a.eyes[1][0] - 300.5) <= 1.5 and a.nose is not None
    assert abs(a.crop.angle - math.degrees(math.atan2(5, 50))) < 3
    assert align.Alignment.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_models_with_other_signatures_or_no_model_at_all_are_refused():
    with pytest.raises(WeightsError, match="not a YOLOX export"):
        OnnxAnimalDetector(keypoint_model(), keypoint_model())
    with pytest.raises(WeightsError, match="not an RTMPose export"):
        OnnxAnimalDetector(dog_box_model(), standins.box_standin(64, {}))
    with pytest.raises(WeightsError, match="not a usable ONNX model"):
        OnnxAnimalDetector(b"\x08\x01garbage", keypoint_model())


def test_read_onnx_takes_the_model_out_of_a_deployment_zip(tmp_path):
    model = keypoint_model()
    package = tmp_path / "rtmpose.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rtmpose-m/pipeline.json", "{}")
        archive.writestr("rtmpose-m/end2end.onnx", model)
    assert detect.read_onnx(package) == model
    plain = tmp_path / "model.onnx"
    plain.write_bytes(model)
    assert detect.read_onnx(plain) == model
    with pytest.raises(WeightsError, match="larger than 0 MiB"):
        detect.read_onnx(package, limit=1000)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "no model")
    with pytest.raises(WeightsError, match="without exactly one ONNX model"):
        detect.read_onnx(empty)
    with pytest.raises(WeightsError, match="does not exist"):
        detect.read_onnx(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------------------------------------
# Fallbacks and several animals, with detectors that return fixed keypoints


class FixedDetector:
    name = "fixed"

    def __init__(self, detections):
        self.detections = detections
        self.calls = 0

    def __call__(self, img):
        self.calls += 1
        return list(self.detections)


def animal(left, right, nose=None, found=True, score=0.9):
    """An AnimalDetection with the animal's left eye at ``left`` (the right of the photo) and so on."""
    kp = lambda p, ok=found: Keypoint(float(p[0]), float(p[1]), score if ok else 0.1, ok)  # noqa: E731
    xs = [left[0], right[0]]
    return AnimalDetection(box=(min(xs) - 50, min(left[1], right[1]) - 50, max(xs) + 50, max(left[1], right[1]) + 80),
                           score=0.8, label="cat", left_eye=kp(left), right_eye=kp(right),
                           nose=None if nose is None else kp(nose))


def grey(width=400, height=300):
    return np.full((height, width, 3), 128, np.uint8)


def test_without_a_detector_auto_falls_back_to_the_centre_square_with_a_notice():
    img = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    result = align.align_photo(img, 64, method="auto", detector_missing="the eye detector's weights are not "
                               "downloaded")
    a = result.alignment
    assert a.method == "centre" and a.requested == "auto"
    assert a.notices == ("the eye detector's weights are not downloaded: the centre square was used instead of "
                         "aligning on the eyes; give the eyes' positions to align the face",)
    np.testing.assert_array_equal(result.image, align.align_photo(img, 64, method="centre").image)


def test_no_face_found_falls_back_with_a_notice():
    for detections, words in (([], "no animal face"),
                              ([animal((200, 100), (150, 100), found=False)], "1 animal but no two eyes")):
        result = align.align_photo(grey(), 64, method="auto", detector=FixedDetector(detections))
        assert result.alignment.method == "centre" and len(result.alignment.notices) == 1
        assert words in result.alignment.notices[0] and "give the eyes' positions" in result.alignment.notices[0]


def test_several_animals_the_largest_face_is_aligned_with_a_notice():
    small = animal((120, 100), (100, 100))                   # eyes 20 px apart
    large = animal((300, 150), (240, 140), nose=(268, 180))  # eyes ~61 px apart
    detector = FixedDetector([small, large])
    result = align.align_photo(grey(), 64, method="auto", detector=detector)
    a = result.alignment
    assert detector.calls == 1 and a.method == "auto" and a.detection["animals"] == 2
    assert a.eyes == ((240.0, 140.0), (300.0, 150.0)) and a.nose == (268.0, 180.0)   # sorted: photo-left first
    assert a.crop == align.crop_for_eyes((300, 150), (240, 140), nose=(268, 180))
    assert len(a.notices) == 1 and "2 animals' faces" in a.notices[0] and "largest (eyes 61 pixels" in a.notices[0]


# ----------------------------------------------------------------------------------------------------------
# The zoo: missing weights, a real download from a local server, offline


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """TIMEMACHINE_HOME and a manifest whose two detector entries point at a local HTTP server."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "yolox.onnx").write_bytes(dog_box_model())
    with zipfile.ZipFile(served / "rtmpose.zip", "w") as archive:
        archive.writestr("rtmpose-m_ap10k/end2end.onnx", keypoint_model())
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    licence = {"name": "Apache-2.0", "summary": "permissive", "url": "https://example.invalid/licence"}
    models = {detect.BOX_MODEL: {"url": f"{base}/yolox.onnx", "filename": "yolox_tiny.onnx"},
              detect.KEYPOINT_MODEL: {"url": f"{base}/rtmpose.zip", "filename": "rtmpose.zip"}}
    for entry in models.values():
        entry.update(kind="keypoints", description="test", size=None, sha256=None, source="test", licence=licence)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "models": models}))
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIMEMACHINE_MANIFEST", str(manifest))
    monkeypatch.delenv("TIMEMACHINE_OFFLINE", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield tmp_path / "home"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def _zoo(offline: bool = False):
    from timemachine.env import Environment
    from timemachine.zoo import Zoo

    return Zoo(Environment.from_environ().replace(offline=offline))


def test_missing_weights_are_one_sentence_and_offline_names_the_url(zoo):
    with pytest.raises(WeightsError, match="eye detector's weights are not downloaded") as missing:
        detect.load_detector(_zoo(), download=False)
    assert "\n" not in str(missing.value)
    with pytest.raises(WeightsError, match="not available offline") as offline:
        detect.load_detector(_zoo(offline=True), download=True)
    assert "yolox.onnx" in str(offline.value) and "\n" not in str(offline.value)


def test_the_detector_is_downloaded_through_the_zoo_and_works(zoo):
    progress = []
    detector = detect.load_detector(_zoo(), download=True, progress=lambda *a: progress.append(a))
    assert (zoo / "models" / "yolox_tiny.onnx").is_file() and (zoo / "models" / "rtmpose.zip").is_file()
    assert {name for name, _, _ in progress} == {detect.BOX_MODEL, detect.KEYPOINT_MODEL}
    found = detector(dots(640, 480, {(250, 200): RED, (300, 205): GREEN}))
    assert found[0].label == "dog" and found[0].left_eye.found
    again = detect.load_detector(_zoo(), download=False)             # present now: nothing to fetch
    assert again.box_size == BOX_SIZE
    (zoo / "models" / "rtmpose.zip").write_bytes(b"tampered")
    with pytest.raises(WeightsError):
        detect.load_detector(_zoo(), download=False)


def test_find_detector_turns_missing_weights_into_a_reason(zoo):
    detector, reason = detect.find_detector(_zoo(), download=False)
    assert detector is None and reason == "the eye detector's weights are not downloaded"
    detector, reason = detect.find_detector(_zoo(offline=True), download=True)
    assert detector is None and reason.startswith("the eye detector is unavailable (") and "\n" not in reason
    detector, reason = detect.find_detector(_zoo(), download=True)
    assert reason is None and isinstance(detector, detect.Detector)
    img = dots(640, 480, {(250, 200): RED, (300, 205): GREEN})
    assert align.align_photo(img, 32, method="auto", detector=detector).alignment.method == "auto"
