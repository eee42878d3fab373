"""``timemachine age-vector ...``: build, tune and manage the library of age vectors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from timemachine.cli import EXIT_OK, common
from timemachine.errors import AgeVectorError

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
    p.set_defaults(handler=run_set)

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
    from timemachine import age, pipeline

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
    if age.library_path(name).exists() and not args.force:
        raise AgeVectorError(f"an age vector named {name!r} already exists (use --force to replace it)")
    if args.pti:
        raise AgeVectorError("pivotal tuning changes the generator, not the latent, so it cannot improve an age "
                             "vector; leave out --pti")
    for path in args.puppy + args.adult:
        if not os.path.isfile(path):
            raise AgeVectorError(f"no such file: {path}")
    others = [age.load_vector(spec) for spec in orthogonal_to]
    settings, _ = common.projection_settings(args)

    model = common.load_model(args)
    settings = pipeline.with_resolved_precision(settings, model)
    if species is None:
        species = _ZOO_SPECIES.get(str(args.model), "")
    age.check_build_request(name, model, len(args.puppy), len(args.adult), method, species=species,
                            notes=notes, default_strength=args.strength, default_layers=args.layers)
    for other in others:
        other.check_model(model.fingerprint, model.spec)
    inputs = age.prepare_inputs(model, args.puppy, args.adult)     # reads every photo and latent file
    num_photos = sum(item.kind == "photo" for item in inputs)
    if num_photos:
        perceptual = common.load_perceptual(args, model.device)
        cache = None if args.no_cache else pipeline.ProjectionCache(pipeline.cache_root())
        with common.projection_progress(settings, None, min(num_photos, args.batch_size)) as callback:
            age.project_inputs(model, inputs, settings, perceptual, cache=cache, callback=callback,
                               batch_size=args.batch_size)
    vector = age.build_vector_from_inputs(name, model, inputs, method, settings=settings, species=species,
                                          notes=notes, default_strength=args.strength,
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
    path = age.save_to_library(vector, force=args.force)
    print(f"saved age vector {vector.name!r}: {_summary(vector)} -> {path}")
    return EXIT_OK


def _summary(vector) -> str:
    fit = vector.details.get("classifier")
    fit_text = f", classifier accuracy {fit['training_accuracy']:.2f}" if fit else ""
    return (f"{vector.method} of {vector.num_puppies} puppies and {vector.num_adults} adults, "
            f"{'W' if vector.space == 'w' else 'W+'} space, norm {vector.norm:.2f}{fit_text}")


def run_list(args: argparse.Namespace) -> int:
    from timemachine import age

    entries = age.list_vectors()
    if not entries:
        print(f"no age vectors in {age.vectors_dir()}; build one with 'timemachine age-vector build'")
        return EXIT_OK
    rows = [("NAME", "SPECIES", "METHOD", "PUPPIES", "ADULTS", "SPACE", "STRENGTH", "LAYERS", "MODEL", "CREATED")]
    problems = []
    for entry in entries:
        v = entry.vector
        if v is None:
            problems.append(f"{entry.name}: damaged: {entry.problem}")
            continue
        rows.append((v.name, v.species or "-", v.method, str(v.num_puppies), str(v.num_adults),
                     "W" if v.space == "w" else "W+", f"{v.default_strength:g}", v.default_layers,
                     os.path.basename(v.model_name) or v.model_fingerprint, v.created[:10]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for line in problems:
        print(line)
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    from timemachine import age

    vector = age.load_vector(args.vector)
    if args.json:
        json.dump(vector.metadata(), sys.stdout, indent=2, sort_keys=True)
        print()
        return EXIT_OK
    print(f"name:      {vector.name}")
    print(f"species:   {vector.species or '-'}")
    print(f"method:    {_summary(vector)}")
    print(f"model:     {vector.model_name or '-'} (fingerprint {vector.model_fingerprint})")
    print(f"created:   {vector.created}")
    print(f"defaults:  strength {vector.default_strength:g}, layers {vector.default_layers}")
    print(f"shape:     [{vector.num_ws}, {vector.w_dim}]")
    try:
        groups = age.layer_groups(vector.num_ws)
    except AgeVectorError:
        groups = {}
    for group, rows in groups.items():
        if rows:
            norm = float(vector.direction[rows].double().norm())
            print(f"  {group:7} layers {age.format_indices(rows):6} norm {norm:.2f}")
    if vector.details.get("orthogonalized_against"):
        print(f"orthogonal to: {', '.join(vector.details['orthogonalized_against'])}")
    for source in vector.details.get("sources", []):
        quality = f": LPIPS {source['lpips']:.4f}" if "lpips" in source else ""
        print(f"  {source.get('role', '?'):5}  {source.get('file', '?')} ({source.get('kind', '?')}){quality}")
    if vector.notes:
        print(f"notes:     {vector.notes}")
    return EXIT_OK


def run_set(args: argparse.Namespace) -> int:
    from timemachine import age

    vector = age.update_vector(args.name, strength=getattr(args, "strength", None),
                               layers=getattr(args, "layers", None), species=getattr(args, "species", None),
                               notes=getattr(args, "notes", None))
    print(f"{vector.name}: strength {vector.default_strength:g}, layers {vector.default_layers}, "
          f"species {vector.species or '-'}")
    return EXIT_OK


def run_rename(args: argparse.Namespace) -> int:
    from timemachine import age

    path = age.rename_vector(args.old, args.new, force=args.force)
    print(f"renamed {args.old!r} to {args.new!r} -> {path}")
    return EXIT_OK


def run_delete(args: argparse.Namespace) -> int:
    from timemachine import age

    path = age.delete_vector(args.name)
    print(f"deleted {args.name!r} ({path})")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from timemachine import age

    path = age.export_vector(args.name, args.file, force=args.force)
    print(f"exported {args.name!r} -> {path}")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    from timemachine import age

    vector = age.import_vector(args.file, name=getattr(args, "name", None), force=args.force)
    print(f"imported {vector.name!r}: {_summary(vector)} -> {age.library_path(vector.name)}")
    return EXIT_OK


def run_orthogonalize(args: argparse.Namespace) -> int:
    from timemachine import age

    vector = age.load_vector(age.check_vector_name(args.name))
    new_name = age.check_vector_name(getattr(args, "new_name", vector.name))
    if new_name != vector.name and age.library_path(new_name).exists() and not args.force:
        raise AgeVectorError(f"an age vector named {new_name!r} already exists (use --force to replace it)")
    others = [age.load_vector(spec) for spec in args.against]
    result = dataclasses.replace(vector.orthogonalized(others), name=new_name)
    path = age.save_to_library(result, force=True)
    kept = result.norm / vector.norm
    print(f"{new_name}: orthogonal to {', '.join(o.name for o in others)}; {kept:.0%} of the norm kept -> {path}")
    return EXIT_OK
