"""Discovering an age direction from a generator's own samples (timemachine.discover), with planted labellers.

The labellers here are known functions of the image (the brightness of its centre), so the direction that
discovery should find is known: the discovered vector must raise that function on fresh samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_small_generator
from timemachine import discover
from timemachine.checkpoint import model_fingerprint
from timemachine.errors import AgeVectorError
from timemachine.pipeline import LoadedModel


def centre_brightness(images: np.ndarray) -> np.ndarray:
    """Mean of the central quarter of uint8 images [N, H, W, 3] -> float [N] in [0, 255]."""
    h, w = images.shape[1:3]
    return images[:, h // 4:3 * h // 4, w // 4:3 * w // 4].astype(np.float64).mean(axis=(1, 2, 3))


class BrightLabeller:
    """P(young) = a clipped linear function of the centre's brightness ("young" = bright)."""

    description = "planted: brightness of the centre"

    def __init__(self, centre: float = 128.0, cache_key="bright-v1"):
        self.centre = centre
        self.cache_key = cache_key
        self.details = {"prompts": {"young": ["bright"], "adult": ["dark"]}, "function": "centre brightness"}
        self.calls = 0
        self.images = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.images += len(images)
        return np.clip(0.5 + (centre_brightness(images) - self.centre) / 40, 0, 1)


@pytest.fixture(scope="module")
def small_model():
    """A 32x32 skip generator with 16 channels: cheap to sample hundreds of times."""
    G = make_small_generator(seed=3, channel_max=16)
    return LoadedModel(G=G, fingerprint=model_fingerprint(G), spec="small", path="")


def test_a_planted_labeller_s_direction_is_found(small_model, tmp_path):
    """The discovered vector at strength 1 raises the planted function on >= 90% of fresh samples."""
    G = small_model.G
    labeller = BrightLabeller()
    vector = discover.discover_vector(small_model, labeller, samples=160, name="bright", seed=1, batch_size=16,
                                      cache_dir=tmp_path)
    assert vector.method == "discovered" and vector.space == "w" and vector.direction.shape == (G.num_ws, G.w_dim)
    assert vector.model_fingerprint == small_model.fingerprint and vector.model_name == "small"
    info = vector.details["discovery"]
    assert (info["samples"], info["seed"], info["truncation_psi"], info["resolution"]) == (160, 1, 0.7, 32)
    assert info["young"] == vector.num_puppies >= 10 and info["adult"] == vector.num_adults >= 10
    assert info["labelled"] == 160 and info["unlabelled"] == 0 and info["prompts"] == labeller.details["prompts"]
    assert 0.5 <= info["heldout_accuracy"] <= 1 and info["labeller"] == BrightLabeller.description
    assert vector.details["classifier"]["C"] > 0
    fresh = discover.sample_latents(G, 12345, range(100), 0.7)            # other seed: unseen samples
    before = centre_brightness(discover.render(G, fresh, G.img_resolution, 25))
    ws = fresh[:, None, :].expand(-1, G.num_ws, -1)
    after = centre_brightness(discover.render(G, vector.apply(ws, 1.0)[:, 0], G.img_resolution, 25))
    assert (after > before).mean() >= 0.9, (after > before).mean()
    # and the opposite labeller finds the opposite direction
    dark = discover.discover_vector(small_model, lambda im: 1 - BrightLabeller()(im), samples=160, seed=1,
                                    batch_size=16, cache_dir=tmp_path)       # the same samples, from the cache
    assert dark.details["discovery"]["rendered_now"] == 0
    cos = float((dark.direction.flatten() @ vector.direction.flatten())
                / (dark.direction.norm() * vector.direction.norm()))
    assert cos < -0.9, cos


def test_samples_are_cached_resumed_and_relabelled_without_rendering(small_model, tmp_path):
    cache = tmp_path / "discovery"
    kwargs = dict(samples=80, seed=2, batch_size=8, min_confident=5, cache_dir=cache)

    class Interrupting(BrightLabeller):
        def __call__(self, images):
            if self.images >= 2 * discover.CHUNK:
                raise KeyboardInterrupt
            return super().__call__(images)

    events = []
    with pytest.raises(KeyboardInterrupt):
        discover.discover_vector(small_model, Interrupting(), progress=lambda *a: events.append(a), **kwargs)
    assert events == [(16, 80), (32, 80)]
    (store,) = [p for p in cache.iterdir()]
    assert len(list(store.glob("samples-*.npz"))) == 3       # the chunk being labelled was rendered already
    assert not list(store.rglob("*.tmp"))

    resumed_labeller = BrightLabeller()
    resumed = discover.discover_vector(small_model, resumed_labeller, **kwargs)
    info = resumed.details["discovery"]
    assert (info["rendered_now"], info["labelled_now"]) == (80 - 48, 80 - 32)
    fresh = discover.discover_vector(small_model, BrightLabeller(), **{**kwargs, "cache_dir": None})
    assert torch.equal(resumed.direction, fresh.direction)        # the cache changes nothing

    again = discover.discover_vector(small_model, BrightLabeller(), **kwargs)
    assert (again.details["discovery"]["rendered_now"], again.details["discovery"]["labelled_now"]) == (0, 0)
    # other prompts (another labeller key): labelled again, nothing rendered again
    relabelled = BrightLabeller(centre=120, cache_key="bright-v2")
    other = discover.discover_vector(small_model, relabelled, **kwargs)
    assert (other.details["discovery"]["rendered_now"], other.details["discovery"]["labelled_now"]) == (0, 80)
    assert relabelled.images == 80
    # more samples reuse the first ones; a damaged chunk is rendered again, not trusted
    (store / "samples-00000000.npz").write_bytes(b"damaged")
    more = discover.discover_vector(small_model, BrightLabeller(), **{**kwargs, "samples": 96})
    assert more.details["discovery"]["rendered_now"] == 16 + 16


def test_too_few_confident_samples_say_the_counts_and_what_to_change(small_model):
    with pytest.raises(AgeVectorError, match=r"too few confident samples: 0 young and 0 adult of 40 .*at least 10 of "
                                             r"each are needed; use more samples, other prompts or a lower confidence"):
        discover.discover_vector(small_model, lambda im: np.full(len(im), 0.5), samples=40)
    with pytest.raises(AgeVectorError, match="40 left out by the labeller"):
        discover.discover_vector(small_model, lambda im: np.full(len(im), np.nan), samples=40)


@pytest.mark.parametrize("changes, message", [
    (dict(samples=0), "number of samples must be a whole number from 1 to 100000"),
    (dict(samples=10 ** 9), "number of samples must be a whole number from 1 to 100000"),
    (dict(samples=15), "cannot give 10 confident samples of each side"),
    (dict(samples=40, truncation_psi=0.0), "truncation must be a number above 0"),
    (dict(samples=40, resolution=48), "power of two"),
    (dict(samples=40, confidence=0.4), "confidence"),
    (dict(samples=40, name="../x"), "invalid age vector name"),
    (dict(samples=40, default_layers="fine"), "no fine layers"),
    (dict(samples=40, default_strength=1e308), "strength must be"),
])
def test_bad_requests_are_refused_before_any_work(small_model, changes, message):
    labeller = BrightLabeller()
    with pytest.raises(AgeVectorError, match=message):
        discover.discover_vector(small_model, labeller, **changes)
    assert labeller.calls == 0


@pytest.mark.parametrize("output, message", [
    (lambda im: np.zeros(len(im) + 1), "returned"),
    (lambda im: np.full(len(im), 2.0), "outside"),
    (lambda im: np.full(len(im), -np.inf), "outside"),
])
def test_a_labeller_that_returns_nonsense_is_refused(small_model, output, message):
    with pytest.raises(AgeVectorError, match=message):
        discover.discover_vector(small_model, output, samples=40)


def test_partial_synthesis_is_the_running_image_of_skip_generators(small_G):
    G = small_G
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    seen = {}
    hooks = [getattr(G.synthesis, f"b{r}").register_forward_hook(
        lambda module, args, out, r=r: seen.__setitem__(r, out[1].clone())) for r in G.synthesis.block_resolutions]
    with torch.no_grad():
        full = G.synthesis(ws, noise_mode="const")
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for r in G.synthesis.block_resolutions:
            part = G.synthesis(ws, noise_mode="const", resolution=r)
            assert part.shape == (2, 3, r, r) and torch.equal(part, seen[r])
            assert G.synthesis.can_stop_at(r)
        rows = 2 * 2 - 1                                    # b4 (conv1, torgb) and b8 (conv0, conv1, torgb)
        assert torch.equal(G.synthesis(ws[:, :rows + 1], noise_mode="const", resolution=8), seen[8])
        with pytest.raises(ValueError, match="ws must have shape"):
            G.synthesis(ws[:, :rows], noise_mode="const", resolution=8)
    assert torch.equal(full, seen[G.img_resolution])
    assert discover.render_resolution(G, 256) == 32 and discover.render_resolution(G, 16) == 16
    resnet = make_small_generator(architecture="resnet")
    assert not resnet.synthesis.can_stop_at(16) and discover.render_resolution(resnet, 16) == 32
    with pytest.raises(ValueError, match="only 'skip' generators"):
        resnet.synthesis(ws, noise_mode="const", resolution=16)


def test_discovery_at_a_reduced_resolution_labels_the_block_s_image(small_model):
    labeller = BrightLabeller()
    sizes = []
    original = labeller.__call__

    def spy(images):
        sizes.append(images.shape[1:])
        return original(images)

    vector = discover.discover_vector(small_model, spy, samples=48, resolution=16, min_confident=5)
    assert set(sizes) == {(16, 16, 3)} and vector.details["discovery"]["resolution"] == 16
    assert vector.details["discovery"]["model_resolution"] == 32
