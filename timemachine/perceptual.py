"""Perceptual distance: LPIPS on VGG16 features (the ``lpips`` package, v0.1 linear layers).

The projector compares the generator's image with the photo through this distance, as the official
StyleGAN2-ADA projector does (it uses NVIDIA's TorchScript export of the same LPIPS-VGG16 network).
Images are area-downsampled to 256x256 first when larger, like the official projector.

    lpips = PerceptualDistance(vgg16_file)          # a file of ImageNet VGG16 weights, or 'random' by name
    target = lpips.features(photo)                  # photo [1, 3, H, W] in [-1, 1]; computed once
    d = lpips.distance(lpips.features(img), target) # [N] LPIPS distances

Precision: ``features(images, precision='bf16')`` runs the VGG16 convolutions in bfloat16 (channels-last,
float32 accumulation inside oneDNN) for CPUs with native BF16; the input scaling, the unit normalisation of
the features and the distance stay float32.  Compare features computed in the same precision.

VGG16 weights.  LPIPS is only meaningful with the ImageNet-trained VGG16 (torchvision's
``vgg16-397923af.pth``).  The caller says which weights to use: a file path (the zoo's verified copy,
:meth:`timemachine.zoo.Zoo.vgg16_path`, is what :func:`timemachine.pipeline.load_perceptual` passes unless the
environment names another file), or ``'random'``, which builds a randomly initialised VGG16 instead - for tests
and benchmarks only, asked for by name; it warns, and nothing ever falls back to it silently.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Union

import torch
import torch.nn.functional as F

from timemachine.errors import WeightsError, first_line, printable

RANDOM = "random"
#: LPIPS works on at most 256x256 images, like the official projector.
FEATURE_RESOLUTION = 256
#: torchvision ``features.<i>`` index ranges of the five LPIPS slices (relu1_2 ... relu5_3).
_SLICES = [range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)]


class RandomWeightsWarning(UserWarning):
    """Random VGG16 weights were asked for: perceptual distances are meaningless for real photos."""


class PerceptualDistance(torch.nn.Module):
    """LPIPS-VGG16 distance between images [N, 3, H, W] in [-1, 1] (any H, W >= 32).

    ``features(x)`` returns the five unit-normalised VGG16 activation maps; ``distance(a, b)`` the LPIPS
    value [N] from two such lists (b may have batch size 1 and is then shared).  ``forward(x, y)`` does both.
    Parameters are frozen; gradients flow to the input images.

    Args:
        vgg_weights: a torchvision VGG16 state-dict file, or ``'random'`` (warns: tests and benchmarks only).

    Raises:
        WeightsError: the file does not exist or does not hold torchvision's VGG16 weights.
    """

    def __init__(self, vgg_weights: Union[str, os.PathLike]):
        super().__init__()
        source = _vgg_source(vgg_weights)
        model = _lpips_vgg16(random_trunk=source == RANDOM)
        if source == RANDOM:
            warnings.warn("using a randomly initialised VGG16 (the weights 'random' were asked for): perceptual "
                          "distances are meaningless for real photos; use this only for tests and benchmarks",
                          RandomWeightsWarning, stacklevel=2)
        else:
            _load_vgg16_into(model.net, source)
        self.vgg_source = source
        self.scaling_layer = model.scaling_layer
        self.vgg = model.net
        self.lins = model.lins
        self.eval().requires_grad_(False)
        self._bf16_vgg: dict[torch.device, torch.nn.Module] = {}  # frozen bfloat16 copies, by device

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """Area-downsample images larger than 256 px to 256x256 (as the official projector does)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        if images.shape[2] > FEATURE_RESOLUTION:
            images = F.interpolate(images, size=(FEATURE_RESOLUTION, FEATURE_RESOLUTION), mode="area")
        return images

    def features(self, images: torch.Tensor, precision: str = "fp32") -> list[torch.Tensor]:
        """images [N, 3, H, W] in [-1, 1] -> 5 float32 feature maps [N, C_k, H_k, W_k], unit length along channels.

        ``precision``: 'bf16' runs VGG16 in bfloat16 (see the module docstring); anything else ('fp32', and
        'fp16', which means float16 synthesis blocks on CUDA) runs it in float32, as the official projector does.
        """
        x = self.scaling_layer(self.prepare(images.to(torch.float32)))
        if precision == "bf16":
            x = x.to(torch.bfloat16, memory_format=torch.channels_last)
            return [_normalize_channels(f.to(torch.float32)) for f in self._vgg_bf16(x.device)(x)]
        return [_normalize_channels(f) for f in self.vgg(x)]

    def _vgg_bf16(self, device: torch.device) -> torch.nn.Module:
        """A frozen bfloat16 copy of the VGG16 on ``device`` (made once; the weights never change)."""
        if device not in self._bf16_vgg:
            self._bf16_vgg[device] = copy.deepcopy(self.vgg).to(device=device, dtype=torch.bfloat16).eval()
        return self._bf16_vgg[device]

    def distance(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS [N] between two feature lists from :meth:`features`."""
        terms = [lin(torch.square(fa - fb)).mean(dim=[1, 2, 3])
                 for lin, fa, fb in zip(self.lins, features_a, features_b)]
        return sum(terms[1:], terms[0])

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        return self.distance(self.features(images_a, precision), self.features(images_b, precision))


def _lpips_vgg16(random_trunk: bool = False):
    """lpips' LPIPS-VGG16 v0.1 with its calibrated linear layers; the VGG16 trunk random or unfilled.

    ``random_trunk``: torchvision's initialisation from a fixed seed, so that 'random' is the same network in
    every process (projections stay reproducible and cacheable; the caller's RNG is left alone).  The draws
    run through torchvision's whole VGG16, classifier included, as they always have: the same random network
    as in every earlier version.  Otherwise the trunk is left for the caller to fill with real weights, and
    building torchvision's VGG16 (138M parameters, 102M of them in the classifier that lpips drops) and
    initialising it at random would be waste (~1.5 s per process, benchmarks/bench_startup.py): the model is
    built on the meta device (no memory, no initialisation) and only the kept parts get memory - the trunk,
    the input scaling (constants) and the linear layers, read from lpips' own weights file as
    ``LPIPS(pretrained=True)`` reads them.
    """
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated 'pretrained'
        if random_trunk:
            torch.manual_seed(0)
            return lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
        with torch.device("meta"):
            model = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    model = model.to_empty(device="cpu")
    model.scaling_layer = lpips.ScalingLayer()
    path = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    missing, unexpected = model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
    # ("lins.k" is another name of "link", the same module: loaded with it.)
    if unexpected or any(not key.startswith(("net.", "scaling_layer.", "lins.")) for key in missing):
        raise WeightsError(f"the lpips package's linear layers ({path}) do not fit LPIPS-VGG16 v0.1")
    return model


def _vgg_source(vgg_weights: Union[str, os.PathLike]) -> str:
    """``'random'`` or the path of an existing file."""
    choice = os.fspath(vgg_weights)
    if choice.strip() == RANDOM:
        return RANDOM
    if not os.path.isfile(choice):
        raise WeightsError(f"VGG16 weights file not found: {printable(choice, 2000)}")
    return choice


def _normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """x / ||x|| along channels, as ``lpips.normalize_tensor``."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


def _load_vgg16_into(vgg: torch.nn.Module, path: str) -> None:
    """Copy torchvision VGG16 ``features.<i>.*`` tensors from ``path`` into lpips' sliced VGG16."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: torch raises many kinds
        raise WeightsError(f"cannot read VGG16 weights from {printable(path, 2000)}: {first_line(exc)}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{printable(path, 2000)} is not a VGG16 state dict")
    mapped = {}
    for k, indices in enumerate(_SLICES, start=1):
        for i in indices:
            for kind in ("weight", "bias"):
                key = f"features.{i}.{kind}"
                if key in state:
                    mapped[f"slice{k}.{i}.{kind}"] = state[key]
    try:
        vgg.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{printable(path, 2000)} does not hold torchvision VGG16 weights: "
                           f"{first_line(exc)}") from None
