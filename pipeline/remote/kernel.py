"""The Kaggle side of a remote run, through the real kaggle client: rules, datasets, push, status, outputs, log."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline.errors import PipelineError

DONE = {"COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED", "GONE"}  # statuses that end a watch
MAX_POLL = 300.0  # seconds between status checks, at most


def check_rules(api, competition: str) -> None:
    """The competition's rules accepted (userHasEntered), else one line; a competition the search does not list
    (a closed one) is left to the push, which Kaggle refuses (403) without accepted rules."""
    from pipeline.kaggle_client import call

    listed = call(f"competition {competition}", competition, api.competitions_list, search=competition)
    found = [c for c in (getattr(listed, "competitions", None) or [])
             if str(getattr(c, "ref", "")).rstrip("/").split("/")[-1] == competition]
    if found and not found[0].user_has_entered:
        raise PipelineError(f"kaggle: accept the rules of {competition} first at "
                            f"https://www.kaggle.com/competitions/{competition}/rules; nothing was uploaded")


def wait_ready(api, dataset_id: str, competition: str, poll: float) -> None:
    """A new dataset version is processed before a kernel can mount it: wait (at most 10 minutes) until it is."""
    from pipeline.kaggle_client import call

    deadline, delay = time.monotonic() + 600, min(poll, 5.0)
    while (status := str(call(f"dataset {dataset_id}", competition, api.dataset_status, dataset_id)).lower()) != "ready":
        if "error" in status or time.monotonic() > deadline:
            raise PipelineError(f"kaggle: dataset {dataset_id} is {status!r}, not ready; see "
                                f"https://www.kaggle.com/datasets/{dataset_id} and run the command again")
        time.sleep(delay)
        delay = min(delay * 1.5, 60.0)


def push(api, folder: Path, kernel_id: str, competition: str) -> int:
    """Push the kernel folder (a new version, which Kaggle starts running); its version number."""
    from pipeline.kaggle_client import call

    response = call(f"kernel {kernel_id}", competition, api.kernels_push, str(folder))
    problems = [getattr(response, "error", None)] + [
        f"{what} {', '.join(bad)} not found" for what, bad in (
            ("dataset", getattr(response, "invalid_dataset_sources", None)),
            ("competition", getattr(response, "invalid_competition_sources", None)),
            ("kernel", getattr(response, "invalid_kernel_sources", None))) if bad]
    problems = [p for p in problems if p]
    if problems:
        raise PipelineError(f"kaggle: kernel {kernel_id} refused: {'; '.join(problems)}")
    return int(getattr(response, "version_number", None) or 1)


def clock(seconds: float) -> str:
    """
    >>> clock(3725.2)
    '1:02:05'
    """
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def status(api, ref: str, competition: str) -> str:
    """The version's KernelWorkerStatus name (QUEUED, RUNNING, COMPLETE, ERROR, ...), GONE when Kaggle has no such
    version (deleted on kaggle.com)."""
    import requests

    from pipeline.kaggle_client import call

    try:
        response = api.kernels_status(ref)
    except requests.exceptions.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return "GONE"
        response = call(f"kernel {ref}", competition, api.kernels_status, ref)  # the other errors, in one line
    except (requests.exceptions.ConnectionError, ValueError):
        response = call(f"kernel {ref}", competition, api.kernels_status, ref)
    return getattr(getattr(response, "status", None), "name", str(getattr(response, "status", "")))


def watch(api, ref: str, competition: str, poll: float, attach: str) -> tuple[str, str]:
    """Poll ref's status (USER/SLUG/VERSION) with back-off until it ends: (status name, Kaggle's failure message).
    Ctrl-C stops watching only (exit 130): the kernel keeps running on Kaggle and `attach` picks it up."""
    started, delay, last, tty = time.monotonic(), poll, None, sys.stdout.isatty()
    try:
        while True:
            try:
                now = status(api, ref, competition)
            except PipelineError as e:  # the network went: the kernel runs on regardless
                raise PipelineError(f"{e}; the kernel keeps running on Kaggle, pick it up with: {attach}") from None
            line = f"kaggle: {ref} {now.lower()} {clock(time.monotonic() - started)}"
            if tty:
                print(f"\r{line}", end="\n" if now in DONE else "", flush=True)
            elif now != last:
                print(line, flush=True)
            last = now
            if now in DONE:
                return now, failure(api, ref) if now != "COMPLETE" else ""
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL)
    except KeyboardInterrupt:
        print(f"\nstopped watching; {ref} keeps running on Kaggle. Pick it up with: {attach}", file=sys.stderr)
        raise SystemExit(130) from None


def failure(api, ref: str) -> str:
    """Kaggle's failure message for an ended version ('' when it gives none)."""
    try:
        return getattr(api.kernels_status(ref), "failure_message", None) or ""
    except Exception:  # noqa: BLE001 - a message to show, never a reason to stop
        return ""


def download(api, ref: str, out: Path, competition: str) -> Path:
    """The version's outputs (everything it left in /kaggle/working) and its log, into a fresh `out`."""
    import shutil

    from pipeline.kaggle_client import call

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        call(f"outputs of {ref}", competition, api.kernels_output, ref, str(out), force=True, quiet=True)
    except ValueError as e:  # the client refuses a name that would land outside `out`
        raise PipelineError(f"kaggle: outputs of {ref}: {e}") from None
    return out


def log_tail(out: Path, slug: str, lines: int = 15) -> str:
    """The last lines of the kernel's log (Kaggle's: a JSON list of {stream_name, time, data}), or a note."""
    path = out / f"{slug}.log"
    if not path.is_file():
        return "(no log)"
    text = path.read_text(errors="replace")
    try:
        text = "".join(part.get("data", "") for part in json.loads(text))
    except (ValueError, AttributeError, TypeError):
        pass
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"
