"""Age directions from latents: the mean difference of puppies and adults, or a linear classifier's normal.

Methods (:func:`compute_direction` on latents, :func:`build_vector` -> :class:`AgeVector`):

* ``pair``:   one puppy and one adult: ``v = w_puppy - w_adult``.
* ``mean``:   ``v = mean(w_puppies) - mean(w_adults)``.
* ``linear``: the unit normal ``n`` of a linear classifier separating puppy from adult latents, scaled to
  the mean separation along it: ``v = n * ((mean(w_puppies) - mean(w_adults)) . n)``.  The classifier is
  scikit-learn's L2-regularised logistic regression (C = :data:`CLASSIFIER_C`, balanced class weights) on
  the latents centred on their common mean and divided by one global scale (their RMS distance to that
  mean), so the regularisation does not depend on the units of W; a global scale does not change the
  direction of the normal.  ``v`` does not depend on the sign of ``n``, and ``|v| <= |mean difference|``.
  Unlike the mean difference, the classifier discounts directions in which the photos vary a lot within
  each group (pose, fur colour) but do not separate the groups.

When every input latent is a W-space latent (all num_ws rows equal, as the official projector writes them)
the computation runs on one row and the direction is repeated, so it is a W-space direction too; otherwise
on the flattened [num_ws * w_dim] latents (W+).

Where the latents come from (photos projected through the pipeline, latent files, the generator's own
samples) is the callers' business: this module computes on tensors only.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from timemachine.age.vector import AgeVector, check_vector_name
from timemachine.errors import AgeVectorError, quoted

#: How a direction can be built from latents (an AgeVector's method may also be 'discovered').
BUILD_METHODS = ("pair", "mean", "linear")
#: Inverse L2 regularisation strength of the logistic regression behind method 'linear' (see module docstring).
CLASSIFIER_C = 1.0

Latents = Union[torch.Tensor, Sequence[torch.Tensor]]


def _stack(latents: Latents, side: str) -> torch.Tensor:
    """float64 [N, num_ws, w_dim] from a tensor or a list of [num_ws, w_dim] tensors."""
    if isinstance(latents, torch.Tensor):
        stacked = latents
    else:
        latents = list(latents)
        if not latents:
            raise AgeVectorError(f"no {side} latents given")
        shapes = {tuple(w.shape) for w in latents}
        if len(shapes) > 1:
            raise AgeVectorError(f"the {side} latents have different shapes: "
                                 f"{', '.join(str(list(s)) for s in sorted(shapes))}")
        stacked = torch.stack([torch.as_tensor(w) for w in latents])
    if stacked.ndim != 3:
        raise AgeVectorError(f"{side} latents must be [N, num_ws, w_dim], got {list(stacked.shape)}")
    if not torch.isfinite(stacked).all():
        raise AgeVectorError(f"the {side} latents contain NaN or infinite values")
    return stacked.detach().to("cpu", torch.float64)


def _rows_equal(ws: torch.Tensor) -> bool:
    """True when every latent in ws [N, num_ws, w_dim] has all rows equal (a W-space latent)."""
    scale = max(1.0, float(ws.abs().max()))
    return bool((ws - ws[:, :1]).abs().max() <= 1e-6 * scale)


def check_counts(method: str, num_puppies: int, num_adults: int) -> None:
    """Raise :class:`AgeVectorError` unless ``method`` is known and has the examples it needs."""
    if method not in BUILD_METHODS:
        raise AgeVectorError(f"unknown method {quoted(method)}: use one of {', '.join(BUILD_METHODS)}")
    if method == "pair" and (num_puppies, num_adults) != (1, 1):
        raise AgeVectorError(f"method 'pair' takes exactly one puppy and one adult, got {num_puppies} and "
                             f"{num_adults}; use 'mean' or 'linear' for more")
    if method == "linear" and min(num_puppies, num_adults) < 2:
        raise AgeVectorError(f"method 'linear' needs at least 2 puppies and 2 adults, got {num_puppies} and "
                             f"{num_adults} (5-20 of each work well)")


def compute_direction(puppies: Latents,
                      adults: Latents,
                      method: str = "mean") -> tuple[torch.Tensor, dict[str, Any]]:
    """The age direction between two sets of latents.

    Args:
        puppies: [P, num_ws, w_dim] (or a list of [num_ws, w_dim]) latents of puppy photos.
        adults:  [A, num_ws, w_dim] latents of adult photos of the same breed.
        method:  'pair' (P = A = 1), 'mean', or 'linear' (P, A >= 2); see the module docstring.

    Returns:
        (direction float32 [num_ws, w_dim], details) where details holds 'space' ('w' or 'w+'),
        'mean_difference_norm' and, for 'linear', the classifier's settings and fit.
    """
    P, A = _stack(puppies, "puppy"), _stack(adults, "adult")
    if P.shape[1:] != A.shape[1:]:
        raise AgeVectorError(f"puppy latents are {list(P.shape[1:])} but adult latents are {list(A.shape[1:])}: "
                             "they must come from the same model")
    check_counts(method, P.shape[0], A.shape[0])
    num_ws, w_dim = P.shape[1:]
    w_space = _rows_equal(P) and _rows_equal(A)
    # Features: one row for W-space latents (all rows equal), the whole flattened latent for W+.
    Xp = P[:, 0] if w_space else P.flatten(1)
    Xa = A[:, 0] if w_space else A.flatten(1)
    mean_diff = Xp.mean(0) - Xa.mean(0)
    details: dict[str, Any] = {"space": "w" if w_space else "w+",
                               "mean_difference_norm": float(mean_diff.norm()) * (math.sqrt(num_ws) if w_space else 1)}
    if method in ("pair", "mean"):
        v = mean_diff
    else:
        normal, fit = _classifier_normal(Xp.numpy(), Xa.numpy())
        along = float(mean_diff @ normal)
        if abs(along) <= 1e-6 * float(mean_diff.norm()):
            raise AgeVectorError("the classifier found no separation between puppies and adults along the mean "
                                 "difference; use more photos or method 'mean'")
        v = normal * along
        fit["cosine_to_mean_difference"] = along / float(mean_diff.norm())
        details["classifier"] = fit
    if not float(v.norm()) > 0:
        raise AgeVectorError("the puppy and adult latents are identical: there is no age direction between them")
    direction = v.reshape(1, w_dim).expand(num_ws, w_dim) if w_space else v.reshape(num_ws, w_dim)
    return direction.to(torch.float32).contiguous(), details


def _fit_classifier(Xp: np.ndarray, Xa: np.ndarray):
    """The logistic regression of method 'linear' fitted on Xp [P, D] (label 1) and Xa [A, D] (label 0).

    Returns:
        (classifier, center [D], scale, converged, training accuracy): it classifies ``(x - center) / scale``.
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise AgeVectorError("method 'linear' needs scikit-learn: pip install scikit-learn") from None
    import warnings

    X = np.concatenate([Xp, Xa])
    y = np.concatenate([np.ones(len(Xp)), np.zeros(len(Xa))])
    center = X.mean(axis=0)
    scale = float(np.sqrt(((X - center) ** 2).sum(axis=1).mean()))
    if not scale > 0:
        raise AgeVectorError("all puppy and adult latents are identical")
    clf = LogisticRegression(C=CLASSIFIER_C, class_weight="balanced", solver="lbfgs", max_iter=10_000, tol=1e-8)
    scaled = (X - center) / scale
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(scaled, y)
    converged = not any("converge" in str(w.message).lower() for w in caught)
    return clf, center, scale, converged, float(clf.score(scaled, y))


def _classifier_normal(Xp: np.ndarray, Xa: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
    """Unit normal (float64 [D]) of a logistic regression separating Xp [P, D] (label 1) from Xa [A, D]."""
    clf, _, _, converged, accuracy = _fit_classifier(Xp, Xa)
    coef = torch.from_numpy(clf.coef_[0].astype(np.float64))   # a global scale leaves the direction unchanged
    norm = float(coef.norm())
    if not math.isfinite(norm) or norm == 0:
        raise AgeVectorError("the classifier found no direction separating puppies from adults")
    return coef / norm, {"model": "logistic regression (scikit-learn)", "C": CLASSIFIER_C,
                         "class_weight": "balanced", "training_accuracy": accuracy, "converged": converged}


def heldout_accuracy(train_puppies: Latents, train_adults: Latents, test_puppies: Latents,
                     test_adults: Latents) -> float:
    """Balanced accuracy, on the test latents, of method 'linear''s classifier fitted on the training latents.

    Each argument is [N, num_ws, w_dim] (or a list of [num_ws, w_dim]), every side at least one latent, the
    training sides at least two.  Balanced accuracy is the mean of the per-side accuracies, so a classifier
    that calls everything 'adult' scores 0.5 however unequal the sides are.  Features are taken as
    :func:`compute_direction` takes them (one row when every latent is a W-space latent).
    """
    check_counts("linear", len(train_puppies), len(train_adults))
    stacked = [_stack(x, side) for x, side in ((train_puppies, "puppy"), (train_adults, "adult"),
                                               (test_puppies, "puppy"), (test_adults, "adult"))]
    if len({tuple(ws.shape[1:]) for ws in stacked}) != 1:
        raise AgeVectorError("the training and test latents must come from the same model")
    w_space = all(_rows_equal(ws) for ws in stacked)
    Tp, Ta, Vp, Va = [(ws[:, 0] if w_space else ws.flatten(1)).numpy() for ws in stacked]
    clf, center, scale, _, _ = _fit_classifier(Tp, Ta)
    hits_p = float((clf.predict((Vp - center) / scale) == 1).mean())
    hits_a = float((clf.predict((Va - center) / scale) == 0).mean())
    return (hits_p + hits_a) / 2


def build_vector(name: str, puppies: Latents,
                 adults: Latents, method: str = "mean", *,
                 model_fingerprint: str, model_name: str = "", species: str = "", notes: str = "",
                 default_strength: float = 1.0, default_layers: str = "all",
                 details: Optional[dict[str, Any]] = None, model_zoo: str = "") -> AgeVector:
    """An :class:`AgeVector` from latents ([N, num_ws, w_dim] or lists of [num_ws, w_dim]); see
    :func:`compute_direction` for the methods.  The vector is bound to ``model_fingerprint`` and/or
    ``model_zoo`` (see :mod:`timemachine.age.vector`)."""
    check_vector_name(name)
    direction, fit = compute_direction(puppies, adults, method)
    return AgeVector(name=name, direction=direction, method=method, model_fingerprint=model_fingerprint,
                     model_name=model_name, species=species, num_puppies=len(puppies), num_adults=len(adults),
                     default_strength=default_strength, default_layers=default_layers, notes=notes,
                     details={**(details or {}), **fit}, model_zoo=model_zoo)
