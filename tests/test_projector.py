"""The projector on a small generator: schedule, regulariser, quality, W+, PTI, batches, resume, early stop.

Targets are images the generator itself made from known latents, so a good projection can get close.
LPIPS uses a random VGG16 (no weights can be downloaded here); that is a weaker guide than the real one,
so the thresholds below are modest, but every one of them fails for a projector that does not work
(e.g. one that never moves w: its PSNR stays at the start value).
"""

import math

import numpy as np
import pytest
import torch

from timemachine import projector as P
from timemachine.errors import ProjectionError


@pytest.fixture(scope="module")
def targets(small_G):
    z = torch.randn(2, small_G.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return small_G.synthesis(small_G.mapping(z, None), noise_mode="const")


@pytest.fixture(scope="module")
def w_stats(small_G):
    return P.compute_w_stats(small_G, 2000)


@pytest.fixture(scope="module")
def projection_w(small_G, targets, random_lpips, w_stats):
    return P.project(small_G, targets, P.ProjectorSettings(space="w", steps=120), perceptual=random_lpips,
                     w_stats=w_stats)


@pytest.fixture(scope="module")
def start_psnr(small_G, targets, w_stats):
    with torch.no_grad():
        start = small_G.synthesis(w_stats[0].repeat(2, small_G.num_ws, 1), noise_mode="const")
    return P.psnr(start, targets)


def test_learning_rate_schedule_is_the_official_one():
    s = P.ProjectorSettings(steps=1000)
    assert P.learning_rate(s, 0) == 0.0
    assert P.learning_rate(s, 25) == pytest.approx(0.1 * 0.5)           # half-way up the 5 % ramp
    assert P.learning_rate(s, 50) == pytest.approx(0.1)
    assert P.learning_rate(s, 600) == pytest.approx(0.1)
    t = 900 / 1000
    assert P.learning_rate(s, 900) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos((1 - t) / 0.25 * math.pi)))
    assert P.w_noise_scale(s, 0, 2.0) == pytest.approx(2.0 * 0.05)
    assert P.w_noise_scale(s, 375, 2.0) == pytest.approx(2.0 * 0.05 * 0.25)
    assert P.w_noise_scale(s, 750, 2.0) == 0.0 and P.w_noise_scale(s, 999, 2.0) == 0.0


def test_noise_regularization_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    noise = {"a": torch.randn([2, 1, 32, 32], generator=gen), "b": torch.randn([2, 1, 8, 8], generator=gen)}
    expected = []
    for i in range(2):
        total = 0.0
        for v in noise.values():
            x = v[i, 0].double().numpy()
            while True:
                total += np.mean(x * np.roll(x, 1, axis=1)) ** 2 + np.mean(x * np.roll(x, 1, axis=0)) ** 2
                if x.shape[0] <= 8:
                    break
                x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))
        expected.append(total)
    got = P.noise_regularization(noise)
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_w_stats_are_deterministic(small_G):
    a_avg, a_std = P.compute_w_stats(small_G, 500)
    b_avg, b_std = P.compute_w_stats(small_G, 500)
    assert a_avg.shape == (1, 1, small_G.w_dim)
    assert torch.equal(a_avg, b_avg) and a_std == b_std and a_std > 0


def test_projection_in_w_reconstructs_the_target(projection_w, start_psnr, small_G, targets):
    proj = projection_w
    assert proj.ws.shape == (2, small_G.num_ws, small_G.w_dim)
    assert torch.equal(proj.ws[:, :1].expand_as(proj.ws), proj.ws)           # W space: all rows equal
    assert proj.loss_curve.shape == (120, 2) and proj.lpips_curve.shape == (120, 2)
    assert proj.steps_run == 120
    final_psnr = P.psnr(P.reconstruct(small_G, proj), targets)
    assert (final_psnr - start_psnr >= 3.0).all(), (start_psnr, final_psnr)
    assert (final_psnr >= 13.0).all(), final_psnr
    assert (proj.lpips_curve[-1] < 0.6 * proj.lpips_curve[0]).all()
    for tensor in proj.noise.values():                                         # renormalised every step
        assert torch.allclose(tensor.mean(dim=[1, 2, 3]), torch.zeros(2), atol=1e-5)
        assert torch.allclose(tensor.square().mean(dim=[1, 2, 3]), torch.ones(2), atol=1e-4)


def test_w_plus_fits_at_least_as_well_as_w(projection_w, small_G, targets, random_lpips, w_stats):
    proj_plus = P.project(small_G, targets, P.ProjectorSettings(space="w+", steps=120), perceptual=random_lpips,
                          w_stats=w_stats)
    assert not torch.equal(proj_plus.ws[:, :1].expand_as(proj_plus.ws), proj_plus.ws)
    assert (proj_plus.lpips_curve[-1] <= projection_w.lpips_curve[-1]).all(), \
        (proj_plus.lpips_curve[-1], projection_w.lpips_curve[-1])


def test_pivotal_tuning_improves_the_fit_and_stays_local(projection_w, small_G, targets, random_lpips):
    pivot = projection_w.select(0)
    before = P.psnr(P.reconstruct(small_G, pivot), targets[:1])
    tuned = P.pivotal_tuning(small_G, pivot, targets[:1], P.PTISettings(steps=40, lpips_threshold=0),
                             perceptual=random_lpips)
    after = P.psnr(P.reconstruct(small_G, tuned), targets[:1])
    assert tuned.pti_steps_run == 40 and tuned.pti_delta
    assert after[0] >= before[0] + 1.0, (before, after)
    # Locality: far from the pivot, the tuned generator changes images much less than at the pivot.
    G_tuned = P.apply_weight_delta(small_G, tuned.pti_delta)
    w_far = small_G.mapping(torch.randn(4, small_G.z_dim, generator=torch.Generator().manual_seed(9)), None)
    with torch.no_grad():
        change_far = (G_tuned.synthesis(w_far, noise_mode="const")
                      - small_G.synthesis(w_far, noise_mode="const")).abs().mean()
        change_pivot = (P.reconstruct(small_G, tuned) - P.reconstruct(small_G, pivot)).abs().mean()
    assert change_far < change_pivot
    assert P.apply_weight_delta(small_G, None) is small_G


def test_resumed_projection_equals_an_uninterrupted_one(small_G, targets, random_lpips, w_stats, tmp_path):
    settings = P.ProjectorSettings(steps=20, checkpoint_every=10)
    full = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats)
    checkpoint = str(tmp_path / "ckpt.pt")

    def stop_at_15(event):
        if event.step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats, callback=stop_at_15,
                  checkpoint_path=checkpoint)
    steps_seen = []
    resumed = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats,
                        checkpoint_path=checkpoint, resume=True, callback=lambda e: steps_seen.append(e.step))
    assert steps_seen == list(range(11, 21))                                  # continued after step 10
    assert torch.equal(resumed.ws, full.ws)
    assert all(torch.equal(resumed.noise[k], full.noise[k]) for k in full.noise)
    np.testing.assert_array_equal(resumed.loss_curve, full.loss_curve)


def test_resume_refuses_a_checkpoint_of_other_photos(small_G, targets, random_lpips, w_stats, tmp_path):
    checkpoint = str(tmp_path / "ckpt.pt")
    settings = P.ProjectorSettings(steps=6, checkpoint_every=2)

    def stop(event):
        if event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats, callback=stop,
                  checkpoint_path=checkpoint)
    with pytest.raises(ProjectionError, match="other photos"):
        P.project(small_G, targets[1:], settings, perceptual=random_lpips, w_stats=w_stats,
                  checkpoint_path=checkpoint, resume=True)
    with pytest.raises(ProjectionError, match="other settings"):
        P.project(small_G, targets[:1], P.ProjectorSettings(steps=7, checkpoint_every=2), perceptual=random_lpips,
                  w_stats=w_stats, checkpoint_path=checkpoint, resume=True)
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ProjectionError, match="damaged"):
        P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats,
                  checkpoint_path=checkpoint, resume=True)


def test_early_stop_ends_a_stalled_projection(small_G, targets, random_lpips, w_stats):
    settings = P.ProjectorSettings(steps=200, noise_ramp_length=0.05, early_stop_patience=5,
                                   early_stop_min_delta=0.05)
    proj = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats)
    assert 10 < proj.steps_run < 200
    assert proj.loss_curve.shape == (proj.steps_run, 1)


def test_resumed_early_stopping_projection_stops_where_an_uninterrupted_one_does(small_G, targets, random_lpips,
                                                                                w_stats, tmp_path):
    settings = P.ProjectorSettings(steps=200, noise_ramp_length=0.05, early_stop_patience=5,
                                   early_stop_min_delta=0.05, checkpoint_every=4)
    full = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats)
    assert full.steps_run < 200
    checkpoint = str(tmp_path / "ckpt.pt")
    stop_at = full.steps_run - 2             # inside the stalled stretch: the early-stop count must be restored

    def interrupt(event):
        if event.step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats, callback=interrupt,
                  checkpoint_path=checkpoint)
    resumed = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats,
                        checkpoint_path=checkpoint, resume=True)
    assert resumed.steps_run == full.steps_run
    assert torch.equal(resumed.ws, full.ws)


def test_a_finished_projection_resumes_without_another_step(small_G, targets, random_lpips, w_stats, tmp_path):
    settings = P.ProjectorSettings(steps=7, checkpoint_every=50)
    checkpoint = str(tmp_path / "ckpt.pt")
    first = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats,
                      checkpoint_path=checkpoint)
    steps_seen = []
    again = P.project(small_G, targets[:1], settings, perceptual=random_lpips, w_stats=w_stats,
                      checkpoint_path=checkpoint, resume=True, callback=lambda e: steps_seen.append(e.step))
    assert steps_seen == [] and again.steps_run == 7
    assert torch.equal(again.ws, first.ws)
    np.testing.assert_array_equal(again.loss_curve, first.loss_curve)


def test_a_photo_gets_the_same_projection_alone_or_in_a_batch(small_G, targets, random_lpips, w_stats):
    """Each photo has its own loss, gradients and random stream: its result does not depend on its batch
    mates (so a cached projection does not depend on which photos were projected with it).  Batched and
    single convolutions round differently and Adam amplifies that a little, so "the same" is measured
    against what another random stream (seed) would change: under 2 % of it."""
    settings = P.ProjectorSettings(steps=15)
    pair = P.project(small_G, targets, settings, perceptual=random_lpips, w_stats=w_stats)
    for i in range(2):
        alone = P.project(small_G, targets[i:i + 1], settings, perceptual=random_lpips, w_stats=w_stats)
        other_seed = P.project(small_G, targets[i:i + 1], P.ProjectorSettings(steps=15, seed=7),
                               perceptual=random_lpips, w_stats=w_stats)
        seed_change = float((other_seed.ws[0] - alone.ws[0]).norm())
        assert float((pair.ws[i] - alone.ws[0]).norm()) < 0.02 * seed_change
        np.testing.assert_allclose(pair.lpips_curve[:, i], alone.lpips_curve[:, 0], rtol=1e-2)
    assert not torch.allclose(pair.ws[0], pair.ws[1])


def test_pivotal_tuning_checks_the_threshold_before_updating(small_G, targets, random_lpips, projection_w):
    pivot = projection_w.select(0)
    settings = P.PTISettings(steps=5, lpips_threshold=10.0)      # every LPIPS is below 10: stop at once
    tuned = P.pivotal_tuning(small_G, pivot, targets[:1], settings, perceptual=random_lpips)
    assert tuned.pti_steps_run == 0
    assert all(float(d.abs().max()) == 0.0 for d in tuned.pti_delta.values())
    assert P.PTISettings().lpips_threshold == 0.06 and P.PTISettings().locality_truncation_psi == 0.5


def test_callback_reports_every_step_with_previews(small_G, targets, random_lpips, w_stats):
    events = []
    P.project(small_G, targets, P.ProjectorSettings(steps=6, preview_every=3), perceptual=random_lpips,
              w_stats=w_stats, callback=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.stage == "project" and e.total == 6 and e.lpips.shape == (2,) for e in events)
    previews = [e.step for e in events if e.preview is not None]
    assert previews == [3, 6]
    assert events[2].preview.shape == (2, 32, 32, 3) and events[2].preview.dtype == np.uint8


def test_batch_select_gives_single_projections(projection_w):
    one = projection_w.select(1)
    assert one.batch_size == 1 and torch.equal(one.ws[0], projection_w.ws[1])
    assert all(v.shape[0] == 1 for v in one.noise.values())
    assert one.lpips_curve.shape == (120, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(space="z"), "latent space"), (dict(steps=0), "steps"), (dict(initial_learning_rate=0), "positive"),
    (dict(early_stop_patience=-1), "between 0 and")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ProjectionError, match=message):
        P.ProjectorSettings(**kwargs).validate()


def test_bad_targets_are_refused(small_G, random_lpips, w_stats):
    with pytest.raises(ProjectionError, match=r"targets must be \[N, 3, 32, 32\]"):
        P.project(small_G, torch.zeros(1, 3, 16, 16), P.ProjectorSettings(steps=1), perceptual=random_lpips,
                  w_stats=w_stats)
    with pytest.raises(ProjectionError, match="NaN"):
        P.project(small_G, torch.full((1, 3, 32, 32), float("nan")), P.ProjectorSettings(steps=1),
                  perceptual=random_lpips, w_stats=w_stats)


def test_psnr_of_identical_and_opposite_images():
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert P.psnr(x, x)[0] == pytest.approx(10 * math.log10(4 / 1e-12))           # mse clamped at 1e-12
    assert P.psnr(torch.ones(1, 3, 8, 8), -torch.ones(1, 3, 8, 8))[0] == pytest.approx(0.0)
