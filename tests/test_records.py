"""The typed records that travel between modules, read back from their files as they were written."""
import json

import pytest

from pipeline.errors import PipelineError
from pipeline.experiment import CVSummary


def test_cv_summary_round_trips_and_derives_its_figures(tmp_path):
    cv = CVSummary("rmse", False, 3, {0: {"rmse": 1.0, "loss": 1.0}, 2: {"rmse": 3.0, "loss": 3.0}},
                   {"rmse": 2.2, "loss": 2.2}, 90, train_seconds=4.5, oof_tta={"rmse": 2.0, "loss": 2.0, "preset": "x"})
    assert (cv.folds_present, cv.complete, cv.score, cv.fold_mean, cv.fold_std) == ([0, 2], False, 2.2, 2.0, 1.0)
    written = json.loads(json.dumps(cv.to_dict()))  # as cv.json holds it: fold numbers become strings
    assert written["fold_mean"] == 2.0 and written["folds_present"] == [0, 2] and written["complete"] is False
    assert CVSummary.from_dict(written) == cv
    older = written | {"oof": {"rmse": 2.2, "log_loss": 2.2}}  # files from before 'loss' was the loss's name
    assert CVSummary.from_dict(older).oof["loss"] == 2.2
    path = tmp_path / "cv.json"
    path.write_text(json.dumps(written | {"oof": {"accuracy": 0.9, "loss": 0.1}}))  # no score in its own metric
    with pytest.raises(PipelineError, match=r"cv.json: damaged CV summary \(KeyError: 'rmse'\)"):
        CVSummary.read(path)
