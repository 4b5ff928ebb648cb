"""The real kaggle client, imported only when a command talks to Kaggle (it authenticates at import), with one-line
errors for what goes wrong there: no credentials, refused credentials, unaccepted rules, no network."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from pathlib import Path

from pipeline.errors import PipelineError

NO_CREDENTIALS = ("kaggle: no credentials; put kaggle.json (kaggle.com -> Settings -> API -> Create New Token) in "
                  "~/.kaggle/ with chmod 600, or set KAGGLE_USERNAME and KAGGLE_KEY")


def authenticated():
    """An authenticated KaggleApi; missing credentials are one line, not the client's page of help."""
    with contextlib.redirect_stdout(io.StringIO()):  # its import prints a page of auth help on failure
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
            api = KaggleApi()
            api.authenticate()
        except SystemExit:
            raise PipelineError(NO_CREDENTIALS) from None
    return api


def call(what: str, competition: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) through the client; HTTP and network failures become one line saying what failed."""
    import requests

    try:
        return fn(*args, **kwargs)
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else None
        raise PipelineError(explain(status, competition, str(e), what)) from None
    except requests.exceptions.ConnectionError:
        raise PipelineError(f"kaggle: cannot reach the Kaggle API (no network?); {what} not done, try again later") from None
    except ValueError as e:  # the client's own refusals (a 401/403 on a kernel it words itself, a bad name)
        raise PipelineError(f"kaggle: {what}: {str(e).splitlines()[0][:200] if str(e) else 'refused'}") from None


def explain(status: int | None, competition: str, detail: str, what: str = "submission") -> str:
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    return {
        401: "kaggle: credentials refused (401); create a new token at kaggle.com -> Settings -> API",
        403: f"kaggle: {what} refused (403): accept the competition rules first at {rules}",
        404: (f"kaggle: competition {competition!r} not found (404); check --competition" if what == "submission" else
              f"kaggle: {what}: not found (404); check --competition {competition!r} and the dataset or notebook name"),
        429: "kaggle: daily submission limit reached (429); try again tomorrow",
    }.get(status, f"kaggle: {what} failed ({status}: {detail.splitlines()[0][:120] if detail else 'no detail'})")


def kaggle_username() -> str:
    """The username the kaggle client would use (KAGGLE_USERNAME, or ~/.kaggle/kaggle.json), else a placeholder
    that --push refuses."""
    user = os.environ.get("KAGGLE_USERNAME")
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if not user and config.is_file():
        try:
            user = json.loads(config.read_text()).get("username")
        except (ValueError, OSError):
            user = None
    return user or "your-kaggle-username"


def default_slug(exps: tuple[str, ...]) -> str:
    """The weights dataset's slug: the names and -weights when they read back exactly, else a readable prefix and
    a hash of the exact names, so that e2/E2 or (a, b_c)/(a_b, c) never share a folder or a Kaggle dataset.
    Always 9-40 lower-case letters, digits and single dashes (what --dataset accepts).

    >>> default_slug(("r50", "effb3")), default_slug(("E2",))
    ('r50-effb3-weights', 'e2-713a5bb2-weights')
    """
    joined = "-".join(exps)
    # Dash-free lower-case names joined by dashes split back into themselves. A name of 8 hex digits takes the
    # hashed form, whose part before -weights is always 8 hex digits: the two forms cannot meet.
    if len(joined) <= 32 and all(re.fullmatch(r"[a-z0-9]+", e) and not re.fullmatch(r"[0-9a-f]{8}", e) for e in exps):
        return f"{joined}-weights"
    readable = re.sub(r"[^a-z0-9]+", "-", joined.lower()).strip("-")[:23].strip("-")
    digest = hashlib.sha256("\0".join(exps).encode()).hexdigest()[:8]  # names hold no NUL: one text per tuple
    return "-".join(part for part in (readable, digest, "weights") if part)


def upload_dataset(api, folder: Path, dataset_id: str, competition: str, notes: str) -> None:
    """The folder (with its dataset-metadata.json) as dataset_id: created, or a new version when it exists."""
    if exists(api, dataset_id, competition):
        response = call(f"dataset version {dataset_id}", competition, api.dataset_create_version, str(folder), notes,
                        quiet=True, dir_mode="zip")
        done = "new version of"
    else:
        response = call(f"dataset {dataset_id}", competition, api.dataset_create_new, str(folder), public=False,
                        quiet=True, dir_mode="zip")
        done = "created"
    if getattr(response, "error", None):
        raise PipelineError(f"kaggle: dataset {dataset_id}: {response.error}")
    print(f"kaggle: {done} dataset {dataset_id}")


def exists(api, dataset_id: str, competition: str) -> bool:
    import requests

    try:
        api.dataset_status(dataset_id)
        return True
    except requests.exceptions.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return False
        raise PipelineError(explain(e.response.status_code if e.response is not None else None, competition, str(e),
                                    f"dataset {dataset_id}")) from None
