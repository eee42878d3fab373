"""The CUDA kernels behind bias_act and upfirdn2d, and the glue that builds, checks and falls back.

Three groups:

* build: both extensions compile with nvcc and load, on any machine with a CUDA toolkit (no GPU needed);
  the bindings reject CPU tensors with a clear message.  The first run compiles (about a minute per
  extension on 2 cores, one architecture); later runs reuse the build cached under .pytest_cache.
* glue (CPU): implementation choice, STYLEGAN_OPS_IMPL, and the fall-back to the reference with exactly one
  warning when a build or self-check fails, driven through a monkeypatched ``build_plugin``.
* GPU: kernels against the reference implementations for many shapes, parameters, dtypes and memory
  layouts, gradcheck / gradgradcheck in float64, the self-checks, and the whole generator.  Skipped
  without a GPU.
"""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch

from stylegan_ops import bias_act as bias_act_module
from stylegan_ops import plugin
from stylegan_ops import upfirdn2d as upfirdn2d_module
from stylegan_ops.bias_act import activation_funcs, bias_act, bias_act_ref
from stylegan_ops.upfirdn2d import setup_filter, upfirdn2d, upfirdn2d_ref

has_gpu = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not has_gpu, reason="needs a CUDA GPU; none is visible on this machine")

#: One architecture keeps the build test's compile time down; the kernels are the same for every one.
BUILD_TEST_ARCH = "8.0"


# ---------------------------------------------------------------------------------------------- build


@pytest.fixture(scope="module")
def build_env(request, tmp_path_factory) -> dict[str, str]:
    """Environment for building the extensions for one architecture into a directory kept in the pytest cache."""
    if torch.version.cuda is None:
        pytest.skip(f"this PyTorch build has no CUDA support ({torch.__version__})")
    cuda_home = plugin.find_cuda_home()
    if cuda_home is None:
        pytest.skip("no CUDA toolkit (nvcc) found; set CUDA_HOME to run the build test")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: build afresh
    build_root = cache.mkdir("stylegan_ops_build") if cache is not None else tmp_path_factory.mktemp("build")
    return {"TORCH_CUDA_ARCH_LIST": BUILD_TEST_ARCH, plugin.ENV_BUILD_DIR: str(build_root), "CUDA_HOME": cuda_home}


@pytest.fixture(scope="module")
def built_extensions(build_env) -> dict[str, types.ModuleType]:
    """Both extensions, compiled and loaded."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in build_env.items():
            mp.setenv(key, value)
        return {name: plugin.build_plugin(name) for name in plugin.PLUGIN_SOURCES}


@pytest.mark.slow
def test_extensions_compile_and_load(built_extensions):
    assert callable(built_extensions["bias_act"].bias_act)
    assert callable(built_extensions["upfirdn2d"].upfirdn2d)


def test_doctor_build_ops_builds_both_and_exits_0(build_env, built_extensions, monkeypatch, capsys):
    from timemachine.cli import main

    for key, value in build_env.items():
        monkeypatch.setenv(key, value)
    assert main(["doctor", "--build-ops"]) == 0
    lines = {line.split()[2]: line for line in capsys.readouterr().out.splitlines() if line.startswith("cuda op ")}
    assert set(lines) == set(plugin.PLUGIN_SOURCES)
    assert all("built and loaded" in line or "verified on GPU" in line for line in lines.values()), lines


def test_doctor_build_ops_exits_1_when_a_build_fails(monkeypatch, capsys):
    from timemachine.cli import main

    def failing_build(name, verbose=False):
        raise plugin.PluginError(f"{name}: build failed: nvcc fatal: unsupported gpu architecture")

    monkeypatch.setattr(plugin, "build_plugin", failing_build)
    assert main(["doctor", "--build-ops"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED: ") == len(plugin.PLUGIN_SOURCES) and "unsupported gpu architecture" in out


def test_bindings_reject_cpu_tensors(built_extensions):
    """Called with CPU tensors, the bindings stop at their first check (which needs no GPU) with a clear message."""
    x = torch.zeros([2, 3, 4, 4])
    empty = torch.empty([0])
    with pytest.raises(RuntimeError, match="bias_act: x must be a CUDA tensor"):
        built_extensions["bias_act"].bias_act(x, empty, empty, empty, empty, 0, 1, 3, 0.2, math.sqrt(2), -1.0)
    with pytest.raises(RuntimeError, match="upfirdn2d: x must be a CUDA tensor"):
        built_extensions["upfirdn2d"].upfirdn2d(x, torch.ones([4, 4]), 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)
    with pytest.raises(TypeError):  # the Python side and the binding agree on the argument list
        built_extensions["upfirdn2d"].upfirdn2d(x, torch.ones([4, 4]), 2, 2, 1, 1, 2, 1, 2, False, 4.0)


def test_build_plugin_errors(monkeypatch, tmp_path):
    with pytest.raises(plugin.PluginError, match="unknown extension"):
        plugin.build_plugin("no_such_op")
    if torch.version.cuda is None:
        pytest.skip("this PyTorch build has no CUDA support")
    monkeypatch.setattr(plugin, "find_cuda_home", lambda: None)
    with pytest.raises(plugin.PluginError, match="no CUDA toolkit found"):
        plugin.build_plugin("bias_act")
    monkeypatch.undo()
    if plugin.find_cuda_home() is None:
        return
    monkeypatch.setattr(plugin, "CSRC_DIR", str(tmp_path))
    with pytest.raises(plugin.PluginError, match="source file missing"):
        plugin.build_plugin("upfirdn2d")


# ---------------------------------------------------------------------------------------------- glue (CPU)


def _pretend_cuda_tensor() -> types.SimpleNamespace:
    """Enough of a CUDA tensor for choose_impl, which looks only at the device."""
    return types.SimpleNamespace(device=torch.device("cuda", 0))


def test_choose_impl(monkeypatch):
    monkeypatch.delenv(plugin.ENV_IMPL, raising=False)
    cuda_x, cpu_x = _pretend_cuda_tensor(), torch.zeros([1])
    assert plugin.choose_impl(None, cuda_x) == "cuda"
    assert plugin.choose_impl("cuda", cuda_x) == "cuda"
    assert plugin.choose_impl("ref", cuda_x) == "ref"
    assert plugin.choose_impl(None, cpu_x) == "ref"
    assert plugin.choose_impl("cuda", cpu_x) == "ref"  # no CPU kernel: the reference runs
    with pytest.raises(ValueError, match="impl must be"):
        plugin.choose_impl("triton", cuda_x)


def test_env_forces_reference(monkeypatch):
    cuda_x = _pretend_cuda_tensor()
    monkeypatch.setenv(plugin.ENV_IMPL, "ref")
    assert plugin.choose_impl(None, cuda_x) == "ref"
    assert plugin.choose_impl("cuda", cuda_x) == "ref"
    monkeypatch.setenv(plugin.ENV_IMPL, " REF ")
    assert plugin.choose_impl(None, cuda_x) == "ref"
    monkeypatch.setenv(plugin.ENV_IMPL, "auto")
    assert plugin.choose_impl(None, cuda_x) == "cuda"
    monkeypatch.setenv(plugin.ENV_IMPL, "gpu")
    with pytest.raises(ValueError, match="STYLEGAN_OPS_IMPL must be 'auto' or 'ref', got 'gpu'"):
        plugin.choose_impl(None, cuda_x)


@pytest.fixture
def fresh_plugin_state(monkeypatch):
    """Forget extensions loaded (or given up on) so far, for this test only."""
    monkeypatch.setattr(plugin, "_loaded", {})
    monkeypatch.setattr(plugin, "_status", {})


def _failing_build(name, verbose=False):
    raise plugin.PluginError(f"{name}: build failed: nvcc exploded")


def _runtime_warnings(records) -> list[str]:
    return [str(r.message) for r in records if issubclass(r.category, RuntimeWarning)]


def test_get_plugin_falls_back_once_when_the_build_fails(monkeypatch, fresh_plugin_state):
    monkeypatch.setattr(plugin, "build_plugin", _failing_build)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert plugin.get_plugin("bias_act") is None
        assert plugin.get_plugin("bias_act") is None
    messages = _runtime_warnings(records)
    assert len(messages) == 1
    assert "falling back to the reference implementation of bias_act" in messages[0]
    assert "nvcc exploded" in messages[0]
    assert "nvcc exploded" in plugin.plugin_status()["bias_act"]
    assert plugin.plugin_status()["upfirdn2d"] == "not used yet"


def test_get_plugin_falls_back_when_the_self_check_fails(monkeypatch, fresh_plugin_state):
    fake_extension = types.ModuleType("fake_extension")
    monkeypatch.setattr(plugin, "build_plugin", lambda name, verbose=False: fake_extension)

    def wrong_kernel():
        raise AssertionError("act=tanh clamp=None: output differs by 0.5")

    monkeypatch.setattr(upfirdn2d_module, "self_check", wrong_kernel)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert plugin.get_plugin("upfirdn2d") is None
        assert plugin.get_plugin("upfirdn2d") is None
    messages = _runtime_warnings(records)
    assert len(messages) == 1 and "self-check against the reference failed" in messages[0]
    assert "output differs by 0.5" in plugin.plugin_status()["upfirdn2d"]


def test_get_plugin_returns_a_verified_extension(monkeypatch, fresh_plugin_state):
    fake_extension = types.ModuleType("fake_extension")
    checks = []
    monkeypatch.setattr(plugin, "build_plugin", lambda name, verbose=False: fake_extension)
    monkeypatch.setattr(bias_act_module, "self_check", lambda: checks.append("ran"))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert plugin.get_plugin("bias_act") is fake_extension
        assert plugin.get_plugin("bias_act") is fake_extension
    assert _runtime_warnings(records) == []
    assert checks == ["ran"]  # checked once, on first use
    assert plugin.plugin_status()["bias_act"] == "verified"


def test_ops_fall_back_to_reference_with_one_warning(monkeypatch, fresh_plugin_state):
    """The ops themselves: 'cuda' chosen, the build fails, the reference result comes back, one warning each."""
    monkeypatch.setattr(plugin, "build_plugin", _failing_build)
    monkeypatch.setattr(plugin, "choose_impl", lambda impl, x: "cuda")
    x = torch.randn([2, 4, 8, 8])
    b = torch.randn([4])
    f = setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        for _ in range(3):
            y = bias_act(x, b, act="lrelu", clamp=0.5)
            assert torch.equal(y, bias_act_ref(x, b, act="lrelu", clamp=0.5))
            z = upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4)
            assert torch.equal(z, upfirdn2d_ref(x, f, up=2, padding=[2, 1, 2, 1], gain=4))
    messages = _runtime_warnings(records)
    assert len(messages) == 2
    assert any("of bias_act" in m for m in messages) and any("of upfirdn2d" in m for m in messages)


def test_bias_act_dim_may_be_negative():
    x = torch.randn([3, 4, 5])
    b = torch.randn([5])
    assert torch.equal(bias_act(x, b, dim=-1, act="relu"), bias_act(x, b, dim=2, act="relu"))
    with pytest.raises(ValueError, match=r"dim must be an integer in \[-3, 3\)"):
        bias_act(x, b, dim=3)


def test_upfirdn2d_rejects_bad_filters():
    x = torch.randn([1, 2, 8, 8])
    with pytest.raises(ValueError, match="float32"):
        upfirdn2d(x, torch.ones([4, 4], dtype=torch.float64))
    with pytest.raises(ValueError, match="gradients with respect to the filter"):
        upfirdn2d(x, torch.ones([4, 4], requires_grad=True))
    with pytest.raises(ValueError, match="must not be empty"):
        upfirdn2d(x, torch.ones([0, 4]))


# ---------------------------------------------------------------------------------------------- GPU


@pytest.fixture(scope="module")
def extensions() -> dict[str, types.ModuleType]:
    """The verified extensions: built for this GPU, self-checked.  A fall-back to the reference fails here,
    so that no GPU test can pass by quietly testing the reference against itself."""
    if not has_gpu:
        pytest.skip("needs a CUDA GPU; none is visible on this machine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fall-back warning becomes an error
        modules = {name: plugin.get_plugin(name) for name in plugin.PLUGIN_SOURCES}
    for name, module in modules.items():
        assert module is not None, f"{name}: {plugin.plugin_status()[name]}"
    return modules


def _tolerance(dtype: torch.dtype) -> float:
    """Allowed error relative to max |reference| for kernels computing in float/double from dtype's inputs."""
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]


def _assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str,
                  mask: torch.Tensor | None = None):
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got, ref = got.double(), ref.double()
    if mask is not None:
        got, ref = got[mask], ref[mask]
    if ref.numel() == 0:
        return
    scale = max(ref.abs().max().item(), 1.0)
    err = (got - ref).abs().max().item()
    assert err <= _tolerance(dtype) * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


# (shape, dim, bias?, channels_last?) - 4D activations, FC layers [N, C], other dims, no bias, size-1 dims,
# one tensor large enough for the grid-stride loop to go round more than once.
BIAS_ACT_LAYOUTS = [
    ([3, 10, 5, 7], 1, True, False),
    ([3, 10, 5, 7], 1, True, True),
    ([6, 33], 1, True, False),
    ([4, 5, 6], 2, True, False),
    ([4, 5, 6], 0, True, False),
    ([2, 3, 4, 5], 1, False, False),
    ([4, 8, 1], 1, True, False),
    ([5, 16, 1, 1], 1, True, False),
    ([0, 4, 3, 3], 1, True, False),
    ([2, 256, 40, 40], 1, True, True),
]


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", list(activation_funcs))
def test_bias_act_kernel_matches_reference(extensions, act, dtype):
    gen = torch.Generator(device="cuda").manual_seed(1)
    for shape, dim, with_bias, channels_last in BIAS_ACT_LAYOUTS:
        for alpha, gain, clamp in [(None, None, None), (None, None, 0.7), (0.3, 1.7, None), (None, 0.5, 2.0)]:
            x = (torch.randn(shape, device="cuda", generator=gen) * 2).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            b = torch.randn([shape[dim]], device="cuda", generator=gen).to(dtype) if with_bias else None
            dy = torch.randn(shape, device="cuda", generator=gen).to(dtype)
            # The reference runs in float64 on the same inputs: the kernel computes in float (double) and rounds once.
            xr = x.double().requires_grad_(True)
            br = b.double().requires_grad_(True) if b is not None else None
            y_ref = bias_act_ref(xr, br, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
            grads_ref = torch.autograd.grad(y_ref, [xr] + ([br] if b is not None else []), dy.double(),
                                            allow_unused=True)
            xc = x.clone().requires_grad_(True)
            bc = b.clone().requires_grad_(True) if b is not None else None
            y = bias_act(xc, bc, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="cuda")
            assert y.dtype == dtype and y.shape == x.shape
            if channels_last and act != "linear":
                assert y.is_contiguous(memory_format=torch.channels_last)
            grads = torch.autograd.grad(y, [xc] + ([bc] if b is not None else []), dy, allow_unused=True)
            case = f"{act} {dtype} shape={shape} dim={dim} cl={channels_last} alpha={alpha} gain={gain} clamp={clamp}"
            _assert_close(y, y_ref, dtype, f"output, {case}")
            # Gradients: where the output lies within rounding of the clamp bound, whether it counts as clamped
            # depends on the rounding; those elements are left out.
            near_bound = torch.zeros_like(y_ref, dtype=torch.bool)
            if clamp is not None and dtype != torch.float64:
                near_bound = ((y_ref.detach().abs() - clamp).abs() <= 2 * _tolerance(dtype) * max(clamp, 1.0))
            _assert_close(grads[0], grads_ref[0], dtype, f"grad x, {case}", mask=~near_bound)
            if b is not None and x.numel() > 0 and not near_bound.any():
                # db sums dx over all but one dimension: allow the errors of the summed terms.
                other_dims = [d for d in range(x.ndim) if d != dim]
                l1 = grads_ref[0].abs().sum(other_dims).max().item()
                err = (grads[1].double() - grads_ref[1]).abs().max().item()
                assert err <= 4 * _tolerance(dtype) * max(l1, 1.0), f"grad b, {case}: max error {err:.3g}"


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("act", list(activation_funcs))
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_bias_act_gradcheck(extensions, act, clamp):
    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn([2, 3, 4, 5], device="cuda", dtype=torch.float64, generator=gen).requires_grad_(True)
    b = torch.randn([3], device="cuda", dtype=torch.float64, generator=gen).requires_grad_(True)
    x2 = torch.randn([3, 6], device="cuda", dtype=torch.float64, generator=gen).requires_grad_(True)
    b2 = torch.randn([3], device="cuda", dtype=torch.float64, generator=gen).requires_grad_(True)

    def op(x, b):
        return bias_act(x, b, act=act, clamp=clamp, impl="cuda")

    def op_dim0(x, b):
        return bias_act(x, b, dim=0, act=act, alpha=0.3, gain=1.3, clamp=clamp, impl="cuda")

    for fn, inputs in [(op, (x, b)), (op_dim0, (x2, b2))]:
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
        # Second order: exact for activations with a second derivative, zero (piecewise linear) for the others.
        assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@requires_gpu
@pytest.mark.gpu
def test_bias_act_second_order_matches_reference(extensions):
    """Second derivatives (as the path-length regulariser and the projector's noise terms need) agree with
    the reference's autograd for every activation that has them."""
    for act, spec in activation_funcs.items():
        if not spec.has_2nd_grad:
            continue
        results = []
        for impl in ("ref", "cuda"):
            x = torch.randn([4, 8, 3, 3], device="cuda", generator=torch.Generator(device="cuda").manual_seed(4))
            b = torch.randn([8], device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
            x.requires_grad_(True)
            b.requires_grad_(True)
            y = bias_act(x, b, act=act, impl=impl)
            (gx,) = torch.autograd.grad((y * y.detach().flip(0)).sum(), [x], create_graph=True)
            ggx, ggb = torch.autograd.grad((gx ** 2).sum(), [x, b])
            results.append((gx, ggx, ggb))
        for what, ref, got in zip(("grad", "grad-grad x", "grad-grad b"), *results):
            _assert_close(got, ref, torch.float32, f"{act}: {what}")


@requires_gpu
@pytest.mark.gpu
def test_bias_act_kernel_rejects_bad_input(extensions):
    ext = extensions["bias_act"]
    x = torch.randn([2, 3, 4], device="cuda")
    empty = torch.empty([0], device="cuda")
    with pytest.raises(RuntimeError, match="b must have shape"):
        ext.bias_act(x, torch.zeros([4], device="cuda"), empty, empty, empty, 0, 1, 1, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="b must have x's dtype"):
        ext.bias_act(x, torch.zeros([3], device="cuda", dtype=torch.float64), empty, empty, empty, 0, 1, 1, 0.0,
                     1.0, -1.0)
    with pytest.raises(RuntimeError, match="x must be dense"):
        ext.bias_act(x[:, :, ::2], empty, empty, empty, empty, 0, 1, 1, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="needs yref"):
        ext.bias_act(x, empty, empty, empty, empty, 1, 1, 4, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="memory layout"):
        ext.bias_act(x, empty, empty, x.transpose(1, 2).contiguous().transpose(1, 2), empty, 1, 1, 4, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="act must be"):
        ext.bias_act(x, empty, empty, empty, empty, 0, 1, 10, 0.0, 1.0, -1.0)


def _filter(kind, gen) -> torch.Tensor | None:
    """Filters of the test cases: StyleGAN2's [1,3,3,1], random 2D ones of odd shapes, separable ones."""
    if kind is None:
        return None
    if kind == "sg2":
        return setup_filter([1, 3, 3, 1], device=torch.device("cuda"))
    if kind[0] == "sep":  # [taps], applied along x then y
        return setup_filter(torch.rand([kind[1]], generator=gen) + 0.1, separable=True, device=torch.device("cuda"))
    return torch.randn(list(kind), generator=gen).cuda()  # [fh, fw]


# (N, C, H, W), filter, up, down, padding, flip_filter, gain
UPFIRDN2D_CASES = [
    ((2, 3, 32, 32), "sg2", 2, 1, [2, 1, 2, 1], False, 4.0),       # upsample2d, tiled
    ((2, 3, 7, 5), "sg2", 2, 1, [2, 1, 2, 1], False, 4.0),         # upsample2d, small: general
    ((2, 3, 40, 37), "sg2", 1, 2, [1, 1, 1, 1], False, 1.0),       # downsample2d, tiled
    ((2, 3, 64, 64), "sg2", 1, 2, [2, 2, 2, 2], True, 1.0),        # gradient of upsample2d
    ((2, 3, 35, 33), "sg2", 1, 1, [1, 2, 2, 1], False, 1.0),       # filter2d, tiled
    ((1, 4, 17, 70), "sg2", 1, 1, [0, 0, -1, 3], True, 4.0),       # crop and pad
    ((2, 2, 20, 19), (3, 2), 1, 1, [1, 1, 0, 2], False, 1.0),      # small 2D filter, tiled
    ((2, 2, 20, 19), (1, 1), 2, 1, [0, -1, 1, 0], False, 2.0),     # 1x1 filter, up 2, tiled
    ((2, 2, 23, 31), (4, 3), 1, 2, [3, 0, 1, 2], True, 1.0),       # asymmetric filter, down 2, tiled
    ((2, 3, 11, 9), (5, 7), 1, 1, [2, 3, 4, 1], False, 1.0),       # larger filter: general
    ((2, 3, 11, 9), ("sep", 9), [2, 1], [1, 3], [3, 4, -1, 2], True, 1.0),  # separable, mixed factors
    ((1, 2, 12, 10), ("sep", 12), 2, 2, [5, 6, 5, 6], False, 4.0), # separable, up and down
    ((2, 3, 9, 8), None, 3, 1, -1, False, 1.0),                    # no filter, up 3, crop
    ((2, 3, 9, 8), (3, 3), [4, 3], [3, 2], [5, -2, 0, 7], False, 0.5),  # odd factors
    ((1, 1, 1, 1), (2, 2), 1, 1, [1, 1, 1, 1], False, 1.0),        # one pixel
    ((3, 5, 33, 40), (4, 4), 2, 2, [1, 2, 3, 4], False, 1.0),      # up and down together: general
]


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(UPFIRDN2D_CASES)))
def test_upfirdn2d_kernel_matches_reference(extensions, case, dtype):
    """Forward and gradient through the public function, and each kernel (auto, general, tiled) directly."""
    shape, fkind, up, down, padding, flip, gain = UPFIRDN2D_CASES[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn(shape, generator=gen).cuda().to(dtype)
    f = _filter(fkind, gen)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)

    xr = x.double().requires_grad_(True)
    y_ref = upfirdn2d_ref(xr, f, **kwargs)
    dy = torch.randn(y_ref.shape, generator=gen).cuda().to(dtype)
    (dx_ref,) = torch.autograd.grad(y_ref, [xr], dy.double())

    xc = x.clone().requires_grad_(True)
    y = upfirdn2d(xc, f, impl="cuda", **kwargs)
    assert y.dtype == dtype
    (dx,) = torch.autograd.grad(y, [xc], dy)
    _assert_close(y, y_ref, dtype, f"case {case}: output")
    _assert_close(dx, dx_ref, dtype, f"case {case}: grad x")

    if f is not None and f.ndim == 2:  # the kernels one by one
        ext = extensions["upfirdn2d"]
        upx, upy = upfirdn2d_module._parse_scaling(up)
        downx, downy = upfirdn2d_module._parse_scaling(down)
        px0, px1, py0, py1 = upfirdn2d_module._parse_padding(padding)
        args = (x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain)
        tiled_fits = upx == upy and downx == downy and (upx, downx) in ((1, 1), (2, 1), (1, 2)) and max(f.shape) <= 4
        for kernel in (-1, 0, 1):
            if kernel == 1 and not tiled_fits:
                with pytest.raises(RuntimeError, match="no tiled kernel fits"):
                    ext.upfirdn2d(*args, kernel=1)
                continue
            _assert_close(ext.upfirdn2d(*args, kernel=kernel), y_ref, dtype, f"case {case}: kernel {kernel}")


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kernel", [0, 1])
def test_upfirdn2d_layouts(extensions, kernel):
    """channels_last in -> channels_last out; other strides (slices, transposes, expanded) read correctly."""
    ext = extensions["upfirdn2d"]
    f = setup_filter([1, 3, 3, 1], device=torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(6)
    base = torch.randn([2, 8, 36, 34], device="cuda", generator=gen)
    inputs = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "slice": base[:, 1:7, 2:34:2, :],
        "transposed": base.transpose(2, 3),
        "expanded": base[:1, :1].expand(2, 8, 36, 34),
    }
    for params in [(2, 2, 1, 1, 2, 1, 2, 1), (1, 1, 2, 2, 1, 1, 1, 1), (1, 1, 1, 1, 1, 2, 1, 2)]:
        for name, x in inputs.items():
            upx, upy, downx, downy, px0, px1, py0, py1 = params
            y = ext.upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, False, 1.0, kernel=kernel)
            y_ref = upfirdn2d_ref(x.contiguous(), f, up=[upx, upy], down=[downx, downy], padding=[px0, px1, py0, py1])
            _assert_close(y, y_ref, torch.float32, f"{name} {params} kernel {kernel}")
            if name == "channels_last":
                assert y.is_contiguous(memory_format=torch.channels_last)
            else:
                assert y.is_contiguous()
    # and through the public function with gradients, channels_last all the way
    x = inputs["channels_last"].clone().requires_grad_(True)
    y = upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4, impl="cuda")
    y.square().sum().backward()
    xr = inputs["channels_last"].contiguous().requires_grad_(True)
    upfirdn2d_ref(xr, f, up=2, padding=[2, 1, 2, 1], gain=4).square().sum().backward()
    _assert_close(x.grad, xr.grad, torch.float32, "channels_last grad")


@requires_gpu
@pytest.mark.gpu
def test_upfirdn2d_many_planes_and_large_images(extensions):
    """More planes than a grid's z dimension takes (the tile kernel loops over planes), and more pixels than
    one pass of the general kernel's grid covers."""
    ext = extensions["upfirdn2d"]
    f = setup_filter([1, 3, 3, 1], device=torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn([1, 66000, 16, 16], device="cuda", generator=gen)
    for kernel in (0, 1):
        y = ext.upfirdn2d(x, f, 1, 1, 1, 1, 1, 2, 1, 2, False, 1.0, kernel=kernel)
        _assert_close(y, upfirdn2d_ref(x, f, padding=[1, 2, 1, 2]), torch.float32, f"66000 planes, kernel {kernel}")
    del x, y
    x = torch.randn([4, 32, 128, 128], device="cuda", generator=gen)
    for kernel in (0, 1):
        y = ext.upfirdn2d(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0, kernel=kernel)
        _assert_close(y, upfirdn2d_ref(x, f, up=2, padding=[2, 1, 2, 1], gain=4), torch.float32,
                      f"large image, kernel {kernel}")


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", [0, 2, 4, 8, 10, 13])
def test_upfirdn2d_gradcheck(extensions, case):
    shape, fkind, up, down, padding, flip, gain = UPFIRDN2D_CASES[case]
    gen = torch.Generator().manual_seed(100 + case)
    small_shape = [1, 2] + [min(s, 9) for s in shape[2:]]
    x = torch.randn(small_shape, generator=gen, dtype=torch.float64).cuda().requires_grad_(True)
    f = _filter(fkind, gen)

    def op(x):
        return upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="cuda")

    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(op, (x,), eps=1e-6, atol=1e-6)


@requires_gpu
@pytest.mark.gpu
def test_upfirdn2d_kernel_rejects_bad_input(extensions):
    ext = extensions["upfirdn2d"]
    x = torch.randn([1, 2, 8, 8], device="cuda")
    f = torch.ones([4, 4], device="cuda")
    with pytest.raises(RuntimeError, match="f must be float32"):
        ext.upfirdn2d(x, f.double(), 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match="f must be on x's device"):
        ext.upfirdn2d(x, f.cpu(), 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match="smaller than the filter"):
        ext.upfirdn2d(x, f, 1, 1, 1, 1, -3, -3, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match="must be >= 1"):
        ext.upfirdn2d(x, f, 0, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match=r"shape \[N, C, H, W\]"):
        ext.upfirdn2d(x[0], f, 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(ValueError, match="x's device"):
        upfirdn2d(x, f.cpu())


@requires_gpu
@pytest.mark.gpu
def test_self_checks_pass(extensions):
    bias_act_module.self_check()
    upfirdn2d_module.self_check()
    assert plugin.plugin_status() == {"bias_act": "verified", "upfirdn2d": "verified"}


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls: TF32 would round every layer's inputs to 10 bits."""
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


@requires_gpu
@pytest.mark.gpu
def test_generator_with_kernels_matches_reference(extensions, tiny_pkl, tiny_ref, monkeypatch, no_tf32):
    """The whole synthesis network on the GPU: kernels vs reference ops, images and gradients w.r.t. ws."""
    from timemachine.checkpoint import load_generator

    G = load_generator(tiny_pkl, device="cuda")
    ws = tiny_ref["ws"][:2].cuda()
    probe = tiny_ref["grad_probe"].cuda()  # [1, 3, 32, 32], broadcast over the batch
    results = {}
    for impl in ("ref", "auto"):
        monkeypatch.setenv(plugin.ENV_IMPL, impl)
        out = {}
        for force_fp32 in (True, False):
            w = ws.clone().requires_grad_(True)
            img = G.synthesis(w, noise_mode="const", force_fp32=force_fp32)
            (grad,) = torch.autograd.grad((img.float() * probe).sum(), [w])
            out[force_fp32] = (img.float(), grad)
        results[impl] = out
    for force_fp32, tol in ((True, 1e-4), (False, 2e-2)):
        for what, ref, got in zip(("image", "grad ws"), results["ref"][force_fp32], results["auto"][force_fp32]):
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            assert err <= tol, f"force_fp32={force_fp32}: {what} differs by {err:.3g} x max"
    img32 = results["auto"][True][0]
    assert (img32 - tiny_ref["img_const"][:2].cuda()).abs().max() / tiny_ref["img_const"].abs().max() <= 1e-4
