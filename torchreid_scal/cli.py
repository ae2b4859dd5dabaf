"""What the command-line tools share: this package's errors become one line on stderr and an exit status."""
from __future__ import annotations

import sys
from typing import Callable

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
