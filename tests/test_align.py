"""The alignment geometry (timemachine.align) on synthetic photos whose eyes are marked with coloured blobs.

A blob's centroid in the aligned image must land where the framing puts the eye, to a fraction of a pixel,
whatever the photo's rotation, scale and position; squares that leave the photo are filled by mirroring;
'centre' and 'box' keep the exact pixels of images.square_crop + images.resize; the record survives JSON.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from timemachine import align, images
from timemachine.align import DEFAULT_FRAMING, FRAMINGS, Crop, crop_for_eyes
from timemachine.errors import ImageError
from timemachine.images import CropBox
from timemachine.settings import AlignmentSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def photo(width: int, height: int, marks: dict, background=(90, 110, 70), sigma: float = 3.0) -> np.ndarray:
    """uint8 [H, W, 3] of ``background`` with a Gaussian blob of colour c at each position (photo coordinates)."""
    img = np.empty((height, width, 3), np.float64)
    img[:] = background
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for (x, y), colour in marks.items():
        weight = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))[..., None]
        img = img * (1 - weight) + np.array(colour, np.float64) * weight
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def centroid(img: np.ndarray, colour: tuple) -> tuple[float, float]:
    """Centroid (aligned-image coordinates) of the pixels closest to ``colour`` (a blob of the marks)."""
    channel = int(np.argmax(colour))
    others = [c for c in range(3) if c != channel]
    strength = img[..., channel].astype(np.float64) - img[..., others].astype(np.float64).max(axis=-1)
    weight = np.clip(strength - 40, 0, None)
    assert weight.sum() > 0, f"no {colour} blob in the image"
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


def target(framing=DEFAULT_FRAMING, resolution: int = 128) -> tuple[tuple[float, float], tuple[float, float]]:
    half = framing.eye_distance / 2
    return (((framing.eyes_x - half) * resolution, framing.eyes_y * resolution),
            ((framing.eyes_x + half) * resolution, framing.eyes_y * resolution))


def eyes_at(centre, distance, degrees):
    """Two eye positions ``distance`` apart about ``centre``, the line turned ``degrees`` clockwise on screen."""
    rad = math.radians(degrees)
    offset = np.array([math.cos(rad), math.sin(rad)]) * distance / 2
    return tuple(np.array(centre) - offset), tuple(np.array(centre) + offset)


# ----------------------------------------------------------------------------------------------------------
# The crop


def test_crop_puts_the_eyes_where_the_framing_says():
    left, right = (300.0, 200.0), (360.0, 212.0)
    crop = crop_for_eyes(left, right)
    placed = crop.from_photo(np.array([left, right]))
    f = DEFAULT_FRAMING
    np.testing.assert_allclose(placed, [[f.eyes_x - f.eye_distance / 2, f.eyes_y],
                                        [f.eyes_x + f.eye_distance / 2, f.eyes_y]], atol=1e-12)
    assert crop.angle == pytest.approx(math.degrees(math.atan2(12, 60)))
    assert crop.size == pytest.approx(math.hypot(60, 12) / f.eye_distance)
    np.testing.assert_allclose(crop.to_photo(crop.from_photo(np.array([[5.0, 7.0]]))), [[5.0, 7.0]])


def test_eyes_in_either_order_give_the_same_crop():
    a, b = (410.0, 305.5), (602.25, 290.0)
    assert crop_for_eyes(a, b) == crop_for_eyes(b, a)
    assert align.order_eyes(b, a) == (a, b)


def test_level_eyes_need_no_rotation():
    crop = crop_for_eyes((100.0, 150.0), (200.0, 150.0), framing=FRAMINGS["dog"])
    assert crop.angle == 0.0
    corners = crop.corners()
    assert corners[0, 1] == pytest.approx(corners[1, 1]) and corners[0, 0] == pytest.approx(corners[3, 0])


def test_the_nose_says_which_way_is_up():
    eyes = ((300.0, 200.0), (200.0, 200.0))           # the eye on the left of the photo given second
    upright = crop_for_eyes(*eyes, nose=(250.0, 260.0))
    assert upright.angle == pytest.approx(0.0)
    upside_down = crop_for_eyes(*eyes, nose=(250.0, 140.0))
    assert abs(upside_down.angle) == pytest.approx(180.0)
    # In the upside-down crop the nose is below the eyes too.
    nose_y = upside_down.from_photo(np.array([[250.0, 140.0]]))[0, 1]
    assert nose_y > DEFAULT_FRAMING.eyes_y


def test_the_nose_enlarges_a_square_that_would_cut_it_off():
    f = FRAMINGS["cat"]
    eyes = ((200.0, 200.0), (260.0, 200.0))                 # 60 px apart: side 198 from the eyes alone
    near = crop_for_eyes(*eyes, nose=(230.0, 220.0), framing=f)
    assert near.size == pytest.approx(60 / f.eye_distance)
    far = crop_for_eyes(*eyes, nose=(230.0, 300.0), framing=f)   # a turned head: nose 100 px below the eyes
    assert far.size == pytest.approx(100 / f.nose_limit)
    nose = far.from_photo(np.array([[230.0, 300.0]]))[0]
    assert nose[1] - f.eyes_y == pytest.approx(f.nose_limit)
    np.testing.assert_allclose(far.from_photo(np.array([[230.0, 200.0]]))[0], [f.eyes_x, f.eyes_y])


def test_eyes_too_close_or_not_numbers_are_refused():
    with pytest.raises(ImageError, match="1.0 pixels apart"):
        crop_for_eyes((10.0, 10.0), (11.0, 10.0))
    with pytest.raises(ImageError, match="finite"):
        crop_for_eyes((float("nan"), 10.0), (50.0, 10.0))


def test_outside_share_is_exact():
    assert Crop((0.0, 50.0), 100.0).outside(200, 200) == pytest.approx(0.5)
    assert Crop((0.0, 0.0), 100.0).outside(200, 200) == pytest.approx(0.75)
    assert Crop((0.0, 0.0), 100.0, 45.0).outside(200, 200) == pytest.approx(0.75)
    assert Crop((100.0, 100.0), 100.0, 30.0).outside(200, 200) == 0.0
    # A diamond over the photo: four corner triangles of legs 100 (sqrt(2) - 1) stick out: (sqrt(2) - 1)^2.
    assert Crop((100.0, 100.0), 200.0, 45.0).outside(200, 200) == pytest.approx((math.sqrt(2) - 1) ** 2)
    assert Crop((1000.0, 1000.0), 10.0).outside(200, 200) == 1.0


def test_framing_figures_are_the_measured_medians():
    """align.FRAMINGS must be what benchmarks/measure_afhq_framing.py computes from its table."""
    spec = importlib.util.spec_from_file_location("measure", REPO_ROOT / "benchmarks" / "measure_afhq_framing.py")
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    for name, domain in (("cat", "cat"), ("dog", "dog"), ("wild", "wild"), ("afhq", "")):
        stats, framing = measure.statistics(domain), FRAMINGS[name]
        assert framing.eye_distance == pytest.approx(stats["eye_distance"], abs=5e-4)
        assert framing.eyes_y == pytest.approx(stats["eyes_y"], abs=5e-4)
        assert framing.nose_limit == pytest.approx(stats["nose_below_max"], abs=5e-4)
        assert framing.eyes_x == 0.5 and abs(stats["eyes_x"] - 0.5) < 0.01   # symmetric by choice, see align
    assert align.framing_for("afhqcat") is FRAMINGS["cat"] and align.framing_for("afhqwild") is FRAMINGS["wild"]
    assert align.framing_for("/models/mine.pkl") is DEFAULT_FRAMING and align.framing_for(None) is DEFAULT_FRAMING


# ----------------------------------------------------------------------------------------------------------
# Cutting: the blobs land on the framing's eye positions


@pytest.mark.parametrize("width,height,centre,distance,degrees", [
    (400, 300, (200.0, 150.0), 60.0, 0.0),        # level, shrunk 1.7x
    (640, 480, (333.3, 201.7), 140.0, 25.0),      # tilted, off centre, shrunk 3.9x, 10 % mirrored
    (300, 500, (150.0, 260.0), 24.0, -60.0),      # steep, small face: upscaled 1.5x
    (1600, 1200, (700.5, 640.25), 420.0, 170.0),  # nearly upside down, shrunk 11.6x
])
def test_cut_puts_the_marked_eyes_on_target(width, height, centre, distance, degrees):
    left, right = eyes_at(centre, distance, degrees)
    sigma = max(1.5, distance / 25)
    img = photo(width, height, {left: RED, right: GREEN}, sigma=sigma)
    result = align.align_photo(img, 128, method="eyes", eyes=(right, left))
    out = result.image
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    want_left, want_right = target()
    got = {RED: centroid(out, RED), GREEN: centroid(out, GREEN)}
    # Which blob is on the left depends on whether the photo's eye line points right (|angle| < 90).
    on_left, on_right = (RED, GREEN) if abs(degrees) < 90 else (GREEN, RED)
    np.testing.assert_allclose(got[on_left], want_left, atol=0.35)
    np.testing.assert_allclose(got[on_right], want_right, atol=0.35)
    assert result.alignment.method == "eyes"
    assert result.alignment.eyes[0] == pytest.approx(left if on_left == RED else right)


def test_a_square_that_leaves_the_photo_is_filled_by_mirroring_with_a_notice():
    background = (150, 140, 160)
    left, right = (30.0, 25.0), (90.0, 25.0)                # eyes near the top-left corner
    img = photo(320, 240, {left: RED, right: GREEN}, background=background)
    result = align.align_photo(img, 128, method="eyes", eyes=(left, right))
    a = result.alignment
    assert 0.2 < a.outside < 0.8
    assert any("beyond the photo's edge" in n for n in a.notices)
    out = result.image.astype(np.int64)
    # The mirrored border is the photo's colour (here: its background), not a fill colour.
    corner = out[:10, :10].reshape(-1, 3)
    assert np.abs(corner - np.array(background)).max() <= 3
    np.testing.assert_allclose(centroid(result.image, RED), target()[0], atol=0.35)


def test_mirrored_border_is_blurred_and_faded_towards_the_median():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    crop = Crop((0.0, 100.0), 200.0)                        # half of it left of the photo
    out = align.cut(img, crop, 128).astype(np.float64)
    inside, far_out = out[:, 100:], out[:, :20]
    # Far outside: much smoother (blurred) than the noise inside, and pulled towards the median grey.
    assert np.abs(np.diff(far_out, axis=0)).mean() < 0.3 * np.abs(np.diff(inside, axis=0)).mean()
    median = np.median(img.reshape(-1, 3), axis=0)
    assert np.abs(far_out.mean(axis=(0, 1)) - median).max() < 12


def test_cut_refuses_a_square_entirely_outside_the_photo():
    img = photo(100, 100, {})
    with pytest.raises(ImageError, match="entirely outside"):
        align.cut(img, Crop((500.0, 500.0), 50.0), 64)


def test_centre_and_box_keep_the_old_pixels_exactly():
    img = np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8)
    centre = align.align_photo(img, 64, method="centre")
    np.testing.assert_array_equal(centre.image, images.resize(images.square_crop(img), 64))
    assert centre.alignment.crop == Crop((205.0, 150.0), 300.0) and centre.alignment.crop.box() == CropBox(55, 0, 300)
    box = CropBox(10, 20, 250)
    boxed = align.align_photo(img, 64, method="box", box=box)
    np.testing.assert_array_equal(boxed.image, images.resize(images.square_crop(img, box), 64))
    assert boxed.alignment.method == "box" and boxed.alignment.crop.box() == box
    with pytest.raises(ImageError, match="does not fit"):
        align.align_photo(img, 64, method="box", box=CropBox(300, 0, 250))


def test_bad_requests_are_one_sentence():
    img = photo(200, 100, {})
    with pytest.raises(ImageError, match="outside the 200x100 pixels of dog.jpg"):
        align.align_photo(img, 64, method="eyes", eyes=((10, 10), (250, 10)), name="dog.jpg")
    with pytest.raises(ImageError, match="unknown alignment"):
        align.align_photo(img, 64, method="sideways")
    with pytest.raises(ImageError, match="eye positions were given"):
        align.align_photo(img, 64, method="centre", eyes=((10, 10), (50, 10)))
    with pytest.raises(ImageError, match="needs the positions of both eyes"):
        align.align_photo(img, 64, method="eyes")


def test_a_tiny_face_says_the_result_is_blurry():
    left, right = (100.0, 100.0), (110.0, 100.0)
    result = align.align_photo(photo(200, 200, {}), 256, method="eyes", eyes=(left, right))
    assert any("blurry" in n for n in result.alignment.notices)


# ----------------------------------------------------------------------------------------------------------
# Parsing and the record


def test_parse_eyes_point_and_crop_option():
    assert align.parse_eyes("412,300,590.5, 310") == ((412.0, 300.0), (590.5, 310.0))
    for bad in ("412,300,590", "a,b,c,d", "1,2,3,4,5", ""):
        with pytest.raises(ImageError, match="LX,LY,RX,RY"):
            align.parse_eyes(bad)
    with pytest.raises(ImageError, match="negative"):
        align.parse_eyes("-1,2,3,4")
    assert align.parse_point("10, 20.5") == (10.0, 20.5)
    assert align.parse_crop_option("auto") == "auto" and align.parse_crop_option("Center") == "centre"
    assert align.parse_crop_option("120,40,800") == CropBox(120, 40, 800)
    with pytest.raises(ImageError, match="'auto', 'centre' or X,Y,SIZE"):
        align.parse_crop_option("middle")
    with pytest.raises(ImageError, match="X,Y,SIZE"):
        align.parse_crop_option("1,2")


def test_the_record_survives_json():
    left, right = (150.0, 120.0), (230.0, 140.0)
    img = photo(300, 260, {left: RED, right: GREEN})
    result = align.align_photo(img, 64, method="eyes", eyes=(left, right), framing=FRAMINGS["dog"])
    record = result.alignment.to_dict()
    text = json.dumps(record)
    again = align.Alignment.from_dict(json.loads(text))
    assert again == result.alignment
    assert record["method"] == "eyes" and record["eyes"]["left"] == [150.0, 120.0]
    assert record["framing"]["name"] == "dog" and len(record["crop"]["corners"]) == 4
    centre = align.align_photo(img, 64, method="centre").alignment
    assert align.Alignment.from_dict(json.loads(json.dumps(centre.to_dict()))) == centre
    for broken in ({}, {**record, "method": "magic"}, {**record, "crop": {"centre": [1, 2]}},
                   {**record, "eyes": {"left": [1, "x"], "right": [2, 3]}}, {**record, "resolution": 0},
                   {**record, "notices": "text"}):
        with pytest.raises(ImageError, match="alignment record is malformed"):
            align.Alignment.from_dict(broken)


def test_requests_from_command_line_options():
    assert align.request_from_options() == align.AlignmentRequest("auto", explicit=False)
    assert align.request_from_options(settings=AlignmentSettings(crop="centre")).method == "centre"
    assert align.request_from_options("auto") == align.AlignmentRequest("auto", explicit=True)
    assert align.request_from_options("centre").method == "centre"
    boxed = align.request_from_options("10,20,300")
    assert boxed.method == "box" and boxed.box == CropBox(10, 20, 300) and boxed.arguments()["box"] == boxed.box
    eyes = align.request_from_options(eyes="412,300,590,310", nose="500,420")
    assert eyes == align.AlignmentRequest("eyes", eyes=((412.0, 300.0), (590.0, 310.0)), nose=(500.0, 420.0),
                                          explicit=True)
    with pytest.raises(ImageError, match="either the eyes or a crop"):
        align.request_from_options("centre", eyes="1,2,30,4")
    with pytest.raises(ImageError, match="together with the two eyes"):
        align.request_from_options(nose="1,2")
    with pytest.raises(ImageError, match="unknown crop mode"):
        align.request_from_options(settings=AlignmentSettings(crop="box"))
    with pytest.raises(ImageError, match="supersampling"):
        AlignmentSettings(supersample=0).validate()
    result = align.align_photo(photo(700, 500, {}), 32, **eyes.arguments())
    assert result.alignment.method == "eyes" and result.alignment.nose == (500.0, 420.0)
