"""Competition data in any of three layouts, detected from --data (a folder or Kaggle's zip):

    pixels          train.csv = label, pixel0..pixelN (N+1 a square); test.csv        (Digit Recognizer)
    csv-images      a train CSV (id/file column + target column(s)) and an image folder  (cassava, pawpularity)
    class-folders   train/<class name>/*, test/*                                           (food-11, ImageFolder)
    table           *train*.csv + *test*.csv of numeric and text columns                   (Titanic, HW1 COVID)
    speakers        Dataset/mapping.json, metadata.json, testdata.json, uttr-*.pt          (HW4: speaker of an utterance)
    frames          libriphone/feat/{train,test}/*.pt, train_labels.txt, *_split.txt      (HW2: phoneme of every frame)
    sequences       train.csv whose ids name train/<id>.pt|.npy (T, F) arrays, test/ arrays  (any task, per sequence)

`describe` detects the layout and the task once (make_folds saves the result beside the folds); every later
stage reads through that Description, so no stage branches on a layout.
"""
from __future__ import annotations

import io
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.config import DEFAULT_DATA
from pipeline.data import images as img
from pipeline.data import pixels
from pipeline.data import sequences as seq
from pipeline.data import table as tab
from pipeline.data.pixels import LABEL, PIXELS, SIDE  # noqa: F401 - the Digit Recognizer constants
from pipeline.data.sample import write_sample, write_sample_images, write_sample_table  # noqa: F401
from pipeline.data.source import DOWNLOAD, Source, parse_csv  # noqa: F401
from pipeline.data.source import resolve as _resolve
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.tasks import Task

LAYOUTS = ("pixels", "csv-images", "class-folders", "table", "speakers", "frames", "sequences")
TRAIN_CSVS = ("train.csv", "labels.csv", "train_labels.csv")
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # digits, on the 0..1 scale
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NUM_CLASSES = 10  # Digit Recognizer's, for the benchmark and the tests
SAMPLES = {"sample": write_sample, "sample-images": write_sample_images, "sample-table": write_sample_table,
           "sample-speakers": seq.write_sample_speakers, "sample-frames": seq.write_sample_frames}
SEQUENCE_KINDS = {"speakers": "sequence", "frames": "frames", "sequences": "sequence"}  # layout -> input kind


@dataclass(frozen=True)
class Description:
    """What make_folds found in the competition data; saved as JSON beside the folds file."""
    layout: str  # pixels | csv-images | class-folders
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
    def kind(self) -> str:
        """The input kind (pipeline.inputs) of this layout's rows."""
        return "table" if self.layout == "table" else SEQUENCE_KINDS.get(self.layout, "image")

    @property
    def columns(self) -> tab.Columns:
        return tab.Columns.from_dict(self.table)

    @property
    def spec_features(self) -> dict:
        """What the input kind needs to know of the columns ({} for images)."""
        return self.columns.spec_features() if self.table else {}

    def summary(self) -> str:
        if self.layout in SEQUENCE_KINDS:
            rows = {"frames": "frames", "speakers": "utterances"}.get(self.layout, "sequences")
            ident = f"id {self.id_col} naming {self.image_dir}/ arrays, target {', '.join(self.target_cols)}, " \
                if self.layout == "sequences" else ""
            return (f"{self.layout}: {self.root or './'}, {ident}{self.task.describe()}, {self.n_images:,} {rows}"
                    + (" (folds grouped by utterance)" if self.layout == "frames" else ""))
        if self.layout == "table":
            c = self.columns
            return (f"table: id {c.id_col or '(row number)'}, target {', '.join(c.target_cols)} ({self.task.describe()}), "
                    f"{len(c.numeric)} numeric + {len(c.categorical)} categorical features, {self.n_images:,} rows")
        targets = ", ".join(self.target_cols) if len(self.target_cols) < 4 else f"{len(self.target_cols)} columns"
        where = (f"{self.n_images:,} images in {self.image_dir}/" if self.layout != "pixels"
                 else f"{self.n_images:,} images of {self.side}x{self.side}")
        ident = f"id {self.id_col}, " if self.id_col else ""
        return (f"{self.layout}: {ident}target {targets or 'the class folders'}, {self.task.describe()}, "
                f"{'RGB' if self.channels == 3 else 'gray'}, {where}")

    @property
    def tta_preset(self) -> str:
        return "" if self.layout == "table" or self.layout in SEQUENCE_KINDS else \
            "digits" if self.layout == "pixels" else "hflip"

    @property
    def augment(self) -> str:
        return "none" if self.layout == "table" or self.layout in SEQUENCE_KINDS else \
            "digits" if self.layout == "pixels" else "natural"

    @property
    def normalize(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.layout == "table" or self.layout in SEQUENCE_KINDS:
            return (0.0,), (1.0,)
        if self.layout == "pixels":
            return MNIST_MEAN, MNIST_STD
        return (IMAGENET_MEAN, IMAGENET_STD) if self.channels == 3 else ((0.5,), (0.5,))

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
        if desc.layout not in LAYOUTS or desc.channels not in (1, 3) or not isinstance(desc.side, int):
            raise PipelineError(f"{where}: damaged data description (layout {desc.layout!r}, channels "
                                f"{desc.channels!r}); {remedy}")
        return desc


@dataclass(frozen=True)
class TrainSet:
    targets: np.ndarray  # class indices (N,), 0/1 (N, C) or values (N,): see Task
    ids: np.ndarray  # (N,) int64 row number in the train set, from 0: the id in folds.csv and oof.csv
    groups: np.ndarray | None  # (N,) values of the group column, or None
    train_hash: str  # first 16 hex digits of sha256 of the train CSV (or of the class folders' file list)
    images: np.ndarray | None = None  # pixels: (N, 1, side, side) uint8, read with the CSV
    files: tuple[str, ...] = ()  # image files: relative paths, decoded through the cache

    @property
    def labels(self) -> np.ndarray:
        return self.targets


def resolve(data: str) -> Source:
    return _resolve(data, DEFAULT_DATA, SAMPLES)


# -- detection -----------------------------------------------------------------------------------------------

def describe(src: Source, layout: str = "", id_col: str = "", target_cols: tuple[str, ...] = (), image_dir: str = "",
             task: str = "", metric: str = "", threshold: float = 0.5, group_col: str = "",
             known: Description | None = None, features: tuple[str, ...] = (),
             drop_cols: tuple[str, ...] = ()) -> tuple[Description, TrainSet]:
    """Detect the layout and the task (flags override each guess) and read the train targets.

    known: the saved description when re-reading; its channels and test folder are taken as they are (make_folds
    probed them), so no image is opened and the test side is not matched again.
    """
    train_csv = next((f for f in (src.find(n) for n in TRAIN_CSVS) if f), None)
    root = str(PurePosixPath(train_csv).parent) + "/" if train_csv and "/" in train_csv else ""
    frame = parse_csv(src.read_file(train_csv), src.label(train_csv)) if train_csv else None
    if not layout:
        layout = ("speakers" if seq.find_speakers(src) is not None else "frames" if seq.find_frames(src) is not None
                  else "sequences" if frame is not None and seq.array_folders(src, root)
                  else "pixels" if frame is not None and pixels.is_pixels(frame) else "table" if _is_table(src, frame)
                  else "csv-images" if frame is not None else "class-folders" if _class_root(src) is not None else "")
    if layout == "table":
        return _describe_table(src, id_col, target_cols, features, drop_cols, task, metric, threshold, group_col, known)
    if layout == "sequences":
        if frame is None:
            raise PipelineError(f"--layout sequences: {src.path} has no {' or '.join(TRAIN_CSVS)} naming the arrays")
        return _describe_sequences(src, root, train_csv, frame, id_col, target_cols, image_dir, task, metric,
                                   threshold, group_col, known)
    if layout in SEQUENCE_KINDS:
        if group_col:
            raise PipelineError(f"--group-col: the {layout} layout has no columns to group by"
                                + (" (its folds are grouped by utterance already)" if layout == "frames" else ""))
        if task and task != "multiclass":
            raise PipelineError(f"--task {task}: the {layout} layout labels each row with one class (multiclass)")
        return (_describe_speakers if layout == "speakers" else _describe_frames)(src, metric, threshold, known)
    if layout not in LAYOUTS:
        raise PipelineError(f"--data: {src.path}: no known layout (expected train.csv with pixel columns, a train CSV "
                            f"with an image column and an image folder, or train/<class>/ folders); found "
                            f"{', '.join(src.files()[:4]) or 'no files'}; name it with --layout {'|'.join(LAYOUTS)}")
    if layout == "csv-images" and _class_root(src) is not None and not image_dir and not id_col:
        layout = _csv_or_folders(src, root, frame, layout)
    if layout != "class-folders" and frame is None:
        raise PipelineError(f"--layout {layout}: {src.path} has no {' or '.join(TRAIN_CSVS)}")
    if group_col and (group_col in target_cols or (layout == "pixels" and group_col == (target_cols or (LABEL,))[0])):
        raise PipelineError(f"--group-col: {group_col} is the target column; name a column that groups rows "
                            "(patient, image source, ...)")
    options = dict(task=task, metric=metric, threshold=threshold, group_col=group_col)
    probed = {} if known is None else {"channels": known.channels, "test_dir": known.test_dir}
    if layout == "pixels":
        return _describe_pixels(src, train_csv, frame, target_cols, **options)
    if layout == "csv-images":
        return _describe_csv_images(src, root, train_csv, frame, id_col, target_cols, image_dir, probed, **options)
    return _describe_class_folders(src, image_dir, probed, **options)


def _is_table(src: Source, frame: pd.DataFrame | None) -> bool:
    """A *train*.csv / *test*.csv pair and no image anywhere: a table competition."""
    return tab.find_files(src) is not None and not any(img.is_image(f) for f in src.files())


def _describe_table(src, id_col, target_cols, features, drop_cols, task, metric, threshold, group_col, known):
    """The table layout (data.table): its columns detected once, or re-read as `known` saved them."""
    found = tab.find_files(src)
    if found is None:
        raise PipelineError(f"--layout table: {src.path} has no *train*.csv and *test*.csv pair")
    train_file, test_file = found
    train = tab.read_csv(src, train_file)
    where = src.label(train_file)
    sample = read_sample_submission(src, required=False) if known is None else None
    if known is not None:
        cols = known.columns
    else:
        test = tab.read_csv(src, test_file)
        cols = tab.detect(src, train_file, test_file, train, test, sample, id_col, target_cols, features, drop_cols,
                          group_col)
        test = tab.read_csv(src, test_file, text=(cols.id_col, *cols.categorical))  # as infer reads it
        tab.test_rows(test, sample if sample is not None else tab.default_sample(test, cols), cols,
                      src.label(src.find("sample_submission.csv") or "sample_submission.csv"), src.label(test_file))
        tab.matrix(test, cols, src.label(test_file))  # unseen categories named now, not only at infer
    missing = [c for c in (*cols.features, *cols.target_cols) if c not in train.columns]
    if missing:
        raise PipelineError(f"{where}: no column {missing[0]!r}, which the folds' description names; remake the folds")
    the_task = known.task if known is not None else infer_task(train[list(cols.target_cols)], where, task, metric,
                                                                threshold, _sample_targets(sample, cols.target_cols))
    if sample is not None:
        the_task.submission_mode(sample)  # a sample this task cannot fill is refused before any training
    desc = Description("table", the_task, train_file=train_file, id_col=cols.id_col, target_cols=cols.target_cols,
                       group_col=group_col, n_images=len(train), table=cols.to_dict())
    return desc, TrainSet(encode(train[list(cols.target_cols)], the_task, where), np.arange(len(train), dtype=np.int64),
                          _groups(train, group_col, where), _hash(src.read_file(train_file)),
                          images=tab.matrix(train, cols))


def _describe_speakers(src, metric, threshold, known):
    """HW4: one row per utterance of metadata.json, its speaker the class (mapping.json's order)."""
    root = seq.find_speakers(src)
    if root is None:
        raise PipelineError(f"--layout speakers: {src.path} has no metadata.json and mapping.json (HW4's Dataset/)")
    files, names, classes = seq.speakers_train(src, root)
    the_task = known.task if known is not None else Task("multiclass", classes, metric, threshold)
    index = {c: i for i, c in enumerate(the_task.classes)}
    targets = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    if (targets < 0).any():
        raise PipelineError(f"--data: speaker {names[int(np.flatnonzero(targets < 0)[0])]!r} is not among the ones the "
                            "folds were made with; remake the folds")
    desc = Description("speakers", the_task, root=root, train_file=root + "metadata.json", n_images=len(files))
    if known is None and src.find("testdata.json") is not None:
        seq.test_arrays(src, desc)  # a test list naming a file twice, or outside the data, refused before training
    raw = src.read_file(root + "metadata.json") + src.read_file(root + "mapping.json")
    return desc, TrainSet(targets, np.arange(len(files), dtype=np.int64), None, _hash(raw), files=tuple(files))


def _describe_frames(src, metric, threshold, known):
    """HW2: one row per frame of the train_split.txt utterances, labelled from train_labels.txt; folds are grouped by
    utterance (neighbouring frames are near-copies: split apart, they would make the CV lie)."""
    root = seq.find_frames(src)
    if root is None:
        raise PipelineError(f"--layout frames: {src.path} has no train_labels.txt and train_split.txt (HW2's libriphone/)")
    utterances = seq.frames_split(src, root, "train")
    labels = seq.frames_labels(src, root, utterances)
    counts = [len(labels[u]) for u in utterances]
    flat = pd.Series([v for u in utterances for v in labels[u]], name="label")
    the_task = known.task if known is not None else infer_task(flat.to_frame(), src.label(root + "train_labels.txt"),
                                                               "multiclass", metric, threshold)
    targets = encode(flat.to_frame(), the_task, src.label(root + "train_labels.txt"))
    groups = np.repeat(np.array(utterances, dtype=object), counts)
    desc = Description("frames", the_task, root=root, train_file=root + "train_labels.txt", n_images=len(flat))
    if known is None and src.find("test_split.txt") is not None:
        seq.test_arrays(src, desc)  # a test list naming a file twice, or outside the data, refused before training
    raw = src.read_file(root + "train_labels.txt") + src.read_file(root + "train_split.txt")
    files = tuple(seq.frame_file(root, "train", u) for u in utterances)
    return desc, TrainSet(targets, np.arange(len(flat), dtype=np.int64), groups, _hash(raw), files=files)


def _describe_sequences(src, root, train_csv, frame, id_col, target_cols, image_dir, task, metric, threshold, group_col,
                        known):
    """The generic sequences layout: train CSV ids naming (T, F) arrays, any task kind; the test side is checked now
    (its ids must name arrays of another folder) so a bad one is refused before any training."""
    where = src.label(train_csv)
    folders = seq.array_folders(src, root)
    if image_dir and image_dir.strip("/") not in folders:
        raise PipelineError(f"--image-dir: {src.path}{'/' + root if root else ''} has no folder {image_dir!r} of .pt/.npy "
                            f"arrays (found {', '.join(sorted(folders)[:4]) or 'none'})")
    text = pd.read_csv(io.BytesIO(src.read_file(train_csv)), dtype=str, keep_default_na=False)  # ids as written
    train_dir, id_col = (known.image_dir, known.id_col) if known is not None else \
        _images_and_ids(text, folders, image_dir.strip("/"), id_col)
    if train_dir is None:
        raise PipelineError(f"--id-col: no column of {where} names the .pt/.npy arrays of any folder "
                            f"({', '.join(sorted(folders)[:4])}; columns {', '.join(map(str, frame.columns[:5]))}); "
                            "name them with --id-col and --image-dir")
    if text[id_col].duplicated().any():
        raise PipelineError(f"{where}: id {text[id_col][text[id_col].duplicated()].iloc[0]!r} appears in more than one "
                            "row; one sequence, one row (it could land in two folds)")
    files = seq.match_arrays(text[id_col], train_dir, folders.get(train_dir, []), where)
    if group_col and (group_col in target_cols or group_col == id_col):
        raise PipelineError(f"--group-col: {group_col} is the {'target' if group_col in target_cols else 'id'} "
                            "column; name a column that groups rows (a recording, a subject, ...)")
    targets = list(known.target_cols) if known is not None else \
        _target_columns(src, root, frame, id_col, group_col, target_cols, where)
    sample = read_sample_submission(src, root, required=False)
    the_task = known.task if known is not None else infer_task(frame[targets], where, task, metric, threshold,
                                                                None if task else _sample_targets(sample, targets))
    test_dir = known.test_dir if known is not None else img.pick_folder(
        {k: v for k, v in folders.items() if k != train_dir}, img.TEST_DIRS, "test")
    desc = Description("sequences", the_task, root=root, train_file=train_csv, id_col=id_col,
                       target_cols=tuple(targets), image_dir=train_dir, test_dir=test_dir or "", group_col=group_col,
                       n_images=len(frame))
    if known is None:
        if test_dir is None:
            raise PipelineError(f"{src.path}: no test folder of .pt/.npy arrays besides {train_dir}/ (expected test/)")
        if sample is not None:
            the_task.submission_mode(sample)
        test_side, _ = seq.test_arrays(src, desc)  # every test id names an array of the test folder
        width = seq.load_features(src, files[0]).shape[1]
        seq.load_features(src, test_side[0], width, src.label(files[0]))  # another shape is refused before training
    return desc, TrainSet(encode(frame[targets], the_task, where), np.arange(len(frame), dtype=np.int64),
                          _groups(frame, group_col, where), _hash(src.read_file(train_csv)), files=tuple(files))


def _sample_targets(sample: pd.DataFrame | None, targets) -> pd.DataFrame | None:
    """The sample submission's columns named like the targets (HW1's `tested_positive.2` is written
    `tested_positive` there), or None: what it holds tells values from classes."""
    if sample is None:
        return None
    plain = {str(t): str(t).rsplit(".", 1)[0] if str(t) not in sample.columns else str(t) for t in targets}
    present = {t: s for t, s in plain.items() if s in sample.columns}
    return sample[list(present.values())].set_axis(list(present), axis=1) if present else None


def _csv_or_folders(src: Source, root: str, frame: pd.DataFrame, layout: str) -> str:
    """Both a train CSV and train/<class>/ folders: the CSV when it names the images, else the folders."""
    text = frame.astype(str)
    folders = img.image_folders(src, root)
    named = any(img.guess_id_col(text, img.file_index(files)) for files in folders.values())
    return layout if named else "class-folders"


def _groups(frame: pd.DataFrame | None, group_col: str, where: str) -> np.ndarray | None:
    if not group_col:
        return None
    if frame is None or group_col not in frame.columns:
        raise PipelineError(f"--group-col: {where} has no column {group_col!r}")
    if frame[group_col].isna().any():
        row = int(np.flatnonzero(frame[group_col].isna().to_numpy())[0])
        raise PipelineError(f"{where}: row {row + 1}, column {group_col}: missing group value")
    return frame[group_col].astype(str).to_numpy()


def _describe_pixels(src, train_csv, frame, target_cols, task, metric, threshold, group_col):
    where = src.label(train_csv)
    target = (target_cols or (LABEL,))[0]
    if target not in frame.columns:
        raise PipelineError(f"{where}: no {target!r} column (expected label,pixel0..pixel783; found "
                            f"{', '.join(map(str, frame.columns[:3]))}, ...)")
    side = pixels.side_of(frame)
    extra = [target] + ([group_col] if group_col else [])
    groups = _groups(frame, group_col, where)
    images = pixels.images(frame, where, side, extra)
    pixels.check_labels(frame[target], where)
    the_task = infer_task(frame[[target]], where, task or "multiclass", metric, threshold)
    targets = encode(frame[[target]], the_task, where)
    desc = Description("pixels", the_task, train_file=train_csv, target_cols=(target,), channels=1, side=side,
                       group_col=group_col, n_images=len(frame))
    return desc, TrainSet(targets, np.arange(len(frame), dtype=np.int64), groups,
                          _hash(src.read_file(train_csv)), images=images)


def _describe_csv_images(src, root, train_csv, frame, id_col, target_cols, image_dir, probed, task, metric, threshold,
                         group_col):
    where = src.label(train_csv)
    folders = img.image_folders(src, root)
    if image_dir and image_dir.strip("/") not in folders or not folders:
        raise PipelineError(f"--image-dir: {where} has no pixel columns and {src.path}{'/' + root if root else ''} has no "
                            f"folder of images{' called ' + repr(image_dir) if image_dir else ''} "
                            f"(found {', '.join(sorted(folders)[:4]) or 'none'})")
    text = pd.read_csv(io.BytesIO(src.read_file(train_csv)), dtype=str, keep_default_na=False)  # ids as written
    train_dir, id_col = _images_and_ids(text, folders, image_dir.strip("/"), id_col)
    if train_dir is None:
        raise PipelineError(f"--id-col: no column of {where} names the images of any folder "
                            f"({', '.join(sorted(folders)[:4])}; columns {', '.join(map(str, frame.columns[:5]))}); "
                            "name them with --id-col and --image-dir")
    index = img.file_index(folders[train_dir])
    targets = _target_columns(src, root, frame, id_col, group_col, target_cols, where)
    if text[id_col].duplicated().any():
        dup = text[id_col][text[id_col].duplicated()].iloc[0]
        raise PipelineError(f"{where}: id {dup!r} appears in more than one row; one image, one row (it could land "
                            "in two folds)")
    files = img.match_ids(text[id_col], index, where, train_dir)
    the_task = infer_task(frame[targets], where, task, metric, threshold,
                          None if task else _sample_targets(read_sample_submission(src, root, required=False), targets))
    test_dir = probed.get("test_dir") if probed else _checked_test_side(src, root, the_task, train_dir, folders)
    desc = Description("csv-images", the_task, root=root, train_file=train_csv, id_col=id_col,
                       target_cols=tuple(targets), image_dir=train_dir, test_dir=test_dir,
                       channels=probed.get("channels") or img.detect_channels(src, files), group_col=group_col,
                       n_images=len(frame))
    return desc, TrainSet(encode(frame[targets], the_task, where), np.arange(len(frame), dtype=np.int64),
                          _groups(frame, group_col, where), _hash(src.read_file(train_csv)), files=tuple(files))


def _images_and_ids(frame: pd.DataFrame, folders: dict, image_dir: str, id_col: str) -> tuple[str | None, str]:
    """The train image folder and the id column naming its files: the given ones, else the first folder (train-like
    names first, test-like ones last) where some column names the files."""
    named = [d for d in img.TRAIN_DIRS if d in folders]
    rest = sorted((d for d in folders if d not in named), key=lambda d: ("test" in d.lower(), d))
    for folder in [image_dir] if image_dir else named + rest:
        index = img.file_index(folders[folder])
        found = id_col if id_col in frame.columns else (img.guess_id_col(frame, index) if not id_col else None)
        if found and frame[found].head(50).astype(str).map(lambda v: v in index).mean() >= 0.8:
            return folder, found
    return None, ""


def _checked_test_side(src: Source, root: str, task: Task, train_dir: str, folders: dict) -> str:
    """The test image folder, found now so a sample whose ids name no image, or whose columns this task cannot fill,
    is refused before any training."""
    sample = read_sample_submission(src, root, required=True)  # infer cannot write a submission without it
    preferred = img.pick_folder({k: v for k, v in folders.items() if not k.startswith(train_dir)}, img.TEST_DIRS, "test")
    task.submission_mode(sample)
    files = test_files(src, root, sample, preferred or "")
    return str(PurePosixPath(files[0][len(root):]).parent)


def _target_columns(src, root, frame, id_col, group_col, given, where) -> list[str]:
    """--target-col, else the sample submission's columns found in train, else the one column left."""
    if given:
        missing = [c for c in given if c not in frame.columns]
        if missing:
            raise PipelineError(f"--target-col: {where} has no column {missing[0]!r}")
        return list(given)
    rest = [str(c) for c in frame.columns if c not in (id_col, group_col)]
    sample = read_sample_submission(src, root, required=False)
    shared = [c for c in (map(str, sample.columns[1:]) if sample is not None else []) if c in rest]
    if shared:
        return shared
    if len(rest) == 1:
        return rest
    if not rest:
        raise PipelineError(f"--target-col: {where} has no column left for a target besides the id"
                            + (f" and --group-col {group_col}" if group_col else ""))
    raise PipelineError(f"--target-col: {where} has several candidate target columns ({', '.join(rest[:5])}); "
                        "name the target(s) with --target-col")


def _class_root(src: Source) -> str | None:
    """The folder whose sub-folders are the classes: train/ (or the given one) with images one level down."""
    for f in src.files():
        parts = PurePosixPath(f).parts
        if img.is_image(f) and len(parts) >= 3 and parts[-3].lower().startswith("train"):
            return "/".join(parts[:-2])
    return None


def _describe_class_folders(src, image_dir, probed, task, metric, threshold, group_col):
    class_root = image_dir.strip("/") if image_dir else _class_root(src)
    if class_root is None:
        raise PipelineError(f"--layout class-folders: {src.path} has no train/<class>/ image folders")
    root = str(PurePosixPath(class_root).parent) + "/" if "/" in class_root else ""
    train_dir = PurePosixPath(class_root).name
    files, labels = img.class_folder_files(src, root, train_dir)
    if not files:
        raise PipelineError(f"--image-dir: {class_root}/ has no <class>/<image> files")
    if group_col:
        raise PipelineError("--group-col: class-folders data has no columns to group by")
    frame = pd.DataFrame({"label": labels})
    the_task = infer_task(frame, f"{class_root}/", task or "multiclass", metric, threshold)
    if not probed:  # said once, when make_folds detects the classes
        for name in img.empty_class_folders(src, class_root, labels):
            print(f"notice: {src.label(class_root + '/' + name)}/ holds no images; it is not a class (the classes are "
                  f"the {len(set(labels))} folders with images)", file=sys.stderr)
    folders = img.image_folders(src, root)
    test_dir = probed.get("test_dir") if probed else _checked_test_side(src, root, the_task, train_dir, folders)
    desc = Description("class-folders", the_task, root=root, target_cols=(), image_dir=train_dir,
                       test_dir=test_dir, channels=probed.get("channels") or img.detect_channels(src, files),
                       n_images=len(files))
    return desc, TrainSet(encode(frame, the_task, f"{class_root}/"), np.arange(len(files), dtype=np.int64), None,
                          img.files_hash(src, files, labels), files=tuple(files))


# -- reading through a description ---------------------------------------------------------------------------

def read_train(src: Source, desc: Description | None = None) -> TrainSet:
    """The train targets (and pixel images) as the description says; no description: detect with defaults."""
    if desc is None:
        return describe(src)[1]
    found, train = describe(src, desc.layout, desc.id_col, desc.target_cols, desc.image_dir if desc.layout != "class-folders"
                            else desc.root + desc.image_dir, desc.task.kind, desc.task.metric, desc.task.threshold,
                            desc.group_col, known=desc)
    if desc.task.outputs_probabilities and found.task.classes != desc.task.classes and desc.layout not in SEQUENCE_KINDS:
        raise PipelineError(f"--data: its classes ({', '.join(found.task.classes[:5])}, ...) differ from the ones "
                            f"the folds were made with ({', '.join(desc.task.classes[:5])}, ...); remake the folds")
    return train


def read_train_as(src: Source, desc: Description, data_flag: str, described_by: str,
                  new_folds: bool = True) -> TrainSet:
    """read_train, where data of another shape than `described_by` says is named as such, with what to do.

    new_folds: `described_by` is a folds description, so folds made for this data are a way out (train's case).
    """
    try:
        return read_train(src, desc)
    except PipelineError as e:
        remedy = "pass the --data it was made from"
        if new_folds:  # the command last, so that it can be copied as it stands
            other = shlex.quote(str(other_folds_path(described_by, data_flag)))
            remedy += (f", or train on folds made for this data: add --folds-path {other} to this command, after "
                       f"making them with: python -m pipeline.make_folds --data {shlex.quote(data_flag)} "
                       f"--folds-path {other}")
        raise PipelineError(f"--data {data_flag} does not fit {described_by}, which describes {desc.summary()} "
                            f"({e}); {remedy}") from None


def other_folds_path(described_by: str, data_flag: str) -> Path:
    """A folds file for other data beside the current one: folds/folds.json + 'sample-images' -> folds/sample-images.csv."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", PurePosixPath(data_flag.rstrip("/")).name.removesuffix(".zip")).strip(".-")
    current = Path(described_by).with_suffix(".csv")
    path = current.with_name(f"{slug or 'other'}.csv")
    return path.with_name(f"{path.stem}-2.csv") if path == current else path


def train_images(src: Source, desc: Description, train: TrainSet, img_size: int, cache_dir: str) -> np.ndarray:
    """(N, C, H, W) uint8: the pixel array as read, or the image files decoded once at img_size (memory-mapped)."""
    if train.images is not None:
        return train.images
    if desc.layout in SEQUENCE_KINDS:  # the feature files packed once: (sum of T, F) and the rows that view it
        return seq.train_rows(src, desc.layout, desc.root, list(train.files), len(train.targets))
    return img.cached_images(src, list(train.files), img_size, desc.channels, cache_dir, "train")


def submission_sample(src: Source, desc: Description | None) -> pd.DataFrame:
    """What a submission must look like: sample_submission.csv, or for a table competition that ships none (a
    class competition such as HW1), the test ids and the target's name."""
    if desc is not None and desc.layout in SEQUENCE_KINDS:
        sample = read_sample_submission(src, "", required=False)
        return sample if sample is not None else seq.default_sample(src, desc)
    if desc is not None and desc.layout == "table":
        sample = read_sample_submission(src, desc.root, required=False)
        return sample if sample is not None else tab.default_sample(
            tab.read_csv(src, desc.columns.test_file, text=(desc.columns.id_col,)), desc.columns)
    return read_sample_submission(src, desc.root if desc else "")


def read_sample_submission(src: Source, root: str = "", required: bool = True) -> pd.DataFrame | None:
    name = "sample_submission.csv"
    rel = src.find(name)
    if rel is None:
        if required:
            raise PipelineError(f"{src.label(root + name)}: not found; infer needs it: it fixes the submission's "
                                "ids, columns and test images (Kaggle ships it with the competition data)")
        return None
    sample = parse_csv(src.read_file(rel), src.label(rel), text_first=True)
    if len(sample.columns) < 2:
        raise PipelineError(f"{src.label(rel)}: expected an id column and at least one prediction column, "
                            f"found {len(sample.columns)} column(s)")
    if sample.iloc[:, 0].duplicated().any():
        raise PipelineError(f"{src.label(rel)}: id {sample.iloc[:, 0][sample.iloc[:, 0].duplicated()].iloc[0]!r} appears twice")
    return sample


def read_test(src: Source, desc: Description, img_size: int, cache_dir: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Test rows in the order of sample_submission.csv's ids, and that sample: images (N, C, H, W) uint8, or a
    table's raw features (N, F) float32."""
    if desc.layout == "table":
        return _table_test(src, desc)
    if desc.layout in SEQUENCE_KINDS:
        sample = submission_sample(src, desc)
        return seq.rows_for_test(src, desc, sample), sample
    if desc.layout == "pixels":
        test_csv = src.find("test.csv")
        if test_csv is None:
            raise PipelineError(f"{src.label('test.csv')}: not found (the competition should hold train.csv, "
                                "test.csv, sample_submission.csv)")
        sample = read_sample_submission(src, desc.root)
        where, raw = src.label(test_csv), src.read_file(test_csv)
        frame = parse_csv(raw, where, text_first=not raw.lstrip(b"\xef\xbb\xbf").startswith(b"pixel"))
        return pixels.test_images(frame, where, desc.side, sample, ""), sample
    sample = read_sample_submission(src, desc.root)
    files = test_files(src, desc.root, sample, desc.test_dir)
    return img.cached_images(src, files, img_size, desc.channels, cache_dir, "test"), sample


def _table_test(src: Source, desc: Description) -> tuple[np.ndarray, pd.DataFrame]:
    """The test table's features in the sample's id order; without a sample, the test ids and the target's name."""
    cols = desc.columns
    test = tab.read_csv(src, cols.test_file, text=(cols.id_col, *cols.categorical))
    where = src.label(cols.test_file)
    missing = [c for c in cols.features if c not in test.columns]
    if missing:
        raise PipelineError(f"{where}: no column {missing[0]!r}; the model was trained on it")
    for col in cols.numeric:
        tab.check_test_type(test[col], col, where)
    sample = read_sample_submission(src, desc.root, required=False)
    if sample is None:
        sample = tab.default_sample(test, cols)
    rows = tab.test_rows(test, sample, cols, src.label(src.find("sample_submission.csv") or "sample_submission.csv"), where)
    return tab.matrix(test.iloc[rows].reset_index(drop=True), cols, where), sample


def test_files(src: Source, root: str, sample: pd.DataFrame, preferred: str = "") -> list[str]:
    """The image file of every sample_submission id: in the preferred folder, else in whichever folder holds them
    (plant pathology 2020 keeps train and test images in one images/ folder)."""
    folders = img.image_folders(src, root)
    order = sorted(folders, key=lambda d: (d != preferred, "test" not in d.lower(), d))
    ids = sample.iloc[:, 0].astype(str)
    for folder in order:
        index = img.file_index(folders[folder])
        if ids.head(50).map(lambda v: v in index).mean() >= 0.8:
            return img.match_ids(ids, index, src.label("sample_submission.csv"), folder)
    raise PipelineError(f"{src.label('sample_submission.csv')}: its ids ({', '.join(ids.head(3))}, ...) name no image "
                        f"in any folder of {src.path} ({', '.join(sorted(folders)[:4]) or 'no image folders'})")


def _hash(raw: bytes) -> str:
    from pipeline.folds import file_hash

    return file_hash(raw)
