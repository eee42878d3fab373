"""Projecting photos into a generator's latent space (GAN inversion), and pivotal tuning.

The algorithm of the official StyleGAN2-ADA ``projector.py`` is the reference: start from the mean
latent ``w_avg`` of 10,000 mapped samples, optimise w with Adam against LPIPS-VGG16 (+ noise
regularisation), with a learning-rate ramp-up/cosine ramp-down and Gaussian noise on w whose scale
(``w_std`` x 0.05) decays to zero over the first 75 % of the steps; the per-layer noise maps are optimised
too and renormalised after every step.  On top of it:

* ``space='w+'``: one latent per synthesis layer instead of one shared latent (more fidelity, less
  editability);
* a batch of photos is one optimisation (every tensor has a batch dimension; each photo has its own
  random stream, so it gets the same result alone or in a batch; only early stopping, which watches the
  batch's total loss, couples them);
* early stopping when the loss stops improving; a per-step callback with loss, LPIPS and previews;
* resumable checkpoints (:func:`project` with ``checkpoint_path``);
* pivotal tuning (Roich et al. 2021, "Pivotal Tuning for Latent-based Editing of Real Images"):
  :func:`pivotal_tuning` fine-tunes a copy of the synthesis network around the found latent with LPIPS +
  L2, regularised to stay unchanged away from the pivot; the result is a weight delta;
* precision (``settings.precision``, resolved by :func:`timemachine.device.resolve_precision`): with 'bf16'
  the generator's convolutions and LPIPS-VGG16 run in bfloat16; the latent, the noise maps, Adam's state,
  the noise regulariser and the loss stay float32, and gradients reach the latent and the noise maps in
  float32.  Pivotal tuning runs in float32.

Shapes: targets [N, 3, R, R] float32 in [-1, 1] (R = G.img_resolution); latents [N, num_ws, w_dim];
noise {layer: [N, 1, res, res]}.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import math
import os
import time
import zipfile
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from timemachine import fs, images
from timemachine.device import resolve_precision
from timemachine.errors import ProjectionError, first_line, printable
from timemachine.latents import LatentFile
from timemachine.networks import Generator
from timemachine.perceptual import PerceptualDistance
from timemachine.settings import ProjectorSettings, PTISettings
from timemachine.unpickler import Limits, check_opcodes

CHECKPOINT_FORMAT = "timemachine-projection-checkpoint"
CHECKPOINT_VERSION = 2


@dataclasses.dataclass
class ProgressEvent:
    """What the callback receives after each step.

    Attributes:
        stage:   'project' or 'pti'.
        step:    1-based step just finished; ``total`` the planned number of steps.
        loss:    total loss of the step (summed over the batch).
        lpips:   LPIPS per photo [N] at this step.
        preview: uint8 [N, R, R, 3] images of the current latents, on preview steps; else None.
    """

    stage: str
    step: int
    total: int
    loss: float
    lpips: np.ndarray
    preview: Optional[np.ndarray] = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclasses.dataclass
class Projection:
    """Result of :func:`project` (and optionally :func:`pivotal_tuning`).

    Attributes:
        ws:          float32 [N, num_ws, w_dim] final latents (rows equal per sample in 'w' space).
        noise:       {layer: float32 [N, 1, res, res]} optimised noise maps.
        loss_curve:  float32 [steps_run, N] loss per step and photo (LPIPS + weighted noise penalty).
        lpips_curve: float32 [steps_run, N] LPIPS per step and photo.
        steps_run:   steps actually run (fewer than planned after an early stop).
        settings:    the ProjectorSettings used.
        seconds:     wall time of the optimisation (without model loading).
        pti_delta:   {synthesis parameter name: float32 delta} after pivotal tuning, else None.
        pti_settings, pti_steps_run, pti_seconds: likewise for pivotal tuning.
    """

    ws: torch.Tensor
    noise: dict[str, torch.Tensor]
    loss_curve: np.ndarray
    lpips_curve: np.ndarray
    steps_run: int
    settings: ProjectorSettings
    seconds: float
    pti_delta: Optional[dict[str, torch.Tensor]] = None
    pti_settings: Optional[PTISettings] = None
    pti_steps_run: int = 0
    pti_seconds: float = 0.0

    @property
    def batch_size(self) -> int:
        return int(self.ws.shape[0])

    def latent(self, index: int, meta: Optional[dict[str, Any]] = None) -> LatentFile:
        """Photo ``index``'s result as a :class:`~timemachine.latents.LatentFile`: ws [num_ws, w_dim], noise
        {layer: [res, res]}, the PTI delta (shared by the batch) and ``meta``."""
        return LatentFile(ws=self.ws[index], noise={k: v[index, 0] for k, v in self.noise.items()},
                          meta=dict(meta or {}), pti_delta=self.pti_delta)

    def select(self, index: int) -> "Projection":
        """The projection of photo ``index`` alone (batch size 1).  A PTI delta is shared by the batch."""
        return dataclasses.replace(
            self, ws=self.ws[index:index + 1], noise={k: v[index:index + 1] for k, v in self.noise.items()},
            loss_curve=self.loss_curve[:, index:index + 1], lpips_curve=self.lpips_curve[:, index:index + 1])


def compute_w_stats(G: Generator, num_samples: int = 10000, seed: int = 123,
                    batch_size: int = 2048) -> tuple[torch.Tensor, float]:
    """Mean latent and its spread, as the official projector computes them.

    Maps ``num_samples`` standard-normal z (numpy RandomState(seed), like the official code) through
    ``G.mapping`` without truncation.  Returns ``w_avg`` [1, 1, w_dim] float32 on G's device and the scalar
    ``w_std = sqrt(sum |w - w_avg|^2 / num_samples)``.
    """
    if G.c_dim != 0:
        raise ProjectionError("projection of conditional generators (c_dim > 0) is not supported")
    device = G.mapping.w_avg.device if hasattr(G.mapping, "w_avg") else next(G.parameters()).device
    z_all = np.random.RandomState(seed).randn(num_samples, G.z_dim)
    w_chunks = []
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            z = torch.from_numpy(z_all[start:start + batch_size]).to(device, torch.float32)
            w_chunks.append(G.mapping(z, None)[:, :1, :].to(torch.float64))
    w_samples = torch.cat(w_chunks)                           # [S, 1, C] float64 for a stable sum
    w_avg = w_samples.mean(dim=0, keepdim=True)               # [1, 1, C]
    w_std = float(((w_samples - w_avg).square().sum() / num_samples).sqrt())
    return w_avg.to(torch.float32), w_std


def noise_regularization(noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """Penalty on spatial autocorrelation of the noise maps, at every scale down to 8x8 (official).

    noise {layer: [N, 1, res, res]} -> [N], summed over layers and scales.
    """
    terms = []
    for v in noise.values():
        x = v
        while True:
            terms.append((x * torch.roll(x, shifts=1, dims=3)).mean(dim=[1, 2, 3]).square())
            terms.append((x * torch.roll(x, shifts=1, dims=2)).mean(dim=[1, 2, 3]).square())
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, kernel_size=2)
    if not terms:
        raise ValueError("there are no noise maps to regularise")
    return sum(terms[1:], terms[0])


def learning_rate(settings: ProjectorSettings, step: int) -> float:
    """Official schedule: linear ramp-up over the first 5 %, cosine ramp-down over the last 25 %."""
    t = step / settings.steps
    ramp = min(1.0, (1.0 - t) / settings.lr_rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / settings.lr_rampup_length)
    return settings.initial_learning_rate * ramp


def w_noise_scale(settings: ProjectorSettings, step: int, w_std: float) -> float:
    """Std of the Gaussian added to w at ``step``: w_std * 0.05 * max(0, 1 - t/0.75)^2 (official)."""
    t = step / settings.steps
    return w_std * settings.initial_noise_factor * max(0.0, 1.0 - t / settings.noise_ramp_length) ** 2


def targets_digest(targets: torch.Tensor) -> str:
    """SHA-256 of the target images' bytes: ties a checkpoint to its photos."""
    return hashlib.sha256(targets.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def _check_targets(G: Generator, targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 3:
        targets = targets.unsqueeze(0)
    expected = (G.img_channels, G.img_resolution, G.img_resolution)
    if targets.ndim != 4 or tuple(targets.shape[1:]) != expected:
        raise ProjectionError(f"targets must be [N, {expected[0]}, {expected[1]}, {expected[2]}] images, "
                              f"got {list(targets.shape)}")
    if not torch.isfinite(targets).all():
        raise ProjectionError("target images contain NaN or infinite values")
    return targets.to(torch.float32)


def _preview(G: Generator, ws: torch.Tensor, noise: dict[str, torch.Tensor],
             precision: Optional[str] = None) -> np.ndarray:
    with torch.no_grad():
        return images.from_tensor(G.synthesis(ws, noise_mode="const", noise=noise, precision=precision))


def _save_checkpoint(path: str, state: dict) -> None:
    with fs.PendingFile(path) as pending:
        with pending.open("wb") as f:
            torch.save(state, f)


#: What the pickle inside a resume checkpoint may make the unpickler do (a batch of 64 photos: ~500 calls).
_CHECKPOINT_LIMITS = Limits(max_opcodes=200_000, max_calls=10_000, max_depth=16)
_MAX_CHECKPOINT_PICKLE_BYTES = 16 << 20


def _check_checkpoint_pickle(path: str) -> None:
    """The pickle inside a ``torch.save`` zip walked before torch unpickles it (:mod:`timemachine.unpickler`:
    opcodes, calls, nesting depth bounded, no cycles)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
        if len(pickles) != 1 or pickles[0].file_size > _MAX_CHECKPOINT_PICKLE_BYTES:
            raise ValueError("it does not hold exactly one pickle of a checkpoint's size")
        with archive.open(pickles[0]) as member:
            data = member.read(_MAX_CHECKPOINT_PICKLE_BYTES + 1)
    check_opcodes(io.BytesIO(data), "the checkpoint", persistent_ids=True, limits=_CHECKPOINT_LIMITS)


def _load_checkpoint(path: str, identity: dict, w_opt: torch.Tensor, noise: dict[str, torch.Tensor],
                     steps: int) -> dict:
    """A resume checkpoint of the run ``identity`` (targets, model, settings), checked against the fresh state
    it replaces (``w_opt``, ``noise``: shapes) and the planned ``steps``; every tensor finite.  Raises
    ProjectionError (one sentence) for anything else."""
    shown = printable(path)
    try:
        empty = os.path.getsize(path) == 0
        if not empty:
            _check_checkpoint_pickle(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged file: zipfile, the opcode walk and torch raise many kinds
        raise ProjectionError(f"cannot resume: the checkpoint {shown} is damaged ({first_line(exc)})") from None
    if empty:
        raise ProjectionError(f"cannot resume: the checkpoint {shown} is empty")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ProjectionError(f"cannot resume: {shown} is not a timemachine projection checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ProjectionError(f"cannot resume: checkpoint version {printable(state.get('version'), 20)} is not "
                              "supported")
    for key, what in (("targets", "photos"), ("model", "model"), ("settings", "settings")):
        if state.get(key) != identity[key]:
            raise ProjectionError(f"cannot resume: the checkpoint was made with other {what}")
    problem = _checkpoint_problem(state, w_opt, noise, steps)
    if problem:
        raise ProjectionError(f"cannot resume: the checkpoint {shown} is damaged ({problem})")
    return state


def _required_perceptual(perceptual: Optional[PerceptualDistance]) -> PerceptualDistance:
    if perceptual is None:   # the weights are the caller's choice (see timemachine.perceptual)
        raise TypeError("a PerceptualDistance is required (timemachine.pipeline.load_perceptual builds one)")
    return perceptual


def _checkpoint_problem(state: dict, w_opt: torch.Tensor, noise: dict[str, torch.Tensor], steps: int) -> str:
    """What is wrong with a loaded checkpoint's values ('' if nothing): shapes, types, NaN or infinite values."""
    def bad(value: Any, like: Optional[torch.Tensor] = None) -> bool:
        return (not isinstance(value, torch.Tensor) or (like is not None and value.shape != like.shape)
                or (value.is_floating_point() and not bool(torch.isfinite(value).all())))

    if bad(state.get("w_opt"), w_opt):
        return "its latents have the wrong shape or NaN or infinite values"
    saved_noise = state.get("noise")
    if not isinstance(saved_noise, dict) or set(saved_noise) != set(noise) or \
            any(bad(saved_noise[name], noise[name]) for name in noise):
        return "its noise maps do not fit or have NaN or infinite values"
    step = state.get("step")
    if type(step) is not int or not 0 <= step <= steps:
        return "its step count is out of range"
    if any(bad(state.get(key)) or state[key].shape[:1] != (step,) for key in ("loss_curve", "lpips_curve")):
        return "its loss curves are malformed"
    rng = state.get("rng")
    if not isinstance(rng, list) or len(rng) != w_opt.shape[0] or \
            any(bad(r) or r.dtype != torch.uint8 or r.ndim != 1 for r in rng):
        return "its random states are malformed"
    optimizer = state.get("optimizer")
    per_parameter = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(per_parameter, dict) or not all(
            isinstance(s, dict) and not any(bad(v) for v in s.values()) for s in per_parameter.values()):
        return "its optimizer state is malformed or has NaN or infinite values"
    if not (isinstance(state.get("best_loss"), float) and not math.isnan(state["best_loss"])
            and type(state.get("since_best")) is int and state["since_best"] >= 0
            and isinstance(state.get("finished"), bool)):
        return "its early-stopping state is malformed"
    return ""


def project(
    G: Generator,
    targets: torch.Tensor,
    settings: Optional[ProjectorSettings] = None,
    perceptual: Optional[PerceptualDistance] = None,
    callback: Optional[ProgressCallback] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
    w_stats: Optional[tuple[torch.Tensor, float]] = None,
) -> Projection:
    """Find latents whose images match ``targets``.

    Args:
        G:           generator (eval mode; it is not modified).
        targets:     [N, 3, R, R] (or [3, R, R]) float32 in [-1, 1].
        settings:    :class:`ProjectorSettings` (default: official); its precision is resolved for G's device
                     (the returned ``Projection.settings`` holds the resolved value).
        perceptual:  LPIPS module (required; :func:`timemachine.pipeline.load_perceptual` builds one).
        callback:    called with a :class:`ProgressEvent` after every step.
        checkpoint_path: save the state there every ``settings.checkpoint_every`` steps and when done (atomically).
        resume:      continue from ``checkpoint_path`` if it exists; it must belong to the same
                     targets, model and settings, else :class:`ProjectionError`.
        w_stats:     precomputed ``(w_avg, w_std)`` from :func:`compute_w_stats` (it is deterministic).

    Returns:
        a :class:`Projection`.
    """
    settings = settings or ProjectorSettings()
    settings.validate()
    targets = _check_targets(G, targets)
    device = G.mapping.w_avg.device
    settings = dataclasses.replace(settings, precision=resolve_precision(settings.precision, device))
    precision = settings.precision
    targets = targets.to(device)
    batch = targets.shape[0]
    perceptual = _required_perceptual(perceptual).to(device)
    from timemachine.checkpoint import model_fingerprint

    # What a checkpoint must match to be resumed (how often to preview or save does not matter).
    settings_key = settings.result_key()
    identity = {"targets": targets_digest(targets), "model": model_fingerprint(G), "settings": settings_key}

    started = time.perf_counter()
    w_avg, w_std = w_stats if w_stats is not None else compute_w_stats(G, settings.w_avg_samples)
    run = _Run.fresh(G, w_avg.to(device), batch, 1 if settings.space == "w" else G.num_ws, settings.seed, device)
    if resume and checkpoint_path and os.path.exists(checkpoint_path):
        run.restore(_load_checkpoint(checkpoint_path, identity, run.w_opt, run.noise, settings.steps), device)
    optimizer = run.optimizer(settings.initial_learning_rate)
    with torch.no_grad():
        target_features = perceptual.features(targets, precision)

    while run.step < settings.steps and not run.finished:
        _step(G, run, optimizer, perceptual, target_features, settings, w_std, callback)
        # Saved at the end too: an interruption after the projection (during pivotal tuning, say) resumes
        # without projecting again.
        if checkpoint_path and settings.checkpoint_every and (run.step % settings.checkpoint_every == 0
                                                              or run.finished):
            _save_checkpoint(checkpoint_path, run.checkpoint(identity, optimizer))

    return Projection(
        ws=_broadcast(run.w_opt.detach(), G.num_ws).cpu(),
        noise={k: v.detach().cpu() for k, v in run.noise.items()},
        loss_curve=np.stack(run.loss_curve) if run.loss_curve else np.zeros([0, batch], np.float32),
        lpips_curve=np.stack(run.lpips_curve) if run.lpips_curve else np.zeros([0, batch], np.float32),
        steps_run=run.step, settings=settings, seconds=time.perf_counter() - started)


@dataclasses.dataclass
class _Run:
    """A projection's state between steps: everything a resume checkpoint holds but its identity."""

    w_opt: torch.Tensor                   # [N, rows, C] float32, rows = 1 (W) or num_ws (W+)
    noise: dict[str, torch.Tensor]        # layer name -> [N, 1, R, R] float32
    generators: list[torch.Generator]     # one CPU random stream per photo (w-noise)
    optimizer_state: Optional[dict] = None
    loss_curve: list[np.ndarray] = dataclasses.field(default_factory=list)    # per step: [N] float32
    lpips_curve: list[np.ndarray] = dataclasses.field(default_factory=list)   # per step: [N] float32
    step: int = 0
    best_loss: float = math.inf           # early stopping: best total loss so far,
    since_best: int = 0                   # steps since it improved,
    finished: bool = False                # and whether nothing is left to do

    @classmethod
    def fresh(cls, G: Generator, w_avg: torch.Tensor, batch: int, rows: int, seed: int,
              device: torch.device) -> _Run:
        """The start: every photo at ``w_avg`` [C] with its own noise maps.  One random stream per photo, each
        seeded alike: a photo gets the same start and the same w-noise whether it is projected alone or in a
        batch (so a cached projection does not depend on its batch)."""
        generators = [torch.Generator(device="cpu").manual_seed(seed) for _ in range(batch)]
        w_opt = w_avg.repeat([batch, rows, 1]).clone()
        per_photo = [{name: torch.randn([1, 1, res, res], generator=gen) for name, res in _noise_shapes(G).items()}
                     for gen in generators]
        noise = {name: torch.cat([maps[name] for maps in per_photo]).to(device) for name in per_photo[0]}
        return cls(w_opt, noise, generators)

    def restore(self, state: dict, device: torch.device) -> None:
        """Continue from a checked checkpoint (:func:`_load_checkpoint`)."""
        self.step = int(state["step"])
        self.w_opt = state["w_opt"].to(device)
        self.noise = {name: tensor.to(device) for name, tensor in state["noise"].items()}
        self.optimizer_state = state["optimizer"]
        for gen, rng_state in zip(self.generators, state["rng"]):
            gen.set_state(rng_state)
        self.loss_curve = list(state["loss_curve"].numpy())
        self.lpips_curve = list(state["lpips_curve"].numpy())
        self.best_loss, self.since_best = float(state["best_loss"]), int(state["since_best"])
        self.finished = bool(state["finished"])

    def optimizer(self, lr: float) -> torch.optim.Adam:
        """Adam over the latents and noise maps (which start requiring grad), with the saved state if any."""
        self.w_opt.requires_grad_(True)
        for tensor in self.noise.values():
            tensor.requires_grad_(True)
        optimizer = torch.optim.Adam([self.w_opt] + list(self.noise.values()), betas=(0.9, 0.999), lr=lr)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        return optimizer

    def w_noise(self, sigma: float, device: torch.device) -> torch.Tensor:
        """This step's w-noise [N, rows, C]: one draw from each photo's stream, times ``sigma``."""
        draws = [torch.randn(self.w_opt.shape[1:], generator=gen)[None] for gen in self.generators]
        return torch.cat(draws).to(device) * sigma

    def track_early_stop(self, settings: ProjectorSettings, sigma: float, total: float) -> None:
        """Count steps without improvement (once the w-noise is off) and mark the run finished when done."""
        if settings.early_stop_patience and sigma == 0.0:
            if total < self.best_loss * (1 - settings.early_stop_min_delta):
                self.best_loss, self.since_best = total, 0
            else:
                self.since_best += 1
        stalled = bool(settings.early_stop_patience) and self.since_best >= settings.early_stop_patience
        self.finished = self.step == settings.steps or stalled

    def checkpoint(self, identity: dict, optimizer: torch.optim.Optimizer) -> dict:
        """What :func:`_save_checkpoint` writes (format, version, the run's ``identity`` and its state)."""
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **identity, "step": self.step,
            "w_opt": self.w_opt.detach().cpu(), "noise": {k: v.detach().cpu() for k, v in self.noise.items()},
            "optimizer": optimizer.state_dict(), "rng": [gen.get_state() for gen in self.generators],
            "loss_curve": torch.from_numpy(np.stack(self.loss_curve)),
            "lpips_curve": torch.from_numpy(np.stack(self.lpips_curve)),
            "best_loss": self.best_loss, "since_best": self.since_best, "finished": self.finished}


def _step(G: Generator, run: _Run, optimizer: torch.optim.Optimizer, perceptual: PerceptualDistance,
          target_features: Any, settings: ProjectorSettings, w_std: float,
          callback: Optional[ProgressCallback]) -> None:
    """One optimisation step of :func:`project` on ``run``: forward, LPIPS + noise regularisation, backward,
    Adam, noise maps renormalised; the curves, the callback and the early-stop state updated."""
    device = run.w_opt.device
    precision = settings.precision
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(settings, run.step)
    sigma = w_noise_scale(settings, run.step, w_std)
    w_opt, noise = run.w_opt, run.noise
    ws = w_opt + run.w_noise(sigma, device)
    ws = ws.expand(-1, G.num_ws, -1) if ws.shape[1] == 1 else ws
    synth = G.synthesis(ws, noise_mode="const", noise=noise, precision=precision)
    lpips = perceptual.distance(perceptual.features(synth, precision), target_features)  # [N]
    reg = noise_regularization(noise)                                                 # [N]
    loss = lpips.sum() + reg.sum() * settings.regularize_noise_weight

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for tensor in noise.values():  # renormalise each map to zero mean, unit variance
            tensor -= tensor.mean(dim=[1, 2, 3], keepdim=True)
            tensor *= tensor.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
    run.step += 1

    lpips_np = lpips.detach().cpu().numpy().astype(np.float32)
    run.loss_curve.append(lpips_np + reg.detach().cpu().numpy().astype(np.float32) * settings.regularize_noise_weight)
    run.lpips_curve.append(lpips_np)
    total = float(loss.detach())
    if callback is not None:
        preview = None
        if settings.preview_every and (run.step % settings.preview_every == 0 or run.step == settings.steps):
            preview = _preview(G, _broadcast(w_opt.detach(), G.num_ws), noise, precision)
        callback(ProgressEvent("project", run.step, settings.steps, total, lpips_np, preview))
    run.track_early_stop(settings, sigma, total)


def _broadcast(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """[N, 1, C] -> [N, num_ws, C]; [N, num_ws, C] unchanged."""
    return w.repeat([1, num_ws, 1]) if w.shape[1] == 1 else w


def _noise_shapes(G: Generator) -> dict[str, int]:
    """{layer name: resolution} of the synthesis layers that take noise."""
    return {name: getattr(G.synthesis, name.split(".")[0]).resolution for name in G.synthesis.noise_layer_names()}


# ------------------------------------------------------------------------------------------------------
# Pivotal tuning


def pivotal_tuning(
    G: Generator,
    projection: Projection,
    targets: torch.Tensor,
    settings: Optional[PTISettings] = None,
    perceptual: Optional[PerceptualDistance] = None,
    callback: Optional[ProgressCallback] = None,
) -> Projection:
    """Fine-tune a copy of ``G.synthesis`` so that the pivot latents reproduce the photos more closely.

    Loss per step (Roich et al. 2021): LPIPS(G'(w_p), x) + l2_weight * MSE(G'(w_p), x)
    + locality_weight * [LPIPS + MSE](G'(w_r), G(w_r)), where w_r = w_p + alpha * (w_z - w_p) / |w_z - w_p|
    for a fresh random mapped latent w_z (truncated towards w_avg by ``locality_truncation_psi``) each step,
    keeps the network unchanged away from the pivot.  As in the authors' code, the regulariser's images are
    synthesised without noise, the pivot's with the projection's noise maps, and the loop stops before the
    update once every photo's LPIPS is at or below ``lpips_threshold``.
    One delta is tuned for the whole batch of photos.

    Returns:
        ``projection`` with ``pti_delta`` = {synthesis parameter name: float32 tensor} (tuned minus original,
        on the CPU), ``pti_settings``, ``pti_steps_run`` and ``pti_seconds`` filled in.
    """
    settings = settings or PTISettings()
    settings.validate()
    targets = _check_targets(G, targets)
    device = G.mapping.w_avg.device
    targets = targets.to(device)
    perceptual = _required_perceptual(perceptual).to(device)
    started = time.perf_counter()

    tuned = copy.deepcopy(G.synthesis).train(False).requires_grad_(True)
    original = G.synthesis
    ws_pivot = projection.ws.to(device)
    noise = {k: v.to(device) for k, v in projection.noise.items()}
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=settings.learning_rate)
    with torch.no_grad():
        target_features = perceptual.features(targets)

    steps_run = 0
    for step in range(settings.steps):
        synth = tuned(ws_pivot, noise_mode="const", noise=noise)
        lpips = perceptual.distance(perceptual.features(synth), target_features)
        lpips_np = lpips.detach().cpu().numpy().astype(np.float32)
        if settings.lpips_threshold and float(lpips_np.max()) <= settings.lpips_threshold:
            break
        loss = lpips.sum() + settings.l2_weight * F.mse_loss(synth, targets, reduction="none").mean(dim=[1, 2, 3]).sum()
        if settings.locality_weight > 0:
            z = torch.randn([ws_pivot.shape[0], G.z_dim], generator=generator).to(device)
            with torch.no_grad():
                w_z = G.mapping(z, None, truncation_psi=settings.locality_truncation_psi)
                direction = w_z - ws_pivot
                w_r = ws_pivot + settings.locality_alpha * direction / direction.norm(dim=[1, 2], keepdim=True)
                reference = original(w_r, noise_mode="none")
            regularized = tuned(w_r, noise_mode="none")
            locality = perceptual(regularized, reference).sum() + \
                F.mse_loss(regularized, reference, reduction="none").mean(dim=[1, 2, 3]).sum()
            loss = loss + settings.locality_weight * locality
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps_run = step + 1
        if callback is not None:
            callback(ProgressEvent("pti", steps_run, settings.steps, float(loss.detach()), lpips_np))

    with torch.no_grad():
        delta = {name: (p_tuned.detach() - p_orig.detach()).cpu()
                 for (name, p_tuned), (_, p_orig) in zip(tuned.named_parameters(), original.named_parameters())}
    return dataclasses.replace(projection, pti_delta=delta, pti_settings=settings, pti_steps_run=steps_run,
                               pti_seconds=time.perf_counter() - started)


def apply_weight_delta(G: Generator, delta: Optional[dict[str, torch.Tensor]]) -> Generator:
    """A copy of ``G`` whose synthesis parameters are shifted by ``delta`` (from :func:`pivotal_tuning`).

    ``delta=None`` returns ``G`` itself.  Raises :class:`ProjectionError` if the delta does not fit G.
    """
    if not delta:
        return G
    params = dict(G.synthesis.named_parameters())
    for name, value in delta.items():
        if name not in params or tuple(params[name].shape) != tuple(value.shape):
            raise ProjectionError(f"the tuned weights do not fit this model (parameter {name})")
    tuned = copy.deepcopy(G)
    with torch.no_grad():
        for name, param in tuned.synthesis.named_parameters():
            if name in delta:
                param.add_(delta[name].to(param.device, param.dtype))
    return tuned


# ------------------------------------------------------------------------------------------------------
# Quality measures


def psnr(images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2), after clamping.

    images, targets [N, 3, R, R] -> float64 [N].
    """
    mse = (images.clamp(-1, 1) - targets.clamp(-1, 1)).square().mean(dim=[1, 2, 3]).double()
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-12))).cpu().numpy()


def reconstruct(G: Generator, projection: Projection, device: Any = None) -> torch.Tensor:
    """Images [N, 3, R, R] in ~[-1, 1] of the projection's latents and noise (with PTI weights if any)."""
    G_used = apply_weight_delta(G, projection.pti_delta)
    device = device or G.mapping.w_avg.device
    with torch.no_grad():
        return G_used.synthesis(projection.ws.to(device), noise_mode="const",
                                noise={k: v.to(device) for k, v in projection.noise.items()})
