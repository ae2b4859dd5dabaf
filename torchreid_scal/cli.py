"""What the command-line tools share: this package's errors become one line on stderr and an exit status."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from .checkpoint import CheckpointError, NonFiniteError
from .config import ConfigError
from .datasets import DataError
from .preemption import Preempted

EXIT_CODES = ((ConfigError, 2, "config error"), (DataError, 3, "data error"),
              (NonFiniteError, 4, "stopped"), (CheckpointError, 5, "checkpoint error"),
              (Preempted, 6, "stopped"), (KeyboardInterrupt, 130, "interrupted"))
"""Exit status per outcome: 2 configuration, 3 data, 4 non-finite loss or features, 5 checkpoint, 6 stopped by SIGTERM, SIGUSR1
or SIGINT after writing a checkpoint to resume from (``model.resume auto``), 130 a second SIGINT (no checkpoint)."""


def message(err: BaseException) -> str:
    """``err``'s own message. An error raised in a DataLoader worker comes back re-created around the worker's
    whole traceback (torch's ``ExceptionWrapper``); only its last entry, the original message, is kept."""
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return text
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    lines = text.rstrip().splitlines()
    first = max(i for i, line in enumerate(lines) if line.startswith(prefix) or i == 0)
    return " ".join(lines[first:]).removeprefix(prefix)


def run_tool(job: Callable[[], None]) -> int:
    """Run ``job``; return 0, or print the error that names the culprit and return its status."""
    try:
        job()
    except tuple(kind for kind, _, _ in EXIT_CODES) as err:
        status, label = next((code, label) for kind, code, label in EXIT_CODES if isinstance(err, kind))
        print(f"{label}: {message(err)}" if str(err) else label, file=sys.stderr)
        return status
    return 0


def at_least(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [minimum, maximum]; argparse's usage error names the option otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def existing_folder(text: str) -> str:
    """An argparse ``type``: a folder that exists."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is {'a file' if os.path.lexists(text) else 'missing'}, "
                                         "not a folder")
    return text


def output_folder(text: str) -> str:
    """An argparse ``type``: a folder to write into, existing or to be created (nothing is created here): not a
    file, and in a place where this user may write."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: give a folder for the outputs")
    if os.path.lexists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: give a folder for the outputs")
    existing = os.path.abspath(text)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {existing} is not a writable folder")
    return text
