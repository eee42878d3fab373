"""``timemachine weights ...``: the model zoo, downloads, verification, import and conversion.

Also the helpers other commands use when ``--model SPEC`` downloads: :func:`download_progress` and
:func:`licence_notice_if_downloading` (see timemachine/cli/common.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from timemachine.cli import EXIT_FAILED_CHECK, EXIT_OK

if TYPE_CHECKING:
    from timemachine import pipeline as zoo_module
    from timemachine.env import Environment

HELP = "list, download, verify, import and convert model weights"
DESCRIPTION = """\
The model zoo and the local weight cache.

--model accepts a zoo name (afhqdog, afhqcat, afhqwild), the name of a model you imported, a network file
(an official StyleGAN2-ADA .pkl or a timemachine .safetensors) or an http(s) URL.  Zoo models and URLs are
downloaded on first use into the cache directory ($TIMEMACHINE_HOME/models, or your user data directory),
resumably, and checked against their SHA-256: the published one, or where none is published (NVIDIA's
pickles) the one recorded at the first download.

Offline machines: set TIMEMACHINE_OFFLINE=1 or pass --offline; a missing model then fails at once, naming
the URL to fetch elsewhere and the path to put the file at.

The AFHQ generators are NVIDIA's, under the NVIDIA Source Code License-NC: non-commercial use only.
"""

_STATE_WORDS = {"verified": "verified", "unverified": "present, not verified yet", "partial": "partial download",
                "missing": "not downloaded"}


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("weights", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    commands = parser.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    commands.required = True

    offline = argparse.ArgumentParser(add_help=False)
    offline.add_argument("--offline", action="store_const", const=True, default=None,
                         help="never use the network (same as TIMEMACHINE_OFFLINE=1)")

    p = commands.add_parser("list", help="the zoo: description, licence, size, whether present and verified",
                            description="List the zoo models and imported models, with licence, size and local "
                                        "state (from file stamps; 'verify' re-hashes).", formatter_class=formatter)
    p.set_defaults(handler=run_list)

    p = commands.add_parser("download", parents=[offline], formatter_class=formatter,
                            help="download zoo models (resumable, verified)",
                            description="Download zoo models (or http(s) URLs) into the cache and verify their "
                                        "SHA-256.  An interrupted download resumes where it stopped.")
    p.add_argument("names", nargs="*", metavar="NAME", help="zoo model name or http(s) URL")
    p.add_argument("--all", action="store_true", help="download every zoo entry, VGG16 included")
    p.add_argument("--force", action="store_true", help="download again even when a verified copy is present")
    p.set_defaults(handler=run_download)

    p = commands.add_parser("verify", formatter_class=formatter, help="re-hash local files against their checksums",
                            description="Re-hash downloaded and imported files against the manifest's SHA-256 or "
                                        "the one recorded at first download/import.  Exits with 1 on a mismatch.")
    p.add_argument("name", nargs="?", metavar="NAME", help="one zoo or imported model (default: all local files)")
    p.set_defaults(handler=run_verify)

    p = commands.add_parser("path", formatter_class=formatter, help="where a model's file is (or will be) kept",
                            description="Print the local path of a model (where it is, or where it will be "
                                        "downloaded, or where to put it by hand); without NAME, the cache "
                                        "directory.")
    p.add_argument("name", nargs="?", metavar="NAME", help="zoo model, imported model or URL")
    p.set_defaults(handler=run_path)

    p = commands.add_parser("convert", parents=[offline], formatter_class=formatter,
                            help="write a generator as a safe .safetensors file",
                            description="Convert a generator (a pickle, a zoo name, an imported name or a URL) into "
                                        "timemachine's safetensors format: tensors plus a JSON configuration, no "
                                        "pickle, nothing executable.  The result is loaded back and checked to be "
                                        "the same network.")
    p.add_argument("src", metavar="SRC", help="model spec: file, zoo name, imported name or URL")
    p.add_argument("dst", metavar="DST", help="output file, ending in .safetensors")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(handler=run_convert)

    p = commands.add_parser("import", formatter_class=formatter, help="register your own network under a name",
                            description="Register a network file (official StyleGAN2-ADA pickle or timemachine "
                                        ".safetensors) so that --model NAME finds it.  By default timemachine keeps "
                                        "its own copy in the cache, so moving or deleting the original does not "
                                        "break it; --no-copy uses the file where it is.  The file's SHA-256 is "
                                        "recorded and checked whenever it is loaded.")
    p.add_argument("path", metavar="PATH", help="network file")
    p.add_argument("--name", required=True, help="name to use with --model (letters, digits, '.', '_', '-')")
    p.add_argument("--no-copy", dest="copy", action="store_false", help="use the file in place instead of copying it")
    p.add_argument("--force", action="store_true", help="replace an imported model of the same name")
    p.set_defaults(handler=run_import)

    p = commands.add_parser("remove", formatter_class=formatter, help="delete a download or forget an imported model",
                            description="Delete a downloaded zoo file (with its partial download and recorded "
                                        "checksum) or forget an imported model (deleting timemachine's copy, never "
                                        "your original).")
    p.add_argument("name", metavar="NAME", help="zoo or imported model")
    p.set_defaults(handler=run_remove)


# ----------------------------------------------------------------------------------------------------------
# Helpers shared with other commands


@contextlib.contextmanager
def download_progress(label: str) -> Iterator["zoo_module.DownloadProgress"]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    bar = None

    def callback(done: int, total: Optional[int]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                       file=sys.stderr, disable=None, dynamic_ncols=True)
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield callback
    finally:
        if bar is not None:
            bar.close()


def licence_notice(entry: "zoo_module.ZooEntry") -> None:
    print(f"{entry.name}: {entry.licence}", file=sys.stderr)


def open_zoo(offline: Optional[bool] = None, env: Optional["Environment"] = None) -> "zoo_module.Zoo":
    """The model zoo of ``env`` (default: this process's environment); ``--offline`` (True) overrides its switch."""
    from timemachine.env import Environment
    from timemachine.pipeline import open_zoo as open_pipeline_zoo

    return open_pipeline_zoo(env or Environment.from_environ(), offline)


def licence_notice_if_downloading(spec: str, offline: Optional[bool] = None,
                                  env: Optional["Environment"] = None) -> None:
    """Before a zoo model is downloaded for ``--model SPEC``, show its licence on stderr (not when offline:
    nothing will be downloaded, and the error that follows must stay the only line)."""
    zoo = open_zoo(offline, env)
    if zoo.offline:
        return
    manifest = zoo.entries()
    if spec in manifest and not zoo.zoo_path(manifest[spec]).is_file() and not Path(spec).is_file():
        licence_notice(manifest[spec])


def _trust_note(zoo: "zoo_module.Zoo", path: Path) -> str:
    record = zoo.checksum_record(path) or {}
    digest = record.get("sha256", "")
    how = {"published": "matches the published SHA-256", "recorded": "matches the SHA-256 recorded at first download",
           "first use": "SHA-256 recorded now (nobody publishes one; later downloads must match it)",
           "import": "matches the SHA-256 recorded at import"}.get(record.get("trust", ""), "")
    return f"sha256 {digest[:16]}...; {how}" if digest else how


# ----------------------------------------------------------------------------------------------------------
# Handlers


def run_list(args: argparse.Namespace) -> int:
    from timemachine.pipeline import human_bytes

    zoo = open_zoo()
    statuses = zoo.status()
    rows = [(s.entry.name, s.entry.kind, human_bytes(s.size), _STATE_WORDS[s.state], s.entry.description)
            for s in statuses]
    _table(("NAME", "KIND", "SIZE", "LOCAL", "DESCRIPTION"), rows,
           notes=[f"licence: {s.entry.licence}" for s in statuses])
    imported = zoo.imported()
    if imported:
        print()
        print("imported models (use as --model NAME):")
        imported_rows = []
        for model in imported.values():
            present = model.path.is_file()
            size = human_bytes(model.path.stat().st_size) if present else "-"
            state = ("verified" if zoo.is_verified(model.path, model.sha256) else "present, not verified yet") \
                if present else "FILE MISSING"
            imported_rows.append((model.name, size, state,
                                  f"{model.path} ({'copy' if model.copied else 'in place'})"))
        _table(("NAME", "SIZE", "LOCAL", "FILE"), imported_rows)
    print()
    print(f"cache directory: {zoo.models_dir}")
    return EXIT_OK


def _table(header: tuple, rows: list[tuple], notes: Optional[list[str]] = None) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    indent = " " * (widths[0] + 2)
    for index, row in enumerate([header, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + str(row[-1]))
        if notes and index > 0:
            print(indent + notes[index - 1])


def run_download(args: argparse.Namespace) -> int:
    from timemachine.errors import WeightsError

    zoo = open_zoo(args.offline)
    manifest = zoo.entries()
    names = list(manifest) if args.all else list(args.names)
    if not names:
        raise WeightsError(f"name a model to download ({', '.join(manifest)}), or pass --all")
    for name in names:  # check every name before downloading anything
        if name not in manifest and not name.startswith(("http://", "https://")):
            raise WeightsError(f"the model zoo has no {name!r} (it has {', '.join(manifest)}); "
                               "use 'timemachine weights import' for your own files")
    for name in names:
        if name in manifest:
            entry = manifest[name]
            present = zoo.zoo_path(entry).is_file()
            if (not present or args.force) and not zoo.offline:
                licence_notice(entry)
            with download_progress(name) as progress:
                path = zoo.ensure(name, force=args.force, progress=progress)
            verb = "already present" if present and not args.force else "downloaded"
        else:
            present = zoo.url_path(name).is_file()
            with download_progress(name) as progress:
                path = zoo.resolve(name, progress=progress)
            verb = "already present" if present else "downloaded"
        print(f"{name}: {verb}, {path} ({_trust_note(zoo, path)})")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    from timemachine.errors import WeightsError

    results = open_zoo().verify(args.name)
    if args.name is not None and results[0].state == "missing":
        raise WeightsError(f"{args.name} is not downloaded (expected at {results[0].path})")
    if not results:
        print("nothing to verify: no model is downloaded or imported")
        return EXIT_OK
    status = EXIT_OK
    for result in results:
        actual, expected = _short_digest(result.actual), _short_digest(result.expected)
        if result.state == "ok":
            line = f"OK        {result.label}  sha256 {actual}  {result.path}"
        elif result.state == "recorded":
            line = (f"RECORDED  {result.label}  sha256 {actual} (no reference existed; recorded now)"
                    f"  {result.path}")
        elif result.state == "missing":
            line = f"MISSING   {result.label}  {result.path}"
            status = EXIT_FAILED_CHECK
        else:
            line = f"MISMATCH  {result.label}  sha256 {actual}, expected {expected}  {result.path}"
            status = EXIT_FAILED_CHECK
        print(line)
    return status


def _short_digest(digest: Optional[str]) -> str:
    """The first 16 hex digits of a SHA-256 and '...' ('unknown' where there is none)."""
    return f"{digest[:16]}..." if digest else "unknown"


def run_path(args: argparse.Namespace) -> int:
    zoo = open_zoo()
    if args.name is None:
        print(zoo.models_dir)
        return EXIT_OK
    path = zoo.path(args.name)
    print(path)
    if not path.is_file():
        print(f"({args.name} is not there yet: 'timemachine weights download {args.name}' fetches it, or put the "
              "file there by hand)", file=sys.stderr)
    return EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    zoo = open_zoo(args.offline)
    licence_notice_if_downloading(args.src, args.offline)
    with download_progress(args.src) as progress:
        result = zoo.convert(args.src, args.dst, force=args.force, progress=progress)
    print(f"wrote {result.path} (from {result.source}; generator fingerprint {result.fingerprint}, "
          "identical after reloading)")
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    model = open_zoo().import_model(args.path, args.name, copy=args.copy, replace=args.force)
    where = f"copied to {model.path}" if model.copied else f"used in place at {model.path}"
    print(f"imported {model.name}: {where} (sha256 {model.sha256[:16]}..., fingerprint {model.fingerprint}); "
          f"use it with --model {model.name}")
    return EXIT_OK


def run_remove(args: argparse.Namespace) -> int:
    zoo = open_zoo()
    imported = args.name in zoo.imported()
    deleted = zoo.remove(args.name)
    for path in deleted:
        print(f"deleted {path}")
    if imported:
        print(f"forgot imported model {args.name}")
    elif not deleted:
        print(f"{args.name}: nothing to delete (not downloaded)")
    return EXIT_OK
