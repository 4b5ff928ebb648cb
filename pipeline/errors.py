"""One error type for bad input, and the entry-point wrapper that turns it into one line."""
from __future__ import annotations

import sys


class PipelineError(Exception):
    """Bad input or a refused request: shown as one line on stderr, exit status 2."""


def main_guard(run, argv=None) -> int:
    """Call `run(argv)`; a PipelineError becomes `error: ...` on stderr and exit 2, Ctrl-C exit 130."""
    try:
        run(argv)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept; nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0
