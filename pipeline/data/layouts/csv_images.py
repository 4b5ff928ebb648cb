"""csv-images: a train CSV (an id or file column, target column(s)) and a folder of images (cassava, pawpularity)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from pipeline.data import images as img
from pipeline.data.common import (checked_test_side, class_root, groups, image_summary, images_and_ids,
                                  read_sample_submission, sample_targets, target_columns, test_files)
from pipeline.data.layout import Description, Found, Layout, Options, TrainSet, layout_of, register
from pipeline.data.sample import write_sample_images
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.io import file_hash

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CsvImages(Layout):
    name = "csv-images"
    samples = {"sample-images": write_sample_images}
    hint = "a train CSV with an image column and an image folder"

    def detect(self, src: Source, found: Found) -> bool:
        return found.frame is not None

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        if class_root(src) is not None and not opts.image_dir and not opts.id_col and found.frame is not None:
            if not self._names_images(src, found):  # both a train CSV and train/<class>/ folders: the folders
                return layout_of("class-folders").describe(src, found, opts, known)
        frame, root, train_csv = found.frame, found.root, found.train_csv
        if frame is None:
            raise PipelineError(f"--layout csv-images: {src.path} has no train.csv or labels.csv or train_labels.csv")
        group_col, image_dir, id_col = opts.group_col, opts.image_dir, opts.id_col
        if group_col and group_col in opts.target_cols:
            raise PipelineError(f"--group-col: {group_col} is the target column; name a column that groups rows "
                                "(patient, image source, ...)")
        where = src.label(train_csv)
        folders = img.image_folders(src, root)
        if image_dir and image_dir.strip("/") not in folders or not folders:
            raise PipelineError(f"--image-dir: {where} has no pixel columns and {src.path}{'/' + root if root else ''} "
                                f"has no folder of images{' called ' + repr(image_dir) if image_dir else ''} "
                                f"(found {', '.join(sorted(folders)[:4]) or 'none'})")
        text = pd.read_csv(io.BytesIO(src.read_file(train_csv)), dtype=str, keep_default_na=False)  # ids as written
        train_dir, id_col = images_and_ids(text, folders, image_dir.strip("/"), id_col)
        if train_dir is None:
            raise PipelineError(f"--id-col: no column of {where} names the images of any folder "
                                f"({', '.join(sorted(folders)[:4])}; columns {', '.join(map(str, frame.columns[:5]))}); "
                                "name them with --id-col and --image-dir")
        index = img.file_index(folders[train_dir])
        targets = target_columns(src, root, frame, id_col, group_col, opts.target_cols, where)
        if text[id_col].duplicated().any():
            dup = text[id_col][text[id_col].duplicated()].iloc[0]
            raise PipelineError(f"{where}: id {dup!r} appears in more than one row; one image, one row (it could land "
                                "in two folds)")
        files = img.match_ids(text[id_col], index, where, train_dir)
        task = opts.task
        the_task = infer_task(frame[targets], where, task, opts.metric, opts.threshold,
                              None if task else sample_targets(read_sample_submission(src, root, required=False), targets))
        test_dir = known.test_dir if known else checked_test_side(src, root, the_task, train_dir, folders)
        desc = Description("csv-images", the_task, root=root, train_file=train_csv, id_col=id_col,
                           target_cols=tuple(targets), image_dir=train_dir, test_dir=test_dir,
                           channels=known.channels if known else img.detect_channels(src, files), group_col=group_col,
                           n_images=len(frame))
        return desc, TrainSet(encode(frame[targets], the_task, where), np.arange(len(frame), dtype=np.int64),
                              groups(frame, group_col, where), file_hash(src.read_file(train_csv)), files=tuple(files))

    @staticmethod
    def _names_images(src: Source, found: Found) -> bool:
        """Does some column of the train CSV name the files of an image folder?"""
        text = found.frame.astype(str)
        folders = img.image_folders(src, found.root)
        return any(img.guess_id_col(text, img.file_index(files)) for files in folders.values())

    def summary(self, desc: Description) -> str:
        return image_summary(desc)

    def normalize(self, desc: Description):
        """ImageNet's statistics for RGB files, 0.5 +- 0.5 for gray ones."""
        return (IMAGENET_MEAN, IMAGENET_STD) if desc.channels == 3 else ((0.5,), (0.5,))

    def train_rows(self, src: Source, desc: Description, train: TrainSet, img_size: int, cache_dir: str):
        return img.cached_images(src, list(train.files), img_size, desc.channels, cache_dir, "train")

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
        """The test images named by the sample submission's ids, decoded through the cache."""
        sample = read_sample_submission(src, desc.root)
        files = test_files(src, desc.root, sample, desc.test_dir)
        return img.cached_images(src, files, img_size, desc.channels, cache_dir, "test"), sample


register(CsvImages())
