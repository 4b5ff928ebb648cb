"""pixels: train.csv = label, pixel0..pixelN (N+1 a square), test.csv, sample_submission.csv (Digit Recognizer)."""
from __future__ import annotations

import numpy as np

from pipeline.data import pixels
from pipeline.data.common import groups, image_summary, read_sample_submission
from pipeline.data.layout import Description, Found, Layout, Options, TrainSet, register
from pipeline.data.pixels import LABEL, MNIST_MEAN, MNIST_STD
from pipeline.data.sample import write_sample
from pipeline.data.source import Source, parse_csv
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.io import file_hash


class Pixels(Layout):
    name = "pixels"
    tta_preset = "digits"
    augment = "digits"
    samples = {"sample": write_sample}
    hint = "train.csv with pixel columns"

    def detect(self, src: Source, found: Found) -> bool:
        return found.frame is not None and pixels.is_pixels(found.frame)

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        frame, train_csv = found.frame, found.train_csv
        if frame is None:
            raise PipelineError(f"--layout pixels: {src.path} has no train.csv")
        where = src.label(train_csv)
        target = (opts.target_cols or (LABEL,))[0]
        if opts.group_col and (opts.group_col in opts.target_cols or opts.group_col == target):
            raise PipelineError(f"--group-col: {opts.group_col} is the target column; name a column that groups rows "
                                "(patient, image source, ...)")
        if target not in frame.columns:
            raise PipelineError(f"{where}: no {target!r} column (expected label,pixel0..pixel783; found "
                                f"{', '.join(map(str, frame.columns[:3]))}, ...)")
        side = pixels.side_of(frame)
        extra = [target] + ([opts.group_col] if opts.group_col else [])
        row_groups = groups(frame, opts.group_col, where)
        images = pixels.images(frame, where, side, extra)
        pixels.check_labels(frame[target], where)
        the_task = infer_task(frame[[target]], where, opts.task or "multiclass", opts.metric, opts.threshold)
        targets = encode(frame[[target]], the_task, where)
        desc = Description("pixels", the_task, train_file=train_csv, target_cols=(target,), channels=1, side=side,
                           group_col=opts.group_col, n_images=len(frame))
        return desc, TrainSet(targets, np.arange(len(frame), dtype=np.int64), row_groups,
                              file_hash(src.read_file(train_csv)), rows=images)

    def summary(self, desc: Description) -> str:
        return image_summary(desc)

    def normalize(self, desc: Description):
        return MNIST_MEAN, MNIST_STD

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
        test_csv = src.find("test.csv")
        if test_csv is None:
            raise PipelineError(f"{src.label('test.csv')}: not found (the competition should hold train.csv, "
                                "test.csv, sample_submission.csv)")
        sample = read_sample_submission(src, desc.root)
        where, raw = src.label(test_csv), src.read_file(test_csv)
        frame = parse_csv(raw, where, text_first=not raw.lstrip(b"\xef\xbb\xbf").startswith(b"pixel"))
        return pixels.test_images(frame, where, desc.side, sample, ""), sample


register(Pixels())
