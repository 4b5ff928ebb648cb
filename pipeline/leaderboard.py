"""CV against the leaderboard: the competition's past submissions fetched from Kaggle (their public and private
scores) beside what submit recorded of each (its experiments, their local CV and its interval), their rank
correlation, and a plot of one against the other.

    python -m pipeline.submit --scores --competition digit-recognizer
    python -m pipeline.runs --lb --competition digit-recognizer
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from pipeline.errors import PipelineError
from pipeline.kaggle_client import authenticated, call

PAGE = 100  # submissions fetched (Kaggle lists the latest first)
LOG = Path("submissions") / "submissions.csv"  # what submit recorded of every submission it sent
COLUMNS = ["date", "competition", "file", "sha256", "message", "exp", "metric", "cv", "ci_low", "ci_high", "kernel"]


def fetch(competition: str) -> pd.DataFrame:
    """The competition's submissions as Kaggle lists them: date, file, message, status, public, private."""
    api = authenticated()
    listed = call("submissions list", competition, api.competition_submissions, competition, page_size=PAGE) or []
    rows = [{"kaggle_date": pd.Timestamp(s.date).tz_localize("UTC") if s.date is not None and pd.Timestamp(s.date).tzinfo
             is None else pd.Timestamp(s.date), "file": s.file_name or "", "message": s.description or "",
             "status": getattr(s.status, "name", str(s.status)).lower(), "public": _score(s.public_score),
             "private": _score(s.private_score), "ref": s.ref} for s in listed if s is not None]
    return pd.DataFrame(rows, columns=["kaggle_date", "file", "message", "status", "public", "private", "ref"])


def _score(text) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def check_log(log: Path) -> None:
    """Before a submission is sent: its record can be appended (submit refuses a foreign file or a folder there)."""
    if log.exists() and not log.is_file():
        raise PipelineError(f"{log}: is not a file; move it aside (submit records each submission there), nothing sent")
    if log.is_file():
        try:
            header = list(pd.read_csv(log, nrows=0).columns)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            header = []
        if header != COLUMNS:
            raise PipelineError(f"{log}: not the submissions table submit writes (header {','.join(COLUMNS)}); move it "
                                "aside, nothing sent")


def read_log(log: Path, competition: str) -> pd.DataFrame:
    if log.exists() and not log.is_file():
        raise PipelineError(f"{log}: is not a file; move it aside")
    if not log.is_file():
        return pd.DataFrame(columns=["date", "file", "message", "exp", "metric", "cv", "ci_low", "ci_high", "sha256"])
    try:
        table = pd.read_csv(log, dtype={"message": str, "file": str, "exp": str, "kernel": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{log}: not a readable submissions table ({str(e).splitlines()[0][:80]}); move it "
                            "aside (submit starts a new one)") from None
    missing = {"date", "competition", "file", "message", "cv"} - set(table.columns)
    if missing:
        raise PipelineError(f"{log}: not the submissions table submit writes (missing {', '.join(sorted(missing))})")
    table["date"] = pd.to_datetime(table["date"], utc=True, errors="coerce", format="ISO8601")
    return table[table["competition"].astype(str) == competition].fillna({"message": "", "file": ""})


def match(kaggle: pd.DataFrame, local: pd.DataFrame) -> pd.DataFrame:
    """Each Kaggle submission with the local record of the same file and message nearest in time (its CV), or none."""
    out = []
    used: set[int] = set()
    for _, k in kaggle.iterrows():
        same = local[(local["file"] == k["file"]) & (local["message"] == k["message"]) & ~local.index.isin(used)]
        if len(same):
            gap = (same["date"] - k["kaggle_date"]).abs() if not pd.isna(k["kaggle_date"]) else None
            best = gap.idxmin() if gap is not None and gap.notna().any() else same.index[-1]  # no usable date: the latest
            used.add(best)
            rec = local.loc[best]
            out.append(k.to_dict() | {"exp": rec.get("exp", ""), "metric": rec.get("metric", ""),
                                      "cv": rec["cv"], "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high")})
        else:
            out.append(k.to_dict() | {"exp": "", "metric": "", "cv": np.nan, "ci_low": np.nan, "ci_high": np.nan})
    return pd.DataFrame(out)


def scores(competition: str, log: Path, figure: Path | None = None) -> pd.DataFrame:
    """Print the competition's submissions with CV beside LB, their rank correlation; plot them."""
    kaggle = fetch(competition)
    if kaggle.empty:
        raise PipelineError(f"kaggle: no submissions to {competition} yet; send one with: python -m pipeline.submit "
                            "submissions/<exp>.csv -m '...'")
    table = match(kaggle, read_log(log, competition))
    for c in ("cv", "ci_low", "ci_high"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    shown = pd.DataFrame({
        "date": [d.strftime("%Y-%m-%d %H:%M") if d is not pd.NaT else "-" for d in table["kaggle_date"]],
        "file": table["file"], "message": table["message"].str.slice(0, 30), "exp": table["exp"].fillna(""),
        "cv": [f"{c:.5f}" if c == c else "-" for c in table["cv"]],
        "ci95": [f"[{lo:.5f}, {hi:.5f}]" if lo == lo else "-" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "public": [f"{v:.5f}" if v == v else table["status"].iloc[i] for i, v in enumerate(table["public"])],
        "private": [f"{v:.5f}" if v == v else "-" for v in table["private"]]})
    print(shown.to_string(index=False))
    both = table[table["cv"].notna() & table["public"].notna()]
    if len(both) >= 3:
        rho = spearmanr(both["cv"], both["public"]).statistic
        print(f"CV against public LB over {len(both)} submissions: Spearman rank correlation {rho:+.3f} "
              "(+1: the CV orders submissions as the leaderboard does)")
    else:
        print(f"{len(both)} submission(s) with both a recorded CV and a public score: the rank correlation needs 3")
    figure = figure or log.with_name("cv_vs_lb.png")
    if len(both):
        draw(both, figure, competition)
        print(f"plot: {figure}")
    return table


def draw(both: pd.DataFrame, path: Path, competition: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    err = np.vstack([both["cv"] - both["ci_low"], both["ci_high"] - both["cv"]])
    ax.errorbar(both["cv"], both["public"], xerr=np.where(np.isfinite(err), err, 0), fmt="o", capsize=3)
    for _, r in both.iterrows():
        ax.annotate(str(r["exp"] or r["file"])[:20], (r["cv"], r["public"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    lo = float(np.nanmin([both["cv"].min(), both["public"].min()]))
    hi = float(np.nanmax([both["cv"].max(), both["public"].max()]))
    ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=0.8)
    ax.set_xlabel("local CV (95% bootstrap interval)")
    ax.set_ylabel("public leaderboard")
    ax.set_title(f"{competition}: CV against LB", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
