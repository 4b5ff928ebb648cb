"""The LightGBM learner: one fold fit with early stopping on the competition metric; predict, save, load.

Every table library is one module with these names (pipeline.learners.TABLE_LIBRARIES lists them):

    TITLE, PACKAGE, EXTRA   its name in messages, the package it imports, the extra that installs it
    SUFFIX, ROWS, SEEDED    a fold's model file (fold<k><SUFFIX>); the rows it takes: "gbm" (preprocess.gbm_apply's
                            raw columns, categories as codes) or "vector" (preprocess.apply's); whether a seed changes it
    fit_fold((x_train, y_train), (x_valid, y_valid), categorical, task, params, seed, deadline, threads)
        -> (model, best_iteration, valid_preds)      deadline: time.monotonic() past which it stops at its best so far
    predict(model, x, task) -> (n, outputs) float32        save(model, path, best_iteration)    load(path, num_outputs)
    load_params(path) -> dict      check_task(task, params)      feature_importance(model, names) -> [(name, gain)]
    search_space(trial) -> dict

Rows are preprocess.gbm_apply's: the raw kept columns, NaN = missing, categorical columns as codes (LightGBM's own
categorical splits). Predictions have the task's form: (n, C) class probabilities for multiclass (binary too, though
trained with the "binary" objective), (n, 1) values for regression. Multilabel tasks are refused for now.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from pipeline.io import atomic_path
from pipeline.errors import PipelineError, cut, one_line, quote

TITLE, PACKAGE, EXTRA = "LightGBM", "lightgbm", None  # a runtime dependency: no extra
IMPORTANCE = "total split gain"  # what feature_importance measures (the report's label)
SUFFIX, ROWS, SEEDED = ".txt", "gbm", True
DEFAULTS = {"learning_rate": 0.05, "num_leaves": 31, "feature_fraction": 0.9, "bagging_fraction": 0.8,
            "bagging_freq": 1, "verbosity": -1, "num_threads": 0}  # num_threads 0 = LightGBM's default, all cores
NUM_BOOST_ROUND = 2000  # most trees per class; early stopping usually ends far sooner
EARLY_STOPPING_ROUNDS = 100  # rounds without a better competition metric on the validation rows before stopping
# LightGBM's names for one parameter (its Parameters page): a user's alias replaces our default instead of being
# ignored beside it (LightGBM keeps the main name when both are given).
ALIASES = {
    "num_iterations": ("num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees", "num_round", "num_rounds",
                       "nrounds", "num_boost_round", "n_estimators", "max_iter"),
    "early_stopping_round": ("early_stopping_round", "early_stopping_rounds", "early_stopping", "n_iter_no_change"),
    "learning_rate": ("learning_rate", "shrinkage_rate", "eta"),
    "num_leaves": ("num_leaves", "num_leaf", "max_leaves", "max_leaf", "max_leaf_nodes"),
    "feature_fraction": ("feature_fraction", "sub_feature", "colsample_bytree"),
    "bagging_fraction": ("bagging_fraction", "sub_row", "subsample", "bagging"),
    "bagging_freq": ("bagging_freq", "subsample_freq"),
    "verbosity": ("verbosity", "verbose"),
    "seed": ("seed", "random_seed", "random_state"),
    "num_threads": ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs"),
    "objective": ("objective", "objective_type", "app", "application", "loss"),
}
MAX_PARAM_VALUES = 10_000  # scalars in a --gbm-params file, lists included
# distributed training: LightGBM would wait for peers that never come (every alias LightGBM knows is refused)
NETWORK = ("num_machines", "machines", "machine_list_filename", "local_listen_port", "time_out", "pre_partition")
REGRESSION_OBJECTIVES = ("regression", "regression_l2", "l2", "mean_squared_error", "mse", "l2_root",
                         "root_mean_squared_error", "rmse", "regression_l1", "l1", "mean_absolute_error", "mae", "huber",
                         "fair", "poisson", "quantile", "mape", "mean_absolute_percentage_error", "gamma", "tweedie")
# set by the pipeline: early stopping reads the competition metric alone; classes and columns come from the data
SET_BY_PIPELINE = ("metric", "metrics", "metric_types", "num_class", "num_classes", "categorical_feature",
                   "cat_feature", "categorical_column", "cat_column", "categorical_features")


def fit_fold(train: tuple, valid: tuple, categorical: list[int], task, params: dict, seed: int,
             deadline: float | None = None, threads: int | None = None):
    """Boost on the training rows until the competition metric on the validation rows stops improving for
    early_stopping_round rounds (or `deadline` passes); (booster, best_iteration (1-based trees per class), valid_preds
    at that iteration). `threads`: this process's share of the cores, unless --gbm-params sets it."""
    (x_train, y_train), (x_valid, y_valid) = train, valid
    import lightgbm as lgb

    if threads and not any(alias in params for alias in ALIASES["num_threads"]):
        # LightGBM's own default takes every core, and OpenMP threads spinning against another process's (a --gpus
        # cpu,cpu worker) cost ten times their work
        params = params | {"num_threads": threads}
    lgb_params, rounds, stopping = resolve_params(params, task, seed)
    _check_fold(x_train, y_train, x_valid, y_valid, task)
    _check_feature_indices(lgb_params, np.shape(x_train)[1])
    y_train, y_valid = _targets(y_train, task), _targets(y_valid, task)
    train = lgb.Dataset(x_train, label=y_train, categorical_feature=list(categorical) or "auto")
    valid = train.create_valid(x_valid, label=y_valid)
    try:
        booster = lgb.train(lgb_params, train, num_boost_round=rounds, valid_sets=[valid], valid_names=["valid"],
                            feval=competition_metric(task, y_valid), callbacks=[early_stopping(task, stopping, deadline)])
    except lgb.basic.LightGBMError as e:
        reason = cut(one_line(e), 200)
        raise PipelineError(f"--gbm-params: LightGBM refused the training parameters ({reason})") from None
    best = booster.best_iteration or booster.current_iteration()  # the booster comes back cut to this iteration
    return booster, best, predict(booster, x_valid, task)


def resolve_params(params: dict, task, seed: int) -> tuple[dict, int, int]:
    """(LightGBM parameters, boosting rounds, early-stopping rounds): the defaults and `seed`, `params` (a user's
    --gbm-params) over them under any of LightGBM's aliases, then the objective the task needs."""
    user = dict(params)
    fixed = [key for key in user if key in SET_BY_PIPELINE]
    if fixed:
        raise PipelineError(f"--gbm-params: {fixed[0]!r} is set by the pipeline (early stopping uses the competition "
                            f"metric {task.metric}; classes and categorical columns come from the data); remove it")
    _check_known(user)
    rounds = _int_at_least(_pop(user, "num_iterations", NUM_BOOST_ROUND), "num_iterations")
    stopping = _int_at_least(_pop(user, "early_stopping_round", EARLY_STOPPING_ROUNDS), "early_stopping_round")
    merged = {key: _pop(user, key, default) for key, default in (DEFAULTS | {"seed": seed}).items()}
    objective = _objective(task, _pop(user, "objective", None))
    return merged | user | objective | {"metric": "None"}, rounds, stopping


def competition_metric(task, y_valid: np.ndarray):
    """LightGBM's feval: the competition metric of the validation predictions and its direction, then the task's
    loss, so early stopping keeps the iteration the competition prefers (not the objective's own loss)."""
    def evaluate(preds: np.ndarray, _dataset) -> list[tuple[str, float, bool]]:
        scores = task.scores(_outputs(preds, task), y_valid)
        return [(task.metric, float(scores[task.metric]), task.higher_is_better), ("loss", float(scores["loss"]), False)]
    return evaluate


def early_stopping(task, rounds: int, deadline: float | None = None):
    """A LightGBM callback keeping the iteration task.better prefers: the best competition metric, ties going to
    the lower loss (an AUC of 1.0 from the first tree keeps improving in log loss for many trees), as the torch
    learner picks its epoch. Stops after `rounds` iterations without a better one, or once `deadline` has passed."""
    import time

    import lightgbm as lgb

    best = {"scores": None, "iteration": 0, "results": None}

    def callback(env) -> None:
        results = {item[1]: item[2] for item in env.evaluation_result_list}
        scores = {task.metric: results[task.metric], "loss": results["loss"]}
        if best["results"] is None or task.better(scores, best["scores"]):
            best.update(scores=scores, iteration=env.iteration, results=list(env.evaluation_result_list))
        if env.iteration - best["iteration"] >= rounds or env.iteration == env.end_iteration - 1 or \
                deadline is not None and time.monotonic() > deadline:
            raise lgb.callback.EarlyStopException(best["iteration"], best["results"])
    callback.order = 30  # LightGBM's own early stopping's place among callbacks
    return callback


def predict(booster, x: np.ndarray, task) -> np.ndarray:
    """(n, features) gbm rows -> (n, C) class probabilities or (n, 1) values, float32, at the best iteration."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != booster.num_feature():
        raise PipelineError(f"lightgbm: the model takes rows of {booster.num_feature()} features (the fold's gbm "
                            f"columns), got shape {x.shape}")
    out = _outputs(booster.predict(x, num_iteration=booster.best_iteration or None), task)
    if out.shape[1] != task.num_outputs:
        raise PipelineError(f"lightgbm: the model predicts {out.shape[1]} outputs, the task has {task.num_outputs} "
                            "(a model from another experiment? retrain with --overwrite)")
    return out


def save(booster, path: str | Path, best_iteration: int) -> None:
    """LightGBM's text model with the first `best_iteration` iterations, written atomically."""
    with atomic_path(path) as tmp:
        booster.save_model(str(tmp), num_iteration=best_iteration)


def load(path: str | Path, num_outputs: int | None = None):
    """A saved text model; a truncated or damaged file is one line naming it (checked before LightGBM parses it).
    `num_outputs`: the experiment's (Task.num_outputs), checked against the model's classes."""
    import lightgbm as lgb

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: LightGBM model not found" + (" (it is a directory)" if path.is_dir() else ""))
    data = path.read_bytes()
    problem = _model_problem(data, num_outputs)
    if not problem:
        try:
            return lgb.Booster(model_str=data.decode("utf-8"))
        except (lgb.basic.LightGBMError, UnicodeDecodeError) as e:
            problem = cut(one_line(e), 120)
    raise PipelineError(f"{path}: truncated or corrupted LightGBM model ({problem}); "
                        "retrain this fold with --overwrite")


def load_params(path: str | Path) -> dict:
    """LightGBM parameters from a JSON (.json) or YAML file: one mapping of parameter names to values, read as
    --config is (size cap, safe YAML); values are numbers, strings, booleans or lists of them (lists of lists for
    interaction_constraints), MAX_PARAM_VALUES at most in all (a YAML alias bomb is a few hundred bytes)."""
    from pipeline.config import load_config_file

    params = load_config_file(str(path), "--gbm-params", default_format="YAML")
    for key, value in params.items():
        if not isinstance(key, str):
            raise PipelineError(f"--gbm-params {path}: parameter names are text, found {quote(key, 60)}")
        if _count_values(value) is None:
            raise PipelineError(f"--gbm-params {path}: {key} must be a number, string, boolean or a list of them, "
                                f"found {quote(value, 60)}")
    if sum(_count_values(v) for v in params.values()) > MAX_PARAM_VALUES:
        raise PipelineError(f"--gbm-params {path}: more than {MAX_PARAM_VALUES:,} values in all; LightGBM's "
                            "parameters are a few numbers each")
    return params


def _count_values(value, depth: int = 0) -> int | None:
    """How many scalars `value` holds (None: not a parameter value); a list counted by its items, two levels deep at
    most, stopping as soon as the count passes MAX_PARAM_VALUES."""
    if isinstance(value, (bool, int, float, str)):
        return 1
    if not isinstance(value, list) or depth >= 2:
        return None
    total = 0
    for item in value:
        count = _count_values(item, depth + 1)
        if count is None:
            return None
        total += count
        if total > MAX_PARAM_VALUES:
            break
    return total


def feature_importance(booster, names: list[str]) -> list[tuple[str, float]]:
    """(name, total gain of its splits) for every feature, the most useful first (ties keep the column order)."""
    gain = booster.feature_importance(importance_type="gain")
    if len(names) != len(gain):
        raise PipelineError(f"lightgbm: {len(names)} feature names for a model of {len(gain)} features")
    order = np.argsort(-gain, kind="stable")
    return [(str(names[i]), float(gain[i])) for i in order]


def search_space(trial) -> dict:
    """One point of tune's search space for LightGBM, in LightGBM's parameter names (an Optuna trial)."""
    return {"learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, 100, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True)}


def check_task(task, params: dict) -> None:
    """Refuse, before any work, a task this learner cannot fit or --gbm-params it cannot take with it."""
    resolve_params(dict(params), task, 0)


# -- helpers ---------------------------------------------------------------------------------------------------------
def _objective(task, requested) -> dict:
    """The objective the task's predictions need; a user's objective is taken for regression (huber, l1, ...)."""
    if task.kind == "multilabel":
        raise PipelineError("--model lightgbm: multilabel tasks are not supported by the gbm learner "
                            "(it would need one booster per label); train a neural model for this competition")
    if task.several_targets:
        raise PipelineError(f"--model lightgbm: a booster fits one target; this regression has {task.num_outputs} "
                            f"({', '.join(task.classes[:4])}); train a neural model (--model mlp) for all of them at once")
    if task.kind == "regression":
        if requested is not None and str(requested).strip().lower() not in REGRESSION_OBJECTIVES:
            raise PipelineError(f"--gbm-params: objective {quote(requested)} does not fit a regression on "
                                f"{', '.join(task.classes[:3])}; use one of {', '.join(REGRESSION_OBJECTIVES[::4])}, ... "
                                "or remove it (default: regression)")
        return {"objective": requested or "regression"}
    derived = {"objective": "binary"} if task.num_outputs == 2 else {"objective": "multiclass",
                                                                     "num_class": task.num_outputs}
    if requested not in (None, derived["objective"]):
        raise PipelineError(f"--gbm-params: the objective of a {task.num_outputs}-class task is "
                            f"{derived['objective']!r}, set by the pipeline; remove objective {quote(requested)}")
    return derived


def _outputs(raw: np.ndarray, task) -> np.ndarray:
    """LightGBM's predictions in the task's form: P(class 1) (n,) -> (n, 2); (n, C) as is; values -> (n, 1)."""
    raw = np.asarray(raw, dtype=np.float64)
    if task.kind == "regression":
        return raw.reshape(-1, 1).astype(np.float32)
    if raw.ndim == 1:
        raw = np.stack([1.0 - raw, raw], axis=1)
    return raw.astype(np.float32)


def _targets(y: np.ndarray, task) -> np.ndarray:
    """(n,) class indices as int64 (task.scores indexes with them) or values as float32."""
    return np.asarray(y).astype(np.int64 if task.kind == "multiclass" else np.float32)


def _check_known(params: dict) -> None:
    """Refuse names LightGBM does not know (it would warn and ignore them) and the settings of distributed training
    (it would wait for its peers forever)."""
    from lightgbm.basic import _ConfigAliases

    names = _ConfigAliases._get_all_param_aliases()  # main name -> its aliases, the main name among them
    main = {alias: name for name, aliases in names.items() for alias in aliases}
    unknown = [key for key in params if key not in main]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(main), n=3)
        raise PipelineError(f"--gbm-params: {quote(unknown[0], 60)} is not a LightGBM parameter"
                            f"{'; did you mean ' + ' or '.join(close) if close else ''} (the names: its Parameters "
                            "page, e.g. learning_rate, num_leaves, min_data_in_leaf, lambda_l2, feature_fraction)")
    for key, value in params.items():
        name = main[key]
        if name in NETWORK or name == "tree_learner" and str(value).strip().lower() not in ("serial", ""):
            raise PipelineError(f"--gbm-params: {key}: {quote(value, 60)} asks for distributed training, which "
                                "waits for other machines; each fold trains in one process here: remove it")


def _check_feature_indices(params: dict, n_features: int) -> None:
    """interaction_constraints name feature indices that LightGBM follows unchecked (an index past the columns
    crashes the process)."""
    from lightgbm.basic import _ConfigAliases

    for key in _ConfigAliases.get("interaction_constraints"):
        for group in params.get(key) or []:
            for j in group if isinstance(group, list) else [group]:
                if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < n_features:
                    raise PipelineError(f"--gbm-params: {key} names feature {quote(j)}; the fold's rows have "
                                        f"{n_features} features (indices 0..{n_features - 1})")


def _pop(params: dict, key: str, default):
    """The value under any alias of `key` (removing every alias from `params`), else `default`."""
    found = [params.pop(alias) for alias in ALIASES[key] if alias in params]
    return found[0] if found else default


def _int_at_least(value, key: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PipelineError(f"--gbm-params: {key} must be an integer >= {low}, got {quote(value, 60)}")
    return value


def _check_fold(x_train, y_train, x_valid, y_valid, task) -> None:
    for name, x, y in (("training", x_train, y_train), ("validation", x_valid, y_valid)):
        if np.ndim(x) != 2 or len(x) == 0 or np.ndim(y) != 1 or len(y) != len(x):
            raise PipelineError(f"lightgbm: {name} rows must be a (n, features) table with n targets (n, ), "
                                f"got {np.shape(x)} and {np.shape(y)}")
        if task.kind == "multiclass" and not np.isin(y, np.arange(task.num_outputs)).all():
            raise PipelineError(f"lightgbm: {name} targets must be class indices 0..{task.num_outputs - 1}")
    if np.shape(x_train)[1] != np.shape(x_valid)[1]:
        raise PipelineError(f"lightgbm: {np.shape(x_train)[1]} training features but {np.shape(x_valid)[1]} validation")


# entries of each tree array per tree of L leaves: L - 1 (internal nodes) or L (leaves)
TREE_ARRAYS = {"split_feature": -1, "split_gain": -1, "threshold": -1, "decision_type": -1, "left_child": -1,
               "right_child": -1, "internal_value": -1, "internal_weight": -1, "internal_count": -1,
               "leaf_value": 0, "leaf_weight": 0, "leaf_count": 0}


def _model_problem(data: bytes, num_outputs: int | None = None) -> str:
    """What makes this text model unloadable, '' if nothing. LightGBM's parser aborts or crashes the process on a
    truncated tree instead of raising, and follows children and category indices unchecked (a cycle hangs predict, a
    NaN index crashes it), so every tree block is checked against the header's tree_sizes (bytes), and its shape.
    `num_outputs`: what the experiment predicts (the header's num_class must agree)."""
    if not data.startswith(b"tree\n"):
        return "not a LightGBM text model"
    start = data.find(b"\nTree=0\n") + 1
    header = dict(line.split(b"=", 1) for line in data[:start].splitlines() if b"=" in line)
    try:
        sizes = [int(s) for s in header[b"tree_sizes"].split()]
        n_features = int(header[b"max_feature_idx"]) + 1
        num_class, per_iteration = int(header.get(b"num_class", b"1")), int(header.get(b"num_tree_per_iteration", b"1"))
    except (KeyError, ValueError):
        return "no tree list in its header"
    if not start or not sizes or min(sizes) <= 0:
        return "no trees"
    if num_class < 1 or per_iteration != num_class or len(sizes) % per_iteration:
        return f"num_class={num_class} and num_tree_per_iteration={per_iteration} do not fit its {len(sizes)} trees"
    if num_outputs is not None and num_class != (num_outputs if num_outputs > 2 else 1):
        return f"num_class={num_class}, but the experiment predicts {num_outputs} output(s)"
    ends = np.cumsum([start] + sizes)
    if not data[ends[-1]:].startswith(b"end of trees"):
        return "its trees end early"
    for i, (a, b) in enumerate(zip(ends[:-1], ends[1:])):
        problem = _tree_problem(data[a:b].decode("ascii", "replace"), i, n_features)
        if problem:
            return f"tree {i}: {problem}"
    return ""


def _tree_problem(block: str, i: int, n_features: int) -> str:
    """Lengths and indices of one tree block, so that LightGBM neither reads past an array nor follows a bad child."""
    lines = block.split("\n")
    if lines[0] != f"Tree={i}":
        return "not where the header puts it"
    fields = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    try:
        leaves, num_cat = int(fields["num_leaves"]), int(fields.get("num_cat", "0"))
        wanted = TREE_ARRAYS if leaves > 1 else {"leaf_value": 0}
        if leaves < 1 or any(len(fields[key].split()) != leaves + extra for key, extra in wanted.items()):
            return "arrays of the wrong length"
        if leaves == 1:
            return ""
        children = np.array((fields["left_child"] + " " + fields["right_child"]).split(), dtype=np.int64)
        features = np.array(fields["split_feature"].split(), dtype=np.int64)
        categorical = (np.array(fields["decision_type"].split(), dtype=np.int64) & 1) == 1
        cat_index = np.array(fields["threshold"].split(), dtype=np.float64)[categorical]
        boundaries = np.array(fields["cat_boundaries"].split(), dtype=np.int64) if num_cat else np.zeros(1, np.int64)
        thresholds = len(fields["cat_threshold"].split()) if num_cat else 0
    except (KeyError, ValueError):
        return "a missing or unreadable field"
    if children.min() < -leaves or children.max() > leaves - 2 or features.min() < 0 or features.max() >= n_features:
        return "a child or feature index out of range"
    if len(boundaries) != num_cat + 1 or np.any(np.diff(boundaries) < 0) or boundaries[-1] != thresholds \
            or not np.all(np.isfinite(cat_index) & (cat_index == np.round(cat_index))) \
            or np.any((cat_index < 0) | (cat_index >= max(num_cat, 1))):
        return "categorical splits that do not match their bitsets"
    if not _is_tree(children, leaves):
        return "its nodes do not form a tree (a node reached twice, or never)"
    return ""


def _is_tree(children: np.ndarray, leaves: int) -> bool:
    """Do the child arrays (left then right; >= 0 an internal node, ~j leaf j) make one tree from node 0: every
    internal node but the root and every leaf the child of exactly one node, and every internal node reached?"""
    internal, leaf = children[children >= 0], ~children[children < 0]
    if np.any(internal == 0) or len(np.unique(internal)) != len(internal) or len(np.unique(leaf)) != leaves:
        return False
    left, right = children[:leaves - 1], children[leaves - 1:]
    seen, stack = 1, [0]
    while stack:  # with one parent each, a walk from the root reaches every internal node once, unless a cycle
        node = stack.pop()  # hides some of them from it
        for child in (left[node], right[node]):
            if child >= 0:
                seen += 1
                stack.append(int(child))
    return seen == leaves - 1


def describe(booster) -> str:
    """The fold line's word on the model: its trees per class at the best iteration."""
    return f"best iteration {booster.best_iteration or booster.current_iteration()}"
