"""What every layout shares: the Description make_folds saves, the TrainSet a layout reads, the flags that steer
detection (Options), the Layout interface, and the registry the layouts (pipeline.data.layouts) fill.

A layout is one object: `detect` (is this competition mine?), `describe` (its task and train rows), `train_rows`
(the rows a model trains on, when not read with the targets), `read_test` (the test rows in the submission's
order) and `submission_sample` (what a submission must look like). Nothing outside a layout's own module
branches on its name.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.data import table as tab
from pipeline.data.common import read_sample_submission
from pipeline.data.source import Source
from pipeline.errors import PipelineError
from pipeline.tasks import Task

REGISTRY: dict[str, "Layout"] = {}  # name -> layout, in detection order (pipeline.data.layouts registers them)


@dataclass(frozen=True)
class Options:
    """make_folds' flags that steer detection; each overrides a guess ('' / () = detect)."""
    layout: str = ""
    id_col: str = ""
    target_cols: tuple[str, ...] = ()
    image_dir: str = ""
    task: str = ""
    metric: str = ""
    threshold: float = 0.5
    group_col: str = ""
    features: tuple[str, ...] = ()
    drop_cols: tuple[str, ...] = ()

    @classmethod
    def from_flags(cls, cfg) -> Options:
        """From make_folds' flags (a config.Config)."""
        return cls(cfg.layout, cfg.id_col, cfg.target_col, cfg.image_dir, cfg.task, cfg.metric, cfg.threshold,
                   cfg.group_col, cfg.features, cfg.drop_cols)

    @classmethod
    def of(cls, desc: "Description") -> Options:
        """The options that re-read the data as `desc` describes it."""
        return cls(desc.layout, desc.id_col, desc.target_cols, desc.image_dir, desc.task.kind, desc.task.metric,
                   desc.task.threshold, desc.group_col)


@dataclass(frozen=True)
class Found:
    """What detection reads once for every layout: the train CSV (if any), the folder holding it, its frame."""
    train_csv: str | None
    root: str
    frame: pd.DataFrame | None


@dataclass(frozen=True)
class Description:
    """What make_folds found in the competition data; saved as JSON beside the folds file."""
    layout: str  # a name of REGISTRY
    task: Task
    root: str = ""  # folder inside the source that holds the competition files ('' or 'cassava/')
    train_file: str = ""  # the train CSV, relative ('' for class-folders)
    id_col: str = ""  # column naming each train image (csv-images)
    target_cols: tuple[str, ...] = ()  # target column(s) of the train CSV
    image_dir: str = ""  # train image folder, relative to root
    test_dir: str = ""  # test image folder, relative to root
    channels: int = 1  # 1 (gray) or 3 (RGB)
    side: int = 0  # pixels: the images' side; image files: 0 (decoded at --img-size)
    group_col: str = ""  # rows sharing a value share a fold
    n_images: int = 0  # train rows
    table: dict = field(default_factory=dict, hash=False)  # table: what data.table found (Columns as a dict)

    @property
    def owner(self) -> "Layout":
        return layout_of(self.layout)

    @property
    def kind(self) -> str:
        """The input kind (pipeline.inputs) of this layout's rows."""
        return self.owner.kind

    @property
    def columns(self) -> tab.Columns:
        return tab.Columns.from_dict(self.table)

    @property
    def spec_features(self) -> dict:
        """What the input kind needs to know of the columns ({} for images)."""
        return self.columns.spec_features() if self.table else {}

    def summary(self) -> str:
        return self.owner.summary(self)

    @property
    def tta_preset(self) -> str:
        return self.owner.tta_preset

    @property
    def augment(self) -> str:
        return self.owner.augment

    @property
    def normalize(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.owner.normalize(self)

    def to_dict(self) -> dict:
        return asdict(self) | {"task": self.task.to_dict(), "target_cols": list(self.target_cols)}

    @classmethod
    def from_dict(cls, d: dict, where: str, remedy: str = "retrain the experiment with --overwrite") -> Description:
        """A saved description (folds.json's, or an experiment's config.json's), checked; `remedy`: what a damaged one
        asks the user to do."""
        try:
            fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "task"}
            desc = cls(task=Task.from_dict(d["task"], where, remedy), **fields)
            desc = replace(desc, target_cols=tuple(str(c) for c in desc.target_cols))
        except (KeyError, TypeError) as e:
            raise PipelineError(f"{where}: not a data description ({type(e).__name__}: {e}); {remedy}") from None
        if desc.layout not in REGISTRY or desc.channels not in (1, 3) or not isinstance(desc.side, int):
            raise PipelineError(f"{where}: damaged data description (layout {desc.layout!r}, channels "
                                f"{desc.channels!r}); {remedy}")
        return desc


@dataclass(frozen=True)
class TrainSet:
    targets: np.ndarray  # class indices (N,), 0/1 (N, C) or values (N,): see Task
    ids: np.ndarray  # (N,) int64 row number in the train set, from 0: the id in folds.csv and oof.csv
    groups: np.ndarray | None  # (N,) values of the group column, or None
    train_hash: str  # first 16 hex digits of sha256 of the train CSV (or of the class folders' file list)
    rows: np.ndarray | None = None  # rows read with the targets: pixels (N, 1, side, side) uint8, a table's (N, F)
    files: tuple[str, ...] = ()  # image files: relative paths, decoded through the cache

    @property
    def labels(self) -> np.ndarray:
        return self.targets


class Layout:
    """One competition layout. Subclasses set the class attributes and implement detect and describe; the
    defaults fit image layouts."""
    name = ""
    kind = "image"  # the input kind of its rows (pipeline.inputs)
    tta_preset = "hflip"  # infer --tta's default
    augment = "natural"  # train's default augmentation
    checks_classes = True  # re-reading the data checks its classes against the saved ones
    samples: dict = {}  # --data name -> the function writing this layout's offline sample (returns its folder)
    hint = ""  # what the layout's files look like, for the 'no known layout' message

    def detect(self, src: Source, found: Found) -> bool:
        raise NotImplementedError

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        """(Description, TrainSet); `known`: the saved description when re-reading (nothing probed again)."""
        raise NotImplementedError

    def summary(self, desc: Description) -> str:
        raise NotImplementedError

    def normalize(self, desc: Description) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (0.0,), (1.0,)

    def train_rows(self, src: Source, desc: Description, train: TrainSet, img_size: int, cache_dir: str):
        """The rows a model trains on, where describe did not read them with the targets."""
        return train.rows

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
        """(test rows in the order of the submission's ids, that submission's sample)."""
        raise NotImplementedError

    def submission_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        return read_sample_submission(src, desc.root)


def register(layout: Layout) -> Layout:
    REGISTRY[layout.name] = layout
    return layout


def layout_of(name: str) -> Layout:
    if name not in REGISTRY:
        raise PipelineError(f"layout {name!r} unknown; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]
