"""LPIPS-VGG16: same numbers as the lpips package, downsampling, and no silent random fallback."""

import warnings

import lpips
import pytest
import torch
import torch.nn.functional as F

from timemachine import pipeline
from timemachine.env import Environment
from timemachine.errors import WeightsError
from timemachine.perceptual import PerceptualDistance, RandomWeightsWarning


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-format VGG16 state dict (random values) and the lpips model holding the same weights."""
    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
    state = {}
    for name, tensor in reference.net.state_dict().items():        # 'slice2.5.weight' -> 'features.5.weight'
        _, index, kind = name.split(".")
        state[f"features.{index}.{kind}"] = tensor.clone()
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path, reference


def test_distance_equals_the_lpips_package(vgg_file):
    path, reference = vgg_file
    ours = PerceptualDistance(str(path))
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1
    b = torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1
    expected = reference(a, b).flatten()
    got = ours(a, b)
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # precomputed target features give the same distance
    torch.testing.assert_close(ours.distance(ours.features(a), ours.features(b)), expected, rtol=1e-5, atol=1e-7)


def test_large_images_are_area_downsampled_to_256(vgg_file):
    path, _ = vgg_file
    ours = PerceptualDistance(str(path))
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 512, 512, generator=gen) * 2 - 1
    b = torch.rand(1, 3, 512, 512, generator=gen) * 2 - 1
    down = lambda x: F.avg_pool2d(x, 2)  # noqa: E731  area resize by 2 == 2x2 average
    torch.testing.assert_close(ours(a, b), ours(down(a), down(b)), rtol=1e-5, atol=1e-7)


def test_gradients_reach_the_images(vgg_file):
    ours = PerceptualDistance(str(vgg_file[0]))
    a = torch.zeros(1, 3, 32, 32, requires_grad=True)
    ours(a, torch.rand(1, 3, 32, 32)).sum().backward()
    assert a.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in ours.parameters())


def test_random_weights_must_be_asked_for_and_warn(monkeypatch):
    with pytest.warns(RandomWeightsWarning, match="random"):
        first = PerceptualDistance("random")
    with pytest.raises(TypeError):
        PerceptualDistance()                                       # no default: the caller names the weights
    monkeypatch.setenv("TIMEMACHINE_VGG_WEIGHTS", "random")       # asked for by name through the environment
    with pytest.warns(RandomWeightsWarning):
        second = pipeline.load_perceptual(Environment.from_environ(), "cpu")
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.equal(first(x, y), second(x, y))                  # the same 'random' network every time


def test_no_silent_fallback_when_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("TIMEMACHINE_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("TIMEMACHINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TIMEMACHINE_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)       # a random fallback would fail here
        with pytest.raises(WeightsError, match="vgg16"):
            pipeline.load_perceptual(Environment.from_environ(), "cpu")


def test_bad_weight_files_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        PerceptualDistance(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        PerceptualDistance(str(junk))
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsError, match="VGG16"):
        PerceptualDistance(str(wrong))
