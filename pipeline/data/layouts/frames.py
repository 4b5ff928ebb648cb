"""frames: HW2's libriphone/ (feat/{train,test}/*.pt, train_labels.txt, *_split.txt): the phoneme of every frame."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.data import sequences as seq
from pipeline.data.common import row_positions
from pipeline.data.layout import Description, Found, Options, TrainSet, register
from pipeline.data.source import Source
from pipeline.data.targets import encode, infer_task
from pipeline.errors import PipelineError
from pipeline.io import file_hash


class Frames(seq.SequenceLayout):
    name = "frames"
    kind = "frames"
    rows = "frames"
    samples = {"sample-frames": seq.write_sample_frames}
    hint = "libriphone/ with train_labels.txt and train_split.txt (HW2)"

    def detect(self, src: Source, found: Found) -> bool:
        return seq.find_frames(src) is not None

    def describe(self, src: Source, found: Found, opts: Options, known: Description | None):
        """One row per frame of the train_split.txt utterances, labelled from train_labels.txt; folds are grouped by
        utterance (neighbouring frames are near-copies: split apart, they would make the CV lie)."""
        seq.one_class_per_row(self.name, opts, "its folds are grouped by utterance already")
        root = seq.find_frames(src)
        if root is None:
            raise PipelineError(f"--layout frames: {src.path} has no train_labels.txt and train_split.txt (HW2's "
                                "libriphone/)")
        utterances = seq.frames_split(src, root, "train")
        labels = seq.frames_labels(src, root, utterances)
        counts = [len(labels[u]) for u in utterances]
        flat = pd.Series([v for u in utterances for v in labels[u]], name="label")
        where = src.label(root + "train_labels.txt")
        the_task = known.task if known is not None else infer_task(flat.to_frame(), where, "multiclass", opts.metric,
                                                                    opts.threshold)
        targets = encode(flat.to_frame(), the_task, where)
        row_groups = np.repeat(np.array(utterances, dtype=object), counts)
        desc = Description("frames", the_task, root=root, train_file=root + "train_labels.txt", n_images=len(flat))
        if known is None and src.find("test_split.txt") is not None:
            self.test_arrays(src, desc)  # a test list naming a file twice, or outside the data, refused before training
        raw = src.read_file(root + "train_labels.txt") + src.read_file(root + "train_split.txt")
        files = tuple(seq.frame_file(root, "train", u) for u in utterances)
        return desc, TrainSet(targets, np.arange(len(flat), dtype=np.int64), row_groups, file_hash(raw), files=files)

    def summary(self, desc: Description) -> str:
        return super().summary(desc) + " (folds grouped by utterance)"

    def train_rows(self, src: Source, desc: Description, train: TrainSet, img_size: int, cache_dir: str):
        """Every frame of the packed train utterances; their counts must match the labels."""
        packed = seq.load_all(src, list(train.files))
        root = desc.root
        utterances = seq.frames_split(src, root, "train")
        labels = seq.frames_labels(src, root, utterances)
        for utt, n in zip(utterances, packed.lengths.tolist()):
            if len(labels[utt]) != n:
                raise PipelineError(f"{src.label(root + 'train_labels.txt')}: utterance {utt!r} has {len(labels[utt])} "
                                    f"labels for {n} frames in {src.label(seq.frame_file(root, 'train', utt))}")
        n_rows = len(train.targets)
        if len(packed.values) != n_rows:
            raise PipelineError(f"{src.label(root)}: {len(packed.values):,} train frames, the folds have {n_rows:,} "
                                "rows; remake the folds")
        return seq.FrameRows(packed, torch.arange(len(packed.values)))

    def test_arrays(self, src: Source, desc: Description) -> tuple[list[str], list[str]]:
        """test_split.txt's utterances (a submission names frames by running index, not by file)."""
        return [seq.frame_file(desc.root, "test", u) for u in seq.frames_split(src, desc.root, "test")], []

    def default_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        """Id,Class as the course's sample code writes it: the running index of every test frame."""
        files, _ = self.test_arrays(src, desc)
        total = int(seq.load_all(src, files).lengths.sum())
        return pd.DataFrame({"Id": np.arange(total), "Class": 0})

    def test_rows(self, src: Source, sample: pd.DataFrame, listed: tuple[list[str], list[str]]):
        """Frames by running index, in the sample's order."""
        packed = seq.load_all(src, listed[0])
        wanted = row_positions(sample, len(packed.values), src.label("sample_submission.csv"), "the index of a test frame",
                               "test_split.txt's utterances in order")
        return seq.FrameRows(packed, torch.from_numpy(wanted))


register(Frames())
