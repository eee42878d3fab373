"""Scores of an age video, and the strength that reaches a young look without changing the coat.

* **Age** (:func:`age_score`): P(young) of the first and the last frame by a labeller (the zero-shot CLIP
  labeller of :mod:`timemachine.clip_labeller`), or 'unavailable' with the reason (no CLIP weights offline,
  no answer for that image).
* **Coat colour** (:func:`coat_colour_score`): the CIEDE2000 colour difference (Sharma, Wu and Dalal 2005)
  between the mean CIELAB colours of the central region (a centred square of ``central_fraction`` of the
  side) of the reconstruction and of the last frame; above ``max_delta_e`` (10: a clearly different colour)
  it carries :data:`COAT_WARNING`.  Colours are sRGB (IEC 61966-2-1) converted to CIE 1976 L*a*b* under D65.
* **strength auto** (:func:`auto_strength`): the smallest strength in ``strength_range`` whose last frame
  reaches P(young) >= ``young_threshold`` with a coat-colour change of at most ``max_delta_e``, found by
  rendering last frames only: a grid over the range, then bisection between the last grid strength below the
  threshold and the first at or above it (this assumes P(young) grows with the strength between the two,
  as it does along an age direction).  When no strength qualifies, the choice and the reason are reported.

Settings (thresholds, range, grid) are :class:`timemachine.settings.ScoreSettings`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from timemachine.errors import RenderError, first_line
from timemachine.settings import ScoreSettings

#: ``labeller(images uint8 [N, H, W, 3]) -> P(young) float [N]`` (NaN = no answer).
Labeller = Callable[[np.ndarray], np.ndarray]
#: ``render_last(strengths float [K]) -> uint8 [K, R, R, 3]``: the walk's last frame at each strength.
EndFrameRenderer = Callable[[np.ndarray], np.ndarray]

COAT_WARNING = "the coat colour changed: lower the strength or leave the fine layers out"

#: sRGB (linear) -> CIE XYZ, D65 (IEC 61966-2-1).
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
#: The D65 white point (X, Y, Z), Y = 1.
_D65 = np.array([0.95047, 1.0, 1.08883])


# ----------------------------------------------------------------------------------------------------------
# Colour


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE 1976 L*a*b* (D65) float64 [..., 3] of sRGB colours: uint8 [..., 3] or floats in [0, 1]."""
    c = np.asarray(rgb)
    c = c.astype(np.float64) / 255.0 if c.dtype == np.uint8 else np.clip(c.astype(np.float64), 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65
    delta = 6 / 29
    f = np.where(xyz > delta ** 3, np.cbrt(xyz), xyz / (3 * delta ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray, kL: float = 1.0, kC: float = 1.0, kH: float = 1.0) -> np.ndarray:
    """CIEDE2000 colour difference float64 [...] between CIELAB colours [..., 3] (broadcast), following the
    implementation notes of Sharma, Wu and Dalal (Color Res. Appl. 30(1), 2005), eqs. (1)-(17)."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    C1, C2 = np.hypot(a1, b1), np.hypot(a2, b2)
    C_bar7 = ((C1 + C2) / 2) ** 7
    G = 0.5 * (1 - np.sqrt(C_bar7 / (C_bar7 + 25.0 ** 7)))
    a1p, a2p = (1 + G) * a1, (1 + G) * a2
    C1p, C2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360)
    zero = C1p * C2p == 0

    dLp = L2 - L1
    dCp = C2p - C1p
    dh = h2p - h1p
    dhp = np.where(zero, 0.0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    dHp = 2 * np.sqrt(C1p * C2p) * np.sin(np.radians(dhp) / 2)

    Lp_bar = (L1 + L2) / 2
    Cp_bar = (C1p + C2p) / 2
    hsum = h1p + h2p
    hp_bar = np.where(zero, hsum, np.where(np.abs(h1p - h2p) <= 180, hsum / 2,
                                           np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)))
    T = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    Cp_bar7 = Cp_bar ** 7
    RC = 2 * np.sqrt(Cp_bar7 / (Cp_bar7 + 25.0 ** 7))
    SL = 1 + 0.015 * (Lp_bar - 50) ** 2 / np.sqrt(20 + (Lp_bar - 50) ** 2)
    SC = 1 + 0.045 * Cp_bar
    SH = 1 + 0.015 * Cp_bar * T
    RT = -np.sin(np.radians(2 * d_theta)) * RC
    dl, dc, dh = dLp / (kL * SL), dCp / (kC * SC), dHp / (kH * SH)
    return np.sqrt(dl ** 2 + dc ** 2 + dh ** 2 + RT * dc * dh)


def central_region(image: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square of ``fraction`` of the side (at least one pixel) of an image [H, W, 3]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError("an image is [H, W, 3]")
    h, w = image.shape[:2]
    side_h, side_w = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    return image[top:top + side_h, left:left + side_w]


def mean_lab(image: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Mean CIELAB colour [3] of the central region of an sRGB image uint8 [H, W, 3]."""
    return srgb_to_lab(central_region(image, fraction)).reshape(-1, 3).mean(axis=0)


# ----------------------------------------------------------------------------------------------------------
# Scores


@dataclasses.dataclass
class AgeScore:
    """P(young) of the first and last frames, or why they are unavailable (then both are None)."""

    first: Optional[float] = None
    last: Optional[float] = None
    unavailable: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"p_young_first": "unavailable", "p_young_last": "unavailable", "reason": self.unavailable}
        return {"p_young_first": self.first, "p_young_last": self.last}


@dataclasses.dataclass
class ColourScore:
    """CIEDE2000 between the central mean colours of the reconstruction and the last frame; a warning above
    the settings' ``max_delta_e``."""

    delta_e: float
    warning: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"delta_e_2000": self.delta_e, "warning": self.warning}


def age_score(labeller: Optional[Labeller], first: np.ndarray, last: np.ndarray,
              unavailable: Optional[str] = None) -> AgeScore:
    """P(young) of the first and last frames (uint8 [R, R, 3]) by ``labeller``, in one call.

    ``labeller`` None: unavailable, for the reason given (e.g. the labeller could not be loaded); a
    labeller that fails or gives no answer makes the score unavailable too, never absent.
    """
    if labeller is None:
        return AgeScore(unavailable=unavailable or "no labeller")
    try:
        p = np.asarray(labeller(np.stack([first, last])), dtype=np.float64)
    except (RenderError, ValueError, RuntimeError) as exc:
        return AgeScore(unavailable=f"the labeller failed ({first_line(exc)})")
    if p.shape != (2,) or not np.all((p >= 0) & (p <= 1)):
        return AgeScore(unavailable="the labeller gave no answer for these frames")
    return AgeScore(first=float(p[0]), last=float(p[1]))


def coat_colour_score(reconstruction: np.ndarray, last: np.ndarray,
                      settings: Optional[ScoreSettings] = None) -> ColourScore:
    """The coat-colour change between the reconstruction and the last frame (uint8 [R, R, 3] each)."""
    settings = settings or ScoreSettings()
    d = float(delta_e_2000(mean_lab(reconstruction, settings.central_fraction),
                           mean_lab(last, settings.central_fraction)))
    return ColourScore(delta_e=d, warning=COAT_WARNING if d > settings.max_delta_e else None)


# ----------------------------------------------------------------------------------------------------------
# strength auto


@dataclasses.dataclass
class AutoStrength:
    """The strength ``strength auto`` chose and why.

    Attributes:
        strength: the choice.
        p_young:  P(young) of the last frame at that strength.
        delta_e:  its coat-colour change.
        reached:  True when it reaches the P(young) target within the colour limit.
        reason:   one sentence for the user.
        tried:    every (strength, P(young), delta E) rendered, in order.
    """

    strength: float
    p_young: float
    delta_e: float
    reached: bool
    reason: str
    tried: list[tuple[float, float, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"strength": self.strength, "p_young": self.p_young, "delta_e_2000": self.delta_e,
                "reached": self.reached, "reason": self.reason,
                "tried": [{"strength": s, "p_young": p, "delta_e_2000": d} for s, p, d in self.tried]}


def auto_strength(render_last: EndFrameRenderer, labeller: Labeller, reconstruction: np.ndarray,
                  settings: Optional[ScoreSettings] = None) -> AutoStrength:
    """The smallest strength whose last frame reaches P(young) >= ``young_threshold`` with a coat-colour
    change <= ``max_delta_e`` (see the module docstring), rendering last frames only.

    Args:
        render_last:    strengths float [K] -> last frames uint8 [K, R, R, 3] (e.g. with
                        :func:`timemachine.render.frames_at` at t = 1).
        labeller:       P(young) of images (NaN counts as 0: not young).
        reconstruction: the walk's first frame uint8 [R, R, 3], the colour reference.
        settings:       :class:`ScoreSettings` (default thresholds 0.8 and 10, range [0.1, 3]).
    """
    settings = settings or ScoreSettings()
    settings.validate()
    reference = mean_lab(reconstruction, settings.central_fraction)
    tried: dict[float, tuple[float, float]] = {}

    def measure(strengths: Sequence[float]) -> None:
        todo = [float(s) for s in strengths if float(s) not in tried]
        if not todo:
            return
        frames = np.asarray(render_last(np.asarray(todo, dtype=np.float64)))
        if frames.shape[0] != len(todo) or frames.dtype != np.uint8:
            raise ValueError("render_last must return uint8 [K, R, R, 3] for K strengths")
        p = np.nan_to_num(np.asarray(labeller(frames), dtype=np.float64), nan=0.0)
        for s, frame, p_s in zip(todo, frames, p):
            d = float(delta_e_2000(reference, mean_lab(frame, settings.central_fraction)))
            tried[s] = (float(p_s), d)

    low, high = settings.strength_range
    grid = [float(s) for s in np.linspace(low, high, settings.grid)]
    measure(grid)
    young = [s for s in grid if tried[s][0] >= settings.young_threshold]
    if young:
        hi = young[0]
        below = [s for s in grid if s < hi]
        lo = below[-1] if below else None
        while lo is not None and hi - lo > settings.tolerance:
            mid = round((lo + hi) / 2, 6)
            measure([mid])
            if tried[mid][0] >= settings.young_threshold:
                hi = mid
            else:
                lo = mid
        p, d = tried[hi]
        history = [(s, *tried[s]) for s in tried]
        if d <= settings.max_delta_e:
            return AutoStrength(hi, p, d, True, f"strength {hi:.2f} is the smallest that reaches P(young) "
                                f"{p:.2f} >= {settings.young_threshold:g} (coat colour change {d:.1f})", history)
        reason = (f"P(young) {settings.young_threshold:g} is reached only at strength {hi:.2f}, where the coat "
                  f"colour changes too much (delta E {d:.1f} > {settings.max_delta_e:g})")
    else:
        history = [(s, *tried[s]) for s in tried]
        best = max(p for p, _ in tried.values())
        reason = (f"no strength up to {high:g} reaches P(young) {settings.young_threshold:g} "
                  f"(at most {best:.2f})")
    keep = [s for s in tried if tried[s][1] <= settings.max_delta_e]
    if keep:
        choice = max(keep, key=lambda s: (tried[s][0], -s))
        reason += f"; chose {choice:.2f}, the youngest within the coat-colour limit"
    else:
        choice = min(tried, key=lambda s: tried[s][1])
        reason += f"; chose {choice:.2f}, the smallest coat-colour change"
    p, d = tried[choice]
    return AutoStrength(choice, p, d, False, reason, history)


def end_frame_renderer(G, latent, direction, batch_size: int = 4) -> EndFrameRenderer:
    """``render_last`` for :func:`auto_strength`: the walk's last frame of ``latent`` along ``direction``
    [num_ws, w_dim] (already masked to the layers) at each strength, ``batch_size`` strengths at a time."""
    from timemachine import render

    def render_last(strengths: np.ndarray) -> np.ndarray:
        # the walk's last frame at strength s is the latent plus s * direction
        return render.frames_for(G, latent, direction, strengths, batch_size=batch_size)

    return render_last
