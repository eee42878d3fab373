"""Rendering: the latent walk, frame plan, exactness, batching, PTI, writers, atomicity, streaming memory.

All on the small 32x32 test generator (tests/conftest.py); MP4s are read back with imageio-ffmpeg's reader,
GIFs with Pillow.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from timemachine import render as render_module
from timemachine import video
from timemachine.errors import RenderError
from timemachine.images import from_tensor
from timemachine.latents import LatentFile
from timemachine.projector import apply_weight_delta
from timemachine.render import (
    EASINGS,
    RenderOutputs,
    RenderSettings,
    ease,
    frame_plan,
    frames_at,
    iter_frames,
    iter_walk_frames,
    render_video,
    total_frames,
    walk_coefficients,
    walk_latents,
)

# ----------------------------------------------------------------------------------------------------------
# Helpers


def make_latent(G, seed: int = 1, with_noise: bool = True, pti_delta=None) -> LatentFile:
    gen = torch.Generator().manual_seed(seed)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=gen), None)[0]
    noise = {}
    if with_noise:  # stands in for a projection's optimised noise maps
        for name in G.synthesis.noise_layer_names():
            res = int(name.split(".")[0][1:])
            noise[name] = torch.randn(res, res, generator=gen)
    return LatentFile(ws=ws, noise=noise, pti_delta=pti_delta)


def make_direction(G, seed: int = 2, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(seed)) * scale


def synthesize(G, ws: torch.Tensor, latent: LatentFile) -> np.ndarray:
    """uint8 [R, R, 3] of ws [num_ws, w_dim] with the latent's noise, batch of one (as the pipeline does)."""
    with torch.no_grad():
        img = G.synthesis(ws.unsqueeze(0), noise_mode="const",
                          noise={k: v[None, None] for k, v in latent.noise.items()})
    return from_tensor(img)[0]


def read_mp4(path) -> tuple[dict, list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]
    return meta, frames


def luma(image: np.ndarray) -> np.ndarray:
    """BT.709 luma of uint8 [..., 3] as float.  yuv420p keeps luma at full resolution but halves chroma, which
    on these pixel-noise-like 32x32 images alone costs ~16 levels of mean RGB error, so videos are compared
    on luma."""
    return image[..., :3].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def gif_frames(path) -> tuple[list[np.ndarray], list[int], dict]:
    frames, durations = [], []
    with Image.open(path) as im:
        info = dict(im.info)
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info["duration"])
    return frames, durations, info


def quick(**overrides) -> RenderSettings:
    base = dict(frames=6, hold_start=0, hold_end=0, batch_size=4, fps=10, gif_size=None, gif_every=1,
                preset="ultrafast")
    base.update(overrides)
    return RenderSettings(**base)


@pytest.fixture(scope="module")
def latent(small_G):
    return make_latent(small_G)


@pytest.fixture(scope="module")
def direction(small_G):
    return make_direction(small_G)


# ----------------------------------------------------------------------------------------------------------
# The path


@pytest.mark.parametrize("easing", EASINGS)
def test_easing_endpoints_midpoint_and_monotonic(easing):
    assert ease(0.0, easing) == 0.0 and ease(1.0, easing) == 1.0  # exactly
    assert ease(0.5, easing) == pytest.approx(0.5, abs=1e-15)
    values = ease(np.linspace(0, 1, 1001), easing)
    assert np.all(np.diff(values) >= 0)
    expected_quarter = {"linear": 0.25, "smoothstep": 0.15625, "cosine": (1 - np.cos(np.pi / 4)) / 2}[easing]
    assert ease(0.25, easing) == pytest.approx(expected_quarter, abs=1e-15)
    slope_at_start = (ease(1e-4, easing) - 0) / 1e-4
    slope_at_end = (1 - ease(1 - 1e-4, easing)) / 1e-4
    if easing == "linear":
        assert slope_at_start == pytest.approx(1) and slope_at_end == pytest.approx(1)
    else:  # eases in and out: starts and ends at rest
        assert slope_at_start < 1e-3 and slope_at_end < 1e-3
    coefficients = walk_coefficients(7, strength=2.5, easing=easing)
    assert coefficients.dtype == np.float32 and coefficients[0] == 0 and coefficients[-1] == np.float32(2.5)


def test_unknown_easing_is_a_render_error():
    with pytest.raises(RenderError, match="unknown easing 'bounce'"):
        ease(0.5, "bounce")


def test_walk_latents_formula(small_G, latent, direction):
    c = torch.tensor([0.0, 0.5, -1.25])
    ws = walk_latents(latent.ws, direction, c)
    assert ws.shape == (3, small_G.num_ws, small_G.w_dim)
    assert torch.equal(ws[0], latent.ws)  # c = 0 is the start latent, bit for bit
    torch.testing.assert_close(ws[2], latent.ws - 1.25 * direction)


def test_frame_plan_holds_and_pingpong():
    assert frame_plan(5, hold_start=2, hold_end=3).tolist() == [0, 0, 0, 1, 2, 3, 4, 4, 4, 4]
    assert frame_plan(5, 2, 3, pingpong=True).tolist() == [0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 3, 2, 1]
    assert frame_plan(2, pingpong=True).tolist() == [0, 1]
    for frames in (2, 3, 10):
        for hold_start, hold_end in ((0, 0), (1, 4), (7, 0)):
            for pingpong in (False, True):
                plan = frame_plan(frames, hold_start, hold_end, pingpong)
                count = total_frames(frames, hold_start, hold_end, pingpong)
                assert len(plan) == count == hold_start + frames + hold_end + (frames - 2 if pingpong else 0)
                assert count >= frames  # the CLI's promise: at least F frames
                assert plan[0] == 0 and frames - 1 in plan
                if pingpong and hold_start == 0:
                    # a seamless loop: no frame is shown twice in a row, also across the wrap-around
                    # (the holds at the end are the only repeats)
                    loop = np.concatenate([plan[hold_start + frames + hold_end - 1:], plan[:1]])
                    assert np.all(loop[1:] != loop[:-1])
    assert RenderSettings(frames=5, hold_start=2, hold_end=3, pingpong=True).total_frames == 13


def test_iter_frames_follows_the_plan(small_G, latent, direction, tmp_path):
    settings = quick(frames=5, hold_start=2, hold_end=1, pingpong=True)
    frames = [f.copy() for f in iter_frames(small_G, latent, direction, settings, spool_dir=tmp_path)]
    plan = frame_plan(5, 2, 1, True)
    assert len(frames) == settings.total_frames == len(plan)
    walk = [f.copy() for f in iter_walk_frames(small_G, latent, direction, 5, batch_size=4)]
    for frame, index in zip(frames, plan):
        assert np.array_equal(frame, walk[index])  # holds and the way back (read from the spool) are exact copies
    assert len({f.tobytes() for f in walk}) == 5
    assert os.listdir(tmp_path) == []  # the spool is an anonymous file


# ----------------------------------------------------------------------------------------------------------
# Exactness, noise, batching, PTI


@pytest.mark.parametrize("with_noise", [True, False])
def test_strength_zero_reproduces_the_reconstruction_exactly(small_G, direction, with_noise):
    latent = make_latent(small_G, seed=3, with_noise=with_noise)
    reconstruction = synthesize(small_G, latent.ws, latent)
    settings = quick(frames=9, strength=0.0, hold_start=1, hold_end=2, batch_size=3)
    frames = list(iter_frames(small_G, latent, direction, settings))
    assert len(frames) == 12
    for frame in frames:
        assert frame.dtype == np.uint8 and frame.shape == (32, 32, 3)
        assert np.array_equal(frame, reconstruction)


def test_noise_is_the_projections_and_fixed(small_G, direction):
    latent = make_latent(small_G, seed=4)
    without_noise = LatentFile(ws=latent.ws)
    with_noise = next(iter_walk_frames(small_G, latent, direction, 4))
    const_noise = next(iter_walk_frames(small_G, without_noise, direction, 4))
    assert not np.array_equal(with_noise, const_noise)  # the optimised noise is used
    with torch.no_grad():
        const = from_tensor(small_G.synthesis(latent.ws[None], noise_mode="const"))[0]
    assert np.array_equal(const_noise, const)  # otherwise the network's constant noise
    again = next(iter_walk_frames(small_G, latent, direction, 4))
    assert np.array_equal(with_noise, again)  # no random noise anywhere: renders repeat exactly


def test_first_frame_is_the_reconstruction_and_last_the_end_point(small_G, latent, direction):
    walk = [f.copy() for f in iter_walk_frames(small_G, latent, direction, 7, strength=1.5, easing="cosine",
                                               batch_size=4)]
    assert np.array_equal(walk[0], synthesize(small_G, latent.ws, latent))  # t = 0, bit for bit
    end = synthesize(small_G, latent.ws + 1.5 * direction, latent)  # t = 1, batch of one
    assert np.abs(walk[-1].astype(int) - end.astype(int)).max() <= 1
    assert np.abs(walk[-1].astype(int) - walk[0].astype(int)).mean() > 5  # the walk goes somewhere


def test_batch_size_changes_frames_by_float_rounding_only(small_G, latent, direction):
    """Finding: batched synthesis differs from one-at-a-time by float rounding (~1e-6, BLAS and oneDNN sum
    in another order for another batch size); in uint8 at most 1 level, on well under 1% of the values.
    Walk frame 0 is always synthesised alone, so it is identical."""
    frames = 8
    one = np.stack([f.copy() for f in iter_walk_frames(small_G, latent, direction, frames, batch_size=1)])
    seven = np.stack([f.copy() for f in iter_walk_frames(small_G, latent, direction, frames, batch_size=7)])
    difference = np.abs(one.astype(int) - seven.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.01
    assert np.array_equal(one[0], seven[0])

    coefficients = torch.from_numpy(walk_coefficients(frames))
    ws = walk_latents(latent.ws, direction, coefficients)
    noise = {k: v[None, None] for k, v in latent.noise.items()}
    with torch.no_grad():
        singles = torch.cat([small_G.synthesis(ws[i:i + 1], noise_mode="const", noise=noise) for i in range(frames)])
        batched = torch.cat([small_G.synthesis(ws[i:i + 7], noise_mode="const", noise=noise)
                             for i in range(0, frames, 7)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-4)


def test_pti_delta_is_used(small_G, direction):
    params = dict(small_G.synthesis.named_parameters())
    gen = torch.Generator().manual_seed(5)
    delta = {name: torch.randn(params[name].shape, generator=gen) * 0.2
             for name in ("b32.conv1.weight", "b16.conv0.weight", "b32.torgb.bias")}
    plain = make_latent(small_G, seed=6)
    tuned = make_latent(small_G, seed=6, pti_delta=delta)
    before = {name: p.clone() for name, p in params.items()}

    plain_walk = [f.copy() for f in iter_walk_frames(small_G, plain, direction, 5)]
    tuned_walk = [f.copy() for f in iter_walk_frames(small_G, tuned, direction, 5)]
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() > 1 for a, b in zip(plain_walk, tuned_walk))
    G_tuned = apply_weight_delta(small_G, delta)
    assert np.array_equal(tuned_walk[0], synthesize(G_tuned, tuned.ws, tuned))
    end = synthesize(G_tuned, tuned.ws + direction, tuned)
    assert np.abs(tuned_walk[-1].astype(int) - end.astype(int)).max() <= 1
    assert all(torch.equal(p, before[name]) for name, p in small_G.synthesis.named_parameters())  # G untouched


def test_frames_at(small_G, latent, direction):
    frames = frames_at(small_G, latent, direction, [0.0, 1.0], strength=1.5)
    assert frames.shape == (2, 32, 32, 3)
    assert np.array_equal(frames[0], synthesize(small_G, latent.ws, latent))
    with pytest.raises(RenderError, match="between 0 and 1"):
        frames_at(small_G, latent, direction, [1.5])


# ----------------------------------------------------------------------------------------------------------
# Files


def test_render_writes_every_output(small_G, latent, direction, tmp_path):
    settings = quick(frames=6, hold_start=2, hold_end=3, strength=1.5, crf=12)
    photo = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    progress = []
    result = render_video(small_G, latent, direction,
                          RenderOutputs.in_directory(tmp_path / "out", frames=True, side_by_side=True),
                          settings, photo=photo, progress=lambda done, total: progress.append((done, total)))
    total = settings.total_frames
    assert total == 11 and result.total_frames == 11 and result.walk_frames == 6 and result.synthesized_frames == 6
    assert progress == [(k, total) for k in range(1, total + 1)]
    assert sorted(os.listdir(tmp_path / "out")) == ["after.png", "before.png", "frames", "preview.gif",
                                                    "side_by_side.mp4", "video.mp4"]
    expected = [f.copy() for f in iter_frames(small_G, latent, direction, settings)]

    # PNG frames: exact
    names = sorted(os.listdir(tmp_path / "out" / "frames"))
    assert names == [f"frame_{k:05d}.png" for k in range(total)]
    for name, frame in zip(names, expected):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "frames" / name)), frame)

    # stills: the first and last walk frames, exact
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "before.png")), expected[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "before.png")),
                          synthesize(small_G, latent.ws, latent))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "after.png")), expected[2 + 5])

    # MP4: H.264 yuv420p BT.709, every frame, the right size and rate, close to the frames
    meta, decoded = read_mp4(tmp_path / "out" / "video.mp4")
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and "bt709" in meta["pix_fmt"]
    assert meta["size"] == (32, 32) and meta["fps"] == 10
    assert len(decoded) == total
    errors = [np.abs(luma(a) - luma(b)).mean() for a, b in zip(decoded, expected)]
    assert max(errors) < 4, errors  # measured ~3 at CRF 12 on these noise-like images
    distinct = expected[2:8]  # the walk frames
    for decoded_frame, expected_frame in zip(decoded, expected):  # each decoded frame is its own walk frame
        nearest = min(range(6), key=lambda k: np.abs(luma(decoded_frame) - luma(distinct[k])).mean())
        assert np.array_equal(distinct[nearest], expected_frame)

    # side by side: photo | reconstruction | frame under a caption band
    meta, decoded = read_mp4(tmp_path / "out" / "side_by_side.mp4")
    band = video.caption_band_height(32)
    assert meta["size"] == (96, 32 + band) and len(decoded) == total
    last = luma(decoded[-1][band:])
    assert np.abs(last[:, 64:] - luma(expected[-1])).mean() < 4
    assert np.abs(last[:, 32:64] - luma(expected[0])).mean() < 4
    photo_panel = luma(np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.LANCZOS)))
    assert np.abs(last[:, :32] - photo_panel).mean() < 4


def test_gif_holds_timing_loop_and_subsampling(small_G, latent, direction, tmp_path):
    settings = quick(frames=6, hold_start=2, hold_end=3, fps=10)
    total = settings.total_frames  # 11 frames at 10 fps: 1.1 s
    expected = [f.copy() for f in iter_frames(small_G, latent, direction, settings)]
    render_video(small_G, latent, direction, RenderOutputs(gif=tmp_path / "a.gif"), settings)
    frames, durations, info = gif_frames(tmp_path / "a.gif")
    assert info.get("loop") == 0  # forever
    assert len(frames) == 6  # the holds are longer frames, not repeated frames
    assert durations == [300, 100, 100, 100, 100, 400] and sum(durations) == total * 100
    walk = [expected[0]] + expected[3:8]
    for k, decoded in enumerate(frames):  # 256 colours per frame: ~7.5 levels of error on these noise-like images
        errors = [np.abs(decoded.astype(int) - frame.astype(int)).mean() for frame in walk]
        assert errors[k] < 9 and int(np.argmin(errors)) == k

    small = quick(frames=6, hold_start=2, hold_end=3, fps=10, gif_every=2, gif_size=16)
    render_video(small_G, latent, direction, RenderOutputs(gif=tmp_path / "b.gif"), small)
    frames, durations, _ = gif_frames(tmp_path / "b.gif")
    assert frames[0].shape == (16, 16, 3)
    assert sum(durations) == total * 100  # same duration with fewer frames
    last = np.asarray(Image.fromarray(expected[-1]).resize((16, 16), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(frames[-1].astype(int) - last).mean() < 4  # ends on the last frame


def test_gif_writer_output_decodes_the_same_in_pillow_and_ffmpeg(tmp_path):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(3)]
    writer = video.GifWriter(tmp_path / "w.gif", fps=10)
    for frame in frames:
        writer.append(frame)
    writer.commit()
    assert writer.gif_frames == 3
    decoded, durations, _ = gif_frames(tmp_path / "w.gif")
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "w.gif"))
    assert next(reader)["size"] == (40, 24)
    by_ffmpeg = [np.frombuffer(data, np.uint8).reshape(24, 40, 3) for data in reader]
    assert durations == [100, 100, 100] and len(by_ffmpeg) >= 3
    for k, frame in enumerate(frames):  # 256 colours for 960 random colours: ~11 levels of error
        assert np.abs(decoded[k].astype(int) - frame).mean() < 14
        assert np.array_equal(decoded[k], by_ffmpeg[k])


def test_mp4_colours_round_trip(tmp_path):
    """RGB -> BT.709 limited-range yuv420p -> RGB, as players decode the tagged stream: flat colours come back
    within 2 levels, so matrix and range are consistent (a BT.601/709 mix-up moves saturated colours by 10+)."""
    colours = [(0, 0, 0), (128, 128, 128), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 120, 40)]
    writer = video.Mp4Writer(tmp_path / "flat.mp4", fps=5, crf=1, preset="ultrafast")
    for colour in colours:
        writer.append(np.full((16, 16, 3), colour, np.uint8))
    writer.commit()
    meta, decoded = read_mp4(tmp_path / "flat.mp4")
    assert "bt709" in meta["pix_fmt"]
    for colour, frame in zip(colours, decoded):
        assert np.abs(frame[8, 8].astype(int) - np.array(colour)).max() <= 2, (colour, frame[8, 8])


def test_mp4_pads_odd_sizes_with_the_edge(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (35, 33, 3), dtype=np.uint8)
    writer = video.Mp4Writer(tmp_path / "odd.mp4", fps=5, crf=1, preset="ultrafast")
    for k in range(3):
        writer.append(np.roll(base, k, axis=1))
    writer.commit()
    meta, decoded = read_mp4(tmp_path / "odd.mp4")
    assert meta["size"] == (34, 36) and len(decoded) == 3  # one row and one column added
    assert np.abs(luma(decoded[0][:35, :33]) - luma(base)).mean() < 2
    assert np.abs(luma(decoded[0][:, 33]) - luma(decoded[0][:, 32])).mean() < 2  # the edge repeated
    assert np.abs(luma(decoded[0][35, :]) - luma(decoded[0][34, :])).mean() < 2


def test_side_by_side_composite_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    photo, reconstruction, frame = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3))
    collected = video.PngStillWriter(tmp_path / "composite.png")
    writer = video.SideBySideWriter(collected, [photo, reconstruction], ["photo", "reconstruction", "younger"])
    composite = writer.compose(frame)
    band = video.caption_band_height(32)
    assert composite.shape == (32 + band, 96, 3)
    assert np.array_equal(composite[band:, :32], photo)
    assert np.array_equal(composite[band:, 32:64], reconstruction)
    assert np.array_equal(composite[band:, 64:], frame)
    captions = video.draw_captions(["photo", "reconstruction", "younger"], 32, band)
    assert np.array_equal(composite[:band], captions)
    assert captions.max() > 200 and captions.min() == 0  # (anti-aliased) white text on black
    assert all(captions[:, 32 * k:32 * (k + 1)].max() > 200 for k in range(3))  # one caption over each panel
    plain = video.SideBySideWriter(collected, [reconstruction], None).compose(frame)
    assert np.array_equal(plain, np.concatenate([reconstruction, frame], axis=1))


def test_png_sequence_replaces_only_an_earlier_sequence(small_G, latent, direction, tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    (frames_dir / "frame_00000.png").write_bytes(b"old")
    (frames_dir / "frame_00099.png").write_bytes(b"old")
    settings = quick(frames=3)
    render_video(small_G, latent, direction, RenderOutputs(frames_dir=frames_dir), settings)
    assert sorted(os.listdir(frames_dir)) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    (frames_dir / "notes.txt").write_text("mine")
    with pytest.raises(RenderError, match="holds other files"):
        render_video(small_G, latent, direction, RenderOutputs(frames_dir=frames_dir), settings)
    assert (frames_dir / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------------------
# Failures


class Stop(Exception):
    pass


@pytest.mark.parametrize("interruption", [Stop, KeyboardInterrupt])
def test_interruption_leaves_no_partial_file(small_G, latent, direction, tmp_path, interruption):
    out = tmp_path / "out"
    out.mkdir()
    (out / "video.mp4").write_bytes(b"the previous video")

    def progress(done, total):
        if done == 7:
            raise interruption()

    settings = quick(frames=8, hold_start=1, hold_end=1, pingpong=True)
    with pytest.raises(interruption):
        render_video(small_G, latent, direction,
                     RenderOutputs.in_directory(out, frames=True, side_by_side=True), settings, progress=progress)
    assert os.listdir(out) == ["video.mp4"]  # no temporary files, no new final names
    assert (out / "video.mp4").read_bytes() == b"the previous video"


def test_ffmpeg_failing_is_a_render_error(small_G, latent, direction, tmp_path, monkeypatch):
    # An encoder that dies: ffmpeg is given an option it rejects, so it exits non-zero.
    original = video.Mp4Writer._command
    monkeypatch.setattr(video.Mp4Writer, "_command",
                        lambda self, size: original(self, size)[:-1] + ["-no-such-option", "x", self.temp_path])
    with pytest.raises(RenderError, match="ffmpeg"):
        render_video(small_G, latent, direction, RenderOutputs.in_directory(tmp_path, gif=True), quick())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("overrides, message", [
    (dict(frames=0), "walk frames"),
    (dict(frames=1), "at least its first and last frame"),
    (dict(fps=-1), "frames per second"),
    (dict(fps=0), "frames per second"),
    (dict(fps=float("nan")), "frames per second"),
    (dict(easing="bounce"), "unknown easing"),
    (dict(batch_size=0), "batch size"),
    (dict(hold_start=-1), "hold_start"),
    (dict(strength=float("inf")), "strength"),
    (dict(crf=0), "CRF"),
    (dict(preset="turbo"), "preset"),
    (dict(gif_every=0), "GIF frame step"),
    (dict(gif_size=2), "GIF size"),
])
def test_bad_settings_are_render_errors(small_G, latent, direction, tmp_path, overrides, message):
    with pytest.raises(RenderError, match=message):
        render_video(small_G, latent, direction, RenderOutputs.in_directory(tmp_path), quick(**overrides))
    assert os.listdir(tmp_path) == []


def test_bad_inputs_are_render_errors(small_G, latent, direction, tmp_path):
    outputs = RenderOutputs.in_directory(tmp_path)
    num_ws, w_dim = small_G.num_ws, small_G.w_dim
    for bad in (direction[:-1], direction[0], direction.unsqueeze(0)):
        with pytest.raises(RenderError, match=rf"needs \[{num_ws}, {w_dim}\]"):
            render_video(small_G, latent, bad, outputs, quick())
    with pytest.raises(RenderError, match="NaN"):
        render_video(small_G, latent, direction * float("nan"), outputs, quick())
    with pytest.raises(RenderError, match="noise map 'b64.conv1'"):
        render_video(small_G, LatentFile(ws=latent.ws, noise={"b64.conv1": torch.zeros(64, 64)}), direction,
                     outputs, quick())
    with pytest.raises(RenderError, match="no output"):
        render_video(small_G, latent, direction, RenderOutputs(), quick())
    with pytest.raises(RenderError, match="square"):
        render_video(small_G, latent, direction, RenderOutputs(side_by_side=tmp_path / "s.mp4"), quick(),
                     photo=np.zeros((30, 40, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_missing_ffmpeg_is_a_render_error(small_G, latent, direction, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg-here"))
    with pytest.raises(RenderError, match="ffmpeg"):
        render_video(small_G, latent, direction, RenderOutputs.in_directory(tmp_path / "out"), quick())
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    # a GIF needs no ffmpeg
    render_video(small_G, latent, direction, RenderOutputs(gif=tmp_path / "p.gif"), quick())
    assert (tmp_path / "p.gif").is_file()


# ----------------------------------------------------------------------------------------------------------
# Streaming


def test_frames_stream_and_memory_stays_flat(small_G, latent, direction, tmp_path, monkeypatch):
    """Would fail if the renderer kept frames:

    1. synthesis runs at most one batch ahead of the consumer (it does not make all frames first);
    2. no frame handed out stays alive once the consumer drops it;
    3. the traced memory peak of a whole render (MP4 + GIF) does not grow with its length.  For this the
       frames are made numpy-owned, which tracemalloc traces (views of torch tensors are not traced), so a
       renderer keeping frames - references or copies - would add ~3 KB per frame.
    """
    batch_size = 4
    synthesised = []
    hook = small_G.synthesis.register_forward_hook(lambda module, args, output: synthesised.append(output.shape[0]))
    try:
        lead, refs = [], []
        for k, frame in enumerate(iter_frames(small_G, latent, direction, quick(frames=40, batch_size=batch_size))):
            lead.append(sum(synthesised) - k)
            refs.append(weakref.ref(frame))
        del frame
    finally:
        hook.remove()
    assert sum(synthesised) == 40 and max(lead) == batch_size  # frame k is out before frame k + 5 is made
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0

    original = render_module.images_module.from_tensor
    monkeypatch.setattr(render_module.images_module, "from_tensor", lambda x: np.array(original(x), copy=True))

    def traced_peak(frames: int) -> int:
        settings = quick(frames=frames, batch_size=batch_size, strength=0.5)
        outputs = RenderOutputs(video=tmp_path / f"{frames}.mp4", gif=tmp_path / f"{frames}.gif")
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            result = render_video(small_G, latent, direction, outputs, settings)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        assert result.total_frames == frames
        return peak

    traced_peak(6)  # first use: imports, caches
    short, long = traced_peak(8), traced_peak(48)
    frame_bytes = 32 * 32 * 3
    # measured: the peaks differ by ~200 bytes per frame (Python ints of the frame plan); keeping the 40
    # extra frames would add 123 KB
    assert long - short < 0.25 * (48 - 8) * frame_bytes, (short, long)
