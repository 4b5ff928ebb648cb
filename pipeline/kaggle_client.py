"""The real kaggle client, imported only when a command talks to Kaggle (it authenticates at import), with one-line
errors for what goes wrong there: no credentials, refused credentials, unaccepted rules, no network."""
from __future__ import annotations

import contextlib
import io

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


def explain(status: int | None, competition: str, detail: str, what: str = "submission") -> str:
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    return {
        401: "kaggle: credentials refused (401); create a new token at kaggle.com -> Settings -> API",
        403: f"kaggle: {what} refused (403): accept the competition rules first at {rules}",
        404: (f"kaggle: competition {competition!r} not found (404); check --competition" if what == "submission" else
              f"kaggle: {what}: not found (404); check --competition {competition!r} and the dataset or notebook name"),
        429: "kaggle: daily submission limit reached (429); try again tomorrow",
    }.get(status, f"kaggle: {what} failed ({status}: {detail.splitlines()[0][:120] if detail else 'no detail'})")
