"""``timemachine age-vector ...``: build, tune and manage the library of age vectors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

from timemachine.cli import EXIT_OK, Terminated, common
from timemachine.errors import AgeVectorError, printable
from timemachine.settings import VECTOR_METHODS, ProjectorSettings, VectorSettings

VECTOR = VectorSettings()
PROJECTOR = ProjectorSettings()

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
    from timemachine.pipeline import normalize_layers

    try:
        return normalize_layers(value)
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
    p.add_argument("--method", choices=VECTOR_METHODS, default=VECTOR.method,
                   help="pair: one of each; mean: difference of averages; linear: classifier normal (>= 2 per side)")
    p.add_argument("--species", default=argparse.SUPPRESS,
                   help="dog, cat, wild or any short text (default: from the zoo model's name, else none)")
    p.add_argument("--notes", default=argparse.SUPPRESS, help="free text kept with the vector")
    p.add_argument("--strength", type=float, default=VECTOR.default_strength, help="default strength when rendering")
    p.add_argument("--layers", type=_layers_text, default=VECTOR.default_layers,
                   help="default layers when rendering: all, coarse, middle, fine, or indices like 0-3,8")
    p.add_argument("--orthogonal-to", action="append", default=argparse.SUPPRESS, metavar="VECTOR",
                   help="remove the component along another saved vector (name or file); repeatable")
    p.add_argument("--batch-size", type=int, default=PROJECTOR.batch_size, dest="projection_batch_size",
                   help="photos projected together (memory grows with it)")
    p.add_argument("--force", action="store_true", help="replace an existing vector of the same name")
    common.add_model_arguments(p)
    common.add_projection_arguments(p)
    common.add_framing_arguments(p, several=True)
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
    p.add_argument("--strength", type=float, default=VECTOR.default_strength, help="default strength when rendering")
    p.add_argument("--layers", type=_layers_text, default=VECTOR.default_layers,
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


def run_build(args: argparse.Namespace) -> int:
    from timemachine.pipeline import VectorBuildRequest, VectorExample, check_vector_build

    if args.pti:
        raise AgeVectorError("pivotal tuning changes the generator, not the latent, so it cannot improve an age "
                             "vector; leave out --pti")
    photos = [path for path in args.puppy + args.adult if not path.lower().endswith(".npz")]
    framing = common.alignments(args, photos)
    examples = [VectorExample(role=role, name=path, path=path, alignment=framing.get(path))
                for role, paths in (("puppy", args.puppy), ("adult", args.adult)) for path in paths]
    request = VectorBuildRequest(
        name=args.name, examples=examples,
        settings=VectorSettings(method=args.method, default_strength=args.strength, default_layers=args.layers),
        projection=common.projection_request(args, []), species=getattr(args, "species", None),
        notes=getattr(args, "notes", ""), orthogonal_to=list(getattr(args, "orthogonal_to", [])),
        replace=args.force)
    # Everything that can be refused is refused before the model loads and long before anything is projected.
    check_vector_build(common.environment(args), request)
    pipe = common.load_pipeline(args)
    pipe.check(request)      # the examples are read next, in the job, before VGG16 is loaded for the photos
    with common.progress_bars(min(len(examples), args.projection_batch_size)) as bars:
        result = pipe.build_vector(request, progress=bars)
    for item in result.examples:
        for notice in (item.info.get("alignment") or {}).get("notices", []):
            print(f"timemachine: note: {item.name}: {notice}", file=sys.stderr)
        if item.kind == "photo":
            m = item.metrics
            note = " (from cache)" if m.get("cached") else ""
            print(f"{item.role:5}  {item.name}: LPIPS {m['lpips']:.4f}, PSNR {m['psnr']:.2f} dB{note}")
        else:
            print(f"{item.role:5}  {item.name}: latent file")
    print(f"saved age vector {result.vector.name!r}: {_summary(result.vector)} -> {result.path}")
    return EXIT_OK


def run_discover(args: argparse.Namespace) -> int:
    from timemachine.cli.weights import licence_notice_if_downloading
    from timemachine.pipeline import ZOO_SPECIES, DiscoverRequest, check_discovery
    from timemachine.settings import DiscoverySettings

    env = common.environment(args)
    request = DiscoverRequest(
        name=args.name, species=args.species, breed=args.breed, young=args.young, adult=args.adult,
        notes=args.notes, use_cache=not args.no_cache, replace=args.force,
        settings=DiscoverySettings(samples=args.samples, seed=args.seed, truncation_psi=args.truncation,
                                   resolution=args.resolution, batch_size=args.batch_size,
                                   confidence=args.confidence, min_confident=args.min_confident),
        vector=VectorSettings(default_strength=args.strength, default_layers=args.layers))
    # Everything that can be refused is refused before the model and CLIP load and long before any sample.
    if args.species is None and (args.model or env.model) not in ZOO_SPECIES:
        raise AgeVectorError("which animals does this model make? give --species dog, cat or wild")
    species = check_discovery(env, request, args.model or env.model)
    pipe = common.load_pipeline(args)
    if env.clip_weights is None:
        licence_notice_if_downloading("clip-vit-b-32", env=env)
    pipe.labeller(species, young=request.young, adult=request.adult, breed=request.breed)
    done = [0]
    with common.ProgressBars({"sample": "discovering"}) as bars:
        def on_progress(event) -> None:
            done[0] = event.done
            bars(event)

        try:
            result = pipe.discover(request, progress=on_progress)
        except (KeyboardInterrupt, Terminated) as exc:
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
            if request.use_cache:
                exc.args = (f"{what} after {done[0]} of {request.settings.samples} samples; they are cached: run "
                            "the same command again to continue",)
            raise
    info, vector, samples = result.info, result.vector, request.settings.samples
    reused = samples - info["rendered_now"]
    print(f"saved age vector {vector.name!r}: {info['young']} young and {info['adult']} adult of "
          f"{samples} samples (rendered at {info['resolution']} px, {reused} from the cache), held-out "
          f"accuracy {info['heldout_accuracy']:.2f}, norm {vector.norm:.2f} -> {result.path}")
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
    library = common.vector_library(args)
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


def _binding_lines(args: argparse.Namespace, vector) -> list[str]:
    lines = []
    if vector.model_fingerprint:
        lines.append(f"model:     {printable(vector.model_name) or '-'} (fingerprint {vector.model_fingerprint})")
    if vector.model_zoo:
        zoo = printable(vector.model_zoo)
        lines.append(f"model:     the zoo model {zoo}: applies to a generator loaded as '--model {zoo}' whose file "
                     "matches the zoo's SHA-256 (published, or recorded at its first download: trust on first use)")
        lines.append(f"           {_zoo_record(args, vector.model_zoo)}")
    return lines


def _zoo_record(args: argparse.Namespace, zoo_name: str) -> str:
    """What this machine's zoo knows of the file a zoo-bound vector applies to."""
    from timemachine.errors import TimemachineError
    from timemachine.pipeline import open_zoo

    try:
        zoo = open_zoo(common.environment(args))
        entry = zoo.entries().get(zoo_name)
        if entry is None:
            return f"this timemachine's zoo has no model {printable(zoo_name)}: the vector applies to no model"
        if entry.sha256:
            return f"the zoo publishes its SHA-256: {entry.sha256}"
        record = zoo.checksum_record(zoo.zoo_path(entry))
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
    from timemachine.pipeline import format_indices, layer_groups

    library = common.vector_library(args)
    vector = library.load(args.vector)
    builtin = library.is_builtin(args.vector)
    if args.json:
        json.dump({**vector.metadata(), "builtin": builtin}, sys.stdout, indent=2, sort_keys=True)
        print()
        return EXIT_OK
    print(f"name:      {printable(vector.name)}{' (built-in, read-only: copy it to tune it)' if builtin else ''}")
    print(f"species:   {printable(vector.species) or '-'}")
    print(f"method:    {_summary(vector)}")
    for line in _binding_lines(args, vector):
        print(line)
    print(f"created:   {printable(vector.created)}")
    print(f"defaults:  strength {vector.default_strength:g}, layers {vector.default_layers}")
    if vector.name in library.default_names() and (builtin or not library.is_builtin(vector.name)):
        print("default:   the default vector of its model")
    print(f"shape:     [{vector.num_ws}, {vector.w_dim}]")
    try:
        groups = layer_groups(vector.num_ws)
    except AgeVectorError:
        groups = {}
    for group, rows in groups.items():
        if rows:
            norm = float(vector.direction[rows].double().norm())
            print(f"  {group:7} layers {format_indices(rows):6} norm {norm:.2f}")
    _show_details(vector)
    if vector.notes:
        print(f"notes:     {printable(vector.notes, 2000)}")
    return EXIT_OK


def run_set(args: argparse.Namespace) -> int:
    library = common.vector_library(args)
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
    library = common.vector_library(args)
    vector = library.copy(args.source, args.new, force=args.force)
    print(f"copied {args.source!r} to {vector.name!r} -> {library.path(vector.name)}; tune it with "
          f"'timemachine age-vector set {vector.name} --strength ...'")
    return EXIT_OK


def run_rename(args: argparse.Namespace) -> int:
    path = common.vector_library(args).rename(args.old, args.new, force=args.force)
    print(f"renamed {args.old!r} to {args.new!r} -> {path}")
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    path = common.vector_library(args).delete(args.name)
    print(f"deleted {args.name!r} ({path})")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    path = common.vector_library(args).export(args.name, args.file, force=args.force)
    print(f"exported {args.name!r} -> {path}")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    library = common.vector_library(args)
    vector = library.import_file(args.file, name=getattr(args, "name", None), force=args.force)
    print(f"imported {vector.name!r}: {_summary(vector)} -> {library.path(vector.name)}")
    return EXIT_OK


def run_orthogonalize(args: argparse.Namespace) -> int:
    from timemachine.errors import AlreadyExists
    from timemachine.pipeline import check_vector_name

    library = common.vector_library(args)
    vector = library.load(check_vector_name(args.name))
    new_name = check_vector_name(getattr(args, "new_name", vector.name))
    if new_name != vector.name and library.path(new_name).exists() and not args.force:
        raise AlreadyExists(f"an age vector named {new_name!r} already exists")
    others = [library.load(spec) for spec in args.against]
    result = dataclasses.replace(vector.orthogonalized(others), name=new_name)
    path = library.save(result, force=True)
    kept = result.norm / vector.norm
    print(f"{new_name}: orthogonal to {', '.join(o.name for o in others)}; {kept:.0%} of the norm kept -> {path}")
    return EXIT_OK
