"""``MetadataCheckpointError``: the one error class for checkpoint problems."""

from __future__ import annotations


class MetadataCheckpointError(Exception):
    """A datarax checkpoint item cannot be saved or restored as asked.

    Raised when an item on disk is damaged, incomplete, of a newer format or saved by a
    different number of processes, and when the object to restore into does not match
    what was saved (a manager with other RNG streams, a target with another structure).
    Its message names the file or the path of the value, what was expected and what was
    found. A restore either returns exactly what was saved or raises this error.

    Examples:
        >>> from datarax.checkpoint import MetadataCheckpointError
        >>> raise MetadataCheckpointError("process_0.jsonl: checksum mismatch")
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: process_0.jsonl: checksum mismatch
    """


MetadataCheckpointError.__module__ = "datarax.checkpoint"


def check_args(handler: str, what: str, args: object, expected: type, example: str) -> None:
    """Raises a ``TypeError`` unless ``args`` is an ``expected`` instance, saying what to pass.

    Args:
        handler: The handler's class name.
        what: The handler method (``save``, ``restore``).
        args: What the caller passed.
        expected: The args class the method takes.
        example: The argument in the example call, e.g. ``manager``.
    """
    if not isinstance(args, expected):
        name = expected.__name__
        raise TypeError(
            f"{handler}.{what} expects args={name}(...), got {type(args).__name__}. Pass it "
            f"as args=, e.g. ocp.args.Composite(data={name}({example}))."
        )
