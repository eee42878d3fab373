"""Settings of every job, with the only copy of every default, and named presets.

The command line and the UI take their defaults from these dataclasses (an instance, or a named preset:
:data:`PROJECTOR_PRESETS`, :data:`PTI_PRESETS`, :data:`RENDER_PRESETS`), never from a copy of the numbers.
Each class checks itself with ``validate()``, raising the library error of its job with one sentence.

Imports nothing of timemachine but :mod:`timemachine.errors`, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional

import numpy as np

from timemachine.errors import AgeVectorError, ImageError, ProjectionError, RenderError, printable

#: What names of age vectors, zoo entries and their files look like (also used as file names: no separators).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Largest seed accepted (NumPy's and PyTorch's generators both take it).
MAX_SEED = 2**32 - 1
#: Largest batch (photos projected, frames synthesised together) accepted; memory is the real bound.
MAX_BATCH = 1024
#: Largest model file a visitor may upload to the UI.  The safe loader needs up to about three times a pickle's
#: size while it loads (the file, aligned copies of its tensors, the generator it builds), so this bounds an
#: upload's load near 1.5 GB; NVIDIA's AFHQ pickles are about 350 MB.
MAX_MODEL_UPLOAD_MB = 512
#: Speed profiles of a latent walk (formulas in :mod:`timemachine.render`).
EASINGS = ("linear", "smoothstep", "cosine")
#: Most walk frames accepted (an hour at 24 fps is 86,400).
MAX_FRAMES = 100_000
#: libx264 speed presets, fastest (largest file) to slowest (smallest file at the same quality).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
#: Constant rate factors accepted: 0 would be lossless, which needs the High 4:4:4 profile that browsers
#: and QuickTime do not play, so the range starts at 1.  18 is visually near-lossless, 23 is x264's default.
CRF_RANGE = (1, 51)
#: Largest strength magnitude of an age edit (default strengths and rendering alike): far beyond any useful
#: edit, and small enough that ``w + strength * direction`` stays finite for every direction an age vector
#: may hold (see :data:`timemachine.age.vector.MAX_DIRECTION_ABS`), so frames are never NaN.
MAX_STRENGTH = 10.0

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
        batch_size:           photos projected together (memory grows with it; a photo's result does not
                              depend on its batch, unless early stopping is on, which projects photo by photo).
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
    batch_size: int = 8

    #: Fields that change how a projection is run or reported, not its result (left out of store keys).
    RUN_ONLY_FIELDS = ("preview_every", "checkpoint_every", "batch_size")

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
        if not 0 <= self.seed <= MAX_SEED:
            raise ProjectionError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        for name in ("early_stop_patience", "preview_every", "checkpoint_every"):
            if not 0 <= getattr(self, name) <= 100_000:
                raise ProjectionError(f"{name} must be between 0 and 100000, got {getattr(self, name)}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ProjectionError(f"the batch size must be between 1 and {MAX_BATCH}, got {self.batch_size}")
        check_precision(self.precision, ProjectionError, allow_resolved=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_key(self) -> dict:
        """The settings that change a projection's result (for store keys and checkpoint identities)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUN_ONLY_FIELDS}


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
        batch_size: walk frames synthesised together (memory grows with it; the README's performance section
                    says what it buys on the CPU; GPUs gain more from larger batches).
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
        check_int("the batch size", self.batch_size, 1, MAX_BATCH)
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float, np.integer, np.floating)) \
                or abs(self.strength) > MAX_STRENGTH or not math.isfinite(self.strength):
            raise RenderError(f"the strength must be a number from -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}, "
                              f"got {self.strength!r}")
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


# ----------------------------------------------------------------------------------------------------------
# Framing the photo (timemachine.align)

#: What ``AlignmentSettings.crop`` may be when no eyes and no box are given.
CROP_MODES = ("auto", "centre")


@dataclasses.dataclass
class AlignmentSettings:
    """How a photo is framed before projection, when the user gives neither the eyes nor a box.

    Attributes:
        crop:        'auto': align on the eyes found by the eye detector, used when its weights are present
                     (downloaded only when 'auto' is asked for explicitly); without them, or when it finds no
                     face, the centre square with a notice.  'centre': the centre square.
        supersample: the aligned square is resampled at this many times the model's resolution, then reduced
                     with Lanczos (:func:`timemachine.align.cut`).
    """

    crop: str = "auto"
    supersample: int = 2

    def validate(self) -> None:
        """Raise :class:`ImageError` (one sentence) for settings that cannot work."""
        if self.crop not in CROP_MODES:
            raise ImageError(f"unknown crop mode {self.crop!r}; use one of: {', '.join(CROP_MODES)}")
        if isinstance(self.supersample, bool) or not isinstance(self.supersample, (int, np.integer)) \
                or not 1 <= self.supersample <= 8:
            raise ImageError(f"the supersampling factor must be a whole number from 1 to 8, got {self.supersample!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def total_frames(frames: int, hold_start: int = 0, hold_end: int = 0, pingpong: bool = False) -> int:
    """``hold_start + frames + hold_end`` (+ ``frames - 2`` with pingpong): always at least ``frames``
    (the frame plan is in :mod:`timemachine.render`)."""
    return hold_start + frames + hold_end + (frames - 2 if pingpong else 0)


def check_int(what: str, value: Any, low: int, high: int, hint: str = "", error: type = RenderError) -> None:
    """Raise ``error`` (one sentence) unless ``value`` is a whole number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        huge = isinstance(value, (int, np.integer)) and abs(int(value)) >= 10 ** 30
        shown = "too large" if huge else printable(repr(value), 40)
        raise error(f"{what} must be a whole number from {low} to {high}, got {shown}" + (f" ({hint})" if hint else ""))


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
# Age vectors

#: How an age vector may be built from examples (see :mod:`timemachine.age`); 'auto' picks by the counts.
VECTOR_METHODS = ("auto", "pair", "mean", "linear")


@dataclasses.dataclass
class VectorSettings:
    """How a new age vector is built from examples, and the defaults it is stored with.

    Attributes:
        method:           'auto' (pair for one puppy and one adult, linear from 5 + 5, else mean), 'pair',
                          'mean' or 'linear'.
        default_strength: the strength used when the user gives none (1 = the full mean separation).
        default_layers:   the layer selection used when the user gives none ('all', 'coarse,middle', '0-7').
    """

    method: str = "auto"
    default_strength: float = 1.0
    default_layers: str = "all"

    def resolved_method(self, num_puppies: int, num_adults: int) -> str:
        """The method actually used for these counts ('auto' resolved)."""
        if self.method != "auto":
            return self.method
        if num_puppies == 1 and num_adults == 1:
            return "pair"
        return "linear" if min(num_puppies, num_adults) >= 5 else "mean"

    def validate(self) -> None:
        if self.method not in VECTOR_METHODS:
            raise AgeVectorError(f"unknown method {self.method!r}: use one of {', '.join(VECTOR_METHODS)}")


# ----------------------------------------------------------------------------------------------------------
# Discovery and scores

#: Most samples a discovery may render (10**5 samples at 256 px are about 20 GB of cached images).
MAX_DISCOVERY_SAMPLES = 100_000


@dataclasses.dataclass
class DiscoverySettings:
    """How to discover an age direction from a generator's own samples (:mod:`timemachine.discover`).

    Attributes:
        samples:          latents sampled, rendered and labelled.
        seed:             seeds the latents: sample ``i`` is the same for every run with this seed (so runs
                          with more samples reuse the first ones, and interrupted runs resume).
        truncation_psi:   truncation of the sampled latents towards the average (1 = none; lower = more
                          typical animals, less variety).
        resolution:       render at most this many pixels per side: skip generators stop at that block
                          (much cheaper), other generators render at full resolution.  CLIP sees 224 px.
        batch_size:       samples rendered and labelled together.
        confidence:       a sample counts as young when P(young) >= confidence, as adult when P(young) <=
                          1 - confidence; the others are left out.
        min_confident:    fewest confident samples needed on each side.
        heldout_fraction: share of each side's confident samples kept out of the classifier's training to
                          measure its held-out accuracy (the vector itself is fitted on all of them).
    """

    samples: int = 400
    seed: int = 0
    truncation_psi: float = 0.7
    resolution: int = 256
    batch_size: int = 8
    confidence: float = 0.7
    min_confident: int = 10
    heldout_fraction: float = 0.2

    def validate(self) -> None:
        """Raise :class:`AgeVectorError` (one sentence) for settings that cannot work."""
        def whole(what: str, value: Any, low: int, high: int) -> None:
            check_int(what, value, low, high, error=AgeVectorError)

        whole("the number of samples", self.samples, 1, MAX_DISCOVERY_SAMPLES)
        whole("the seed", self.seed, 0, 2 ** 63 - 1)
        whole("the batch size", self.batch_size, 1, MAX_BATCH)
        whole("the fewest confident samples per side", self.min_confident, 5, MAX_DISCOVERY_SAMPLES)
        whole("the resolution", self.resolution, 4, 8192)
        if self.resolution & (self.resolution - 1):
            raise AgeVectorError(f"the resolution must be a power of two (4, 8, ..., 1024), got {self.resolution}")
        for what, value, low, high, low_open in (("the truncation", self.truncation_psi, 0.0, 1.0, True),
                                                 ("the confidence", self.confidence, 0.5, 1.0, True),
                                                 ("the held-out fraction", self.heldout_fraction, 0.05, 0.5, False)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not (low < value <= high if low_open else low <= value <= high):
                raise AgeVectorError(f"{what} must be a number {'above' if low_open else 'from'} {low:g} "
                                     f"{'and at most' if low_open else 'to'} {high:g}")
        if self.samples < 2 * self.min_confident:
            raise AgeVectorError(f"{self.samples} samples cannot give {self.min_confident} confident samples of "
                                 "each side: ask for more samples")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ScoreSettings:
    """How a video is scored and how ``strength auto`` chooses (:mod:`timemachine.scores`).

    Attributes:
        young_threshold:  P(young) the last frame must reach for ``strength auto``.
        max_delta_e:      largest coat-colour change (CIEDE2000) accepted by ``strength auto``; above it the
                          scores carry a warning.
        central_fraction: side of the central square whose mean colour is the coat colour, as a fraction of
                          the image side.
        strength_range:   (lowest, highest) strength ``strength auto`` tries.
        grid:             strengths tried first, spread evenly over the range; then bisection.
        tolerance:        bisection stops when the bracket is narrower than this.
    """

    young_threshold: float = 0.8
    max_delta_e: float = 10.0
    central_fraction: float = 0.5
    strength_range: tuple[float, float] = (0.1, 3.0)
    grid: int = 6
    tolerance: float = 0.05

    def validate(self) -> None:
        """Raise :class:`RenderError` (one sentence) for settings that cannot work."""
        def number(value: Any) -> bool:
            return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
                and math.isfinite(value)

        if not number(self.young_threshold) or not 0 < self.young_threshold < 1:
            raise RenderError("the P(young) to reach must be a number between 0 and 1")
        if not number(self.max_delta_e) or not 0 < self.max_delta_e <= 100:
            raise RenderError("the largest coat-colour change must be a number above 0 and at most 100")
        if not number(self.central_fraction) or not 0 < self.central_fraction <= 1:
            raise RenderError("the central fraction must be a number above 0 and at most 1")
        low, high = self.strength_range
        if not (number(low) and number(high)) or not 0 < low < high <= MAX_STRENGTH:
            raise RenderError(f"the strength range must be 0 < lowest < highest <= {MAX_STRENGTH:g}")
        check_int("the strength grid", self.grid, 2, 64)
        if not number(self.tolerance) or not 0 < self.tolerance < high - low:
            raise RenderError("the strength tolerance must be positive and smaller than the range")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# The job queue


@dataclasses.dataclass
class QueueSettings:
    """How jobs wait and run, in the face's own process or on queue workers (:mod:`timemachine.pipeline.executor`).

    Attributes:
        max_waiting:        jobs allowed to wait at once; beyond it a submission is refused ("the server is busy").
        per_visitor:        unfinished jobs (waiting or running) one visitor may have at once.
        abandon_after:      seconds a visitor's session may be gone before its in-process job is cancelled (a
                            closed tab does not keep the machine busy).  Jobs on queue workers outlive the tab.
        visibility_timeout: seconds after which a job held by a queue worker that vanished (killed, machine lost)
                            is handed to another worker.  Live workers renew the jobs they hold every quarter of
                            it, so it bounds the wait after a crash, not the length of a job.
        job_ttl:            seconds a job's state, progress and result are kept in Redis after it was submitted.
        poll_seconds:       how often a client reads the state of a job on the workers.
    """

    max_waiting: int = 16
    per_visitor: int = 2
    abandon_after: float = 30.0
    visibility_timeout: float = 120.0
    job_ttl: float = 86400.0
    poll_seconds: float = 0.2

    def validate(self) -> None:
        from timemachine.errors import TimemachineError

        for name in ("max_waiting", "per_visitor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TimemachineError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("abandon_after", "visibility_timeout", "job_ttl", "poll_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TimemachineError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.job_ttl < self.visibility_timeout:
            raise TimemachineError("job_ttl must be at least the visibility timeout")


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
