"""Errors a user can cause (a bad file, a missing model, an impossible setting).

Each carries one plain sentence.  The CLI prints it on one line and exits with code 2; the UI shows it
with ``st.error``.  Anything else that escapes is a bug and keeps its traceback.
"""


class TimemachineError(Exception):
    """Base class of all user-facing errors; ``str(error)`` is the sentence to show."""


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
