"""speakers: HW4's Dataset/ (mapping.json, metadata.json, testdata.json, uttr-*.pt): the speaker of an utterance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.data import sequences as seq
from pipeline.data.layout import Description, Found, Options, TrainSet, register
from pipeline.data.source import Source
from pipeline.errors import PipelineError, cut
from pipeline.io import file_hash
from pipeline.tasks import Task


class Speakers(seq.SequenceLayout):
    name = "speakers"
    rows = "utterances"
    samples = {"sample-speakers": seq.write_sample_speakers}
    hint = "Dataset/ with metadata.json and mapping.json (HW4)"

    def detect(self, src: Source, found: Found) -> bool:
        return seq.find_speakers(src) is not None

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        """One row per utterance of metadata.json, its speaker the class (mapping.json's order)."""
        seq.one_class_per_row(self.name, opts)
        root = seq.find_speakers(src)
        if root is None:
            raise PipelineError(f"--layout speakers: {src.path} has no metadata.json and mapping.json (HW4's Dataset/)")
        files, names, classes = seq.speakers_train(src, root)
        the_task = known.task if known is not None else Task("multiclass", classes, opts.metric, opts.threshold)
        index = {c: i for i, c in enumerate(the_task.classes)}
        targets = np.array([index.get(n, -1) for n in names], dtype=np.int64)
        if (targets < 0).any():
            raise PipelineError(f"--data: speaker {names[int(np.flatnonzero(targets < 0)[0])]!r} is not among the "
                                "ones the folds were made with; remake the folds")
        desc = Description("speakers", the_task, root=root, train_file=root + "metadata.json", n_images=len(files))
        if known is None and src.find("testdata.json") is not None:
            self.test_arrays(src, desc)  # a test list naming a file twice, or outside the data, refused before training
        raw = src.read_file(root + "metadata.json") + src.read_file(root + "mapping.json")
        return desc, TrainSet(targets, np.arange(len(files), dtype=np.int64), None, file_hash(raw), files=tuple(files))

    def test_arrays(self, src: Source, desc: Description) -> tuple[list[str], list[str]]:
        """testdata.json's feature_paths, named as the submission names them."""
        files = seq.speakers_test(src, desc.root)
        return files, [f[len(desc.root):] for f in files]

    def default_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        """Id,Category as the course's sample code writes it: each test utterance's feature_path."""
        _, ids = self.test_arrays(src, desc)
        return pd.DataFrame({"Id": ids, "Category": desc.task.classes[0]})

    def test_rows(self, src: Source, sample: pd.DataFrame, listed: tuple[list[str], list[str]]):
        """Utterances in the sample's order, named by their feature_path."""
        files, ids = listed
        packed = seq.load_all(src, files)
        position = {name: i for i, name in enumerate(ids)}
        wanted = sample.iloc[:, 0].astype(str)
        unknown = [v for v in wanted if v not in position]
        if unknown:
            raise PipelineError(f"{src.label('sample_submission.csv')}: id {cut(unknown[0])!r} is not a feature_path "
                                "of testdata.json")
        return seq.SequenceRows(packed, torch.tensor([position[v] for v in wanted], dtype=torch.int64))


register(Speakers())
