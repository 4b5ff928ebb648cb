"""class-folders: train/<class name>/* images and test/* (food-11, torchvision's ImageFolder)."""
from __future__ import annotations

import sys
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from pipeline.data import images as img
from pipeline.data.common import checked_test_side, class_root
from pipeline.data.layout import Description, Found, Options, TrainSet, register
from pipeline.data.layouts.csv_images import CsvImages
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError


class ClassFolders(CsvImages):
    """Image files as csv-images reads them; the classes are the folders' names."""
    name = "class-folders"
    samples = {}
    hint = "train/<class>/ folders"

    def detect(self, src: Source, found: Found) -> bool:
        return class_root(src) is not None

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        if opts.group_col and opts.group_col in opts.target_cols:
            raise PipelineError(f"--group-col: {opts.group_col} is the target column; name a column that groups rows "
                                "(patient, image source, ...)")
        image_dir = known.root + known.image_dir if known else opts.image_dir
        where_classes = image_dir.strip("/") if image_dir else class_root(src)
        if where_classes is None:
            raise PipelineError(f"--layout class-folders: {src.path} has no train/<class>/ image folders")
        root = str(PurePosixPath(where_classes).parent) + "/" if "/" in where_classes else ""
        train_dir = PurePosixPath(where_classes).name
        files, labels = img.class_folder_files(src, root, train_dir)
        if not files:
            raise PipelineError(f"--image-dir: {where_classes}/ has no <class>/<image> files")
        if opts.group_col:
            raise PipelineError("--group-col: class-folders data has no columns to group by")
        frame = pd.DataFrame({"label": labels})
        the_task = infer_task(frame, f"{where_classes}/", opts.task or "multiclass", opts.metric, opts.threshold)
        if known is None:  # said once, when make_folds detects the classes
            for name in img.empty_class_folders(src, where_classes, labels):
                print(f"notice: {src.label(where_classes + '/' + name)}/ holds no images; it is not a class (the "
                      f"classes are the {len(set(labels))} folders with images)", file=sys.stderr)
        folders = img.image_folders(src, root)
        test_dir = known.test_dir if known else checked_test_side(src, root, the_task, train_dir, folders)
        desc = Description("class-folders", the_task, root=root, target_cols=(), image_dir=train_dir,
                           test_dir=test_dir, channels=known.channels if known else img.detect_channels(src, files),
                           n_images=len(files))
        return desc, TrainSet(encode(frame, the_task, f"{where_classes}/"), np.arange(len(files), dtype=np.int64), None,
                              img.files_hash(src, files, labels), files=tuple(files))



register(ClassFolders())
