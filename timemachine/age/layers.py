"""Which rows of a latent an age edit touches: layer groups, selections and masks.

ws row ``i`` is consumed by the 3x3 conv (even ``i``) or the ToRGB (odd ``i``, together with the next block's
upsampling conv, which modulates the same features) of the synthesis block at resolution ``4 * 2 ** (i // 2)``;
so ``num_ws = 2 * log2(img_resolution) - 2`` for every StyleGAN2 generator and the row resolutions follow from
``num_ws`` alone.  Named groups: ``coarse`` rows at 4-8 px (pose, head shape), ``middle`` 16-32 px (face
proportions, ears, eyes), ``fine`` >= 64 px (fur texture, colour).  For the 512x512 AFHQ generators
(num_ws = 16): coarse 0-3, middle 4-7, fine 8-15.  Selections are comma-separated groups and index ranges,
e.g. ``coarse,middle`` or ``0-3,8``; ``all`` selects every row.
"""

from __future__ import annotations

import re
from typing import Sequence, Union

import torch

from timemachine.errors import AgeVectorError, quoted

LAYER_GROUPS = ("coarse", "middle", "fine")
#: The longest selection text accepted (a selection of every row of the largest latent is far shorter).
MAX_SELECTION_TEXT = 1000
#: The largest row index a selection may name (latents have at most a few dozen rows).
MAX_INDEX = 9999

_RANGE_RE = re.compile(r"(\d{1,4})(?:-(\d{1,4}))?")

LayerSpec = Union[str, Sequence[int], None]


def _check_num_ws_structure(num_ws: int) -> None:
    if num_ws < 2 or num_ws % 2:
        raise AgeVectorError(f"named layer groups need a StyleGAN2 latent with an even number of rows, not {num_ws}; "
                             "select layers by index instead (e.g. 0-3)")


def layer_resolution(index: int, num_ws: int) -> int:
    """Resolution (pixels) of the synthesis features that ws row ``index`` modulates (see module docstring)."""
    _check_num_ws_structure(num_ws)
    if not 0 <= index < num_ws:
        raise AgeVectorError(f"layer {index} does not exist: this model has layers 0-{num_ws - 1}")
    return 4 * 2 ** (index // 2)


def layer_groups(num_ws: int) -> dict[str, list[int]]:
    """{'coarse': [...], 'middle': [...], 'fine': [...]} row indices for a latent with ``num_ws`` rows."""
    _check_num_ws_structure(num_ws)
    groups: dict[str, list[int]] = {name: [] for name in LAYER_GROUPS}
    for i in range(num_ws):
        res = layer_resolution(i, num_ws)
        groups["coarse" if res <= 8 else "middle" if res <= 32 else "fine"].append(i)
    return groups


def format_indices(indices: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def describe_layer_groups(num_ws: int) -> str:
    """'coarse 0-3 (4-8 px), middle 4-7 (16-32 px), fine 8-15 (64-512 px)' for a latent with ``num_ws`` rows."""
    parts = []
    for name, rows in layer_groups(num_ws).items():
        if rows:
            lo, hi = layer_resolution(rows[0], num_ws), layer_resolution(rows[-1], num_ws)
            parts.append(f"{name} {format_indices(rows)} ({lo}-{hi} px)")
        else:
            parts.append(f"{name}: none")
    return ", ".join(parts)


def normalize_layers(spec: LayerSpec) -> str:
    """Check the syntax of a layer selection (without knowing num_ws) and return its canonical text.

    ``None``, '' and 'all' -> 'all'.  Otherwise comma-separated items, each a group name (coarse, middle,
    fine) or an index / inclusive range ('8', '0-3') of indices <= :data:`MAX_INDEX`; case and spaces are
    ignored.
    """
    if spec is None:
        return "all"
    if not isinstance(spec, str):
        return _normalize_index_list(spec)
    if len(spec) > MAX_SELECTION_TEXT:
        raise AgeVectorError(f"a layer selection is at most {MAX_SELECTION_TEXT} characters")
    items = [item.strip().lower() for item in spec.split(",")]
    if items == [""] or items == ["all"]:
        return "all"
    return ",".join(_normalize_item(item, spec) for item in items)


def _normalize_index_list(spec: Sequence[int]) -> str:
    """The canonical text of a selection given as row indices (each from 0 to :data:`MAX_INDEX`, at least one)."""
    try:
        indices = [int(i) for i in spec]
    except (TypeError, ValueError):
        raise AgeVectorError("a layer selection is text or a list of row indices") from None
    if not indices or any(not 0 <= i <= MAX_INDEX for i in indices):
        raise AgeVectorError(f"a layer selection needs at least one index, each from 0 to {MAX_INDEX}")
    return format_indices(indices)


def _normalize_item(item: str, spec: str) -> str:
    """One lower-cased, stripped item of the text selection ``spec``: a group name, or an index / range as
    'lo' or 'lo-hi' (hi > lo)."""
    if item in LAYER_GROUPS:
        return item
    match = _RANGE_RE.fullmatch(item)
    if not match:
        raise AgeVectorError(f"invalid layer selection {quoted(spec)}: use 'all', group names (coarse, middle, "
                             "fine) and indices or ranges such as 0-3,8")
    lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
    if hi < lo:
        raise AgeVectorError(f"invalid layer range {quoted(item)} in {quoted(spec)}: the end is before the start")
    return f"{lo}-{hi}" if hi != lo else str(lo)


def resolve_layers(spec: LayerSpec, num_ws: int) -> list[int]:
    """Sorted row indices that the selection ``spec`` picks in a latent with ``num_ws`` rows.

    Raises:
        AgeVectorError: bad syntax, an index >= num_ws, or a selection that picks nothing (e.g. 'fine' on a
        32x32 generator, which has no fine layers).
    """
    text = normalize_layers(spec)
    if text == "all":
        return list(range(num_ws))
    chosen: set[int] = set()
    for item in text.split(","):
        if item in LAYER_GROUPS:
            rows = layer_groups(num_ws)[item]
            if not rows:
                raise AgeVectorError(f"this model has no {item} layers ({describe_layer_groups(num_ws)})")
            chosen.update(rows)
            continue
        match = _RANGE_RE.fullmatch(item)
        assert match is not None   # normalize_layers checked it
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi >= num_ws:
            raise AgeVectorError(f"layer {hi} does not exist: this model has layers 0-{num_ws - 1}")
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


def layer_mask(spec: LayerSpec, num_ws: int) -> torch.Tensor:
    """float32 [num_ws, 1]: 1 for the rows ``spec`` selects, 0 elsewhere."""
    mask = torch.zeros(num_ws, 1)
    mask[resolve_layers(spec, num_ws)] = 1.0
    return mask
