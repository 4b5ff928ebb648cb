"""Readers more than one layout uses: the sample submission, the group and target columns, image folders and the
ids naming their files, and the train file's hash."""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from pipeline.data import images as img
from pipeline.data.source import Source, parse_csv
from pipeline.errors import PipelineError, cut
from pipeline.io import file_hash
from pipeline.tasks import Task

TRAIN_CSVS = ("train.csv", "labels.csv", "train_labels.csv")


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


def sample_label(src: Source, root: str = "") -> str:
    """Where the sample submission is (or would be), as messages name it."""
    return src.label(src.find("sample_submission.csv") or root + "sample_submission.csv")


def sample_targets(sample: pd.DataFrame | None, targets) -> pd.DataFrame | None:
    """The sample submission's columns named like the targets (HW1's `tested_positive.2` is written
    `tested_positive` there), or None: what it holds tells values from classes."""
    if sample is None:
        return None
    plain = {str(t): str(t).rsplit(".", 1)[0] if str(t) not in sample.columns else str(t) for t in targets}
    present = {t: s for t, s in plain.items() if s in sample.columns}
    return sample[list(present.values())].set_axis(list(present), axis=1) if present else None


def groups(frame: pd.DataFrame | None, group_col: str, where: str) -> np.ndarray | None:
    if not group_col:
        return None
    if frame is None or group_col not in frame.columns:
        raise PipelineError(f"--group-col: {where} has no column {group_col!r}")
    if frame[group_col].isna().any():
        row = int(np.flatnonzero(frame[group_col].isna().to_numpy())[0])
        raise PipelineError(f"{where}: row {row + 1}, column {group_col}: missing group value")
    return frame[group_col].astype(str).to_numpy()


def target_columns(src: Source, root: str, frame: pd.DataFrame, id_col: str, group_col: str, given,
                   where: str) -> list[str]:
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


def images_and_ids(frame: pd.DataFrame, folders: dict, image_dir: str, id_col: str) -> tuple[str | None, str]:
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


def checked_test_side(src: Source, root: str, task: Task, train_dir: str, folders: dict) -> str:
    """The test image folder, found now so a sample whose ids name no image, or whose columns this task cannot fill,
    is refused before any training."""
    sample = read_sample_submission(src, root, required=True)  # infer cannot write a submission without it
    preferred = img.pick_folder({k: v for k, v in folders.items() if not k.startswith(train_dir)}, img.TEST_DIRS, "test")
    task.submission_mode(sample)
    files = test_files(src, root, sample, preferred or "")
    return str(PurePosixPath(files[0][len(root):]).parent)


def class_root(src: Source) -> str | None:
    """The folder whose sub-folders are the classes: train/ (or the given one) with images one level down."""
    for f in src.files():
        parts = PurePosixPath(f).parts
        if img.is_image(f) and len(parts) >= 3 and parts[-3].lower().startswith("train"):
            return "/".join(parts[:-2])
    return None


def train_hash(raw: bytes) -> str:
    return file_hash(raw)


def image_summary(desc) -> str:
    """What make_folds prints for an image layout."""
    targets = ", ".join(desc.target_cols) if len(desc.target_cols) < 4 else f"{len(desc.target_cols)} columns"
    where = (f"{desc.n_images:,} images in {desc.image_dir}/" if not desc.side
             else f"{desc.n_images:,} images of {desc.side}x{desc.side}")
    ident = f"id {desc.id_col}, " if desc.id_col else ""
    return (f"{desc.layout}: {ident}target {targets or 'the class folders'}, {desc.task.describe()}, "
            f"{'RGB' if desc.channels == 3 else 'gray'}, {where}")


def row_positions(sample: pd.DataFrame, n_rows: int, where: str, what: str, note: str = "") -> np.ndarray:
    """The sample submission's ids read as positions 0..n_rows-1 of the test rows (layouts whose test rows have no
    ids of their own); the first that is not one is refused in one line naming `what` a position is."""
    wanted = pd.to_numeric(sample.iloc[:, 0], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(wanted) | (wanted < 0) | (wanted >= n_rows) | (wanted != np.round(wanted))
    if bad.any():
        raise PipelineError(f"{where}: id {cut(str(sample.iloc[int(np.flatnonzero(bad)[0]), 0]))!r} is "
                            f"not {what} (0..{n_rows - 1}{', ' + note if note else ''})")
    return wanted.astype(np.int64)
