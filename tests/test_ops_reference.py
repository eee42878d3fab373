"""The pure-PyTorch reference ops of stylegan_ops against naive numpy versions written from their definitions.

The naive versions live in tests/naive_ops.py (explicit loops, no torch).  Random shapes and parameters come
from hypothesis with derandomize=True, so every run draws the same examples.  Values are compared in
float64 to 1e-10 of the output's scale: the reference ops must be exact, not merely float32-close.
Gradients are checked with torch.autograd.gradcheck / gradgradcheck in float64.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import naive_ops as naive  # tests/naive_ops.py
from stylegan_ops import bias_act as _bias_act
from stylegan_ops import conv2d_resample as _conv2d_resample
from stylegan_ops import fma as _fma
from stylegan_ops import upfirdn2d as _upfirdn2d


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: extra intra-op threads only spin, and on a busy 2-core machine triple the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(n: int) -> settings:
    """Deterministic hypothesis settings drawing ``n`` examples (no database, no timing deadline)."""
    return settings(derandomize=True, deadline=None, database=None, max_examples=n, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow])


seeds = st.integers(0, 2**32 - 1)
factors = st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=2, max_size=2))


def paddings(low: int, high: int):
    """``p``, ``[px, py]`` or ``[px0, px1, py0, py1]`` with entries in [low, high]."""
    entry = st.integers(low, high)
    return st.one_of(entry, st.lists(entry, min_size=2, max_size=2), st.lists(entry, min_size=4, max_size=4))


@st.composite
def filters(draw, max_taps: int = 5):
    """None, a 2D float32 filter [fh, fw] (fh != fw allowed) or a separable one [taps], random taps."""
    kind = draw(st.sampled_from(["none", "2d", "separable"]))
    if kind == "none":
        return None
    if kind == "2d":
        shape = (draw(st.integers(1, max_taps)), draw(st.integers(1, max_taps)))
    else:
        shape = (draw(st.integers(1, max_taps + 1)),)
    taps = np.random.default_rng(draw(seeds)).standard_normal(shape)
    return torch.tensor(taps, dtype=torch.float32)


def random_array(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) * scale)


def as_numpy_filter(f):
    return None if f is None else f.double().numpy()


def assert_matches(got: torch.Tensor, expected: np.ndarray, rel: float = 1e-10) -> None:
    """Same shape, and equal to ``rel`` times the larger of 1 and the expected output's largest value."""
    got = got.detach().double().numpy()
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    if expected.size:
        scale = max(1.0, float(np.abs(expected).max()))
        err = float(np.abs(got - expected).max())
        assert err <= rel * scale, f"max error {err:.3g} exceeds {rel:.0e} x {scale:.3g}"


# ------------------------------------------------------------------------------------------------------
# setup_filter


@examples(80)
@given(taps=st.lists(st.floats(0.1, 5.0), min_size=1, max_size=10), separable=st.sampled_from([None, True, False]),
       flip=st.booleans(), gain=st.sampled_from([1.0, 0.25, 2.0, 4.0]), two_d=st.booleans())
def test_setup_filter_matches_definition(taps, separable, flip, gain, two_d):
    taps = np.array(taps)
    if two_d:  # a genuinely 2D filter: rows of different taps
        taps = np.stack([taps, taps[::-1] + 1.0])
        separable = False if separable is True else separable
    f = _upfirdn2d.setup_filter(taps.tolist(), normalize=True, flip_filter=flip, gain=gain, separable=separable)
    assert f.dtype == torch.float32 and f.device.type == "cpu"

    # Separable rule: a 1D filter stays 1D when asked, or by default from 8 taps on; else it becomes outer(f, f).
    stays_1d = taps.ndim == 1 and (separable is True or (separable is None and taps.size >= 8))
    expected = taps if stays_1d else naive.filter_2d(taps)
    expected = expected / expected.sum()
    if flip:
        expected = expected[::-1] if expected.ndim == 1 else expected[::-1, ::-1]
    expected = expected * (math.sqrt(gain) if stays_1d else gain)
    assert f.shape == expected.shape
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-5, atol=0)
    # The filter as upfirdn2d applies it (2D taps) always sums to gain.
    assert naive.filter_2d(f.double().numpy()).sum() == pytest.approx(gain, rel=1e-5)


def test_setup_filter_special_inputs():
    assert _upfirdn2d.setup_filter(None).tolist() == [[1.0]]
    assert _upfirdn2d.setup_filter(5).tolist() == [[1.0]]  # a scalar is an impulse, normalised
    assert _upfirdn2d.setup_filter(5, normalize=False).tolist() == [[25.0]]  # 1 tap, applied along x and y
    assert _upfirdn2d.setup_filter([1, 2, 1], separable=True).tolist() == [0.25, 0.5, 0.25]
    assert _upfirdn2d.setup_filter([1, 3, 3, 1]).shape == (4, 4)  # StyleGAN2's default: 4 taps -> 2D
    assert _upfirdn2d.setup_filter(np.ones(7)).shape == (7, 7)  # separable by default from 8 taps on
    assert _upfirdn2d.setup_filter(np.ones(8)).shape == (8,)
    assert _upfirdn2d.setup_filter(np.ones(8), separable=False).shape == (8, 8)
    assert _upfirdn2d.setup_filter([1, -1], normalize=False).tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    with torch.device("meta"):  # networks are built on the meta device before their weights are loaded
        assert _upfirdn2d.setup_filter([1, 3, 3, 1]).device.type == "meta"
    caller_taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    _upfirdn2d.setup_filter(caller_taps, flip_filter=True, gain=4)
    assert caller_taps.tolist() == [1.0, 3.0, 3.0, 1.0], "setup_filter must not modify the caller's tensor"


# ------------------------------------------------------------------------------------------------------
# upfirdn2d


@examples(150)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), f=filters(),
       up=factors, down=factors, padding=paddings(-3, 4), flip=st.booleans(),
       gain=st.sampled_from([1.0, 0.5, 2.0, 3.7]), seed=seeds)
def test_upfirdn2d_ref_matches_naive(n, c, h, w, f, up, down, padding, flip, gain, seed):
    x = random_array(seed, (n, c, h, w))
    args = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    try:
        expected = naive.upfirdn2d_naive(x, as_numpy_filter(f), **args)
    except naive.TooSmall:
        event("image smaller than the filter: ValueError")
        with pytest.raises(ValueError, match="smaller than the filter"):
            _upfirdn2d.upfirdn2d_ref(torch.from_numpy(x), f, **args)
        return
    assert_matches(_upfirdn2d.upfirdn2d_ref(torch.from_numpy(x), f, **args), expected)
    # float32 input: same result to float32 rounding; the public op on the CPU is the reference.
    got32 = _upfirdn2d.upfirdn2d(torch.from_numpy(x).float(), f, impl=None, **args)
    assert got32.dtype == torch.float32
    assert_matches(got32, expected, rel=1e-5)


@pytest.mark.parametrize("padding", [1, [2, 1], [1, 1, 2, 2], [2, 2, 0, 0], [0, 0, 1, 1], [1, 1, -1, -1],
                                     [3, 1, 2, 2], [-1, -1, 2, 2], [1, 1, 2, 1], [0, 0, 0, 2]])
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("up", [1, 2])
def test_upfirdn2d_ref_padding_left_to_the_convolution(padding, separable, up):
    """Padding equal on both sides of an axis is done by conv2d itself (no padded copy), the rest by pad."""
    x = random_array(5, (2, 3, 7, 8))
    f = _upfirdn2d.setup_filter([1, 3, 3, 1], separable=separable)
    expected = naive.upfirdn2d_naive(x, as_numpy_filter(f), up=up, padding=padding)
    assert_matches(_upfirdn2d.upfirdn2d_ref(torch.from_numpy(x), f, up=up, padding=padding), expected)
    channels_last = torch.from_numpy(x).float().contiguous(memory_format=torch.channels_last)
    assert_matches(_upfirdn2d.upfirdn2d_ref(channels_last, f, up=up, padding=padding), expected, rel=1e-5)


def _check_resampling_helper(which: str, x: np.ndarray, f, factor, padding, flip: bool, gain: float) -> None:
    """filter2d keeps the size, upsample2d multiplies it, downsample2d divides it (plus the padding); the
    filter sits where the centring paddings of tests/naive_ops.py put it."""
    h, w = x.shape[2:]
    taps = naive.filter_2d(as_numpy_filter(f))
    fh, fw = taps.shape
    fx, fy = naive.as_pair(factor)
    px0, px1, py0, py1 = naive.as_quad(padding)
    common = dict(padding=padding, flip_filter=flip, gain=gain)
    if which == "filter2d":
        (cx0, cx1), (cy0, cy1) = naive.centring_padding_same(fw), naive.centring_padding_same(fh)
        up, down, total_gain = 1, 1, gain
        out_h, out_w = h + py0 + py1, w + px0 + px1
        call = functools.partial(_upfirdn2d.filter2d, torch.from_numpy(x), f, **common)
    elif which == "upsample2d":
        (cx0, cx1), (cy0, cy1) = naive.centring_padding_up(fw, fx), naive.centring_padding_up(fh, fy)
        up, down, total_gain = factor, 1, gain * fx * fy
        out_h, out_w = h * fy + py0 + py1, w * fx + px0 + px1
        call = functools.partial(_upfirdn2d.upsample2d, torch.from_numpy(x), f, up=factor, **common)
    else:
        (cx0, cx1), (cy0, cy1) = naive.centring_padding_down(fw, fx), naive.centring_padding_down(fh, fy)
        up, down, total_gain = 1, factor, gain
        out_h, out_w = (h + py0 + py1) // fy, (w + px0 + px1) // fx
        call = functools.partial(_upfirdn2d.downsample2d, torch.from_numpy(x), f, down=factor, **common)
    padding_with_centring = [px0 + cx0, px1 + cx1, py0 + cy0, py1 + cy1]
    try:
        expected = naive.upfirdn2d_naive(x, taps, up=up, down=down, padding=padding_with_centring, flip_filter=flip,
                                         gain=total_gain)
    except naive.TooSmall:
        event("image smaller than the filter: ValueError")
        with pytest.raises(ValueError, match="smaller than the filter"):
            call()
        return
    assert expected.shape[2:] == (out_h, out_w)
    assert_matches(call(), expected)


@examples(60)
@given(which=st.sampled_from(["filter2d", "upsample2d", "downsample2d"]), f=filters(), factor=factors,
       padding=paddings(-2, 3), flip=st.booleans(), gain=st.sampled_from([1.0, 2.0]), h=st.integers(1, 6),
       w=st.integers(1, 6), seed=seeds)
def test_resampling_helpers_match_naive(which, f, factor, padding, flip, gain, h, w, seed):
    _check_resampling_helper(which, random_array(seed, (1, 2, h, w)), f, factor, padding, flip, gain)


@pytest.mark.parametrize("which", ["filter2d", "upsample2d", "downsample2d"])
def test_resampling_helpers_filter_placement(which):
    """Every mix of odd/even filter sizes and factors, so each centring rule is pinned whatever hypothesis draws."""
    x = random_array(14, (1, 2, 7, 6))
    rect = torch.tensor(random_array(15, (3, 4)), dtype=torch.float32)
    for f in ([1, 2, 1], [1, 3, 3, 1], [2, 1, 1, 3, 4], rect):
        f = f if isinstance(f, torch.Tensor) else _upfirdn2d.setup_filter(f, normalize=False)
        for factor in (1, 2, 3, [2, 3], [3, 2]):
            for flip in (False, True):
                _check_resampling_helper(which, x, f, factor, [1, 0, 0, 2], flip, 1.0)


@pytest.mark.parametrize("fx, fy", [(2, 2), (3, 3), (2, 3), (1, 3)])
def test_box_filter_resampling_is_nearest_and_average_pooling(fx, fy):
    """Anchors for the filter placement: a box filter upsamples by repetition and downsamples by averaging."""
    box = _upfirdn2d.setup_filter(torch.ones(fy, fx))
    x = torch.from_numpy(random_array(1, (2, 3, 4, 5)))
    nearest = x.repeat_interleave(fy, dim=2).repeat_interleave(fx, dim=3)
    # the box taps are float32 (1/9 is not exact), so agreement is to float32 precision
    assert_matches(_upfirdn2d.upsample2d(x, box, up=[fx, fy]), nearest.numpy(), rel=1e-6)
    x = torch.from_numpy(random_array(2, (2, 3, 6, 6)))
    pooled = torch.nn.functional.avg_pool2d(x, kernel_size=(fy, fx), stride=(fy, fx))
    assert_matches(_upfirdn2d.downsample2d(x, box, down=[fx, fy]), pooled.numpy(), rel=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_filter2d_impulse_response_is_the_centred_filter(flip):
    """An impulse convolved with an odd filter gives the filter around the impulse (mirrored if flip_filter)."""
    taps = torch.tensor(random_array(3, (3, 5)), dtype=torch.float32)
    x = torch.zeros(1, 1, 7, 9, dtype=torch.float64)
    x[0, 0, 3, 4] = 1
    y = _upfirdn2d.filter2d(x, taps, flip_filter=flip)[0, 0]
    expected = taps.double().flip([0, 1]) if flip else taps.double()
    assert_matches(y[2:5, 2:7], expected.numpy())
    assert y.abs().sum().item() == pytest.approx(taps.double().abs().sum().item())


UPFIRDN2D_GRAD_CASES = [
    dict(f=[1, 3, 3, 1], up=2, padding=[2, 1, 2, 1], gain=4),
    dict(f=[1, 3, 3, 1], down=2, padding=1),
    dict(f="separable5", up=[1, 3], down=[2, 1], padding=[-1, 3, 0, 3], flip_filter=True),
    dict(f="rect3x2", down=3, padding=[1, -1, 2, 0], gain=0.5),
    dict(f=None, up=2, padding=-1),
]


def _grad_case_filter(spec):
    if spec == "separable5":
        return _upfirdn2d.setup_filter(random_array(4, 5) + 2, separable=True)
    if spec == "rect3x2":
        return torch.tensor(random_array(5, (3, 2)), dtype=torch.float32)
    return None if spec is None else _upfirdn2d.setup_filter(spec)


@pytest.mark.parametrize("case", UPFIRDN2D_GRAD_CASES, ids=[f"case{i}" for i in range(len(UPFIRDN2D_GRAD_CASES))])
def test_upfirdn2d_ref_gradients(case):
    case = dict(case, f=_grad_case_filter(case["f"]))
    x = torch.from_numpy(random_array(6, (1, 2, 4, 3))).requires_grad_(True)
    op = functools.partial(_upfirdn2d.upfirdn2d_ref, **case)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


# ------------------------------------------------------------------------------------------------------
# bias_act


def test_activation_table_matches_stylegan2():
    assert set(_bias_act.activation_funcs) == set(naive.ACT_DEFAULTS)
    for act, (def_alpha, def_gain) in naive.ACT_DEFAULTS.items():
        spec = _bias_act.activation_funcs[act]
        assert (spec.def_alpha, spec.def_gain) == pytest.approx((def_alpha, def_gain), abs=1e-15), act
    second_order = {act for act, spec in _bias_act.activation_funcs.items() if spec.has_2nd_grad}
    assert second_order == {"tanh", "sigmoid", "elu", "selu", "softplus", "swish"}


@st.composite
def bias_act_cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    return dict(
        shape=shape,
        dim=draw(st.integers(-ndim, ndim - 1)),
        with_bias=draw(st.booleans()),
        act=draw(st.sampled_from(sorted(naive.ACT_DEFAULTS))),
        alpha=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
        gain=draw(st.one_of(st.none(), st.floats(0.0, 3.0))),
        clamp=draw(st.one_of(st.none(), st.floats(0.0, 3.0))),
        seed=draw(seeds),
    )


@examples(200)
@given(case=bias_act_cases())
def test_bias_act_ref_matches_naive(case):
    x = random_array(case["seed"], case["shape"], scale=3.0)
    b = random_array(case["seed"] + 1, case["shape"][case["dim"]]) if case["with_bias"] else None
    params = dict(dim=case["dim"], act=case["act"], alpha=case["alpha"], gain=case["gain"], clamp=case["clamp"])
    expected = naive.bias_act_naive(x, b, **params)
    tb = None if b is None else torch.from_numpy(b)
    got = _bias_act.bias_act_ref(torch.from_numpy(x), tb, **params)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    got32 = _bias_act.bias_act(torch.from_numpy(x).float(), None if b is None else tb.float(), impl=None, **params)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", sorted(naive.ACT_DEFAULTS))
def test_bias_act_ref_each_activation_on_a_grid(act):
    """Every activation over [-5, 5], bias along a middle or a negative dim, defaults or explicit parameters."""
    x = np.linspace(-5, 5, 30).reshape(2, 3, 5)
    for dim in (1, -1):
        b = random_array(16, x.shape[dim])
        for alpha, gain, clamp in [(None, None, None), (0.3, 0.7, None), (None, None, 1.5), (0.1, 2.5, 0.4)]:
            params = dict(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
            got = _bias_act.bias_act_ref(torch.from_numpy(x), torch.from_numpy(b), **params)
            np.testing.assert_allclose(got.numpy(), naive.bias_act_naive(x, b, **params), rtol=1e-12, atol=1e-12,
                                       err_msg=str(params))


def test_bias_act_clamp_zero_and_defaults():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(1, 13)
    assert _bias_act.bias_act_ref(x, act="lrelu", clamp=0).abs().max().item() == 0
    # defaults: lrelu is sqrt(2) * leaky_relu(x, 0.2); linear is the identity
    expected = math.sqrt(2) * torch.where(x >= 0, x, 0.2 * x)
    assert torch.allclose(_bias_act.bias_act_ref(x, act="lrelu"), expected, rtol=1e-14, atol=0)
    assert torch.equal(_bias_act.bias_act_ref(x), x)


def _away_from_kinks(x: torch.Tensor, b: torch.Tensor, act: str, clamp, margin: float = 0.02) -> torch.Tensor:
    """Shift entries of x until x + b is off 0 (where relu/lrelu/elu/selu bend) and the output is off +-clamp."""
    x = x.clone()
    for _ in range(100):
        v = x + b.reshape(1, -1, 1, 1)
        y = torch.from_numpy(naive.bias_act_naive(x.numpy(), b.numpy(), act=act))
        bad = v.abs() < margin
        if clamp is not None:
            bad |= (y.abs() - clamp).abs() < margin
        if not bad.any():
            return x
        x = torch.where(bad, x + 0.137, x)
    raise AssertionError("could not move the test input away from the kinks")


@pytest.mark.parametrize("clamp", [None, 0.6])
@pytest.mark.parametrize("act", sorted(naive.ACT_DEFAULTS))
def test_bias_act_ref_gradients(act, clamp):
    b = torch.from_numpy(random_array(7, 3))
    x = _away_from_kinks(torch.from_numpy(random_array(8, (2, 3, 2, 2), scale=2.0)), b, act, clamp)
    x.requires_grad_(True)
    b.requires_grad_(True)
    op = functools.partial(_bias_act.bias_act_ref, act=act, clamp=clamp)
    assert torch.autograd.gradcheck(op, (x, b))
    if _bias_act.activation_funcs[act].has_2nd_grad:
        assert torch.autograd.gradgradcheck(op, (x, b))


# ------------------------------------------------------------------------------------------------------
# conv2d_resample


@st.composite
def conv2d_resample_cases(draw):
    groups = draw(st.integers(1, 3))
    kernel = draw(st.sampled_from(["1x1", "square", "rect"]))
    if kernel == "1x1":
        kh = kw = 1
    elif kernel == "square":
        kh = kw = draw(st.integers(2, 3))
    else:
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    resampling = draw(st.sampled_from(["none", "up", "down", "both"]))
    up = draw(st.integers(2, 3)) if resampling in ("up", "both") else 1
    down = draw(st.integers(2, 3)) if resampling in ("down", "both") else 1
    return dict(
        n=draw(st.integers(1, 2)), c_in=groups * draw(st.integers(1, 2)), c_out=groups * draw(st.integers(1, 2)),
        h=draw(st.integers(2, 6)), w=draw(st.integers(2, 6)), kh=kh, kw=kw, seed=draw(seeds),
        args=dict(f=draw(filters(max_taps=4)), up=up, down=down,
                  padding=draw(paddings(-1, 3)), groups=groups, flip_weight=draw(st.booleans()),
                  flip_filter=draw(st.booleans())),
    )


def _without_f(args: dict) -> dict:
    return {k: v for k, v in args.items() if k != "f"}


def _conv_inputs(case):
    x = random_array(case["seed"], (case["n"], case["c_in"], case["h"], case["w"]))
    w = random_array(case["seed"] + 1, (case["c_out"], case["c_in"] // case["args"]["groups"], case["kh"], case["kw"]))
    return x, w


@examples(150)
@given(case=conv2d_resample_cases())
def test_conv2d_resample_matches_ref_and_naive(case):
    x, w = _conv_inputs(case)
    args = case["args"]
    try:
        expected = naive.conv2d_resample_naive(x, w, as_numpy_filter(args["f"]), **_without_f(args))
    except naive.TooSmall:
        event("image smaller than filter or kernel: skipped")
        return
    ref = _conv2d_resample.conv2d_resample_ref(torch.from_numpy(x), torch.from_numpy(w), **args)
    fast = _conv2d_resample.conv2d_resample(torch.from_numpy(x), torch.from_numpy(w), **args)
    kh, kw, up, down = case["kh"], case["kw"], args["up"], args["down"]
    kernel = "1x1" if kh == kw == 1 else "kxk"
    event(f"{kernel} kernel, {'up' if up > 1 else 'no up'}, {'down' if down > 1 else 'no down'}")
    assert_matches(ref, expected)
    assert_matches(fast, expected)
    assert_matches(fast, ref.numpy())


class _PathSpy:
    """Records the calls conv2d_resample makes, to tell which of its fast paths ran."""

    def __init__(self, monkeypatch):
        self.calls = []
        conv2d, upfirdn2d, ref = (_conv2d_resample._conv2d, _upfirdn2d.upfirdn2d, _conv2d_resample.conv2d_resample_ref)

        def spy_conv2d(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
            self.calls.append(("conv_transpose" if transpose else "conv") + (f"/{stride}" if stride > 1 else ""))
            return conv2d(x, w, stride=stride, padding=padding, groups=groups, transpose=transpose,
                          flip_weight=flip_weight)

        def spy_upfirdn2d(x, f, up=1, down=1, **kwargs):
            self.calls.append(f"upfirdn2d(up={up}, down={down})")
            return upfirdn2d(x, f, up=up, down=down, **kwargs)

        def spy_ref(*args, **kwargs):
            self.calls.append("ref")
            return ref(*args, **kwargs)

        monkeypatch.setattr(_conv2d_resample, "_conv2d", spy_conv2d)
        monkeypatch.setattr(_upfirdn2d, "upfirdn2d", spy_upfirdn2d)
        monkeypatch.setattr(_conv2d_resample, "conv2d_resample_ref", spy_ref)


FIR4 = [1, 3, 3, 1]   # StyleGAN2's filter
SKEW4 = [1, 2, 4, 1]  # a lopsided one, so that a flipped filter shows
#: One case per branch of conv2d_resample: (kernel kh x kw, groups, arguments, the calls that branch makes).
CONV_PATH_CASES = {
    "1x1 down: downsample, then conv": (
        (1, 1), 1, dict(f=SKEW4, down=2, padding=1), ["upfirdn2d(up=1, down=2)", "conv"]),
    "1x1 up: conv, then upsample": (
        (1, 1), 2, dict(f=FIR4, up=2, padding=[1, 0, 0, 2]), ["conv", "upfirdn2d(up=2, down=1)"]),
    "down: filter, then strided conv": (
        (3, 3), 2, dict(f=SKEW4, down=2, padding=[1, 2, 0, 1], flip_weight=False),
        ["upfirdn2d(up=1, down=1)", "conv/2"]),
    "down 3, odd filter": (
        (3, 2), 1, dict(f=[1, 2, 3], down=3, flip_filter=True), ["upfirdn2d(up=1, down=1)", "conv/3"]),
    "up: strided conv_transpose, then filter": (
        (3, 3), 1, dict(f=SKEW4, up=2, padding=1), ["conv_transpose/2", "upfirdn2d(up=1, down=1)"]),
    "up, grouped, asymmetric/negative padding": (
        (3, 2), 3, dict(f=[1, 2, 1], up=3, padding=[-1, 2, 1, -2], flip_weight=False),
        ["conv_transpose/3", "upfirdn2d(up=1, down=1)"]),
    "up and down: conv_transpose, filter, downsample": (
        (3, 3), 1, dict(f=SKEW4, up=2, down=2, padding=1, flip_filter=True),
        ["conv_transpose/2", "upfirdn2d(up=1, down=1)", "upfirdn2d(up=1, down=2)"]),
    "1x1 up and down": (
        (1, 1), 1, dict(f=FIR4, up=3, down=2),
        ["conv_transpose/3", "upfirdn2d(up=1, down=1)", "upfirdn2d(up=1, down=2)"]),
    "plain conv, symmetric padding": (
        (3, 3), 2, dict(padding=1, flip_weight=False), ["conv"]),
    "plain conv, 1x1": (
        (1, 1), 1, dict(padding=0), ["conv"]),
    "no resampling, asymmetric padding: literal": (
        (3, 3), 1, dict(padding=[1, 0, 2, 1]), ["ref", "upfirdn2d(up=1, down=1)", "conv"]),
    "no resampling, negative padding: literal": (
        (3, 2), 1, dict(padding=-1), ["ref", "upfirdn2d(up=1, down=1)", "conv"]),
}


@pytest.mark.parametrize("name", list(CONV_PATH_CASES))
def test_conv2d_resample_fast_paths(name, monkeypatch):
    """Every branch of conv2d_resample runs (checked by its calls) and equals the definition."""
    (kh, kw), groups, args, expected_calls = CONV_PATH_CASES[name]
    args = dict(args, groups=groups)
    if args.get("f") is not None:
        args["f"] = _upfirdn2d.setup_filter(args["f"])
    x = random_array(9, (2, 2 * groups, 7, 6))
    w = random_array(10, (3 * groups, 2, kh, kw))
    expected = naive.conv2d_resample_naive(x, w, as_numpy_filter(args.get("f")), **_without_f(args))
    ref = _conv2d_resample.conv2d_resample_ref(torch.from_numpy(x), torch.from_numpy(w), **args)
    spy = _PathSpy(monkeypatch)
    fast = _conv2d_resample.conv2d_resample(torch.from_numpy(x), torch.from_numpy(w), **args)
    assert spy.calls == expected_calls
    assert_matches(fast, expected)
    assert_matches(ref, expected)


@pytest.mark.parametrize("name", list(CONV_PATH_CASES))
def test_conv2d_resample_gradients(name):
    (kh, kw), groups, args, _ = CONV_PATH_CASES[name]
    args = dict(args, groups=groups)
    if args.get("f") is not None:
        args["f"] = _upfirdn2d.setup_filter(args["f"])
    x = torch.from_numpy(random_array(11, (1, groups, 5, 4))).requires_grad_(True)
    w = torch.from_numpy(random_array(12, (groups, 1, kh, kw))).requires_grad_(True)
    for op in (_conv2d_resample.conv2d_resample, _conv2d_resample.conv2d_resample_ref):
        assert torch.autograd.gradcheck(functools.partial(op, **args), (x, w))


# ------------------------------------------------------------------------------------------------------
# fma


@st.composite
def broadcast_triples(draw):
    """Three shapes that broadcast to a common shape: leading dims dropped, some dims set to 1."""
    out_shape = draw(st.lists(st.integers(1, 3), min_size=0, max_size=4))
    shapes = []
    for _ in range(3):
        drop = draw(st.integers(0, len(out_shape)))
        shapes.append(tuple(1 if draw(st.booleans()) else size for size in out_shape[drop:]))
    return shapes


@examples(100)
@given(shapes=broadcast_triples(), seed=seeds)
def test_fma_matches_naive_broadcasting_and_gradients(shapes, seed):
    a, b, c = (random_array(seed + i, shape) for i, shape in enumerate(shapes))
    expected = naive.fma_naive(a, b, c)
    ta, tb, tc = (torch.tensor(v, requires_grad=True) for v in (a, b, c))
    out = _fma.fma(ta, tb, tc)
    assert_matches(out, expected)
    assert_matches(_fma.fma_ref(ta, tb, tc), expected)
    grad_out = random_array(seed + 3, expected.shape)
    grads = torch.autograd.grad(out, (ta, tb, tc), torch.from_numpy(grad_out))
    for got, want, shape in zip(grads, naive.fma_grads_naive(a, b, c, grad_out), shapes):
        assert tuple(got.shape) == shape
        assert_matches(got, want)


@pytest.mark.parametrize("shapes", [
    [(2, 3, 4, 4), (2, 3, 1, 1), (2, 1, 4, 4)],  # modulated conv: demodulation and noise
    [(3, 4), (4,), ()],
    [(), (2, 1, 3), (1, 3)],
    [(1, 3), (2, 1), (2, 3)],
])
def test_fma_gradients(shapes):
    inputs = tuple(torch.from_numpy(random_array(13 + i, s)).requires_grad_(True) for i, s in enumerate(shapes))
    assert torch.autograd.gradcheck(_fma.fma, inputs)
    assert torch.autograd.gradgradcheck(_fma.fma, inputs)


def test_fma_gradients_of_channels_last_tensors():
    """The per-channel reductions of the backward pass have a contiguous fast path; channels-last takes the other."""
    shapes = [(2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5)]
    inputs = [torch.from_numpy(random_array(21 + i, s)) for i, s in enumerate(shapes)]
    grad_out = torch.from_numpy(random_array(24, shapes[0]))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        a, b, c = (t.contiguous(memory_format=layout).requires_grad_(True) for t in inputs)
        results.append(torch.autograd.grad(_fma.fma(a, b, c), (a, b, c), grad_out.contiguous(memory_format=layout)))
    for got, want, shape in zip(results[1], results[0], shapes):
        assert tuple(got.shape) == shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------
# Input validation: one clear ValueError per mistake


def _x(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


FIR = _upfirdn2d.setup_filter([1, 3, 3, 1])
IMG = _x(1, 1, 4, 4)       # one 4x4 image
W3 = _x(1, 1, 3, 3)        # one 3x3 kernel
bias_act, bias_act_ref = _bias_act.bias_act, _bias_act.bias_act_ref
setup_filter, upfirdn2d = _upfirdn2d.setup_filter, _upfirdn2d.upfirdn2d
conv, conv_ref = _conv2d_resample.conv2d_resample, _conv2d_resample.conv2d_resample_ref

INVALID_CALLS = {  # mistake: (the call, a regex its message must match)
    "unknown activation": (lambda: bias_act_ref(_x(1, 2), act="gelu"), "unknown activation 'gelu'"),
    "bias of the wrong length": (lambda: bias_act(_x(1, 2, 3), _x(3)), r"bias must have shape \[2\]"),
    "2D bias": (lambda: bias_act_ref(_x(1, 2), _x(1, 2)), r"bias must have shape \[2\]"),
    "bias of another dtype": (lambda: bias_act(_x(1, 2), _x(2, dtype=torch.float64)), "dtype and device"),
    "bias dim out of range": (lambda: bias_act(_x(1, 2), _x(2), dim=2), r"dim must be an integer in \[-2, 2\)"),
    "negative clamp": (lambda: bias_act_ref(_x(1, 2), clamp=-0.5), "clamp must be non-negative"),
    "unknown impl": (lambda: bias_act(_x(1, 2), impl="triton"), "impl must be None, 'ref' or 'cuda'"),
    "3D filter": (lambda: setup_filter(np.ones((2, 2, 2))), "non-empty scalar, 1D or 2D"),
    "empty filter": (lambda: setup_filter([]), "non-empty scalar, 1D or 2D"),
    "separable 2D filter": (lambda: setup_filter(np.ones((2, 2)), separable=True), "cannot be made separable"),
    "zero-sum filter": (lambda: setup_filter([1, -1]), "sum to 0; pass normalize=False"),
    "3D image": (lambda: upfirdn2d(_x(2, 4, 4), FIR), r"4D tensor \[N, C, H, W\]"),
    "3D image (ref)": (lambda: _upfirdn2d.upfirdn2d_ref(_x(2, 4, 4), FIR), r"4D tensor \[N, C, H, W\]"),
    "float64 filter": (lambda: upfirdn2d(IMG, FIR.double()), "float32 tensor"),
    "filter with grad": (lambda: upfirdn2d(IMG, FIR.clone().requires_grad_(True)), "gradients with respect to the f"),
    "zero up factor": (lambda: upfirdn2d(IMG, FIR, up=0), "scaling factors must be >= 1"),
    "three down factors": (lambda: upfirdn2d(IMG, FIR, down=[1, 2, 3]), "int or a pair of ints"),
    "three padding entries": (lambda: upfirdn2d(IMG, FIR, padding=[1, 2, 3]), "1, 2 or 4 entries"),
    "fractional padding": (lambda: upfirdn2d(IMG, FIR, padding=0.5), "int or a list of ints"),
    "image smaller than filter": (lambda: upfirdn2d(IMG, FIR, padding=-1), "smaller than the filter"),
    "3D filter for filter2d": (lambda: _upfirdn2d.filter2d(IMG, _x(2, 2, 2)), r"1D \(separable\) or 2D"),
    "conv: 3D image": (lambda: conv(_x(1, 4, 4), W3), r"x must be a 4D"),
    "conv: weight dtype": (lambda: conv(IMG, W3.double()), "of x's dtype"),
    "conv: float64 filter": (lambda: conv(IMG, W3, f=FIR.double(), up=2), "float32 filter"),
    "conv: zero up": (lambda: conv(IMG, W3, up=0), "up must be an integer >= 1"),
    "conv: fractional down": (lambda: conv(IMG, W3, down=1.5), "down must be an integer >= 1"),
    "conv: zero groups": (lambda: conv_ref(IMG, W3, groups=0), "groups must be an integer >= 1"),
    "conv: channel mismatch": (lambda: conv(_x(1, 4, 4, 4), _x(4, 3, 3, 3)), "does not fit x with 4 channels"),
    "conv: out channels not divisible by groups": (lambda: conv(_x(1, 4, 5, 5), _x(3, 2, 3, 3), groups=2, up=2),
                                                   "divisible by groups"),
    "conv: bad padding": (lambda: conv(IMG, W3, padding=[1, 2, 3]), "1, 2 or 4 entries"),
}


@pytest.mark.parametrize("name", list(INVALID_CALLS))
def test_invalid_input_raises_clear_value_error(name):
    call, message = INVALID_CALLS[name]
    with pytest.raises(ValueError, match=message) as excinfo:
        call()
    assert "\n" not in str(excinfo.value)
