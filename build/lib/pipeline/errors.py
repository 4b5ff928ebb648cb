"""One error type for bad input, and the entry-point wrapper that turns it into one line."""
from __future__ import annotations

import errno
import os
import sys


class PipelineError(Exception):
    """Bad input or a refused request: shown as one line on stderr, exit status 2.

    Messages quote file names, columns and values from the user's files: line breaks in them are escaped,
    so the message stays one line whatever those hold.
    """

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class TrainingDiverged(PipelineError):
    """A fold's loss, predictions or weights became NaN or infinite; tune counts the trial as failed and goes on."""


def describe_os_error(e: OSError) -> str:
    """'<path>: <reason>' for a file-system error, e.g. 'weights/a/oof.csv: permission denied'."""
    reason = (e.strerror or os.strerror(e.errno) if e.errno else str(e)).lower()
    hint = {errno.EACCES: " (check the folder's permissions or choose another path)",
            errno.EROFS: " (read-only file system: choose another path)",
            errno.ENOSPC: " (free some space or write elsewhere)",
            errno.ENAMETOOLONG: " (use a shorter name)"}.get(e.errno, "")
    where = e.filename if e.filename is not None else "file system"
    also = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    return f"{where}{also}: {reason}{hint}"


def main_guard(run, argv=None) -> int:
    """Call `run(argv)`; bad input and file-system errors become `error: ...` on stderr and exit 2, Ctrl-C exit 130."""
    try:
        run(argv)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a folder where a file belongs, a full disk, a name too long
        print(f"error: {PipelineError(describe_os_error(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept; nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0
