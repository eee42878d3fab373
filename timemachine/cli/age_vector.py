"""``timemachine age-vector ...``: build, tune and manage the library of age vectors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

from timemachine.cli import EXIT_OK, common
from timemachine.errors import AgeVectorError, printable

HELP = "build, tune and manage age vectors (the puppy direction of a breed)"
DESCRIPTION = """\
An age vector is a direction in the generator's latent space that turns an adult into a puppy (or kitten).
It is learnt from examples: photos of puppies and of adults of one breed are projected into the latent
space, and the vector points from the adults' latents towards the puppies'.  Rendering adds
strength x vector to your pet's latent: strength 1 moves it as far as the puppies are from the adults on
average, 0.5 half-way, negative values age it instead.

Building a good one:
  * 5-20 photos per side (more is better; one of each already works, roughly);
  * one breed, the same one as the pets you will edit (a vector per breed: 'yorkshire', 'labrador');
  * front-facing heads, well lit, the head filling most of the (square, centred) crop - like AFHQ's photos;
  * variety within each side (poses, backgrounds) so that only age separates the two groups.
Methods: 'pair' (one puppy, one adult: their difference), 'mean' (difference of the two averages),
'linear' (the normal of a logistic-regression classifier separating the two groups, scaled to the mean
separation: it ignores differences in pose or colour that do not separate puppies from adults).
'auto' picks pair for 1+1 photos, linear with at least 5 per side, mean otherwise.

Vectors belong to the model they were built with (it is fingerprinted) and live in the library,
$TIMEMACHINE_HOME/vectors (or your user data directory).  Each has a default strength and default layers
that you tune per breed with 'age-vector set'.  Layers are rows of the latent, grouped by the resolution
they control: coarse (4-8 px: head shape, pose), middle (16-32 px: proportions, eyes, ears), fine (64+ px:
fur texture and colour); or indices and ranges such as 0-3,8.  For the 512x512 AFHQ models: coarse 0-3,
middle 4-7, fine 8-15.
"""

BUILD_DESCRIPTION = """\
Build an age vector from puppy and adult examples and save it in the library under NAME.

Each --puppy/--adult value is a photo (JPEG, PNG, WebP, ...; centre-cropped to a square and projected
with the projection options below, through the projection cache, so building again never re-projects)
or a latent file (.npz, e.g. projected_w.npz from 'timemachine project' or NVIDIA's projector.py).
Latent files must fit the model; files that record another model are refused.

Interrupted?  Run the same command again: photos projected so far come from the cache.
"""


DISCOVER_DESCRIPTION = """\
Find the model's age direction without any photos: sample latents from the generator, render them, ask a
zero-shot CLIP classifier whether each animal is young or adult (prompt ensembles per species: puppy / adult
dog, kitten / adult cat, cub / adult animal), keep the confident samples, and fit the 'linear' classifier on
their latents.  The vector is saved as NAME, method 'discovered', with the prompts, counts and the
classifier's held-out accuracy.

Samples and labels are cached per model, seed and sample: interrupted?  Run the same command again.  Other
prompts or another breed label the cached samples again without rendering them.  AFHQ-dog holds few
puppies: expect a few percent of the samples to be confidently young, and ask for enough samples.
"""


def _layers_text(value: str) -> str:
    from timemachine import age

    try:
        return age.normalize_layers(value)
    except AgeVectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("age-vector", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    commands = parser.add_subparsers(dest="age_vector_command", metavar="SUBCOMMAND")
    commands.required = True

    p = commands.add_parser("build", help="build an age vector from puppy and adult photos or latents",
                            description=BUILD_DESCRIPTION, formatter_class=formatter)
    p.add_argument("name", metavar="NAME", help="library name (letters, digits, '.', '_', '-'), e.g. the breed")
    p.add_argument("--puppy", nargs="+", action="extend", required=True, metavar="FILE", default=argparse.SUPPRESS,
                   help="puppy/kitten photos or latent files (.npz)")
    p.add_argument("--adult", nargs="+", action="extend", required=True, metavar="FILE", default=argparse.SUPPRESS,
                   help="adult photos or latent files (.npz) of the same breed")
    p.add_argument("--method", choices=["auto", "pair", "mean", "linear"], default="auto",
                   help="pair: one of each; mean: difference of averages; linear: classifier normal (>= 2 per side)")
    p.add_argument("--species", default=argparse.SUPPRESS,
                   help="dog, cat, wild or any short text (default: from the zoo model's name, else none)")
    p.add_argument("--notes", default=argparse.SUPPRESS, help="free text kept with the vector")
    p.add_argument("--strength", type=float, default=1.0, help="default strength when rendering")
    p.add_argument("--layers", type=_layers_text, default="all",
                   help="default layers when rendering: all, coarse, middle, fine, or indices like 0-3,8")
    p.add_argument("--orthogonal-to", action="append", default=argparse.SUPPRESS, metavar="VECTOR",
                   help="remove the component along another saved vector (name or file); repeatable")
    p.add_argument("--batch-size", type=int, default=8, help="photos projected together")
    p.add_argument("--force", action="store_true", help="replace an existing vector of the same name")
    common.add_model_arguments(p)
    common.add_projection_arguments(p)
    p.set_defaults(handler=run_build)

    from timemachine.settings import DiscoverySettings

    defaults = DiscoverySettings()
    p = commands.add_parser("discover", help="find a model's age direction from its own samples (no photos)",
                            description=DISCOVER_DESCRIPTION, formatter_class=formatter)
    p.add_argument("name", metavar="NAME", help="library name of the new vector, e.g. the breed")
    p.add_argument("--species", choices=["dog", "cat", "wild"], default=None,
                   help="prompts and breeds to use (default: from the zoo model's name)")
    p.add_argument("--breed", default=None, metavar="BREED",
                   help="keep only samples CLIP takes for this breed (e.g. 'shiba inu'); 'wild' takes an animal")
    p.add_argument("--young", nargs="+", default=None, metavar="PROMPT", help="prompts describing a young animal")
    p.add_argument("--adult", nargs="+", default=None, metavar="PROMPT", help="prompts describing an adult")
    p.add_argument("--samples", type=int, default=defaults.samples, help="samples to render and label")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the samples")
    p.add_argument("--truncation", type=float, default=defaults.truncation_psi, metavar="PSI",
                   help="truncation of the samples (1 = none; lower = more typical animals)")
    p.add_argument("--resolution", type=int, default=defaults.resolution,
                   help="render at most this many pixels (skip generators stop early: faster)")
    p.add_argument("--confidence", type=float, default=defaults.confidence,
                   help="keep samples with P(young) >= this (young) or <= 1 - this (adult)")
    p.add_argument("--min-confident", type=int, default=defaults.min_confident,
                   help="fewest confident samples needed on each side")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="samples rendered together")
    p.add_argument("--clip-weights", default=None, metavar="PATH|random",
                   help="CLIP weights (.safetensors; default: $TIMEMACHINE_CLIP_WEIGHTS, else the zoo's "
                        "clip-vit-b-32, downloaded once; 'random' is for tests and benchmarks only)")
    p.add_argument("--strength", type=float, default=1.0, help="default strength when rendering")
    p.add_argument("--layers", type=_layers_text, default="all",
                   help="default layers when rendering: all, coarse, middle, fine, or indices like 0-3,8")
    p.add_argument("--notes", default="", help="free text kept with the vector")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache of samples and labels")
    p.add_argument("--force", action="store_true", help="replace an existing vector of the same name")
    common.add_model_arguments(p)
    p.set_defaults(handler=run_discover)

    p = commands.add_parser("list", help="the vectors in the library", formatter_class=formatter,
                            description="List the library's age vectors: species, method, examples, defaults, "
                                        "model.  Damaged files are listed with their problem.")
    p.set_defaults(handler=run_list)

    p = commands.add_parser("show", help="everything about one vector", formatter_class=formatter,
                            description="Show a vector's metadata, defaults, size per layer group and how it "
                                        "was built.  VECTOR is a library name or a .safetensors file.")
    p.add_argument("vector", metavar="VECTOR", help="library name or file")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(handler=run_show)

    p = commands.add_parser("set", help="tune a vector's default strength and layers (and species, notes)",
                            formatter_class=formatter,
                            description="Change what rendering uses by default for this vector.  Try a few "
                                        "strengths (0.5-1.5) and layer groups on a pet of the breed, then keep "
                                        "the best here.  The direction itself is not changed.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--strength", type=float, default=argparse.SUPPRESS,
                   help="default strength (1 = the mean separation, negative = older)")
    p.add_argument("--layers", type=_layers_text, default=argparse.SUPPRESS,
                   help="default layers: all, coarse, middle, fine, or indices like 0-3,8")
    p.add_argument("--species", default=argparse.SUPPRESS, help="dog, cat, wild or any short text")
    p.add_argument("--notes", default=argparse.SUPPRESS, help="free text kept with the vector")
    p.add_argument("--default", action="store_true",
                   help="make NAME the default vector of its model ('run' uses it when no --age-vector is given)")
    p.set_defaults(handler=run_set)

    p = commands.add_parser("copy", help="copy a vector (e.g. a built-in) into the library to tune it",
                            formatter_class=formatter,
                            description="Copy a built-in or library vector into the library under a new name; "
                                        "built-ins are read-only, their copies can be tuned with 'set'.")
    p.add_argument("source", metavar="SOURCE", help="built-in or library name")
    p.add_argument("new", metavar="NEW", help="library name of the copy")
    p.add_argument("--force", action="store_true", help="replace an existing vector called NEW")
    p.set_defaults(handler=run_copy)

    p = commands.add_parser("rename", help="rename a vector", formatter_class=formatter,
                            description="Rename a library vector.")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--force", action="store_true", help="replace an existing vector called NEW")
    p.set_defaults(handler=run_rename)

    p = commands.add_parser("delete", help="delete a vector", formatter_class=formatter,
                            description="Delete a vector from the library.")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=run_delete)

    p = commands.add_parser("export", help="copy a vector to a file", formatter_class=formatter,
                            description="Write a library vector to a .safetensors file to share it; "
                                        "'age-vector import' reads it back.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(handler=run_export)

    p = commands.add_parser("import", help="add a vector file to the library", formatter_class=formatter,
                            description="Check an age vector file (format, shape, values, metadata; nothing in "
                                        "it is executed) and add it to the library.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", default=argparse.SUPPRESS, help="library name (default: the name stored in the file)")
    p.add_argument("--force", action="store_true", help="replace an existing vector of the same name")
    p.set_defaults(handler=run_import)

    p = commands.add_parser("orthogonalize", help="remove other directions from a vector",
                            formatter_class=formatter,
                            description="Remove from NAME its components along other saved vectors "
                                        "(Gram-Schmidt), so that editing age no longer moves along them - e.g. "
                                        "against a fur-colour direction to keep the colour while aging.")
    p.add_argument("name", metavar="NAME", help="library name")
    p.add_argument("--against", nargs="+", action="extend", required=True, metavar="VECTOR",
                   help="other vectors (names or files) of the same model")
    p.add_argument("--as", dest="new_name", default=argparse.SUPPRESS, metavar="NEW",
                   help="save the result under a new name (default: replace NAME)")
    p.add_argument("--force", action="store_true", help="replace an existing vector called NEW")
    p.set_defaults(handler=run_orthogonalize)


# ----------------------------------------------------------------------------------------------------------


def _auto_method(num_puppies: int, num_adults: int) -> str:
    if num_puppies == 1 and num_adults == 1:
        return "pair"
    if min(num_puppies, num_adults) >= 5:
        return "linear"
    return "mean"


_ZOO_SPECIES = {"afhqdog": "dog", "afhqcat": "cat", "afhqwild": "wild"}


def run_build(args: argparse.Namespace) -> int:
    from timemachine import age, pipeline, vector_builds
    from timemachine.errors import AlreadyExists

    # Everything that can be refused is refused before the model loads and long before anything is projected.
    name = age.check_vector_name(args.name)
    method = _auto_method(len(args.puppy), len(args.adult)) if args.method == "auto" else args.method
    age.check_counts(method, len(args.puppy), len(args.adult))
    age.check_strength(args.strength)
    species = getattr(args, "species", None)
    notes = getattr(args, "notes", "")
    orthogonal_to = getattr(args, "orthogonal_to", [])
    age.check_notes(notes)
    if species is not None:
        age.check_species(species)
    if args.batch_size < 1:
        raise AgeVectorError("--batch-size must be at least 1")
    library = common.vector_library()
    if library.path(name).exists() and not args.force:
        raise AlreadyExists(f"an age vector named {name!r} already exists")
    if args.pti:
        raise AgeVectorError("pivotal tuning changes the generator, not the latent, so it cannot improve an age "
                             "vector; leave out --pti")
    for path in args.puppy + args.adult:
        if not os.path.isfile(path):
            raise AgeVectorError(f"no such file: {path}")
    others = [library.load(spec) for spec in orthogonal_to]
    settings, _ = common.projection_settings(args)

    model = common.load_model(args)
    if species is None:
        species = _ZOO_SPECIES.get(str(args.model), "")
    vector_builds.check_build_request(name, model, len(args.puppy), len(args.adult), method, species=species,
                            notes=notes, default_strength=args.strength, default_layers=args.layers)
    for other in others:
        other.check_model(model.fingerprint, model.spec, zoo=model.zoo)
    inputs = vector_builds.prepare_inputs(model, args.puppy, args.adult)     # reads every photo and latent file
    num_photos = sum(item.kind == "photo" for item in inputs)
    if num_photos:
        perceptual = common.load_perceptual(args, model.device)
        cache = None if args.no_cache else pipeline.ProjectionCache(pipeline.cache_root())
        with common.projection_progress(settings, None, min(num_photos, args.batch_size)) as callback:
            vector_builds.project_inputs(model, inputs, settings, perceptual, cache=cache, callback=callback,
                               batch_size=args.batch_size)
    vector = vector_builds.build_vector_from_inputs(name, model, inputs, method, settings=settings,
                                                    species=species, notes=notes, default_strength=args.strength,
                                                    default_layers=args.layers)
    if others:
        vector = vector.orthogonalized(others)
    for item in inputs:
        if item.kind == "photo":
            m = item.metrics
            note = " (from cache)" if m.get("cached") else ""
            print(f"{item.role:5}  {item.path}: LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB{note}")
        else:
            print(f"{item.role:5}  {item.path}: latent file")
    path = library.save(vector, force=args.force)
    print(f"saved age vector {vector.name!r}: {_summary(vector)} -> {path}")
    return EXIT_OK


def run_discover(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from timemachine import age, clip_labeller, discover, pipeline
    from timemachine.cli import Terminated
    from timemachine.cli.weights import download_progress, licence_notice
    from timemachine.env import Environment
    from timemachine.errors import AlreadyExists
    from timemachine.settings import DiscoverySettings

    # Everything that can be refused is refused before the model and CLIP load and long before any sample.
    env = Environment.from_environ()
    library = age.VectorLibrary(env.paths)
    name = age.check_vector_name(args.name)
    if library.path(name).exists() and not args.force:
        raise AlreadyExists(f"an age vector named {name!r} already exists")
    settings = DiscoverySettings(samples=args.samples, seed=args.seed, truncation_psi=args.truncation,
                                 resolution=args.resolution, batch_size=args.batch_size,
                                 confidence=args.confidence, min_confident=args.min_confident)
    settings.validate()
    age.check_strength(args.strength)
    age.check_notes(args.notes)
    species = args.species or _ZOO_SPECIES.get(str(args.model))
    if species is None:
        raise AgeVectorError("which animals does this model make? give --species dog, cat or wild")
    breed = clip_labeller.resolve_breed(species, args.breed)
    young = clip_labeller.check_prompts(args.young, "young", species) if args.young is not None else None
    adult = clip_labeller.check_prompts(args.adult, "adult", species) if args.adult is not None else None
    offline = True if args.offline else env.offline
    clip_weights = args.clip_weights or env.clip_weights
    if clip_weights is None:        # the zoo's: a licence notice before it is downloaded
        from timemachine import weights

        entry = weights.zoo_entry(clip_labeller.ZOO_NAME)
        if not offline and not weights.zoo_path(entry).is_file():
            licence_notice(entry)
    with download_progress("CLIP") as progress:
        clip_path = clip_labeller.resolve_clip_weights(clip_weights, offline=offline, progress=progress)

    model = common.load_model(args)
    age.resolve_layers(args.layers, model.G.num_ws)
    labeller = pipeline.load_clip_labeller(species, young=young, adult=adult, breed=breed, clip_weights=clip_path,
                                           offline=offline, device=model.device)
    cache_dir = None if args.no_cache else env.paths.discovery
    done = [0]
    bar = tqdm(total=settings.samples, desc="discovering", unit="sample", file=sys.stderr, disable=None,
               dynamic_ncols=True)

    def progress_bar(finished: int, total: int) -> None:
        done[0] = finished
        bar.update(finished - bar.n)

    try:
        vector = discover.discover_vector(model, labeller, samples=settings.samples, name=name, settings=settings,
                                          cache_dir=cache_dir, progress=progress_bar, species=species,
                                          notes=args.notes, default_strength=args.strength,
                                          default_layers=args.layers)
    except (KeyboardInterrupt, Terminated) as exc:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        if cache_dir is not None:
            exc.args = (f"{what} after {done[0]} of {settings.samples} samples; they are cached: run the same "
                        "command again to continue",)
        raise
    finally:
        bar.close()
    info = vector.details["discovery"]
    path = library.save(vector, force=args.force)
    reused = settings.samples - info["rendered_now"]
    print(f"saved age vector {vector.name!r}: {info['young']} young and {info['adult']} adult of "
          f"{settings.samples} samples (rendered at {info['resolution']} px, {reused} from the cache), held-out "
          f"accuracy {info['heldout_accuracy']:.2f}, norm {vector.norm:.2f} -> {path}")
    print(f"make it the model's default with 'timemachine age-vector set {vector.name} --default'")
    return EXIT_OK


def _number(value, spec: str, missing: str = "?") -> str:
    """``value`` formatted with ``spec`` when it is a finite number (details come from files: anything goes)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return missing


def _summary(vector) -> str:
    fit = vector.details.get("classifier")
    fit_text = ""
    if isinstance(fit, dict) and "training_accuracy" in fit:
        fit_text = f", classifier accuracy {_number(fit['training_accuracy'], '.2f')}"
    discovery = vector.details.get("discovery")
    if isinstance(discovery, dict) and "heldout_accuracy" in discovery:
        fit_text += f", held-out accuracy {_number(discovery['heldout_accuracy'], '.2f')}"
    return (f"{vector.method} of {vector.num_puppies} puppies and {vector.num_adults} adults, "
            f"{'W' if vector.space == 'w' else 'W+'} space, norm {vector.norm:.2f}{fit_text}")


def _model_text(vector) -> str:
    if vector.model_zoo and not vector.model_fingerprint:
        return f"{printable(vector.model_zoo)} (zoo)"
    return printable(os.path.basename(vector.model_name), 40) or vector.model_fingerprint


def run_list(args: argparse.Namespace) -> int:
    library = common.vector_library()
    entries = library.entries(builtins=True)
    defaults = library.default_names()
    rows = [("NAME", "SPECIES", "METHOD", "PUPPIES", "ADULTS", "SPACE", "STRENGTH", "LAYERS", "MODEL", "CREATED",
             "SOURCE")]
    problems = []
    for entry in entries:
        v = entry.vector
        if v is None:
            where = "built-in" if entry.builtin else "damaged"
            problems.append(f"{printable(entry.name)}: {where}: {printable(entry.problem, 400)}")
            continue
        if entry.shadowed:
            problems.append(f"{entry.name}: the built-in vector of this name is hidden by your library's")
            continue
        source = "built-in" if entry.builtin else "library"
        if entry.name in defaults:
            source += ", default"
        rows.append((v.name, printable(v.species, 20) or "-", v.method, str(v.num_puppies), str(v.num_adults),
                     "W" if v.space == "w" else "W+", f"{v.default_strength:g}", v.default_layers,
                     _model_text(v), printable(v.created[:10]), source))
    if len(rows) == 1:
        print(f"no age vectors in {printable(library.root)}; build one with 'timemachine age-vector build' or "
              "'timemachine age-vector discover'")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for line in problems:
        print(line)
    return EXIT_OK


def _binding_lines(vector) -> list[str]:
    lines = []
    if vector.model_fingerprint:
        lines.append(f"model:     {printable(vector.model_name) or '-'} (fingerprint {vector.model_fingerprint})")
    if vector.model_zoo:
        zoo = printable(vector.model_zoo)
        lines.append(f"model:     the zoo model {zoo}: applies to a generator loaded as '--model {zoo}' whose file "
                     "matches the zoo's SHA-256 (published, or recorded at its first download: trust on first use)")
        lines.append(f"           {_zoo_record(vector.model_zoo)}")
    return lines


def _zoo_record(zoo: str) -> str:
    """What this machine's zoo knows of the file a zoo-bound vector applies to."""
    from timemachine import weights
    from timemachine.errors import TimemachineError

    try:
        entry = weights.load_manifest().get(zoo)
        if entry is None:
            return f"this timemachine's zoo has no model {printable(zoo)}: the vector applies to no model"
        if entry.sha256:
            return f"the zoo publishes its SHA-256: {entry.sha256}"
        record = weights.checksum_record(weights.zoo_path(entry))
    except (TimemachineError, OSError) as exc:
        return f"the zoo's records cannot be read ({printable(exc)})"
    if record and isinstance(record.get("sha256"), str):
        return (f"SHA-256 recorded at its first download here: {printable(record['sha256'], 64)} "
                f"({printable(record.get('recorded_at', '?'), 40)})")
    return "not downloaded here yet: its SHA-256 is recorded at the first download"


def _show_details(vector) -> None:
    details = vector.details
    against = details.get("orthogonalized_against")
    if isinstance(against, list) and against:
        print(f"orthogonal to: {printable(', '.join(map(str, against)), 400)}")
    copied = details.get("copied_from")
    if isinstance(copied, dict):
        print(f"copied from: {printable(copied.get('name', '?'))}{' (built-in)' if copied.get('builtin') else ''}")
    discovery = details.get("discovery")
    if isinstance(discovery, dict):
        print(f"discovered: {printable(discovery.get('samples', '?'))} samples (seed "
              f"{printable(discovery.get('seed', '?'))}, truncation {printable(discovery.get('truncation_psi', '?'))}"
              f", rendered at {printable(discovery.get('resolution', '?'))} px), labelled by "
              f"{printable(discovery.get('labeller', '?'), 80)}; {printable(discovery.get('young', '?'))} young and "
              f"{printable(discovery.get('adult', '?'))} adult kept; held-out accuracy "
              f"{_number(discovery.get('heldout_accuracy'), '.2f')}")
        prompts = discovery.get("prompts")
        if isinstance(prompts, dict):
            for side in ("young", "adult"):
                if isinstance(prompts.get(side), list):
                    print(f"  {side} prompts: {printable('; '.join(map(str, prompts[side])), 400)}")
    sources = details.get("sources")
    for source in sources if isinstance(sources, list) else []:
        if not isinstance(source, dict):
            continue
        quality = f": LPIPS {_number(source['lpips'], '.4f')}" if "lpips" in source else ""
        print(f"  {printable(source.get('role', '?'), 10):5}  {printable(source.get('file', '?'))} "
              f"({printable(source.get('kind', '?'), 10)}){quality}")


def run_show(args: argparse.Namespace) -> int:
    from timemachine import age

    library = common.vector_library()
    vector = library.load(args.vector)
    builtin = library.is_builtin(args.vector)
    if args.json:
        json.dump({**vector.metadata(), "builtin": builtin}, sys.stdout, indent=2, sort_keys=True)
        print()
        return EXIT_OK
    print(f"name:      {printable(vector.name)}{' (built-in, read-only: copy it to tune it)' if builtin else ''}")
    print(f"species:   {printable(vector.species) or '-'}")
    print(f"method:    {_summary(vector)}")
    for line in _binding_lines(vector):
        print(line)
    print(f"created:   {printable(vector.created)}")
    print(f"defaults:  strength {vector.default_strength:g}, layers {vector.default_layers}")
    if vector.name in library.default_names() and (builtin or not library.is_builtin(vector.name)):
        print("default:   the default vector of its model")
    print(f"shape:     [{vector.num_ws}, {vector.w_dim}]")
    try:
        groups = age.layer_groups(vector.num_ws)
    except AgeVectorError:
        groups = {}
    for group, rows in groups.items():
        if rows:
            norm = float(vector.direction[rows].double().norm())
            print(f"  {group:7} layers {age.format_indices(rows):6} norm {norm:.2f}")
    _show_details(vector)
    if vector.notes:
        print(f"notes:     {printable(vector.notes, 2000)}")
    return EXIT_OK


def run_set(args: argparse.Namespace) -> int:
    library = common.vector_library()
    changes = {k: getattr(args, k, None) for k in ("strength", "layers", "species", "notes")}
    if not any(v is not None for v in changes.values()) and not args.default:
        raise AgeVectorError("nothing to change: give --strength, --layers, --species, --notes or --default")
    if any(v is not None for v in changes.values()):
        vector = library.update(args.name, **changes)
        print(f"{vector.name}: strength {vector.default_strength:g}, layers {vector.default_layers}, "
              f"species {printable(vector.species) or '-'}")
    if args.default:
        vector = library.set_default(args.name)
        model = f"the zoo model {vector.model_zoo}" if vector.model_zoo else \
            f"model {printable(vector.model_name) or '-'} ({vector.model_fingerprint})"
        print(f"{vector.name} is now the default age vector of {model}")
    return EXIT_OK


def run_copy(args: argparse.Namespace) -> int:
    library = common.vector_library()
    vector = library.copy(args.source, args.new, force=args.force)
    print(f"copied {args.source!r} to {vector.name!r} -> {library.path(vector.name)}; tune it with "
          f"'timemachine age-vector set {vector.name} --strength ...'")
    return EXIT_OK


def run_rename(args: argparse.Namespace) -> int:
    path = common.vector_library().rename(args.old, args.new, force=args.force)
    print(f"renamed {args.old!r} to {args.new!r} -> {path}")
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    path = common.vector_library().delete(args.name)
    print(f"deleted {args.name!r} ({path})")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    path = common.vector_library().export(args.name, args.file, force=args.force)
    print(f"exported {args.name!r} -> {path}")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    library = common.vector_library()
    vector = library.import_file(args.file, name=getattr(args, "name", None), force=args.force)
    print(f"imported {vector.name!r}: {_summary(vector)} -> {library.path(vector.name)}")
    return EXIT_OK


def run_orthogonalize(args: argparse.Namespace) -> int:
    from timemachine import age
    from timemachine.errors import AlreadyExists

    library = common.vector_library()
    vector = library.load(age.check_vector_name(args.name))
    new_name = age.check_vector_name(getattr(args, "new_name", vector.name))
    if new_name != vector.name and library.path(new_name).exists() and not args.force:
        raise AlreadyExists(f"an age vector named {new_name!r} already exists")
    others = [library.load(spec) for spec in args.against]
    result = dataclasses.replace(vector.orthogonalized(others), name=new_name)
    path = library.save(result, force=True)
    kept = result.norm / vector.norm
    print(f"{new_name}: orthogonal to {', '.join(o.name for o in others)}; {kept:.0%} of the norm kept -> {path}")
    return EXIT_OK
