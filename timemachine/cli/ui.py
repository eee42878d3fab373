"""``timemachine ui``: start the Streamlit UI."""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

from timemachine.cli import Terminated
from timemachine.errors import TimemachineError
from timemachine.settings import MAX_MODEL_UPLOAD_MB

HELP = "start the web UI (Streamlit): upload a photo, tune the age vector, watch and download the video"
DESCRIPTION = """\
Start timemachine's web UI and serve it on http://HOST:PORT until interrupted (Ctrl-C).

The UI has two pages: the puppyhood video (upload a photo, crop it, choose the model and an age vector,
watch the projection and download MP4, GIF, stills and the latent) and the age-vector library (build a
breed's vector from puppy and adult photos, tune its defaults).  It runs one projection or render at a time;
other visitors wait in a queue.

Configuration by environment: TIMEMACHINE_MODEL (default model: zoo name or file), TIMEMACHINE_HOME
(weights, vectors, caches), TIMEMACHINE_OFFLINE, TIMEMACHINE_VGG_WEIGHTS, TIMEMACHINE_DEVICE.
Exits with Streamlit's exit code.
"""

#: Largest upload in MB: the UI's model files, bounded by what the loader may allocate (photos have their own,
#: smaller limit in the page).
MAX_UPLOAD_MB = MAX_MODEL_UPLOAD_MB


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("ui", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 to accept connections from other machines)")
    parser.add_argument("--port", type=int, default=8501, help="TCP port to listen on")
    parser.set_defaults(handler=run)


def app_path() -> Path:
    """The UI's entry script: ``timemachine/ui/app.py`` when installed, ``ui/app.py`` in a source checkout."""
    try:
        path = Path(str(importlib.resources.files("timemachine.ui").joinpath("app.py")))
    except ModuleNotFoundError:  # a source checkout that was not installed: ui/ is beside timemachine/
        path = Path(__file__).resolve().parents[2] / "ui" / "app.py"
    if not path.is_file():
        raise TimemachineError(f"the UI's app.py is missing from this installation (looked at {path}); "
                               "reinstall timemachine")
    return path


def streamlit_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
            "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
            # A bug that escapes the app's own error messages shows a generic sentence, never a traceback
            # (which goes to the server log).
            "--client.showErrorDetails", "none"]


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise TimemachineError(f"--port must be between 1 and 65535, got {args.port}")
    if importlib.util.find_spec("streamlit") is None:
        raise TimemachineError("the UI needs Streamlit, which is not installed: pip install 'timemachine[ui]'")
    process = subprocess.Popen(streamlit_command(args.host, args.port))
    try:
        return process.wait()
    except (KeyboardInterrupt, Terminated) as exc:
        # Ctrl-C reaches Streamlit too (same process group); SIGTERM (docker stop) came only to us: pass it on.
        process.send_signal(signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        return code if code >= 0 else 128 - code
