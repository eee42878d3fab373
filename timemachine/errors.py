"""Errors a user can cause (a bad file, a missing model, an impossible setting), and how to word them.

Each error carries one plain sentence, worded for whoever is in front: the library never names a command-line
flag or a UI control.  Where the user can fix the problem by asking again differently, the error carries a
structured *remedy* (:data:`REMEDIES`), which each face renders in its own words: the CLI as the flag to pass
(``timemachine.cli.remedies``), the UI as the control to use (``ui_common.REMEDY_WORDS``).  The CLI prints the
sentence on one line and exits with code 2; the UI shows it with ``st.error``.  Anything else that escapes is a
bug and keeps its traceback.

Text that comes from a file or a visitor (names, keys, notes, paths) goes through :func:`printable` before it
is put into a message, so no control character (a terminal escape, a carriage return) reaches a terminal or a
page; :func:`first_line` turns a third-party exception into one line.
"""

from __future__ import annotations

import re
from typing import Any, Optional

#: Remedies a face can offer.  Keys are stable identifiers; the faces map each to their own words.
REPLACE = "replace"            # the target exists: allow replacing it
FORCE_MODEL = "force_model"    # an age vector belongs to another model: apply it anyway
RESUME = "resume"              # an interrupted projection left a checkpoint: continue from it
LOWER_BATCH = "lower_batch"    # out of memory: fewer images at once
DISCOVER = "discover"          # the model has no age vector: discover one from its own samples
REMEDIES = (REPLACE, FORCE_MODEL, RESUME, LOWER_BATCH, DISCOVER)

#: The longest piece of untrusted text :func:`printable` keeps (longer text is cut with an ellipsis).
MAX_SHOWN = 200

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class TimemachineError(Exception):
    """Base class of all user-facing errors; ``str(error)`` is the sentence to show.

    Args:
        message: one sentence, without any face's vocabulary.
        remedy:  one of :data:`REMEDIES` when asking again differently would succeed, else None.
    """

    def __init__(self, message: str = "", *, remedy: Optional[str] = None):
        super().__init__(message)
        if remedy is not None and remedy not in REMEDIES:
            raise ValueError(f"unknown remedy {remedy!r}")
        self.remedy = remedy

    def __reduce__(self):   # keeps the remedy across pickling (worker processes)
        return (_rebuild_error, (type(self), str(self), self.remedy))


def _rebuild_error(cls: type["TimemachineError"], message: str, remedy: Optional[str]) -> "TimemachineError":
    error = cls.__new__(cls)
    TimemachineError.__init__(error, message, remedy=remedy)
    return error


class CheckpointError(TimemachineError):
    """A network file is not a generator timemachine can load (forbidden content, wrong format, damage)."""


class WeightsError(TimemachineError):
    """A model could not be found, downloaded or verified."""


class ImageError(TimemachineError):
    """A photo could not be read or is unsuitable (not an image, truncated, too small, too large)."""


class LatentError(TimemachineError):
    """A latent file (projected_w.npz) is missing, malformed or does not fit the model."""


class AgeVectorError(TimemachineError):
    """An age vector cannot be built, found, loaded or applied."""


class ProjectionError(TimemachineError):
    """A projection cannot start or resume (bad settings, a checkpoint from another run)."""


class RenderError(TimemachineError):
    """Frames or videos cannot be written (bad settings, no encoder)."""


class AlreadyExists(TimemachineError):
    """The thing to be written exists already; ``remedy`` is :data:`REPLACE`."""

    def __init__(self, message: str, *, remedy: Optional[str] = REPLACE):
        super().__init__(message, remedy=remedy)


class OutOfMemory(TimemachineError):
    """The machine ran out of memory; ``remedy`` says what to lower."""


def printable(text: Any, limit: int = MAX_SHOWN) -> str:
    """``text`` made safe to show: control, bidi and line-separator characters escaped (``\\x1b``,
    ``\\u202e``), cut to ``limit`` characters with '...'.  Non-strings are shown with ``str``."""
    text = text if isinstance(text, str) else str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def quoted(text: Any, limit: int = MAX_SHOWN) -> str:
    """``repr``-style quoting of untrusted text for messages: ``'name'`` with control characters escaped."""
    return "'" + printable(text, limit).replace("'", "\\'") + "'"


def first_line(exc: BaseException, limit: int = MAX_SHOWN) -> str:
    """The first non-empty line of ``str(exc)``, made printable; the exception's type name when it says nothing."""
    for line in str(exc).splitlines():
        if line.strip():
            return printable(line.strip(), limit)
    return type(exc).__name__
