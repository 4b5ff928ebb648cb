"""Competition data in any of its layouts, detected from --data (a folder or Kaggle's zip); one module per layout in
pipeline/data/layouts/ (docs/layouts.md gives the order they are tried in):

    pixels          train.csv = label, pixel0..pixelN (N+1 a square); test.csv        (Digit Recognizer)
    csv-images      a train CSV (id/file column + target column(s)) and an image folder  (cassava, pawpularity)
    class-folders   train/<class name>/*, test/*                                           (food-11, ImageFolder)
    table           *train*.csv + *test*.csv of numeric and text columns                   (Titanic, HW1 COVID)
    speakers        Dataset/mapping.json, metadata.json, testdata.json, uttr-*.pt          (HW4: speaker of an utterance)
    frames          libriphone/feat/{train,test}/*.pt, train_labels.txt, *_split.txt      (HW2: phoneme of every frame)
    sequences       train.csv whose ids name train/<id>.pt|.npy (T, F) arrays, test/ arrays  (any task, per sequence)
    arrays          *train*.npy (N, F), *label*.npy (N,), *test*.npy (M, F)                 (HW2-2021's windowed frames)
    idx             train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte, t10k-images-...  (MNIST's own files)

`describe` detects the layout and the task once (make_folds saves the result beside the folds); every later
stage reads through that Description and its layout object, so no stage branches on a layout.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.config import DEFAULT_DATA
from pipeline.data import layouts  # noqa: F401 - registers every layout
from pipeline.data.common import TRAIN_CSVS, read_sample_submission, test_files  # noqa: F401
from pipeline.data.layout import REGISTRY, Description, Found, Options, TrainSet, layout_of  # noqa: F401
from pipeline.data.pixels import LABEL, PIXELS, SIDE  # noqa: F401 - the Digit Recognizer constants
from pipeline.data.sample import write_sample, write_sample_images, write_sample_table  # noqa: F401
from pipeline.data.source import DOWNLOAD, Source, parse_csv  # noqa: F401
from pipeline.data.source import resolve as _resolve
from pipeline.errors import PipelineError

NUM_CLASSES = 10  # Digit Recognizer's, for the benchmark and the tests
SAMPLES = {name: write for layout in REGISTRY.values() for name, write in layout.samples.items()}


def resolve(data: str) -> Source:
    return _resolve(data, DEFAULT_DATA, SAMPLES, _recognised)


def _found(src: Source) -> Found:
    """What every layout's detection reads: the train CSV, if any, and its folder."""
    train_csv = next((f for f in (src.find(n) for n in TRAIN_CSVS) if f), None)
    root = str(PurePosixPath(train_csv).parent) + "/" if train_csv and "/" in train_csv else ""
    frame = parse_csv(src.read_file(train_csv), src.label(train_csv)) if train_csv else None
    return Found(train_csv, root, frame)


def _recognised(src: Source) -> bool:
    """Does some layout recognise this folder's own files?"""
    try:
        found = _found(src)
        return any(layout.detect(src, found) for layout in REGISTRY.values())
    except PipelineError:
        return False


def describe(src: Source, opts: Options = Options(), known: Description | None = None) -> tuple[Description, TrainSet]:
    """Detect the layout and the task (each flag of `opts` overrides a guess) and read the train targets.

    known: the saved description when re-reading; what make_folds probed (image channels, the test folder, the
    test side's match) is taken as it is.
    """
    found = _found(src)
    if opts.layout and opts.layout not in REGISTRY:
        raise PipelineError(f"--layout {opts.layout}: no such layout; valid: {', '.join(REGISTRY)}")
    name = opts.layout or next((n for n, layout in REGISTRY.items() if layout.detect(src, found)), "")
    if name not in REGISTRY:
        hints = ", ".join(layout.hint for layout in REGISTRY.values() if layout.hint)
        raise PipelineError(f"--data: {src.path}: no known layout (expected {hints}); found "
                            f"{', '.join(src.files()[:4]) or 'no files'}; name it with --layout {'|'.join(REGISTRY)}")
    return layout_of(name).describe(src, found, opts, known)


# -- reading through a description ---------------------------------------------------------------------------

def read_train(src: Source, desc: Description | None = None) -> TrainSet:
    """The train targets (and the rows read with them) as the description says; no description: detect with
    defaults."""
    if desc is None:
        return describe(src)[1]
    found, train = describe(src, Options.of(desc), known=desc)
    if desc.task.outputs_probabilities and found.task.classes != desc.task.classes and desc.owner.checks_classes:
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


def train_rows(src: Source, desc: Description, train: TrainSet, img_size: int, cache_dir: str) -> np.ndarray:
    """The rows a model trains on: as read with the targets (pixels, a table), else the layout's (image files decoded
    once at img_size, memory-mapped; feature arrays packed once)."""
    if train.rows is not None:
        return train.rows
    return desc.owner.train_rows(src, desc, train, img_size, cache_dir)


def submission_sample(src: Source, desc: Description | None) -> pd.DataFrame:
    """What a submission must look like: sample_submission.csv, or where a competition ships none, the layout's
    default (the test ids and the target's name)."""
    if desc is None:
        return read_sample_submission(src, "")
    return desc.owner.submission_sample(src, desc)


def read_test(src: Source, desc: Description, img_size: int, cache_dir: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Test rows in the order of the submission sample's ids, and that sample."""
    return desc.owner.read_test(src, desc, img_size, cache_dir)
