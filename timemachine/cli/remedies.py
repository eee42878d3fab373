"""How the command line words an error's remedy (see :mod:`timemachine.errors`): as the flag to pass."""

from __future__ import annotations

from timemachine import errors

#: What to append to an error's sentence, per remedy.
WORDS = {
    errors.REPLACE: "pass --force to replace it",
    errors.FORCE_MODEL: "pass --force-model to apply it anyway",
    errors.RESUME: "run the same command with --resume to continue",
    errors.LOWER_BATCH: "lower --batch-size",
    errors.DISCOVER: "make one from the model's own samples with 'timemachine age-vector discover NAME --model "
                     "MODEL' (or build one from photos with 'timemachine age-vector build')",
}


def error_text(exc: errors.TimemachineError) -> str:
    """The error's sentence, followed by its remedy in command-line words when it has one."""
    message = str(exc)
    hint = WORDS.get(getattr(exc, "remedy", None) or "")
    return f"{message}; {hint}" if hint else message
