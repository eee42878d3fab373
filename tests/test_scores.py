"""Video scores (timemachine.scores): CIEDE2000 against Sharma, Wu and Dalal's published test data, sRGB to
CIELAB, the coat-colour score, the age score, and ``strength auto`` with planted renderers and labellers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timemachine import scores
from timemachine.settings import ScoreSettings

#: Table 1 of G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference formula: implementation notes,
#: supplementary test data, and mathematical observations", Color Res. Appl. 30(1):21-30, 2005:
#: L1, a1, b1, L2, a2, b2, delta E00 (given to 4 decimals).
SHARMA_2005 = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


def test_ciede2000_matches_sharma_wu_dalal_2005_in_both_orders():
    data = np.array(SHARMA_2005)
    lab1, lab2, expected = data[:, :3], data[:, 3:6], data[:, 6]
    assert len(data) == 34
    np.testing.assert_allclose(scores.delta_e_2000(lab1, lab2), expected, rtol=0, atol=5e-5)
    np.testing.assert_allclose(scores.delta_e_2000(lab2, lab1), expected, rtol=0, atol=5e-5)   # symmetric
    assert scores.delta_e_2000(lab1[0], lab1[0]) == 0


def test_srgb_to_lab_of_known_colours():
    lab = scores.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                                       [128, 128, 128]], np.uint8))
    expected = [(100, 0, 0), (0, 0, 0), (53.2408, 80.0925, 67.2032), (87.7347, -86.1827, 83.1793),
                (32.2970, 79.1875, -107.8602), (53.5850, 0, 0)]
    np.testing.assert_allclose(lab, expected, atol=0.02)
    np.testing.assert_allclose(scores.srgb_to_lab(np.array([1.0, 1.0, 1.0])), (100, 0, 0), atol=0.02)


def _coat(rgb, size=32, border=(20, 20, 20)) -> np.ndarray:
    """An image whose central half is ``rgb`` and whose border is ``border``."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = border
    image[size // 4:3 * size // 4, size // 4:3 * size // 4] = rgb
    return image


def test_the_coat_colour_score_looks_at_the_centre_and_warns_above_10():
    tan = _coat((200, 150, 90))
    assert scores.coat_colour_score(tan, tan).delta_e == 0
    other_border = _coat((200, 150, 90), border=(250, 0, 250))         # the background does not count
    assert scores.coat_colour_score(tan, other_border).delta_e < 1e-9
    slightly = scores.coat_colour_score(tan, _coat((204, 152, 92)))
    assert 0 < slightly.delta_e < 10 and slightly.warning is None
    black = scores.coat_colour_score(tan, _coat((30, 25, 20)))
    assert black.delta_e > 10 and black.warning == scores.COAT_WARNING
    assert black.to_dict() == {"delta_e_2000": black.delta_e, "warning": scores.COAT_WARNING}
    strict = scores.coat_colour_score(tan, _coat((204, 152, 92)), ScoreSettings(max_delta_e=0.5))
    assert strict.warning == scores.COAT_WARNING
    # the region's mean colour, not the colour of the mean pixel of another region size
    np.testing.assert_allclose(scores.mean_lab(tan, 0.5), scores.srgb_to_lab(np.array([200, 150, 90], np.uint8)))


def test_the_age_score_or_why_it_is_unavailable():
    frames = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    bright = scores.age_score(lambda im: im.mean(axis=(1, 2, 3)) / 255, *frames)
    assert (bright.first, bright.last, bright.unavailable) == (0.0, 1.0, None)
    assert bright.to_dict() == {"p_young_first": 0.0, "p_young_last": 1.0}
    offline = scores.age_score(None, *frames, unavailable="CLIP weights are not available offline")
    assert offline.to_dict() == {"p_young_first": "unavailable", "p_young_last": "unavailable",
                                 "reason": "CLIP weights are not available offline"}
    assert scores.age_score(lambda im: np.full(2, np.nan), *frames).unavailable.startswith("the labeller gave no")

    def broken(images):
        raise RuntimeError("boom")

    assert "boom" in scores.age_score(broken, *frames).unavailable


def _planted(coat_per_strength: float):
    """A renderer whose last frame's border brightens with the strength (the 'young' look) while its centre
    (the coat) changes by ``coat_per_strength`` per unit of strength, and a labeller whose P(young) is a known
    function of the border's brightness: 0.8 at strength 2."""
    calls = []

    def render_last(strengths):
        calls.append(list(strengths))
        return np.stack([_coat((200, int(150 - coat_per_strength * s), 90), border=(int(100 + 40 * s),) * 3)
                         for s in strengths])

    def labeller(images):
        return np.clip((images[:, 0, 0, 0].astype(np.float64) - 100) / 100, 0, 1)

    return render_last, labeller, calls


def test_strength_auto_finds_the_smallest_strength_reaching_the_threshold():
    render_last, labeller, calls = _planted(coat_per_strength=0.0)
    reconstruction = render_last(np.array([0.0]))[0]
    calls.clear()
    result = scores.auto_strength(render_last, labeller, reconstruction)
    assert result.reached and abs(result.strength - 2.0) <= ScoreSettings().tolerance + 1e-9
    assert result.strength >= 2.0 - 1e-9 and result.p_young >= 0.8
    assert "smallest that reaches P(young)" in result.reason
    assert len(calls[0]) == ScoreSettings().grid and all(len(c) == 1 for c in calls[1:])   # grid, then bisection
    assert len(calls) <= 1 + 6
    assert result.to_dict()["tried"][0]["strength"] == pytest.approx(0.1)


def test_strength_auto_reports_when_the_coat_changes_first_or_nothing_is_young_enough():
    render_last, labeller, _ = _planted(coat_per_strength=40.0)      # the coat turns blue as it gets young
    reconstruction = render_last(np.array([0.0]))[0]
    result = scores.auto_strength(render_last, labeller, reconstruction)
    assert not result.reached and "where the coat colour changes too much" in result.reason
    assert result.delta_e <= 10 and "the youngest within the coat-colour limit" in result.reason
    assert result.strength < 2.0

    def never_young(images):
        return np.full(len(images), 0.3)

    result = scores.auto_strength(render_last, never_young, reconstruction,
                                  ScoreSettings(strength_range=(0.1, 1.0)))
    assert not result.reached and "no strength up to 1 reaches P(young) 0.8 (at most 0.30)" in result.reason


def test_the_end_frame_renderer_is_the_walk_s_last_frame(small_G):
    from timemachine import render
    from timemachine.latents import LatentFile

    G = small_G
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), None)[0]
    latent = LatentFile(ws=ws, noise={})
    direction = torch.randn(G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    render_last = scores.end_frame_renderer(G, latent, direction)
    frames = render_last(np.array([0.5, 1.5, 3.0]))
    for strength, frame in zip((0.5, 1.5, 3.0), frames):
        expected = render.frames_at(G, latent, direction, [1.0], strength=strength, easing="linear")[0]
        assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1
