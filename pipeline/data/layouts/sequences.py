"""sequences: a train CSV whose ids name train/<id>.pt|.npy (T, F) arrays, and test/ arrays (any task, per sequence)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from pipeline.data import images as img
from pipeline.data import sequences as seq
from pipeline.data.common import groups, images_and_ids, read_sample_submission, sample_targets, target_columns
from pipeline.data.layout import Description, Found, Options, TrainSet, register
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.io import file_hash


class Sequences(seq.SequenceLayout):
    name = "sequences"
    hint = "a train CSV whose ids name train/<id>.pt|.npy arrays"

    def detect(self, src: Source, found: Found) -> bool:
        return found.frame is not None and bool(seq.array_folders(src, found.root))

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        """Train CSV ids naming (T, F) arrays, any task kind; the test side is checked now (its ids must name arrays of
        another folder) so a bad one is refused before any training."""
        frame, root, train_csv = found.frame, found.root, found.train_csv
        if frame is None:
            raise PipelineError(f"--layout sequences: {src.path} has no train.csv or labels.csv or train_labels.csv "
                                "naming the arrays")
        image_dir, id_col, group_col, target_cols = opts.image_dir, opts.id_col, opts.group_col, opts.target_cols
        where = src.label(train_csv)
        folders = seq.array_folders(src, root)
        if image_dir and image_dir.strip("/") not in folders:
            raise PipelineError(f"--image-dir: {src.path}{'/' + root if root else ''} has no folder {image_dir!r} of "
                                f".pt/.npy arrays (found {', '.join(sorted(folders)[:4]) or 'none'})")
        text = pd.read_csv(io.BytesIO(src.read_file(train_csv)), dtype=str, keep_default_na=False)  # ids as written
        train_dir, id_col = (known.image_dir, known.id_col) if known is not None else \
            images_and_ids(text, folders, image_dir.strip("/"), id_col)
        if train_dir is None:
            raise PipelineError(f"--id-col: no column of {where} names the .pt/.npy arrays of any folder "
                                f"({', '.join(sorted(folders)[:4])}; columns {', '.join(map(str, frame.columns[:5]))}); "
                                "name them with --id-col and --image-dir")
        if text[id_col].duplicated().any():
            raise PipelineError(f"{where}: id {text[id_col][text[id_col].duplicated()].iloc[0]!r} appears in more than "
                                "one row; one sequence, one row (it could land in two folds)")
        files = seq.match_arrays(text[id_col], train_dir, folders.get(train_dir, []), where)
        if group_col and (group_col in target_cols or group_col == id_col):
            raise PipelineError(f"--group-col: {group_col} is the {'target' if group_col in target_cols else 'id'} "
                                "column; name a column that groups rows (a recording, a subject, ...)")
        targets = list(known.target_cols) if known is not None else \
            target_columns(src, root, frame, id_col, group_col, target_cols, where)
        sample = read_sample_submission(src, root, required=False)
        the_task = known.task if known is not None else infer_task(
            frame[targets], where, opts.task, opts.metric, opts.threshold,
            None if opts.task else sample_targets(sample, targets))
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
            test_side, _ = self.test_arrays(src, desc)  # every test id names an array of the test folder
            width = seq.load_features(src, files[0]).shape[1]
            seq.load_features(src, test_side[0], width, src.label(files[0]))  # another shape is refused before training
        return desc, TrainSet(encode(frame[targets], the_task, where), np.arange(len(frame), dtype=np.int64),
                              groups(frame, group_col, where), file_hash(src.read_file(train_csv)), files=tuple(files))

    def ident(self, desc: Description) -> str:
        return f"id {desc.id_col} naming {desc.image_dir}/ arrays, target {', '.join(desc.target_cols)}, "

    def test_arrays(self, src: Source, desc: Description) -> tuple[list[str], list[str]]:
        """The test ids (the sample's, else test.csv's) and their arrays."""
        ids = seq.generic_test_ids(src, desc)
        folders = seq.array_folders(src, desc.root)
        return (seq.match_arrays(ids, desc.test_dir, folders.get(desc.test_dir, []), seq.ids_where(src, desc.root)),
                ids.tolist())

    def default_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        """test.csv's ids and the target columns."""
        _, ids = self.test_arrays(src, desc)
        return pd.DataFrame({desc.id_col: ids, **{c: 0 for c in desc.target_cols}})


register(Sequences())
