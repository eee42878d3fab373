"""Settings of every job, with the only copy of every default, and named presets.

The command line and the UI take their defaults from these dataclasses (an instance, or a named preset:
:data:`PROJECTOR_PRESETS`, :data:`PTI_PRESETS`, :data:`RENDER_PRESETS`), never from a copy of the numbers.
Each class checks itself with ``validate()``, raising the library error of its job with one sentence.

Imports nothing of timemachine but :mod:`timemachine.errors`, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from timemachine.errors import ProjectionError, RenderError

#: Speed profiles of a latent walk (formulas in :mod:`timemachine.render`).
EASINGS = ("linear", "smoothstep", "cosine")
#: Most walk frames accepted (an hour at 24 fps is 86,400).
MAX_FRAMES = 100_000
#: libx264 speed presets, fastest (largest file) to slowest (smallest file at the same quality).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
#: Constant rate factors accepted: 0 would be lossless, which needs the High 4:4:4 profile that browsers
#: and QuickTime do not play, so the range starts at 1.  18 is visually near-lossless, 23 is x264's default.
CRF_RANGE = (1, 51)

#: Numeric precisions a user may choose for the generator, LPIPS-VGG16 and the projector:
#: 'auto' = bfloat16 on CPUs with native BF16 arithmetic, float32 on other CPUs, the official float16 blocks on
#: CUDA (resolved by :func:`timemachine.device.resolve_precision`); 'bf16' = bfloat16 convolutions and matrix
#: products with float32 accumulation (styles, demodulation, noise, latents, optimiser state and losses stay
#: float32); 'fp32' = float32 everywhere.
PRECISION_CHOICES = ("auto", "bf16", "fp32")
#: 'auto' resolved on CUDA: the official float16 blocks (not a user's choice; recorded in results and cache keys).
RESOLVED_FP16 = "fp16"
DEFAULT_PRECISION = "auto"


# ----------------------------------------------------------------------------------------------------------
# Projection


@dataclasses.dataclass
class ProjectorSettings:
    """How to project.  The defaults are the official projector's, except where noted.

    Attributes:
        space:                'w' (one latent shared by all layers, official) or 'w+' (one per layer).
        steps:                optimisation steps (official: 1000).
        seed:                 seeds the initial noise maps and the noise added to w (official: 303).
        w_avg_samples:        mapped samples for w_avg / w_std (official: 10000).
        initial_learning_rate, lr_rampdown_length, lr_rampup_length: Adam learning-rate schedule.
        initial_noise_factor, noise_ramp_length: scale and decay of the noise added to w.
        regularize_noise_weight: weight of the noise-map autocorrelation penalty (official: 1e5).
        early_stop_patience:  stop when the loss has not improved by ``early_stop_min_delta`` (relative)
                              for this many steps, counted only once the noise on w has decayed to zero;
                              0 = never stop early (official).
        preview_every:        pass a preview image to the callback every this many steps (0 = never).
        checkpoint_every:     with a checkpoint path, save the state every this many steps.
        precision:            one of :data:`PRECISION_CHOICES` (or, once resolved, 'fp16'); a projection's
                              result depends on it, so the resolved value is part of its cache key.
    """

    space: str = "w"
    steps: int = 1000
    seed: int = 303
    w_avg_samples: int = 10000
    initial_learning_rate: float = 0.1
    initial_noise_factor: float = 0.05
    lr_rampdown_length: float = 0.25
    lr_rampup_length: float = 0.05
    noise_ramp_length: float = 0.75
    regularize_noise_weight: float = 1e5
    early_stop_patience: int = 0
    early_stop_min_delta: float = 1e-3
    preview_every: int = 0
    checkpoint_every: int = 50
    precision: str = DEFAULT_PRECISION

    def validate(self) -> None:
        """Raise :class:`ProjectionError` for settings that cannot work."""
        if self.space not in ("w", "w+"):
            raise ProjectionError(f"latent space must be 'w' or 'w+', not {self.space!r}")
        if not 1 <= self.steps <= 100_000:
            raise ProjectionError(f"steps must be between 1 and 100000, got {self.steps}")
        if not 1 <= self.w_avg_samples <= 1_000_000:
            raise ProjectionError(f"w_avg_samples must be between 1 and 1000000, got {self.w_avg_samples}")
        for name in ("initial_learning_rate", "lr_rampdown_length", "lr_rampup_length", "noise_ramp_length"):
            if not getattr(self, name) > 0:
                raise ProjectionError(f"{name} must be positive")
        if self.early_stop_patience < 0 or self.preview_every < 0 or self.checkpoint_every < 0:
            raise ProjectionError("early_stop_patience, preview_every and checkpoint_every must be >= 0")
        check_precision(self.precision, ProjectionError, allow_resolved=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PTISettings:
    """Pivotal tuning (Roich et al. 2021); defaults from the authors' configuration.

    Attributes:
        steps:              fine-tuning steps (authors: 350).
        learning_rate:      Adam learning rate of the generator weights (authors: 3e-4).
        l2_weight:          weight of the pixel MSE next to LPIPS (authors: 1).
        locality_weight:    weight of the locality regulariser, applied to both its LPIPS and L2 terms
                            (authors: 0.1 each).
        locality_alpha:     distance from the pivot of the regulariser's sample latents (authors: 30).
        locality_truncation_psi: truncation of the regulariser's random mapped latents (authors: 0.5).
        lpips_threshold:    stop, before the update, once every photo's LPIPS is at or below this
                            (authors: 0.06; 0 = never).
        seed:               seeds the regulariser's random latents.
    """

    steps: int = 350
    learning_rate: float = 3e-4
    l2_weight: float = 1.0
    locality_weight: float = 0.1
    locality_alpha: float = 30.0
    locality_truncation_psi: float = 0.5
    lpips_threshold: float = 0.06
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.steps <= 100_000:
            raise ProjectionError(f"PTI steps must be between 1 and 100000, got {self.steps}")
        if not self.learning_rate > 0:
            raise ProjectionError("the PTI learning rate must be positive")
        if self.l2_weight < 0 or self.locality_weight < 0 or self.locality_alpha < 0 or self.lpips_threshold < 0:
            raise ProjectionError("PTI weights, alpha and threshold must be >= 0")
        if not 0 <= self.locality_truncation_psi <= 1:
            raise ProjectionError("the PTI locality truncation must be between 0 and 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

# ----------------------------------------------------------------------------------------------------------
# Rendering


@dataclasses.dataclass
class RenderSettings:
    """How to render.

    Attributes:
        frames:     F, walk frames from t = 0 to t = 1 (>= 2).
        strength:   how far along the direction the walk goes (w + strength * v at the end); may be negative.
        easing:     one of :data:`EASINGS` (formulas in the module docstring).
        hold_start: extra copies of the first frame (the adult) before the walk.
        hold_end:   extra copies of the last frame (the young animal) after the walk.
        pingpong:   walk back again (F - 2 more frames), for a seamless loop.
        batch_size: walk frames synthesised together.  On the CPU at 512x512 (benchmarks/bench_render.py, 2
                    cores) batching gains little and costs memory: 1.08x the frames/s of batch 1 at batch 2,
                    1.10x at batch 4, 0.76x at batch 8, for a synthesis high-water mark of 1.2 / 1.7 / 2.3 /
                    4.3 GiB; so the default is 2.  GPUs gain more from larger batches.
        fps:        frames per second of the videos.
        crf:        MP4 quality, x264 constant rate factor 1 (best) - 51 (worst); 18 is near-lossless.
        preset:     x264 preset (:data:`X264_PRESETS`): speed of encoding against file size.
        gif_every:  the GIF keeps one frame in ``gif_every`` (same duration, fewer frames, smaller file).
        gif_size:   the GIF's longer side in pixels (frames are shrunk), or None for full size.
        labels:     caption the panels of the side-by-side video.
        precision:  synthesis precision, one of :data:`PRECISION_CHOICES` (or, once resolved, 'fp16').  bfloat16
                    frames differ from float32 ones by rounding: PSNR >= 40 dB (tests/test_precision.py).
    """

    frames: int = 96
    strength: float = 1.0
    easing: str = "smoothstep"
    hold_start: int = 12
    hold_end: int = 24
    pingpong: bool = False
    batch_size: int = 2
    fps: float = 24.0
    crf: int = 18
    preset: str = "medium"
    gif_every: int = 2
    gif_size: Optional[int] = 256
    labels: bool = True
    precision: str = DEFAULT_PRECISION

    def validate(self) -> None:
        """Raise :class:`RenderError` (one sentence) for settings that cannot work."""
        check_int("the number of walk frames", self.frames, 2, MAX_FRAMES,
                   hint="a walk needs at least its first and last frame")
        check_int("hold_start", self.hold_start, 0, MAX_FRAMES)
        check_int("hold_end", self.hold_end, 0, MAX_FRAMES)
        check_int("the batch size", self.batch_size, 1, 4096)
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float, np.integer, np.floating)) \
                or not math.isfinite(self.strength):
            raise RenderError(f"the strength must be a finite number, got {self.strength!r}")
        check_easing(self.easing)
        if not isinstance(self.pingpong, bool):
            raise RenderError(f"pingpong must be true or false, got {self.pingpong!r}")
        check_fps(self.fps)
        if isinstance(self.crf, bool) or not isinstance(self.crf, (int, np.integer)) \
                or not CRF_RANGE[0] <= self.crf <= CRF_RANGE[1]:
            raise RenderError(f"the MP4 quality (CRF) must be a whole number from {CRF_RANGE[0]} (best) to "
                              f"{CRF_RANGE[1]} (worst), got {self.crf!r}")
        if self.preset not in X264_PRESETS:
            raise RenderError(f"unknown x264 preset {self.preset!r}; use one of: {', '.join(X264_PRESETS)}")
        check_int("the GIF frame step", self.gif_every, 1, MAX_FRAMES)
        if self.gif_size is not None:
            check_int("the GIF size", self.gif_size, 8, 8192)
        check_precision(self.precision, RenderError, allow_resolved=True)

    @property
    def total_frames(self) -> int:
        """Frames in the video: see :func:`total_frames`."""
        return total_frames(self.frames, self.hold_start, self.hold_end, self.pingpong)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def total_frames(frames: int, hold_start: int = 0, hold_end: int = 0, pingpong: bool = False) -> int:
    """``hold_start + frames + hold_end`` (+ ``frames - 2`` with pingpong): always at least ``frames``
    (the frame plan is in :mod:`timemachine.render`)."""
    return hold_start + frames + hold_end + (frames - 2 if pingpong else 0)


def check_int(what: str, value: Any, low: int, high: int, hint: str = "") -> None:
    """Raise :class:`RenderError` unless ``value`` is a whole number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise RenderError(f"{what} must be a whole number from {low} to {high}, got {value!r}"
                          + (f" ({hint})" if hint else ""))


def check_precision(precision: Any, error: type = ValueError, allow_resolved: bool = False) -> None:
    """Raise ``error`` (one sentence) unless ``precision`` is one of :data:`PRECISION_CHOICES` (or 'fp16',
    the resolved form of 'auto' on CUDA, with ``allow_resolved``)."""
    allowed = PRECISION_CHOICES + ((RESOLVED_FP16,) if allow_resolved else ())
    if not isinstance(precision, str) or precision not in allowed:
        raise error(f"unknown precision {precision!r}; use one of: {', '.join(PRECISION_CHOICES)}")


def check_easing(easing: str) -> None:
    if easing not in EASINGS:
        raise RenderError(f"unknown easing {easing!r}; use one of: {', '.join(EASINGS)}")


def check_fps(fps: float) -> None:
    """Raise :class:`RenderError` unless ``fps`` is a finite number > 0 (at most 240)."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(fps) or not 0 < fps <= 240:
        raise RenderError(f"frames per second must be a number above 0 and at most 240, got {fps!r}")


# ----------------------------------------------------------------------------------------------------------
# Presets

#: Named projector settings.  'official': StyleGAN2-ADA's projector (the CLI's default).  'ui': fewer steps,
#: so a visitor sees a result sooner (the schedule is spread over the steps: the same schedule, faster, a
#: little softer in fine detail), with a preview image every 10 steps.
PROJECTOR_PRESETS: dict[str, ProjectorSettings] = {
    "official": ProjectorSettings(),
    "ui": ProjectorSettings(steps=200, preview_every=10),
}
#: Named pivotal-tuning settings: 'authors' (Roich et al. 2021), 'ui' (fewer steps).
PTI_PRESETS: dict[str, PTISettings] = {
    "authors": PTISettings(),
    "ui": PTISettings(steps=100),
}
#: Named render settings: 'default' (the CLI's), 'ui' (a shorter walk, rendered sooner).
RENDER_PRESETS: dict[str, RenderSettings] = {
    "default": RenderSettings(),
    "ui": RenderSettings(frames=48, hold_start=6, hold_end=12),
}


def preset(table: dict[str, Any], name: str, **changes: Any) -> Any:
    """A copy of ``table[name]`` with ``changes`` applied (the presets themselves are never modified)."""
    return dataclasses.replace(table[name], **changes)
