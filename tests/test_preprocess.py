"""Per-fold table preprocessing: fitted on the fold's training rows only, JSON round trip, unseen categories."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import preprocess
from pipeline.errors import PipelineError

NAMES = ["age", "city", "income"]


def table(n: int = 40, seed: int = 0) -> np.ndarray:
    """(n, 3) float32: age (numeric, some NaN), city (codes 0..3 of 4, some NaN), income (numeric)."""
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(40, 10, n), rng.integers(0, 3, n), rng.normal(0, 1, n)], 1).astype(np.float32)
    x[::7, 0] = np.nan
    x[::9, 1] = np.nan
    return x


def fit(x, **kw):
    return preprocess.fit(x, [1], [4], NAMES, **kw)


def test_matches_sklearn_imputer_scaler_and_onehot():
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train, valid = table(40, 0), table(10, 1)
    z = preprocess.apply(fit(train), valid)
    reference = make_pipeline(SimpleImputer(strategy="median"), StandardScaler()).fit(train[:, [0, 2]])
    np.testing.assert_allclose(z[:, :2], reference.transform(valid[:, [0, 2]]), rtol=1e-5, atol=1e-5)
    seen = np.nan_to_num(train[:, [1]], nan=-1)  # as sklearn sees it, with missing left out of the categories
    encoder = OneHotEncoder(handle_unknown="ignore", categories=[np.unique(seen[seen >= 0])]).fit(seen)
    onehot = encoder.transform(np.nan_to_num(valid[:, [1]], nan=-1)).toarray()
    np.testing.assert_array_equal(z[:, 2:5], onehot)
    np.testing.assert_array_equal(z[:, 5], onehot.sum(1) == 0)  # the reserved slot takes what the encoder drops
    assert z.dtype == np.float32 and z.shape == (10, 6) and np.isfinite(z).all()


def test_fitted_on_fold_rows_only_the_leak_is_visible():
    x = table(60)
    x[40:, 0] += 50  # the validation rows come from another range of ages
    train, valid = x[:40], x[40:]
    fold, leaky = fit(train), fit(x)
    assert fold["numeric"]["mean"][0] == pytest.approx(_imputed_mean(train[:, 0]))
    assert fold["numeric"]["mean"][0] != pytest.approx(leaky["numeric"]["mean"][0])
    assert np.abs(preprocess.apply(fold, valid) - preprocess.apply(leaky, valid)).max() > 1.0


def _imputed_mean(v: np.ndarray) -> float:
    return float(np.where(np.isnan(v), np.nanmedian(v), v).mean())


def test_json_round_trip(tmp_path):
    x = table()
    state = fit(x, y=x[:, 2] * 2, select_k=2)
    path = tmp_path / "fold0.preprocess.json"
    preprocess.save(state, path)
    loaded = preprocess.load(path)
    assert loaded == state and json.loads(path.read_text())["version"] == preprocess.VERSION
    np.testing.assert_array_equal(preprocess.apply(loaded, x), preprocess.apply(state, x))
    np.testing.assert_array_equal(preprocess.gbm_apply(loaded, x), preprocess.gbm_apply(state, x))


def test_unseen_and_missing_categories_go_to_the_reserved_slot():
    train = np.array([[1, 0, 0], [2, 1, 0], [3, 0, 0], [4, 1, 0]], dtype=np.float32)  # city 2 and 3 never seen
    state = fit(train)
    rows = np.array([[1, 3, 0], [1, np.nan, 0], [1, 1, 0]], dtype=np.float32)
    z = preprocess.apply(state, rows)
    assert preprocess.output_names(state)[2:] == ["city=0", "city=1", "city=unseen"]
    np.testing.assert_array_equal(z[:, 2:], [[0, 0, 1], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(preprocess.gbm_apply(state, rows)[:, 1], [np.nan, np.nan, 1])
    assert preprocess.gbm_categorical(state) == [1]


def test_missing_numbers_take_the_fold_median_and_stay_finite():
    train = np.array([[1, 0, np.nan], [2, 0, np.nan], [6, 0, np.nan], [np.nan, 0, np.nan], [-np.inf, 0, np.nan]],
                     dtype=np.float32)
    state = fit(train)
    assert state["numeric"]["median"] == [2.0, 0.0]  # inf counts as missing; income: empty in these rows -> median 0
    rows = np.array([[np.nan, 0, 5], [np.inf, 0, np.nan]], dtype=np.float32)
    z = preprocess.apply(state, rows)
    assert np.isfinite(z).all()
    assert z[0, 0] == z[1, 0] == pytest.approx((2 - 2.6) / np.std([1, 2, 6, 2, 2]))
    assert np.isnan(preprocess.gbm_apply(state, rows)[1, 0])


def test_constant_column_gets_scale_one():
    train = table(20)
    train[:, 2] = 7.0
    state = fit(train)
    assert state["numeric"]["scale"][1] == 1.0
    z = preprocess.apply(state, np.array([[30, 0, 7], [30, 0, 9]], dtype=np.float32))
    np.testing.assert_array_equal(z[:, 1], [0.0, 2.0])


@pytest.mark.parametrize("kind", ["regression", "multiclass", "multilabel"])
def test_select_k_keeps_the_informative_column(kind):
    rng = np.random.default_rng(0)
    x = table(80)
    signal = rng.normal(size=80).astype(np.float32)
    x[:, 2] = signal
    y = {"regression": 3 * signal + 0.1 * rng.normal(size=80), "multiclass": (signal > 0).astype(np.int64),
         "multilabel": np.stack([rng.integers(0, 2, 80), signal > 0], 1)}[kind]
    state = preprocess.fit(x, [1], [4], NAMES, y=y, task_kind=kind, select_k=1)
    assert state["kept"] == [2] and preprocess.output_names(state) == ["income"]
    assert preprocess.apply(state, x).shape == (80, 1) and preprocess.gbm_categorical(state) == []


def test_select_k_scores_a_categorical_column_by_its_one_hot_slots():
    x = table(90)
    y = (x[:, 1] == 2) * 5.0 + np.random.default_rng(1).normal(size=90)  # only city matters, not in code order
    state = fit(x, y=y, task_kind="regression", select_k=1)
    assert state["kept"] == [1] and preprocess.gbm_categorical(state) == [0]
    from sklearn.feature_selection import f_regression

    slots = preprocess.apply(fit(x), x)[:, 2:]  # city's one-hot slots, every column kept
    best_slot = np.nanmax(f_regression(slots, y)[0])
    assert state["selection"]["scores"][1] == pytest.approx(best_slot)
    assert preprocess.gbm_apply(state, x).shape == (90, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"select_k": 4, "y": np.zeros(40)}, "--select-features: must be 0 (keep all) to 3"),
    ({"select_k": 1}, "--select-features: feature selection needs the targets of the 40 training rows, got none"),
    ({"task_kind": "ranking"}, "task kind must be one of"),
])
def test_fit_refuses_bad_requests(kwargs, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit(table(40), **kwargs)


def test_fit_refuses_codes_beyond_the_cardinality():
    with pytest.raises(PipelineError, match=r"column 1 holds codes outside 0..1"):
        preprocess.fit(table(), [1], [2], NAMES)


@pytest.mark.parametrize("damage", ["{not json", '["a list"]', "scale0", "nokey", "apply_shape"])
def test_damaged_state_is_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "fold0.preprocess.json"
    state = fit(table())
    if damage == "apply_shape":
        with pytest.raises(PipelineError, match=r"expected rows of 3 raw features .* got shape \(2, 2\)"):
            preprocess.apply(state, np.zeros((2, 2), dtype=np.float32))
        return
    if damage == "scale0":
        state["numeric"]["scale"][0] = 0.0
    if damage == "nokey":
        del state["categorical"]
    path.write_text(damage if damage.startswith(("{", "[")) else json.dumps(state))
    with pytest.raises(PipelineError) as e:
        preprocess.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
