"""table: *train*.csv + *test*.csv of numeric and text columns (Titanic, HW1 COVID, the Playground Series)."""
from __future__ import annotations

import numpy as np

from pipeline.data import images as img
from pipeline.data import table as tab
from pipeline.data.common import groups, read_sample_submission, sample_targets
from pipeline.data.layout import Description, Found, Layout, Options, TrainSet, register
from pipeline.data.sample import write_sample_table
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.io import file_hash


class Table(Layout):
    name = "table"
    kind = "table"
    tta_preset = ""
    augment = "none"
    samples = {"sample-table": write_sample_table}
    hint = "*train*.csv and *test*.csv of columns"

    def detect(self, src: Source, found: Found) -> bool:
        """A *train*.csv / *test*.csv pair and no image anywhere."""
        return tab.find_files(src) is not None and not any(img.is_image(f) for f in src.files())

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        """Its columns detected once, or re-read as `known` saved them."""
        files = tab.find_files(src)
        if files is None:
            raise PipelineError(f"--layout table: {src.path} has no *train*.csv and *test*.csv pair")
        train_file, test_file = files
        train = tab.read_csv(src, train_file)
        where = src.label(train_file)
        sample = read_sample_submission(src, required=False) if known is None else None
        if known is not None:
            cols = known.columns
        else:
            test = tab.read_csv(src, test_file)
            cols = tab.detect(src, (train_file, test_file), (train, test, sample), opts)
            test = tab.read_csv(src, test_file, text=(cols.id_col, *cols.categorical))  # as infer reads it
            tab.test_rows(test, sample if sample is not None else tab.default_sample(test, cols), cols,
                          src.label(src.find("sample_submission.csv") or "sample_submission.csv"), src.label(test_file))
            tab.matrix(test, cols, src.label(test_file))  # unseen categories named now, not only at infer
        missing = [c for c in (*cols.features, *cols.target_cols) if c not in train.columns]
        if missing:
            raise PipelineError(f"{where}: no column {missing[0]!r}, which the folds' description names; remake the folds")
        the_task = known.task if known is not None else infer_task(
            train[list(cols.target_cols)], where, opts.task, opts.metric, opts.threshold,
            sample_targets(sample, cols.target_cols))
        if sample is not None:
            the_task.submission_mode(sample)  # a sample this task cannot fill is refused before any training
        desc = Description("table", the_task, train_file=train_file, id_col=cols.id_col, target_cols=cols.target_cols,
                           group_col=opts.group_col, n_images=len(train), table=cols.to_dict())
        return desc, TrainSet(encode(train[list(cols.target_cols)], the_task, where),
                              np.arange(len(train), dtype=np.int64), groups(train, opts.group_col, where),
                              file_hash(src.read_file(train_file)), rows=tab.matrix(train, cols))

    def summary(self, desc: Description) -> str:
        c = desc.columns
        return (f"table: id {c.id_col or '(row number)'}, target {', '.join(c.target_cols)} ({desc.task.describe()}), "
                f"{len(c.numeric)} numeric + {len(c.categorical)} categorical features, {desc.n_images:,} rows")

    def submission_sample(self, src: Source, desc: Description):
        """sample_submission.csv, or for a competition that ships none (a class competition such as HW1), the test
        ids and the target's name."""
        sample = read_sample_submission(src, desc.root, required=False)
        return sample if sample is not None else tab.default_sample(
            tab.read_csv(src, desc.columns.test_file, text=(desc.columns.id_col,)), desc.columns)

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
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
        rows = tab.test_rows(test, sample, cols, src.label(src.find("sample_submission.csv") or "sample_submission.csv"),
                             where)
        return tab.matrix(test.iloc[rows].reset_index(drop=True), cols, where), sample


register(Table())
