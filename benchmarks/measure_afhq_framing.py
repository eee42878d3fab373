"""Where AFHQ puts the eyes: the measurements behind timemachine.align.FRAMINGS.

Source images: the 41 distinct AFHQ images in StarGAN v2's repository (github.com/clovaai/stargan-v2, commit
875b70a150609e8a678ed8482562e7074cdce7e5, ``assets/representative/afhq/{ref,src}/{cat,dog,wild}/*.jpg``, all
512x512; ``src/dog/pixabay_dog_000322`` and ``src/dog/pixabay_dog_001082`` are byte-identical to the ``ref``
copies and are counted once).  Nothing of them is stored here but the positions below.

How they were measured: each image was shown at twice its size with a grid every 16 pixels (labels every 32),
and the centre of each pupil (for a closed or dark eye, the centre of the eye opening) and of the nose pad were
read off by hand: about +-3 pixels for the eyes, +-6 for the nose.  "left"/"right" mean the eye on the left
and right of the image.  Positions are in the pixel-index convention of the grid (the centre of pixel (j, i)
is (j, i)); the half-pixel offset from timemachine.align's corner convention is far below the annotation error.

The figures (fractions of the 512-pixel side): per domain and overall, the median eye distance, eye midpoint
(x, y), and the largest distance of the nose below the eye midpoint measured perpendicular to the eye line.

Usage::

    python benchmarks/measure_afhq_framing.py        # prints the table that timemachine/align.py quotes
"""

from __future__ import annotations

import numpy as np

SIDE = 512

#: image -> ((left eye x, y), (right eye x, y), (nose x, y)), pixels of the 512x512 image.
POSITIONS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "ref/cat/flickr_cat_000495": ((178, 253), (337, 248), (273, 360)),
    "ref/cat/flickr_cat_000557": ((187, 268), (326, 266), (257, 341)),
    "ref/cat/pixabay_cat_000355": ((175, 247), (338, 246), (255, 359)),
    "ref/cat/pixabay_cat_000491": ((165, 256), (345, 256), (256, 350)),
    "ref/cat/pixabay_cat_000535": ((178, 262), (347, 261), (258, 357)),
    "ref/cat/pixabay_cat_000623": ((172, 240), (330, 245), (272, 328)),
    "ref/cat/pixabay_cat_000730": ((184, 266), (326, 260), (249, 327)),
    "ref/cat/pixabay_cat_001479": ((182, 259), (331, 255), (256, 340)),
    "ref/cat/pixabay_cat_001699": ((174, 247), (326, 279), (223, 340)),
    "ref/cat/pixabay_cat_003046": ((190, 281), (321, 277), (256, 365)),
    "ref/dog/flickr_dog_001072": ((156, 201), (328, 203), (184, 308)),
    "ref/dog/pixabay_dog_000121": ((178, 246), (296, 255), (170, 338)),
    "ref/dog/pixabay_dog_000322": ((166, 251), (296, 247), (171, 408)),
    "ref/dog/pixabay_dog_000357": ((183, 263), (353, 256), (252, 323)),
    "ref/dog/pixabay_dog_000409": ((158, 230), (358, 230), (248, 383)),
    "ref/dog/pixabay_dog_000799": ((181, 255), (321, 256), (241, 359)),
    "ref/dog/pixabay_dog_000890": ((196, 261), (331, 261), (257, 364)),
    "ref/dog/pixabay_dog_001082": ((161, 242), (346, 241), (263, 334)),
    "ref/wild/flickr_wild_000731": ((171, 256), (316, 263), (201, 398)),
    "ref/wild/flickr_wild_001223": ((178, 181), (341, 186), (252, 323)),
    "ref/wild/flickr_wild_002020": ((186, 222), (318, 221), (253, 343)),
    "ref/wild/flickr_wild_002092": ((148, 241), (293, 245), (191, 349)),
    "ref/wild/flickr_wild_002933": ((183, 205), (321, 203), (242, 285)),
    "ref/wild/flickr_wild_003137": ((231, 192), (363, 193), (328, 304)),
    "ref/wild/flickr_wild_003355": ((202, 227), (326, 226), (266, 338)),
    "ref/wild/flickr_wild_003796": ((201, 210), (376, 211), (332, 333)),
    "ref/wild/flickr_wild_003969": ((186, 238), (321, 217), (273, 373)),
    "ref/wild/pixabay_wild_000637": ((203, 232), (331, 243), (271, 369)),
    "src/cat/flickr_cat_000253": ((182, 251), (311, 257), (272, 334)),
    "src/cat/pixabay_cat_000181": ((171, 261), (337, 266), (248, 364)),
    "src/cat/pixabay_cat_000241": ((180, 258), (338, 255), (256, 368)),
    "src/cat/pixabay_cat_000276": ((186, 261), (321, 268), (242, 343)),
    "src/cat/pixabay_cat_004826": ((186, 253), (326, 255), (263, 333)),
    "src/dog/flickr_dog_000094": ((183, 246), (326, 247), (256, 364)),
    "src/dog/pixabay_dog_000321": ((171, 271), (323, 268), (257, 329)),
    "src/dog/pixabay_dog_002066": ((176, 256), (328, 276), (253, 314)),
    "src/wild/flickr_wild_000432": ((170, 238), (336, 238), (221, 373)),
    "src/wild/flickr_wild_000814": ((176, 291), (316, 287), (252, 368)),
    "src/wild/flickr_wild_002036": ((171, 236), (311, 235), (228, 373)),
    "src/wild/flickr_wild_002159": ((168, 238), (326, 236), (251, 359)),
    "src/wild/pixabay_wild_000558": ((226, 228), (351, 228), (312, 334)),
}


def statistics(domain: str = "") -> dict[str, float]:
    """Figures for one domain ('cat', 'dog', 'wild') or all ('') as fractions of the side."""
    rows = [v for k, v in POSITIONS.items() if not domain or k.split("/")[1] == domain]
    left, right, nose = (np.array([r[i] for r in rows], dtype=np.float64) / SIDE for i in range(3))
    line = right - left
    distance = np.hypot(line[:, 0], line[:, 1])
    unit = line / distance[:, None]
    down = np.stack([-unit[:, 1], unit[:, 0]], axis=1)
    midpoint = (left + right) / 2
    below = ((nose - midpoint) * down).sum(axis=1)
    tilt = np.degrees(np.arctan2(line[:, 1], line[:, 0]))
    return {"n": len(rows), "eye_distance": float(np.median(distance)), "eye_distance_sd": float(distance.std()),
            "eyes_x": float(np.median(midpoint[:, 0])), "eyes_y": float(np.median(midpoint[:, 1])),
            "nose_below_median": float(np.median(below)), "nose_below_max": float(below.max()),
            "tilt_max_degrees": float(np.abs(tilt).max())}


def main() -> None:
    print(f"{'domain':6}  {'n':>3}  {'eye dist':>8}  {'(sd)':>6}  {'eyes x':>6}  {'eyes y':>6}  "
          f"{'nose below: median':>18}  {'max':>6}  {'max tilt':>8}")
    for domain in ("cat", "dog", "wild", ""):
        s = statistics(domain)
        print(f"{domain or 'all':6}  {s['n']:3d}  {s['eye_distance']:8.3f}  {s['eye_distance_sd']:6.3f}  "
              f"{s['eyes_x']:6.3f}  {s['eyes_y']:6.3f}  {s['nose_below_median']:18.3f}  {s['nose_below_max']:6.3f}  "
              f"{s['tilt_max_degrees']:7.1f}°")


if __name__ == "__main__":
    main()
