"""Per-fold preprocessing of a table: fitted on the fold's training rows only, saved as JSON, applied to any rows.

The raw table is (N, F) float32: numeric columns with NaN for missing, categorical columns as codes 0..K-1 (the
category's index in the train file's vocabulary, NaN = missing). Fitting on all rows would leak the validation rows
into the CV, so `fit` sees only the fold's training rows; `apply` (the MLP's input) and `gbm_apply` (LightGBM's)
need nothing but the JSON state, so inference runs no scikit-learn object and loading runs no code.

    state = fit(x[train_rows], categorical, cardinalities, names, y[train_rows], "regression", select_k=20)
    save(state, "weights/<exp>/fold0.preprocess.json")
    z = apply(load("weights/<exp>/fold0.preprocess.json"), x_test)        # (n, F') float32, finite

Multilabel targets: feature selection scores every label and keeps a column by its best score over the labels.
Non-finite numbers (inf) count as missing, like NaN.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pipeline.io import read_json, write_json
from pipeline.errors import PipelineError, quote

VERSION = 1
TASK_KINDS = ("multiclass", "multilabel", "regression")
ENCODINGS = ("onehot", "embed")  # categorical columns for the MLP: one-hot blocks, or slot indices for embeddings
FLOAT32_MAX = float(np.finfo(np.float32).max)


def fit(x: np.ndarray, categorical: list[int], cardinalities: list[int], names: list[str], y: np.ndarray | None = None,
        task_kind: str = "regression", select_k: int = 0, encoding: str = "onehot") -> dict:
    """The preprocessing of the rows `x` (a fold's training rows), as a JSON-able dict. encoding: how apply gives
    categorical columns to the MLP, one-hot blocks ('onehot') or one slot index each for an embedding ('embed').

    >>> x = np.array([[1.0, 0], [3.0, 1], [np.nan, 1], [5.0, np.nan]], dtype=np.float32)
    >>> state = fit(x, categorical=[1], cardinalities=[3], names=["age", "city"])
    >>> state["numeric"]["median"], state["categorical"]["categories"]
    ([3.0], [[0, 1]])
    >>> output_names(state)
    ['age', 'city=0', 'city=1', 'city=unseen']
    """
    x = _check_fit_input(x, categorical, cardinalities, names, task_kind, select_k, y)
    names = [str(n) for n in names] or [f"f{j}" for j in range(x.shape[1])]
    numeric = [j for j in range(x.shape[1]) if j not in set(categorical)]
    state = {"version": VERSION, "names": names, "n_features": x.shape[1], "kept": list(range(x.shape[1])),
             "numeric": _fit_numeric(x[:, numeric], numeric),
             "categorical": _fit_categorical(x, list(categorical), list(cardinalities)),
             "selection": {"k": 0, "score_func": None, "scores": None}}
    if select_k:
        state = _select(state, x, y, task_kind, select_k)
    if encoding not in ENCODINGS:
        raise PipelineError(f"--cat-encoding: must be {' or '.join(ENCODINGS)}, got {quote(encoding)}")
    return state | {"encoding": encoding}


def apply(state: dict, x: np.ndarray) -> np.ndarray:
    """(n, F) raw rows -> (n, F') float32 for the MLP: standardized numeric columns, then one one-hot block per
    categorical column (one slot per category seen in training, then one slot for unseen or missing); with the
    'embed' encoding, one column per categorical column holding that slot's index instead (embedding_sizes). Finite.

    >>> x = np.array([[1.0, 0], [3.0, 1], [1.0, 1], [3.0, 0]], dtype=np.float32)
    >>> state = fit(x, [1], [3], ["age", "city"])  # age: median 2, mean 2, scale 1; city: codes 0 and 1 seen
    >>> apply(state, np.array([[np.nan, 2], [4.0, 1], [1.0, np.nan]], dtype=np.float32)).tolist()
    [[0.0, 0.0, 0.0, 1.0], [2.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 1.0]]
    """
    x = _check_rows(state, x)
    num, cat = state["numeric"], state["categorical"]
    v = x[:, num["columns"]].astype(np.float64)  # (n, numeric kept)
    v = np.where(np.isfinite(v), v, np.asarray(num["median"]))
    blocks = [(v - np.asarray(num["mean"])) / np.asarray(num["scale"])]
    embed = state.get("encoding", "onehot") == "embed"  # states from before embeddings: one-hot
    for j, seen in zip(cat["columns"], cat["categories"]):
        if embed:
            blocks.append(_slots(x[:, j], seen)[:, None].astype(np.float64))
            continue
        onehot = np.zeros((len(x), len(seen) + 1))  # (n, seen + unseen/missing slot)
        onehot[np.arange(len(x)), _slots(x[:, j], seen)] = 1.0
        blocks.append(onehot)
    out = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(x), 0))
    return np.clip(out, -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)  # a huge raw value stays finite


def gbm_apply(state: dict, x: np.ndarray) -> np.ndarray:
    """(n, F) raw rows -> (n, kept) float32 for LightGBM: the kept columns as they are (NaN kept, codes kept),
    except categories the fold's training rows never saw, which become NaN (missing) rather than a code with no tree.

    >>> x = np.array([[1.0, 0], [3.0, 1], [1.0, 1], [3.0, 0]], dtype=np.float32)
    >>> state = fit(x, [1], [3], ["age", "city"])  # code 2 never seen in these rows
    >>> gbm_apply(state, np.array([[np.nan, 2], [4.0, 1]], dtype=np.float32)).tolist(), gbm_categorical(state)
    ([[nan, nan], [4.0, 1.0]], [1])
    """
    x = _check_rows(state, x)
    out = x[:, state["kept"]].astype(np.float32)  # (n, kept) copy
    out[~np.isfinite(out)] = np.nan
    cat = state["categorical"]
    for j, seen in zip(cat["columns"], cat["categories"]):
        col = state["kept"].index(j)
        out[_slots(out[:, col], seen) == len(seen), col] = np.nan
    return out


def embedding_sizes(state: dict) -> list[int]:
    """With the 'embed' encoding, the slots (seen categories + unseen) of each categorical column, whose indices are
    apply's last columns in this order; [] for one-hot.

    >>> x = np.array([[1.0, 0], [3.0, 1], [1.0, 1], [3.0, 0]], dtype=np.float32)
    >>> state = fit(x, [1], [3], ["age", "city"], encoding="embed")
    >>> embedding_sizes(state), apply(state, np.array([[1.0, 1], [3.0, 2]], dtype=np.float32)).tolist()
    ([3], [[-1.0, 1.0], [1.0, 2.0]])
    """
    if state.get("encoding", "onehot") != "embed":
        return []
    return [len(seen) + 1 for seen in state["categorical"]["categories"]]


def gbm_categorical(state: dict) -> list[int]:
    """Indices of the categorical columns among gbm_apply's columns (LightGBM's categorical_feature)."""
    return [state["kept"].index(j) for j in state["categorical"]["columns"]]


def output_names(state: dict) -> list[str]:
    """Names of apply's columns: numeric names, then `name=code` per seen category and `name=unseen`."""
    names = state["names"]
    out = [names[j] for j in state["numeric"]["columns"]]
    for j, seen in zip(state["categorical"]["columns"], state["categorical"]["categories"]):
        embed = state.get("encoding", "onehot") == "embed"
        out += [names[j]] if embed else [f"{names[j]}={c}" for c in seen] + [f"{names[j]}=unseen"]
    return out


def gbm_names(state: dict) -> list[str]:
    """Names of gbm_apply's columns: the kept raw columns."""
    return [state["names"][j] for j in state["kept"]]


def save(state: dict, path: str | Path) -> None:
    _check_state(state, path)
    write_json(state, path)


def load(path: str | Path, features: dict | None = None) -> dict:
    """A saved state, its structure checked: a damaged or foreign file is one line naming it. `features`: the
    experiment's (DataSpec.features: names, categorical, cardinalities), which the state must agree with: category
    codes then stay within the train file's vocabulary, so a state cannot ask for millions of one-hot slots."""
    state = read_json(path, "preprocessing state")
    _check_state(state, path)
    if features is not None:
        cat = state["categorical"]
        expected = dict(zip(features.get("categorical", []), features.get("cardinalities", [])))
        if state["names"] != list(features.get("names", [])) or \
                any(expected.get(j) != c for j, c in zip(cat["columns"], cat["cardinalities"])):
            raise PipelineError(f"{path}: its columns or category counts are not the experiment's (config.json's "
                                "data_spec); a preprocessing state from other data? retrain this fold with --overwrite")
    return state


# -- fitting ---------------------------------------------------------------------------------------------------------
def _fit_numeric(v: np.ndarray, columns: list[int]) -> dict:
    """Median imputation then standardization, as sklearn's Pipeline(SimpleImputer, StandardScaler) would fit them;
    a column empty in these rows gets median 0, a constant one scale 1 (StandardScaler's rule)."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    if not columns:
        return {"columns": [], "median": [], "mean": [], "scale": []}
    imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(v)
    scaler = StandardScaler().fit(imputer.transform(v))
    return {"columns": columns, "median": _floats(imputer.statistics_), "mean": _floats(scaler.mean_),
            "scale": _floats(scaler.scale_)}


def _fit_categorical(x: np.ndarray, columns: list[int], cardinalities: list[int]) -> dict:
    """The codes each categorical column holds in these rows (missing excluded): one one-hot slot each."""
    from sklearn.preprocessing import OneHotEncoder

    categories = []
    if columns:
        encoder = OneHotEncoder(handle_unknown="ignore").fit(x[:, columns].astype(np.float64))
        categories = [[int(c) for c in seen if np.isfinite(c)] for seen in encoder.categories_]
    return {"columns": columns, "cardinalities": cardinalities, "categories": categories}


def _select(state: dict, x: np.ndarray, y, task_kind: str, select_k: int) -> dict:
    """Keep the `select_k` original columns with the best univariate score (SelectKBest's f_regression or f_classif
    on the preprocessed columns; a categorical column scores its best one-hot slot). Ties keep the earlier column."""
    from sklearn.feature_selection import SelectKBest, f_classif, f_regression

    score_func = f_regression if task_kind == "regression" else f_classif
    z = apply(state, x)  # (n, F') every column, fitted on these same rows
    targets = np.asarray(y, dtype=np.float64).reshape(len(x), -1)  # (n, 1), or (n, labels) for multilabel
    with warnings.catch_warnings():  # a one-hot slot constant in these rows scores NaN: it carries nothing
        warnings.simplefilter("ignore")
        per_label = [SelectKBest(score_func, k="all").fit(z, t).scores_ for t in targets.T]
    per_output = np.nan_to_num(np.max(per_label, axis=0), nan=0.0, posinf=FLOAT32_MAX)
    scores = np.zeros(state["n_features"])
    np.maximum.at(scores, _sources(state), per_output)
    kept = sorted(np.argsort(-scores, kind="stable")[:select_k].tolist())
    num, cat = state["numeric"], state["categorical"]
    keep_num = [i for i, j in enumerate(num["columns"]) if j in kept]
    keep_cat = [i for i, j in enumerate(cat["columns"]) if j in kept]
    return state | {"kept": kept,
                    "numeric": {key: [num[key][i] for i in keep_num] for key in num},
                    "categorical": {key: [cat[key][i] for i in keep_cat] for key in cat},
                    "selection": {"k": select_k, "score_func": score_func.__name__, "scores": _floats(scores)}}


def _sources(state: dict) -> np.ndarray:
    """The original column of each of apply's columns, (F',) int."""
    cat = state["categorical"]
    return np.array(state["numeric"]["columns"] + [j for j, seen in zip(cat["columns"], cat["categories"])
                                                   for _ in range(len(seen) + 1)], dtype=np.int64)


def _slots(codes: np.ndarray, seen: list[int]) -> np.ndarray:
    """One-hot slot of each code: its index among the seen codes, or len(seen) when unseen or missing."""
    seen_arr = np.asarray(seen, dtype=np.float64)
    pos = np.searchsorted(seen_arr, codes)  # NaN sorts last: the unseen slot
    hit = pos < len(seen_arr)
    hit[hit] = seen_arr[pos[hit]] == codes[hit]
    return np.where(hit, pos, len(seen_arr))


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


# -- validation ------------------------------------------------------------------------------------------------------
def _check_fit_input(x, categorical, cardinalities, names, task_kind, select_k, y) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise PipelineError(f"preprocessing: expected a non-empty (rows, features) table, got shape {x.shape}")
    n_features = x.shape[1]
    if names and len(names) != n_features:
        raise PipelineError(f"preprocessing: {len(names)} feature names for {n_features} columns")
    if len(set(categorical)) != len(categorical) or any(not 0 <= j < n_features for j in categorical):
        raise PipelineError(f"preprocessing: categorical columns must be distinct indices in 0..{n_features - 1}, "
                            f"got {quote(list(categorical))}")
    if len(cardinalities) != len(categorical):
        raise PipelineError(f"preprocessing: {len(cardinalities)} cardinalities for {len(categorical)} "
                            "categorical columns")
    for j, k in zip(categorical, cardinalities):
        codes = x[:, j][~np.isnan(x[:, j])]
        if np.any((codes != np.round(codes)) | (codes < 0) | (codes >= k)):
            raise PipelineError(f"preprocessing: column {j} holds codes outside 0..{k - 1} (its cardinality)")
    if task_kind not in TASK_KINDS:
        raise PipelineError(f"preprocessing: task kind must be one of {', '.join(TASK_KINDS)}, got {task_kind!r}")
    if not 0 <= select_k <= n_features:
        raise PipelineError(f"--select-features: must be 0 (keep all) to {n_features} (the table's columns), "
                            f"got {select_k}")
    if select_k and (y is None or len(y) != len(x)):
        raise PipelineError(f"--select-features: feature selection needs the targets of the {len(x)} training "
                            "rows, got " + ("none" if y is None else f"{len(y)}"))
    x = x.copy()
    x[~np.isfinite(x)] = np.nan  # inf counts as missing
    return x


def _check_rows(state: dict, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != state["n_features"]:
        raise PipelineError(f"preprocessing: expected rows of {state['n_features']} raw features "
                            f"(the fold's training table), got shape {x.shape}")
    return x


def _check_state(state, path) -> None:
    try:
        problem = _state_problem(state)
    except (KeyError, TypeError, ValueError) as e:
        problem = f"{type(e).__name__}: {quote(e, 80)}"
    if problem:
        raise PipelineError(f"{path}: not a preprocessing state written by pipeline.preprocess ({problem}); "
                            "retrain this fold with --overwrite")


def _state_problem(state: dict) -> str:
    """What is wrong with a state's types, lengths or ranges ('' if nothing), so apply cannot fail on a hand-edited
    or foreign file."""
    n, num, cat, kept = state["n_features"], state["numeric"], state["categorical"], state["kept"]
    if state["version"] != VERSION:
        return f"version {quote(state['version'])}, expected {VERSION}"
    if state.get("encoding", "onehot") not in ENCODINGS:
        return f"encoding {quote(state['encoding'])}, expected {' or '.join(ENCODINGS)}"
    if len(state["names"]) != n or not all(isinstance(name, str) for name in state["names"]):
        return f"expected {n} feature names"
    if not _ints([n, *kept, *num["columns"], *cat["columns"]]):  # bools are ints to isinstance: not indices here
        return "column indices that are not integers"
    if kept != sorted(set(kept)) or not all(0 <= j < n for j in kept):
        return "kept columns out of range or unsorted"
    if sorted(num["columns"] + cat["columns"]) != kept:
        return "numeric and categorical columns do not make up the kept ones"
    if not len(num["columns"]) == len(num["median"]) == len(num["mean"]) == len(num["scale"]):
        return "numeric statistics of the wrong length"
    if not np.isfinite(np.array(num["median"] + num["mean"] + num["scale"], dtype=np.float64)).all() \
            or not all(s > 0 for s in num["scale"]):
        return "numeric statistics not finite, or a scale <= 0"
    if len(cat["categories"]) != len(cat["columns"]) or not all(
            isinstance(seen, list) and _ints(seen) and seen == sorted(set(seen)) for seen in cat["categories"]):
        return "categories are not one sorted list of integer codes per categorical column"
    cards = cat.get("cardinalities", [])
    if len(cards) != len(cat["columns"]) or not _ints(cards) or \
            any(seen and (seen[0] < 0 or seen[-1] >= c) for seen, c in zip(cat["categories"], cards)):
        return "category codes outside their column's vocabulary"
    return ""


def _ints(values) -> bool:
    return all(type(v) is int for v in values)
