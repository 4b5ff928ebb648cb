"""One error type for bad input, and the entry-point wrapper that turns it into one line."""
from __future__ import annotations

import contextlib
import errno
import os
import reprlib
import signal
import sys

QUOTE_LIMIT = 200  # characters of a quoted value, path or row in a message
MESSAGE_LIMIT = 1000  # characters of a whole message: a backstop for a value quoted without quote()
_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, QUOTE_LIMIT, QUOTE_LIMIT, 60
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 8


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text`, or its first `limit` characters and how long it was.

    >>> cut("x" * 5, 3)
    'xxx... (5 characters in all)'
    """
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters in all)"


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) for a message, bounded: reprlib elides long containers without expanding them (a YAML alias
    that would print as megabytes costs nothing), then the text is cut to `limit` characters."""
    return cut(_REPR.repr(value), limit)


def one_line(text: str) -> str:
    """Every run of whitespace (line breaks included) as one space: a library's multi-line error as one line."""
    return " ".join(str(text).split())


class PipelineError(Exception):
    """Bad input or a refused request: shown as one line on stderr, exit status 2.

    Messages quote file names, columns and values from the user's files: line breaks in them are escaped,
    so the message stays one line whatever those hold.
    """

    def __init__(self, message: str):
        text = str(message).replace("\r", "\\r").replace("\n", "\\n")
        if len(text) > MESSAGE_LIMIT:  # keep the start (what is wrong) and the end (what to do about it)
            text = f"{text[:700]} ... {text[-250:]} (message cut: {len(text):,} characters in all)"
        super().__init__(text)


class RankError(PipelineError):
    """Under torchrun: what one rank alone saw (its GPU is missing, ...). Printed by that rank, whichever it is;
    every other error is the same on every rank and printed by rank 0 alone."""


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


def torchrun_rank() -> int:
    """This process's rank under torchrun (RANK, WORLD_SIZE), 0 otherwise."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _refused() -> int:
    """Exit status 2 for a refusal. Under torchrun the ranks refuse together and the first to leave makes torchrun
    stop the others (SIGTERM): a rank already leaving with its refusal ignores that stop, so every rank ends 2."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        with contextlib.suppress(ValueError):  # not the main thread: nothing to protect
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 2


def main_guard(run, argv=None) -> int:
    """Call `run(argv)`; bad input and file-system errors become `error: ...` on stderr and exit 2, Ctrl-C exit 130.

    Under torchrun every rank runs this and only rank 0 speaks (notices and its one error line): the ranks agree on
    every refusal, so N ranks would print N copies. A RankError is printed by the rank that raised it, and a crash's
    traceback by every rank that crashed."""
    rank = torchrun_rank()
    quiet = open(os.devnull, "w") if rank else None  # noqa: SIM115 - closed below
    say = (lambda text: None) if rank else (lambda text: print(text, file=sys.stderr))
    try:
        with contextlib.ExitStack() as stack:
            if quiet:  # notices go to stdout or stderr; rank 0 prints them once
                stack.enter_context(contextlib.redirect_stdout(quiet))
                stack.enter_context(contextlib.redirect_stderr(quiet))
            run(argv)
    except RankError as e:
        print(f"error: {e}", file=sys.stderr)
        return _refused()
    except PipelineError as e:
        say(f"error: {e}")
        return _refused()
    except OSError as e:  # permissions, a folder where a file belongs, a full disk, a name too long
        say(f"error: {PipelineError(describe_os_error(e))}")
        return _refused()
    except KeyboardInterrupt:
        say("interrupted: finished files are kept; nothing half-written was left behind")
        return 130
    finally:
        if quiet:
            quiet.close()
    return 0
