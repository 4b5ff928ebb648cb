"""The sequence layouts: each row a variable-length (T, F) array of feature vectors (a spectrogram, a frame's features).

    speakers   HW4 (ml2023springhw4): Dataset/mapping.json (speaker2id, id2speaker), metadata.json ({"n_mels",
               "speakers": {name: [{"feature_path", "mel_len"}, ...]}}), testdata.json ({"n_mels", "utterances":
               [{"feature_path", "mel_len"}]}), uttr-*.pt float tensors (T, 40). One row per utterance, its speaker
               the class. Submission Id,Category: the test feature_path and the speaker's name.
    frames     HW2 (ml2023spring-hw2): libriphone/feat/{train,test}/<utt>.pt (T, 39), train_labels.txt
               (`<utt> l1 ... lT`), train_split.txt, test_split.txt. One row per frame, labelled with its phoneme;
               folds grouped by utterance. Submission Id,Class: the running index of every test frame.
    sequences  generic: a train CSV of ids and targets (any task kind) whose ids name .pt or .npy (T, F) arrays in a
               folder (train/, or the one they match); the test side is sample_submission.csv's ids (else test.csv's)
               naming arrays in another folder (test/). One row per sequence.

A set is read once into one Packed tensor (pipeline.data.packed); rows are views into it (SequenceRows: whole
sequences; FrameRows: single frames of their sequences), so selecting a fold's rows copies nothing. `.pt` files are
untrusted input: loaded with weights_only=True, and each must be a finite float tensor of two dimensions with the
set's feature count, else one line naming the file.
"""
from __future__ import annotations

import io
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from pipeline.data.common import read_sample_submission
from pipeline.data.layout import Description, Layout, Options
from pipeline.data.packed import Packed, pack
from pipeline.data.source import Source, inside
from pipeline.errors import PipelineError, cut

SAMPLE_SPEAKERS_DIR = "data/sample-speakers"
SAMPLE_FRAMES_DIR = "data/sample-frames"


# -- rows: views into a packed set -----------------------------------------------------------------------------------
@dataclass
class Rows:
    """Rows `rows` of a packed set (a fold's rows, the test set): indexing selects, never copies frames."""
    packed: Packed
    rows: torch.Tensor  # (N,) int64 indices into the packed set (sequences, or frames: see the subclasses)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):
        return type(self)(self.packed, self.rows[_index(idx, self.rows.device)])

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def normalised(self, mean: torch.Tensor, std: torch.Tensor):
        """The same rows, their frames read as (values - mean) / std batch by batch (the set is not copied)."""
        return type(self)(self.packed.normalised(mean, std), self.rows)

    def to(self, device: torch.device):
        return type(self)(self.packed.to(device), self.rows.to(device))

    def moments(self, budget: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) std per feature over these rows' frames in float64, read about `budget` values at a
        time: never all the frames at once (HW4's training frames, 5 GB as float32, would be 10 GB as float64 on
        the GPU beside the set).

        >>> rows = SequenceRows(pack([np.array([[0.0], [2.0]]), np.array([[4.0]])]), torch.arange(2))
        >>> [t.tolist() for t in rows.moments(budget=1)]
        [[2.0], [1.632993161855452]]
        """
        cum = self.frame_counts().cpu().cumsum(0)
        limit = max(1, budget // max(1, self.packed.n_features))
        chunks, start = [], 0
        while start < len(cum):
            base = int(cum[start - 1]) if start else 0
            stop = max(start + 1, int(torch.searchsorted(cum, base + limit, right=True)))  # one row may pass it
            chunks.append(slice(start, stop))
            start = stop
        total = int(cum[-1]) if len(cum) else 0
        if total == 0:
            raise ValueError("no frames to take moments over")
        mean = sum(self[c].frames().double().sum(0) for c in chunks) / total
        var = sum(((self[c].frames().double() - mean) ** 2).sum(0) for c in chunks) / total
        return mean, var.sqrt()


class SequenceRows(Rows):
    """Whole sequences: rows index the packed sequences."""

    @property
    def lengths(self) -> torch.Tensor:
        return self.packed.lengths[self.rows.to(self.packed.offsets.device)]

    def frames(self) -> torch.Tensor:
        """The values of every frame of these sequences (for fitting a normalisation)."""
        return self.packed.subset(self.rows).values

    def frame_counts(self) -> torch.Tensor:
        return self.lengths


class FrameRows(Rows):
    """Single frames: rows index packed.values; each frame is seen with its neighbours in its sequence."""

    def frames(self) -> torch.Tensor:
        return self.packed.read(self.rows.to(self.packed.values.device))

    def frame_counts(self) -> torch.Tensor:
        return torch.ones(len(self.rows), dtype=torch.int64)


def _index(idx, device: torch.device):
    """A slice as it is; index tensors and arrays on the rows' device."""
    return idx if isinstance(idx, slice) else torch.as_tensor(idx).to(device)


# -- reading ---------------------------------------------------------------------------------------------------------
def load_features(src: Source, rel: str, n_features: int = 0, like: str = "") -> np.ndarray:
    """One (T, F) float32 array from a .pt (weights_only) or .npy file (no pickles), checked; `n_features`: the
    width it must have, that of file `like` (named in the message, since either may be the odd one)."""
    where = src.label(rel)
    raw = src.read_file(rel)
    try:
        if rel.lower().endswith(".npy"):
            value = np.load(io.BytesIO(raw), allow_pickle=False)
        else:
            value = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch's message carries terminal escapes
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:  # weights_only met a pickled class: say which, not torch's advice to turn the check off
            raise PipelineError(f"{where}: holds pickled objects other than tensors ({found.group(1)}); "
                                "save a torch tensor (torch.from_numpy(a)) or a .npy array") from None
        raise PipelineError(f"{where}: not a readable tensor file ({cut(text.splitlines()[0] if text else type(e).__name__, 100)})") from None
    array = _tensor_array(value, where) if isinstance(value, torch.Tensor) else value
    if not isinstance(array, np.ndarray) or array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        shape = tuple(array.shape) if isinstance(array, np.ndarray) else type(value).__name__
        raise PipelineError(f"{where}: expected a float tensor of (frames, features), found {shape}"
                            + (f" {array.dtype}" if isinstance(array, np.ndarray) else ""))
    if n_features and array.shape[1] != n_features:
        raise PipelineError(f"{where}: {array.shape[1]} features per frame, but {like or 'the others'} has "
                            f"{n_features}")
    if len(array) == 0 or array.shape[1] == 0:
        raise PipelineError(f"{where}: {'no frames' if len(array) == 0 else 'no features in its frames'} "
                            f"(shape {tuple(array.shape)})")
    if not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array).all(1))[0])
        raise PipelineError(f"{where}: frame {row}: NaN or infinite values")
    with np.errstate(over="ignore"):
        single = array.astype(np.float32, copy=False)
    if not np.isfinite(single).all():  # float64 values past float32's 3.4e38 become inf, which training reads as NaN
        row = int(np.flatnonzero(~np.isfinite(single).all(1))[0])
        raise PipelineError(f"{where}: frame {row}: values beyond float32's range (up to "
                            f"{np.abs(array[row]).max():.3g}); features are stored as float32: rescale them")
    return single


def _tensor_array(value: torch.Tensor, where: str) -> np.ndarray:
    """A loaded tensor's values as numpy: dense, with data, half precision widened; one line otherwise."""
    if value.layout != torch.strided:
        raise PipelineError(f"{where}: a {str(value.layout).removeprefix('torch.')} tensor; save a dense one "
                            "(tensor.to_dense())")
    if value.is_meta:
        raise PipelineError(f"{where}: a tensor on the meta device holds no values; save the tensor itself")
    if value.numel() * value.element_size() > value.untyped_storage().nbytes():
        raise PipelineError(f"{where}: a view of {tuple(value.shape)} over far fewer stored values (an expand()ed "
                            "tensor); save tensor.clone()")
    value = value.detach().resolve_neg().resolve_conj()  # a saved Parameter, or a lazily negated view
    if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()  # numpy has no bfloat16; float32 is what the pipeline stores anyway
    try:
        return value.numpy()
    except (TypeError, RuntimeError) as e:  # float8, quantized and other types numpy has no counterpart for
        raise PipelineError(f"{where}: a {str(value.dtype).removeprefix('torch.')} tensor numpy cannot read "
                            f"({cut(str(e).splitlines()[0], 60)}); save float32") from None


ARRAY_EXTS = (".pt", ".npy")


def array_folders(src: Source, root: str) -> dict[str, list[str]]:
    """Folders under `root` (relative, '/'-separated) holding .pt or .npy files, with their files."""
    out: dict[str, list[str]] = {}
    for f in src.files():
        if f.startswith(root) and f.lower().endswith(ARRAY_EXTS):
            out.setdefault(str(PurePosixPath(f[len(root):]).parent), []).append(f)
    return out


def match_arrays(ids: pd.Series, folder: str, files: list[str], where: str) -> list[str]:
    """The array file of every id (named with or without .pt/.npy); the first id without one is one line naming it."""
    from pipeline.data.images import file_index

    index = file_index(files)
    keys = ids.astype(str).to_numpy()
    found = [index.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        raise PipelineError(f"{where}: row {missing[0] + 1}: no array {keys[missing[0]]!r} (.pt or .npy) in {folder}/ "
                            f"({len(missing):,} ids have none)")
    return found


def load_all(src: Source, rels: list[str]) -> Packed:
    arrays, width = [], 0
    for rel in rels:
        arrays.append(load_features(src, rel, width, src.label(rels[0])))
        width = arrays[0].shape[1]
    return pack(arrays)


def _json(src: Source, rel: str) -> dict:
    try:
        value = json.loads(src.read_file(rel))
    except (ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"{src.label(rel)}: not valid JSON ({cut(str(e), 80)})") from None
    except RecursionError:
        raise PipelineError(f"{src.label(rel)}: not valid JSON (nested too deeply to read)") from None
    if not isinstance(value, dict):
        raise PipelineError(f"{src.label(rel)}: expected a JSON object, found {type(value).__name__}")
    return value


def find_speakers(src: Source) -> str | None:
    """The folder holding HW4's metadata.json and mapping.json ('' = the top), or None."""
    return _folder_with(src, "metadata.json", "mapping.json")


def find_frames(src: Source) -> str | None:
    """The folder holding HW2's train_labels.txt, train_split.txt and feat/ ('' = the top), or None."""
    return _folder_with(src, "train_labels.txt", "train_split.txt")


def _folder_with(src: Source, name: str, also: str) -> str | None:
    """The folder of file `name` ('' = the top, else ending in '/') when `also` is in the data too, else None."""
    found = src.find(name)
    if found is None or src.find(also) is None:
        return None
    parent = str(PurePosixPath(found).parent)
    return "" if parent == "." else parent + "/"


def speakers_train(src: Source, root: str) -> tuple[list[str], list[str], tuple[str, ...]]:
    """(feature files, their speaker names, the speakers in mapping.json's id order)."""
    mapping, meta = _json(src, root + "mapping.json"), _json(src, root + "metadata.json")
    where = src.label(root + "metadata.json")
    try:
        ids = {str(name): int(i) for name, i in mapping["speaker2id"].items()}
        speakers = meta["speakers"]
        files, names = [], []
        for name, utterances in speakers.items():
            for u in utterances:
                files.append(root + str(u["feature_path"]))
                names.append(str(name))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PipelineError(f"{where}: expected {{'speakers': {{name: [{{'feature_path', 'mel_len'}}, ...]}}}} and "
                            f"mapping.json's speaker2id ({type(e).__name__}: {cut(str(e), 60)})") from None
    unknown = sorted(set(names) - set(ids))
    if unknown:
        raise PipelineError(f"{where}: speaker {unknown[0]!r} is not in mapping.json's speaker2id")
    checked_paths(files, root, where)
    classes = tuple(sorted(ids, key=ids.get))
    return files, names, classes


def speakers_test(src: Source, root: str) -> list[str]:
    """testdata.json's utterances in its order: the feature files (relative to the source)."""
    data = _json(src, root + "testdata.json")
    try:
        files = [root + str(u["feature_path"]) for u in data["utterances"]]
    except (KeyError, TypeError) as e:
        raise PipelineError(f"{src.label(root + 'testdata.json')}: expected {{'utterances': [{{'feature_path', "
                            f"'mel_len'}}, ...]}} ({type(e).__name__}: {cut(str(e), 60)})") from None
    return checked_paths(files, root, src.label(root + "testdata.json"))


def checked_paths(files: list[str], root: str, where: str) -> list[str]:
    """Feature files a list names (`where`), relative to the source: none outside it, none twice (two rows, one id)."""
    for f in files:
        if "\x00" in f:
            raise PipelineError(f"{where}: feature path {cut(f[len(root):])!r} holds a NUL character")
        if not inside(f[len(root):]) or not inside(f):
            raise PipelineError(f"{where}: feature path {cut(f[len(root):])!r} leads outside the competition data; "
                                "feature paths are relative to the folder of the file that lists them")
    seen = {}
    for f in files:
        same = posixpath.normpath(f)  # ./a.pt and a.pt are one file
        if same in seen:
            raise PipelineError(f"{where}: feature path {cut(f[len(root):])!r} is listed twice"
                                f"{'' if seen[same] == f else ' (as ' + repr(cut(seen[same][len(root):])) + ')'}; "
                                "one row per utterance")
        seen[same] = f
    return files


def frames_split(src: Source, root: str, which: str) -> list[str]:
    """The utterance ids of train_split.txt or test_split.txt, in order."""
    rel = root + f"{which}_split.txt"
    if src.find(PurePosixPath(rel).name) is None:
        raise PipelineError(f"{src.label(rel)}: not found (HW2 ships train_split.txt and test_split.txt)")
    names = src.read_file(rel).decode("utf-8", "replace").split()
    if not names:
        raise PipelineError(f"{src.label(rel)}: no utterance ids")
    checked_paths([frame_file(root, which, u) for u in names], root, src.label(rel))
    return names


def frames_labels(src: Source, root: str, utterances: list[str]) -> dict[str, list[str]]:
    """Each train_split.txt utterance's frame labels, from train_labels.txt (`<utt> l1 l2 ... lT` per line)."""
    rel = root + "train_labels.txt"
    table = {}
    for line in src.read_file(rel).decode("utf-8", "replace").splitlines():
        parts = line.split()
        if parts:
            table[parts[0]] = parts[1:]
    missing = [u for u in utterances if not table.get(u)]
    if missing:
        raise PipelineError(f"{src.label(rel)}: no labels for utterance {missing[0]!r} of train_split.txt")
    return {u: table[u] for u in utterances}


def ids_where(src: Source, root: str) -> str:
    rel = src.find("sample_submission.csv") or root + "test.csv"
    return src.label(rel)


def generic_test_ids(src: Source, desc) -> pd.Series:
    """The sequences layout's test ids, as written: sample_submission.csv's first column, else test.csv's id column."""
    import io

    rel = src.find("sample_submission.csv")
    col = 0
    if rel is None:
        rel = src.find("test.csv")
        if rel is None:
            raise PipelineError(f"{src.label(desc.root + 'sample_submission.csv')}: not found, and no test.csv; the "
                                "test side needs one of them naming the test arrays")
        col = desc.id_col
    text = pd.read_csv(io.BytesIO(src.read_file(rel)), dtype=str, keep_default_na=False)
    if isinstance(col, str) and col not in text.columns:
        raise PipelineError(f"{src.label(rel)}: no column {col!r} naming the test arrays")
    if text.empty:
        raise PipelineError(f"{src.label(rel)}: header only, no rows (the test arrays' ids)")
    return text[col] if isinstance(col, str) else text.iloc[:, 0]


class SequenceLayout(Layout):
    """A layout of (T, F) feature arrays: its rows are packed sequences (or their frames), never augmented or
    flipped; the subclasses say which files name the test side and how a submission names its rows."""
    kind = "sequence"
    tta_preset = ""
    augment = "none"
    checks_classes = False  # the classes are taken from the saved description when re-read
    rows = "sequences"  # what one row is, in make_folds' summary

    def summary(self, desc: Description) -> str:
        return f"{desc.layout}: {desc.root or './'}, {self.ident(desc)}{desc.task.describe()}, {desc.n_images:,} {self.rows}"

    def ident(self, desc: Description) -> str:
        return ""

    def train_rows(self, src: Source, desc: Description, train, img_size: int, cache_dir: str):
        """The train feature files packed once: (sum of T, F) and the rows that view it."""
        packed = load_all(src, list(train.files))
        return SequenceRows(packed, torch.arange(len(packed)))

    def test_arrays(self, src: Source, desc: Description) -> tuple[list[str], list[str]]:
        """(feature files, ids as a submission names them)."""
        raise NotImplementedError

    def default_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        """The submission's header and ids where the competition ships no sample submission."""
        raise NotImplementedError

    def test_rows(self, src: Source, sample: pd.DataFrame, listed: tuple[list[str], list[str]]):
        """The test arrays (`listed`: test_arrays') packed, as rows in the sample's order."""
        packed = load_all(src, listed[0])
        return SequenceRows(packed, torch.arange(len(packed)))

    def submission_sample(self, src: Source, desc: Description) -> pd.DataFrame:
        sample = read_sample_submission(src, "", required=False)
        return sample if sample is not None else self.default_sample(src, desc)

    def read_test(self, src: Source, desc: Description, img_size: int, cache_dir: str):
        sample = self.submission_sample(src, desc)
        return self.test_rows(src, sample, self.test_arrays(src, desc)), sample


def one_class_per_row(layout: str, opts: Options, grouped: str = "") -> None:
    """speakers and frames: no columns to group by (`grouped`: how the layout groups its folds itself), one class
    per row."""
    if opts.group_col:
        raise PipelineError(f"--group-col: the {layout} layout has no columns to group by"
                            + (f" ({grouped})" if grouped else ""))
    if opts.task and opts.task != "multiclass":
        raise PipelineError(f"--task {opts.task}: the {layout} layout labels each row with one class (multiclass)")


def frame_file(root: str, which: str, utt: str) -> str:
    return f"{root}feat/{which}/{utt}.pt"


# -- the offline samples ----------------------------------------------------------------------------------------------
def _digit_columns() -> tuple[list[np.ndarray], np.ndarray]:
    """Each of scikit-learn's 1,797 digits (28x28) as a sequence: its columns trimmed to the ink, each column a frame
    of 28 features on the 0..1 scale; and the digit."""
    from pipeline.data.sample import _digits_28

    big, target, _, _ = _digits_28()
    sequences = []
    for image in big.astype(np.float32) / 255.0:
        ink = np.flatnonzero(image.sum(0) > 0)
        sequences.append(np.ascontiguousarray(image[:, ink[0]:ink[-1] + 1].T))  # (T, 28)
    return sequences, target


def _save_pt(array: np.ndarray, path: Path) -> None:
    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), tmp)


def write_sample_speakers(root: str = SAMPLE_SPEAKERS_DIR) -> Path:
    """HW4's layout from the digits: each digit an utterance of 11-20 frames of 28 features, the digit its speaker
    (id10000..id10009); 20% held out as testdata.json, the truth in solution.csv."""
    from sklearn.model_selection import train_test_split

    from pipeline.io import write_csv, write_json

    base = Path(root)
    data = base / "Dataset"
    if all((data / f).is_file() for f in ("mapping.json", "metadata.json", "testdata.json")) and \
            (base / "solution.csv").is_file():
        return base
    sequences, target = _digit_columns()
    train_idx, test_idx = train_test_split(np.arange(len(sequences)), test_size=0.2, random_state=0, stratify=target)
    names = [f"id1000{d}" for d in range(10)]
    speakers = {n: [] for n in names}
    for i in train_idx:
        _save_pt(sequences[i], data / f"uttr-{i:05d}.pt")
        speakers[names[target[i]]].append({"feature_path": f"uttr-{i:05d}.pt", "mel_len": len(sequences[i])})
    utterances = []
    for i in test_idx:
        _save_pt(sequences[i], data / f"uttr-{i:05d}.pt")
        utterances.append({"feature_path": f"uttr-{i:05d}.pt", "mel_len": len(sequences[i])})
    write_json({"speaker2id": {n: i for i, n in enumerate(names)}, "id2speaker": {str(i): n for i, n in
                                                                                  enumerate(names)}},
               data / "mapping.json")
    write_json({"n_mels": 28, "speakers": speakers}, data / "metadata.json")
    write_json({"n_mels": 28, "utterances": utterances}, data / "testdata.json")
    write_csv(pd.DataFrame({"Id": [u["feature_path"] for u in utterances],
                            "Category": [names[target[i]] for i in test_idx]}), base / "solution.csv")
    return base


def write_sample_frames(root: str = SAMPLE_FRAMES_DIR) -> Path:
    """HW2's layout from the digits: 3-6 digits side by side make an utterance whose every frame (a column of 28
    features) carries its digit; 359 utterances, 20% of them the test split, the truth in solution.csv."""
    from pipeline.io import atomic_path, write_csv

    base = Path(root)
    lib = base / "libriphone"
    if all((lib / f).is_file() for f in ("train_labels.txt", "train_split.txt", "test_split.txt")) and \
            (base / "solution.csv").is_file():
        return base
    sequences, target = _digit_columns()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sequences))
    utterances, start = [], 0
    while start < len(order):
        size = int(rng.integers(3, 7))
        utterances.append(order[start:start + size])
        start += size
    names = [f"{1000 + u}-{u % 7}-{u:04d}" for u in range(len(utterances))]  # LibriSpeech-like speaker-chapter-utt
    test = set(rng.choice(len(utterances), size=len(utterances) // 5, replace=False).tolist())
    labels, truth = [], []
    for u, (name, digits) in enumerate(zip(names, utterances)):
        feats = np.concatenate([sequences[i] for i in digits])
        frame_labels = np.concatenate([np.full(len(sequences[i]), target[i]) for i in digits])
        _save_pt(feats, lib / "feat" / ("test" if u in test else "train") / f"{name}.pt")
        if u in test:
            truth += frame_labels.tolist()
        else:
            labels.append(name + " " + " ".join(map(str, frame_labels)))
    for file, text in (("train_labels.txt", "\n".join(labels)),
                       ("train_split.txt", "\n".join(n for u, n in enumerate(names) if u not in test)),
                       ("test_split.txt", "\n".join(n for u, n in enumerate(names) if u in test))):
        with atomic_path(lib / file) as tmp:
            tmp.write_text(text + "\n")
    write_csv(pd.DataFrame({"Id": np.arange(len(truth)), "Class": truth}), base / "solution.csv")
    return base
