import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.folds import folds_frame, read_folds
from pipeline.tasks import assign_folds

LABELS = np.repeat(np.arange(10), 23)  # 230 rows, 23 per class


def test_every_row_once_and_stratified():
    folds = assign_folds(LABELS, n_splits=5, seed=0)
    assert folds.shape == LABELS.shape and set(folds) == set(range(5))
    for k in range(5):
        counts = np.bincount(LABELS[folds == k], minlength=10)
        assert counts.max() - counts.min() <= 1  # 23 per class -> 4 or 5 per fold


def test_deterministic_per_seed():
    a, b, c = (assign_folds(LABELS, 5, s) for s in (1, 1, 2))
    assert (a == b).all() and not (a == c).all()


def test_groups_stay_together():
    groups = np.arange(len(LABELS)) // 2
    folds = assign_folds(LABELS, 5, 0, groups=groups)
    assert all(len(set(folds[groups == g])) == 1 for g in np.unique(groups))


def test_too_few_rows_per_class():
    with pytest.raises(PipelineError, match="--n-splits"):
        assign_folds(np.array([0, 0, 1, 1, 1]), n_splits=3, seed=0)


def test_read_folds_refuses_other_data(tmp_path):
    path = tmp_path / "folds.csv"
    folds_frame(np.arange(230), LABELS, assign_folds(LABELS, 5, 0), "abc").to_csv(path, index=False)
    assert read_folds(str(path), "abc", 230).fold.tolist() == assign_folds(LABELS, 5, 0).tolist()
    with pytest.raises(PipelineError, match="different train.csv"):
        read_folds(str(path), "other", 230)


def test_read_folds_refuses_fold_out_of_range(tmp_path):
    path = tmp_path / "folds.csv"
    df = folds_frame(np.arange(230), LABELS, assign_folds(LABELS, 5, 0), "abc")
    df.loc[7, "fold"] = 9
    df.to_csv(path, index=False)
    with pytest.raises(PipelineError, match=r"row 8: fold must be 0\.\.5 .*found 9"):
        read_folds(str(path), "abc", 230)


def test_make_folds_keeps_or_refuses_an_existing_file(tiny_comp, workdir, capsys):
    from pipeline import make_folds

    comp = str(tiny_comp)
    assert make_folds.main(["--data", comp]) == 0
    first = (workdir / "folds/folds.csv").read_bytes()
    assert make_folds.main(["--data", comp]) == 0 and "kept as it is" in capsys.readouterr().out
    assert make_folds.main(["--data", comp, "--seed", "7"]) == 2
    assert "exists with other folds" in capsys.readouterr().err
    assert (workdir / "folds/folds.csv").read_bytes() == first
    assert make_folds.main(["--data", comp, "--seed", "7", "--overwrite"]) == 0
    assert (workdir / "folds/folds.csv").read_bytes() != first
