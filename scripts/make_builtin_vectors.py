"""Derive the built-in age vectors (package data) from the reference latents in ../shared.

The built-in ``yorkshire`` vector for the zoo model ``afhqdog`` is the seed prototype's own: puppy minus adult
of the two real W latents ``latents/afhqdog_yorkshire_{puppy,adult}_projected_w.npz`` (the official
projector's ``projected_w.npz`` format, [1, 16, 512], all rows equal), method ``pair``, default strength 0.5
(the strength the prototype rendered with).  Nobody here can compute the released afhqdog generator's
fingerprint, so the vector is bound to the zoo name (see :mod:`timemachine.age.vector`).

Only the derived direction is written into the package (``timemachine/age/builtin/yorkshire.safetensors``,
about 33 KB); the shared files stay outside the repository.  ``tests/test_builtin_vectors.py`` checks that the
shipped file is what this script derives.

Usage::

    python scripts/make_builtin_vectors.py                      # ../shared (or $TIMEMACHINE_SHARED_DIR)
    python scripts/make_builtin_vectors.py --shared /path/to/shared --check
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "timemachine" / "age" / "builtin"
#: When the shipped vector was derived (fixed, so that deriving it again gives the same file).
CREATED = "2025-06-01T00:00:00+00:00"
PUPPY = "afhqdog_yorkshire_puppy_projected_w.npz"
ADULT = "afhqdog_yorkshire_adult_projected_w.npz"


def derive_yorkshire(shared: Path):
    """The built-in ``yorkshire`` :class:`AgeVector` from ``shared/latents``."""
    from timemachine import age
    from timemachine.latents import load_latent

    puppy = load_latent(shared / "latents" / PUPPY, num_ws=16, w_dim=512)
    adult = load_latent(shared / "latents" / ADULT, num_ws=16, w_dim=512)
    details = {
        "builtin": {
            "source": "the seed prototype's vector: puppy minus adult of two W latents of Yorkshire terrier photos, "
                      "projected with the released AFHQ-dog generator by NVIDIA's projector.py",
            "binding": "zoo name afhqdog; the released generator's fingerprint could not be computed where this "
                       "vector was made",
        },
        "sources": [{"role": "puppy", "kind": "latent", "file": PUPPY, "model_unverified": True},
                    {"role": "adult", "kind": "latent", "file": ADULT, "model_unverified": True}],
    }
    vector = age.build_vector("yorkshire", [puppy.ws], [adult.ws], "pair", model_fingerprint="", model_zoo="afhqdog",
                              model_name="afhqdog", species="dog", default_strength=0.5,
                              notes="Built in: the seed prototype's Yorkshire terrier vector (rendered at 0.5).",
                              details=details)
    vector.created = CREATED
    vector.validate()
    return vector


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_shared = os.environ.get("TIMEMACHINE_SHARED_DIR") or str(REPO_ROOT.parent / "shared")
    parser.add_argument("--shared", default=default_shared, help="the shared reference directory")
    parser.add_argument("--check", action="store_true", help="only check that the shipped files are up to date")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from timemachine import age

    shared = Path(args.shared)
    if not (shared / "latents" / PUPPY).is_file():
        print(f"no {PUPPY} under {shared / 'latents'}: pass --shared", file=sys.stderr)
        return 2
    vector = derive_yorkshire(shared)
    target = OUT_DIR / "yorkshire.safetensors"
    data = age.vector_to_bytes(vector)
    if args.check:
        shipped = age.load_vector_file(target)
        same = torch.equal(shipped.direction, vector.direction) and shipped.metadata() == vector.metadata()
        print(f"{target}: {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    from timemachine import fs

    fs.atomic_write(target, data)
    print(f"{target}: {len(data)} bytes, norm {vector.norm:.3f}, default strength {vector.default_strength:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
