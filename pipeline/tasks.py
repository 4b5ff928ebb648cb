"""Task kinds: the one place that knows a target's loss, activation, fold splitter, metric and submission columns.

    multiclass   targets (N,) int class index; softmax + cross-entropy; StratifiedKFold
    multilabel   targets (N, C) 0/1;          sigmoid + BCE;          MultilabelStratifiedKFold
    regression   targets (N,) float, or (N, T) for T target columns; identity + MSE; StratifiedKFold on target bins

Training, OOF, inference and the ensemble call these methods and never branch on the kind themselves.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from pipeline import metrics
from pipeline.errors import PipelineError

KINDS = ("multiclass", "multilabel", "regression")


@dataclass(frozen=True)
class Task:
    kind: str  # multiclass | multilabel | regression
    classes: tuple[str, ...]  # output names in order: class names, label names, or the target column(s) for regression
    metric: str = ""  # competition metric; '' = the kind's default (accuracy, roc_auc, rmse)
    threshold: float = 0.5  # multilabel: a label is predicted at probability >= threshold

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PipelineError(f"--task: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.metric:
            object.__setattr__(self, "metric", metrics.DEFAULT_METRIC[self.kind])
        if self.metric not in metrics.METRICS:
            raise PipelineError(f"--metric: unknown metric {self.metric!r}; valid: {', '.join(metrics.METRICS)}")
        if self.kind not in metrics.METRICS[self.metric][1]:
            raise PipelineError(f"--metric: {self.metric} does not apply to a {self.kind} task; valid: "
                                + ", ".join(m for m, (_, kinds) in metrics.METRICS.items() if self.kind in kinds))
        if self.kind == "regression" and not self.classes:
            raise PipelineError("regression task: needs at least one target column")
        if self.kind == "regression" and len(self.classes) > 1 and self.metric == "qwk":
            raise PipelineError(f"--metric qwk: agreement on one rating; this regression has {len(self.classes)} "
                                "targets: use rmse, mse, mae or mcrmse (or one experiment per target)")
        if self.kind != "regression" and len(self.classes) < 2:
            raise PipelineError(f"{self.kind} task: needs at least 2 classes, found {len(self.classes)}")

    # -- shapes and files ---------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.classes)  # regression: one output per target column

    @property
    def higher_is_better(self) -> bool:
        return metrics.METRICS[self.metric][0]

    @property
    def has_classes(self) -> bool:
        """One class per row (multiclass): rows right or wrong, confusions, per-class scores, label mixing."""
        return self.kind == "multiclass"

    @property
    def outputs_probabilities(self) -> bool:
        """Predictions are probabilities in [0, 1] (classes, labels), not values."""
        return self.kind != "regression"

    @property
    def smooths_labels(self) -> bool:
        """Label smoothing has labels to soften (multiclass, multilabel), not values."""
        return self.kind != "regression"

    @property
    def several_targets(self) -> bool:
        """Regression on several target columns at once (targets (N, T) rather than (N,))."""
        return self.kind == "regression" and len(self.classes) > 1

    def prediction_summary(self, preds: np.ndarray) -> str:
        """One phrase on a set of predictions (N, outputs), for the line that reports a written submission."""
        if self.kind == "multiclass":
            return f"predicted class counts {np.bincount(preds.argmax(1), minlength=preds.shape[1]).tolist()}"
        if self.kind == "multilabel":
            return f"labels per row {(preds >= self.threshold).sum(1).mean():.2f} on average"
        if self.several_targets:
            return "predictions " + ", ".join(f"{name} {col.min():.4g}..{col.max():.4g}"
                                              for name, col in zip(self.classes[:4], preds.T))
        return f"predictions {preds.min():.4g}..{preds.max():.4g} (mean {preds.mean():.4g})"

    def describe(self) -> str:
        if self.kind == "regression":
            shown = ", ".join(self.classes[:6]) + (", ..." if len(self.classes) > 6 else "")
            return f"regression on {shown}, metric {self.metric}"
        ordered = sorted(self.classes, key=int) if _all_int(self.classes) else self.classes  # 0, 1, 2, ... 10
        shown = ", ".join(ordered[:6]) + (", ..." if len(ordered) > 6 else "")
        return f"{self.kind}, {len(self.classes)} classes ({shown}), metric {self.metric}"

    def to_dict(self) -> dict:
        return asdict(self) | {"classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "task", remedy: str = "retrain the experiment with --overwrite") -> Task:
        try:
            return cls(str(d["kind"]), tuple(str(c) for c in d["classes"]), str(d.get("metric", "")),
                       float(d.get("threshold", 0.5)))
        except (KeyError, TypeError, ValueError) as e:
            raise PipelineError(f"{where}: not a task description ({type(e).__name__}: {e}); {remedy}") from None

    def target_columns(self) -> list[str]:
        """OOF columns holding the truth: label (class index), target (one value), or y0..y{C-1} (0/1 labels, or the
        values of several targets)."""
        if self.kind == "multiclass" or (self.kind == "regression" and not self.several_targets):
            return ["label" if self.kind == "multiclass" else "target"]
        return [f"y{c}" for c in range(self.num_outputs)]

    def targets_frame(self, targets: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(targets.reshape(len(targets), -1), columns=self.target_columns())

    def targets_from(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[self.target_columns()].to_numpy()
        if self.kind == "multiclass":
            return values[:, 0].astype(np.int64)
        return values[:, 0].astype(np.float32) if values.shape[1] == 1 and self.kind == "regression" \
            else values.astype(np.float32)

    # -- training -----------------------------------------------------------------------------------------
    @property
    def train_loss_name(self) -> str:
        """What `loss` computes, as the epoch line names it (label smoothing included)."""
        return {"multiclass": "cross-entropy", "multilabel": "bce"}.get(self.kind, "mse")

    @property
    def loss_name(self) -> str:
        """What scores' 'loss' is, on hard targets: log_loss or rmse."""
        return metrics.LOSS_NAME[self.kind]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
             scale: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss on float32 logits; label smoothing here only (validation uses hard targets). scale: several
        targets' spreads (loss_scale): each target's error counts in its own units, so a target in thousands does not
        drown one in hundredths."""
        if self.kind == "multiclass":
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        if self.kind == "multilabel":
            soft = targets * (1 - label_smoothing) + 0.5 * label_smoothing
            return F.binary_cross_entropy_with_logits(logits, soft)
        if scale is not None:
            return (((logits.reshape(targets.shape) - targets) / scale) ** 2).mean()
        return F.mse_loss(logits.reshape(targets.shape), targets)

    def loss_scale(self, model: torch.nn.Module) -> torch.Tensor | None:
        """Several targets: their standard deviations on the fold's training rows, as output_head gave `model`;
        None otherwise (one target's loss stays in its units)."""
        head = model  # inside (Distributed)DataParallel's .module and torch.compile's ._orig_mod
        while not isinstance(head, Standardized) and (getattr(head, "_orig_mod", None) or getattr(head, "module", None)):
            head = getattr(head, "_orig_mod", None) or head.module
        if not self.several_targets or not isinstance(head, Standardized):
            return None
        std = head.target_std.detach().float()
        return torch.where(std > 0, std, torch.ones_like(std))  # a constant target's error is 0 whatever its weight

    def prediction_loss(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of activated predictions (probabilities or values, as blends mix them): log loss, binary log loss
        per label, or squared error."""
        if self.kind == "multiclass":
            return -torch.log(preds[torch.arange(len(targets)), targets].clamp_min(1e-15)).mean()
        if self.kind == "multilabel":
            p = preds.clamp(1e-15, 1 - 1e-15)
            return -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
        return ((preds.reshape(targets.shape) - targets) ** 2).mean()

    def output_head(self, model: torch.nn.Module, targets: np.ndarray | None = None) -> torch.nn.Module:
        """The model as this task trains it. Regression: the network learns standardised targets and answers in the
        target's units (mean and std of `targets` per target column, the fold's training rows; None: filled in by a
        checkpoint); a price in the thousands is otherwise far from where a fresh network's outputs start."""
        if self.kind != "regression":
            return model
        columns = self.num_outputs
        values = (np.asarray(targets, dtype=np.float64).reshape(-1, columns) if targets is not None
                  else np.zeros((2, columns)))
        std = values.std(0)
        mean = values.mean(0)
        if columns == 1:  # one target: scalar buffers, as checkpoints before several targets hold them
            return Standardized(model, float(mean[0]), float(std[0]) if targets is not None and std[0] > 0 else 1.0)
        # several: a target constant on these rows is predicted as that constant (std 0: the network cannot move it)
        return Standardized(model, mean, std if targets is not None else np.ones(columns))

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Model outputs -> what metrics and submissions read: probabilities, or values."""
        if self.kind == "multiclass":
            return logits.softmax(1)
        return logits.sigmoid() if self.kind == "multilabel" else logits

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training-batch hits for the running accuracy (multiclass); 0 for the other kinds."""
        if self.kind == "multiclass":
            return (logits.argmax(1) == targets).sum()
        return torch.zeros((), dtype=torch.long, device=logits.device)

    def split(self, targets: np.ndarray, n_splits: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
        """Fold (0..n_splits-1) of every row, stratified the way this kind allows."""
        if self.kind == "multiclass":
            counts = np.bincount(targets, minlength=len(self.classes))
            rare = [c for c, n in zip(self.classes, counts) if 0 < n < n_splits]
            if rare and groups is None:
                raise PipelineError(f"--n-splits: {n_splits} stratified folds need >= {n_splits} rows of every class; "
                                    f"class {rare[0]!r} has {counts[self.classes.index(rare[0])]} (lower --n-splits, "
                                    "or merge or drop that class)")
            return assign_folds(targets, n_splits, seed, groups)
        if self.kind == "regression":
            return assign_folds(target_bins(level(targets), n_splits), n_splits, seed, groups)
        if groups is not None:
            raise PipelineError("--group-col: grouped folds are not available for multilabel tasks "
                                "(no maintained multilabel group splitter); drop --group-col")
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        folds = np.full(len(targets), -1, dtype=np.int64)
        splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for k, (_, valid) in enumerate(splitter.split(np.zeros(len(targets)), targets)):
            folds[valid] = k
        return folds

    # -- scoring ------------------------------------------------------------------------------------------
    def scores(self, preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """{metric: value, 'loss': value}; multiclass keeps accuracy and log_loss too (Digit Recognizer's figures)."""
        out = {"loss": metrics.compute(metrics.LOSS_NAME[self.kind], preds, targets, self.kind)}
        wanted = [self.metric] + (["accuracy"] if self.kind == "multiclass" else [])
        for name in wanted:
            out[name] = out["loss"] if name == metrics.LOSS_NAME[self.kind] else \
                metrics.compute(name, preds, targets, self.kind, self.threshold)
        if self.kind == "multiclass":
            out["log_loss"] = out["loss"]
        return out

    def better(self, new: dict, old: dict | None) -> bool:
        """Is `new` better than `old` by the metric, ties broken by the lower loss? NaN is never better."""
        value = new[self.metric]
        if value != value:
            return False
        if old is None:
            return True
        key = lambda s: ((s[self.metric] if self.higher_is_better else -s[self.metric]), -s["loss"])  # noqa: E731
        return key(new) > key(old)

    # -- submissions --------------------------------------------------------------------------------------
    def submission(self, preds: np.ndarray, sample: pd.DataFrame) -> pd.DataFrame:
        """sample_submission.csv's frame filled in: its columns decide labels, names or probabilities."""
        out = sample[[sample.columns[0]]].copy()
        mode, columns = self.submission_mode(sample)
        if mode == "probabilities":
            for col in columns:
                out[col] = preds[:, self.classes.index(str(col))]
        elif mode == "positive":
            out[columns[0]] = preds[:, self.positive_class(columns[0])]
        elif mode == "values":
            for col, j in zip(columns, self.value_columns(columns)):
                out[col] = preds[:, j]
        elif self.kind == "multilabel":
            out[columns[0]] = [label_string(p, self.classes, self.threshold) for p in preds]
        else:
            names = np.array(self.classes, dtype=object)[preds.argmax(1)]
            out[columns[0]] = pd.array(names.astype(np.int64)) if _all_int(self.classes) else names
        return out

    def _names_a_class(self, column: str) -> bool:
        return sum(str(name).strip().lower() == str(column).strip().lower() for name in self.classes) == 1

    def positive_class(self, column: str) -> int:
        """The class whose probability a binary task's one column holds: the class it names (a column `cancer` holds
        P(cancer), whichever way the names sort), else the second class in order (P(1) for 0/1, P(yes) for no/yes).

        >>> Task("multiclass", ("cancer", "healthy")).positive_class("cancer")
        0
        >>> Task("multiclass", ("0", "1")).positive_class("target")
        1
        """
        named = [j for j, name in enumerate(self.classes) if str(name).strip().lower() == str(column).strip().lower()]
        return named[0] if len(named) == 1 else 1

    def value_columns(self, columns: list[str]) -> list[int]:
        """The target each of a sample's value columns takes: the one it names, else the targets no column names, in
        order (a sample written `target` for train's `target.2`, or renamed columns).

        >>> Task("regression", ("a", "b", "c")).value_columns(["b", "x", "a"])
        [1, 2, 0]
        """
        named = {col: self.classes.index(col) for col in columns if col in self.classes}
        rest = iter(j for j in range(self.num_outputs) if j not in named.values())
        return [named[col] if col in named else next(rest) for col in columns]

    def bad_cells(self, values: pd.Series, mode: str) -> tuple[np.ndarray, str]:
        """Which cells of a submission column (filled in `mode`, see submission_mode) break its rule, and the rule in
        words: submit checks a file with it before uploading."""
        if mode in ("probabilities", "positive", "values"):
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            if mode == "values":
                return ~np.isfinite(numbers), "a finite number"
            return ~(np.isfinite(numbers) & (numbers >= 0) & (numbers <= 1)), "a probability in [0, 1]"
        names = set(self.classes)
        text = values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))  # 3.0 is 3
        if self.kind == "multilabel":
            return text.map(lambda v: not v.split() or any(t not in names for t in v.split())).to_numpy(), \
                f"space-separated names among {', '.join(self.classes[:5])}"
        return ~text.isin(names).to_numpy(), f"one of the classes {', '.join(self.classes[:10])}"

    def submission_mode(self, sample: pd.DataFrame) -> tuple[str, list[str]]:
        """'labels' (one column), 'probabilities' (one column per class), 'positive' (binary, P(class 1)) or 'values'
        (regression: one column per target)."""
        columns = [str(c) for c in sample.columns[1:]]
        if self.kind == "regression":
            if len(columns) != self.num_outputs:
                raise PipelineError(f"sample_submission.csv: {len(columns)} value column(s) after the id "
                                    f"({', '.join(columns[:5])}) for {self.num_outputs} regression target(s) "
                                    f"({', '.join(self.classes[:5])})")
            return "values", columns
        if self.kind != "regression" and len(columns) > 1 and set(columns) == set(self.classes):
            return "probabilities", columns
        if len(columns) == 1 and self.kind == "multiclass" and len(self.classes) == 2 \
                and (self.metric in ("log_loss", "roc_auc") or self._names_a_class(columns[0])):
            return "positive", columns  # a column named after a class holds its probability, whatever the metric
        if len(columns) == 1:
            return "labels", columns
        raise PipelineError(f"sample_submission.csv: columns {', '.join(columns[:5])} fit neither id + one label column "
                            f"nor id + one column per class ({', '.join(self.classes[:5])}, ...)")


class Standardized(torch.nn.Module):
    """A regression network's output in the target's units: net(x) * target_std + target_mean (buffers, saved with
    the weights). Checkpoints from before it hold the bare network: `load_state_dict` takes both."""

    def __init__(self, net: torch.nn.Module, mean: float | np.ndarray = 0.0, std: float | np.ndarray = 1.0):
        super().__init__()  # scalars for one target, (T,) for several (broadcast over the outputs' last dimension)
        self.net = net
        self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32))

    def forward(self, *x: torch.Tensor) -> torch.Tensor:  # a sequence model takes (x, lengths)
        return self.net(*x) * self.target_std + self.target_mean

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "target_mean" not in state_dict:  # saved before regression outputs were standardised: mean 0, std 1
            return self.net.load_state_dict(state_dict, strict, assign)
        return super().load_state_dict(state_dict, strict, assign)


def label_string(probs: np.ndarray, classes: tuple[str, ...], threshold: float) -> str:
    """Space-separated names at or above the threshold; the most probable one when none is.

    >>> label_string(np.array([0.9, 0.2, 0.6]), ("a", "b", "c"), 0.5)
    'a c'
    """
    picked = [c for c, p in zip(classes, probs) if p >= threshold] or [classes[int(np.argmax(probs))]]
    return " ".join(picked)


def target_bins(values: np.ndarray, n_splits: int) -> np.ndarray:
    """Quantile bins of a numeric target, as many as keep >= 2 * n_splits rows each (at most 10).

    >>> target_bins(np.arange(40.0), 2).tolist()[:12]
    [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    """
    n_bins = int(max(1, min(10, len(values) // (2 * n_splits))))
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def level(targets: np.ndarray) -> np.ndarray:
    """One number per row to stratify a regression on: the value, or for several targets the mean of the row's
    standardised values (rows high on every target apart from rows low on every one).

    >>> level(np.array([[1.0, 100.0], [3.0, 300.0]])).tolist()
    [-1.0, 1.0]
    """
    values = np.asarray(targets, dtype=np.float64)
    if values.ndim == 1 or values.shape[1] == 1:
        return values.reshape(-1)
    std = values.std(0)
    return ((values - values.mean(0)) / np.where(std > 0, std, 1.0)).mean(1)


def _all_int(names: tuple[str, ...]) -> bool:
    return all(n.lstrip("-").isdigit() for n in names)


def assign_folds(labels: np.ndarray, n_splits: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..n_splits-1) of every row, stratified by label; rows of a group share a fold.

    >>> assign_folds(np.array([0, 0, 1, 1]), n_splits=2, seed=0).tolist()
    [1, 0, 0, 1]
    """
    counts = np.bincount(labels)
    if counts[counts > 0].min() < n_splits and groups is None:
        raise PipelineError(f"--n-splits: {n_splits} folds need >= {n_splits} rows of every label; "
                            f"label {int(np.flatnonzero(counts == counts[counts > 0].min())[0])} has {counts[counts > 0].min()}")
    if groups is not None and len(np.unique(groups)) < n_splits:
        raise PipelineError(f"--group-col: {len(np.unique(groups))} groups cannot fill {n_splits} folds; "
                            "lower --n-splits or choose a finer group column")
    rows = np.zeros(len(labels))
    if groups is None:
        splits = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(rows, labels)
    else:
        splits = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(rows, labels, groups)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splits):
        folds[valid] = k
    return folds
