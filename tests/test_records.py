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


def test_experiment_config_round_trips_and_fills_fields_older_files_lack(tmp_path):
    from pipeline.config import Config, ExperimentConfig, to_dict

    resolved = ExperimentConfig.resolve(Config(model="mlp", epochs=7, exp=("a",)), n_splits=3, num_classes=2,
                                        folds_hash="f00", data_spec={"task": {}})
    flat = resolved.to_dict()  # config.json: one flat mapping, as files before the record were written
    assert flat["model"] == "mlp" and flat["n_splits"] == 3 and flat["exp"] == ["a"] and "data" not in flat
    back = ExperimentConfig.from_dict(json.loads(json.dumps(flat)), "config.json")
    assert back == resolved and (back.model, back.setting("epochs"), back.in_chans) == ("mlp", 7, 1)
    older = {k: v for k, v in flat.items() if k not in ("cat_encoding", "num_classes", "data_spec")}
    old = ExperimentConfig.from_dict(older, "config.json")  # written before those fields existed
    assert (old.setting("cat_encoding"), old.num_classes, old.data_spec) == ("onehot", 10, None)
    assert to_dict(Config())["n_splits"] == 5 and old.setting("n_splits") == 3  # the folds', not make_folds' default
    for bad, message in (({"n_splits": 1}, "n_splits must be 2..20, found 1"),
                         ({"in_chans": "3"}, "in_chans must be an integer, found '3'"),
                         ({"data": [1]}, "data must be a mapping")):
        with pytest.raises(PipelineError, match=message):
            ExperimentConfig.from_dict(flat | bad, "config.json")
