"""The AutoGluon side of `python -m pipeline.bench --portfolio` (pipeline.bench.portfolio), run as a script by the
Python that has autogluon.tabular installed (its own environment if need be: this file imports nothing of the
pipeline). Argument: one JSON object (train, test, label, id, features, problem_type, eval_metric, time_limit,
presets, out, path). Writes the test predictions to `out` (CSV: id, then one column per class probability or the
predicted value) and prints one JSON line: wall seconds, peak resident memory, the models of its leaderboard.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def main(args: dict) -> dict:
    import pandas as pd
    from autogluon.tabular import TabularPredictor

    train = pd.read_csv(args["train"])
    test = pd.read_csv(args["test"])
    started = time.perf_counter()
    predictor = TabularPredictor(label=args["label"], problem_type=args["problem_type"],
                                 eval_metric=args["eval_metric"], path=args["path"], verbosity=1)
    predictor.fit(train[args["features"] + [args["label"]]], presets=args["presets"], time_limit=args["time_limit"])
    fit_seconds = time.perf_counter() - started
    x = test[args["features"]]
    if args["problem_type"] == "regression":
        out = pd.DataFrame({"value": predictor.predict(x).to_numpy()})
    else:
        out = predictor.predict_proba(x).reset_index(drop=True)
        out.columns = [str(c) for c in out.columns]
    out.insert(0, args["id"], test[args["id"]].to_numpy())
    out.to_csv(args["out"], index=False)
    seconds = time.perf_counter() - started
    board = predictor.leaderboard(silent=True)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"wall_seconds": seconds, "fit_seconds": fit_seconds, "peak_rss_mb": peak / 1024,
            "models": int(len(board)), "best_model": str(predictor.model_best)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
