"""Sequences and frames: packed data, batches gathered from it, and sequence models that never read padding."""
import numpy as np
import pytest
import torch

from pipeline.data.packed import by_length, context_batch, crop_batch, pack, whole_batch
from pipeline.seqnets import SEQUENCE_NETS, build_sequence_net


@pytest.mark.parametrize("name", SEQUENCE_NETS)
@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_an_utterance_alone_and_padded_in_a_batch_gives_the_same_prediction(name, pool):
    torch.manual_seed(0)
    net = build_sequence_net(name, 5, 3, hidden=16, layers=2, pool=pool).eval()
    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(4, 5)), rng.normal(size=(9, 5))
    x, lengths = whole_batch(pack([short, long]), torch.tensor([0, 1]))
    assert x.shape == (2, 9, 5) and lengths.tolist() == [4, 9]
    x[0, 4:] = 1e3  # whatever the padding holds, the short row's prediction is its own
    with torch.no_grad():
        batched = net(x, lengths)
        alone = net(torch.tensor(short, dtype=torch.float32)[None], torch.tensor([4]))
    assert torch.allclose(batched[0], alone[0], atol=1e-5), (batched[0], alone[0])


def test_rows_of_an_image_are_steps():
    net = build_sequence_net("lstm", 28, 10, hidden=8, layers=1).eval()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_batches_gathered_from_the_packed_frames():
    p = pack([np.arange(6.0)[:, None], 100 + np.arange(3.0)[:, None]])
    x, n = crop_batch(p, torch.tensor([0, 1, 0]), 4, torch.Generator().manual_seed(1))
    assert n.tolist() == [4, 3, 4]
    for row in (0, 2):  # a window of 4 consecutive frames of sequence 0
        start = int(x[row, 0, 0])
        assert x[row, :, 0].tolist() == [float(start + i) for i in range(4)] and start <= 2
    assert x[1, :, 0].tolist() == [100.0, 101.0, 102.0, 0.0]
    window = context_batch(p, torch.arange(9), 2)[:, :, 0]  # frame labelling: 2 neighbours each side, in its sequence
    assert window[0].tolist() == [0, 0, 0, 1, 2] and window[7].tolist() == [100, 100, 101, 102, 102]
    assert window[5].tolist() == [3, 4, 5, 5, 5]
    sub = p.subset(torch.tensor([1, 0]))
    assert sub.lengths.tolist() == [3, 6] and sub.sequence(0)[:, 0].tolist() == [100, 101, 102]
    batches = by_length(torch.tensor([3, 9, 1, 7]), 4, budget=16)  # at most 16 padded frames per batch
    assert [b.tolist() for b in batches] == [[1], [3, 0], [2]]


@pytest.mark.slow
def test_speakers_and_frames_through_the_four_stages_with_no_layout_flags(workdir, capsys, monkeypatch):
    """HW4's and HW2's layouts (the digits as utterances): make_folds -> train -> infer -> submit --dry-run; the
    submissions have the course's headers in the test split's order; frames never straddle two folds' sides.
    The frames experiment stores its OOF rows as HW2's size would (per-fold .npz), and report reads them."""
    import pandas as pd

    from pipeline import experiment, infer, make_folds, report, submit, train

    monkeypatch.setattr(experiment, "OOF_CSV_CELLS", 30_000)  # sample-frames: 25,133 frames x 10 classes

    for data, exp, model, header in (("sample-speakers", "sp", "transformer", ["Id", "Category"]),
                                     ("sample-frames", "fr", "lstm", ["Id", "Class"])):
        folds = f"folds/{exp}.csv"
        assert make_folds.main(["--data", data, "--n-splits", "2", "--folds-path", folds]) == 0
        assert ("grouped by utterance" in capsys.readouterr().out) == (exp == "fr")
        args = ["--data", data, "--folds-path", folds, "--exp", exp, "--model", model, "--hidden", "32",
                "--epochs", "2", "--context", "2"]
        assert train.main(args) == 0
        assert infer.main(["--data", data, "--exp", exp]) == 0
        assert submit.main([f"submissions/{exp}.csv", "--data", data, "--dry-run"]) == 0
        sub = pd.read_csv(f"submissions/{exp}.csv")
        truth = pd.read_csv(workdir / f"data/{data}/solution.csv")
        assert list(sub.columns) == header and sub["Id"].tolist() == truth["Id"].tolist()
        assert (sub[header[1]].astype(str) == truth[header[1]].astype(str)).mean() > 0.3  # learned (chance: 0.1)
        assert infer.main(["--data", data, "--exp", exp, "--tta"]) == 2
        assert f"{'sequence' if exp == 'sp' else 'frames'} rows have no test-time augmentation" in capsys.readouterr().err
    assert sorted(p.name for p in (workdir / "weights/fr").glob("oof*")) == ["oof.fold0.npz", "oof.fold1.npz"]
    assert (workdir / "weights/sp/oof.csv").is_file()  # 1,437 utterances x 10: small, a CSV
    assert report.main(["--data", "sample-frames", "--exp", "fr"]) == 0
    assert "25,133 rows" in (workdir / "weights/fr/report/report.md").read_text()
    folds = pd.read_csv("folds/fr.csv")
    from pipeline import data as data_module

    groups = data_module.read_train(data_module.resolve("sample-frames")).groups
    sides = pd.DataFrame({"utt": groups, "fold": folds["fold"]}).groupby("utt")["fold"].nunique()
    assert (sides == 1).all() and len(sides) > 100  # every utterance's frames in one fold


def write_generic(root, task: str, test_csv: bool):
    """The generic sequences layout from the digits: train.csv (id, target) naming train/<id>.npy, test/<id>.pt, and
    sample_submission.csv or only test.csv. Regression's target is the digit's value as a number."""
    import pandas as pd

    from pipeline.data.sequences import _digit_columns

    sequences, digits = _digit_columns()
    sequences, digits = sequences[:300], digits[:300]
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    target = digits if task == "multiclass" else digits.astype(float)
    name = "label" if task == "multiclass" else "score"
    for i, s in enumerate(sequences):
        if i < 240:
            np.save(root / "train" / f"s{i:03d}.npy", s)
        else:
            torch.save(torch.from_numpy(s), root / "test" / f"s{i:03d}.pt")
    ids = [f"s{i:03d}" for i in range(300)]
    pd.DataFrame({"seq_id": ids[:240], name: target[:240]}).to_csv(root / "train.csv", index=False)
    if test_csv:
        pd.DataFrame({"seq_id": ids[240:][::-1]}).to_csv(root / "test.csv", index=False)
    else:
        pd.DataFrame({"seq_id": ids[240:][::-1], name: target[0]}).to_csv(root / "sample_submission.csv", index=False)
    return pd.DataFrame({"seq_id": ids[240:][::-1], name: target[240:][::-1]})


@pytest.mark.slow
@pytest.mark.parametrize("task,test_csv", [("multiclass", False), ("regression", True)])
def test_the_generic_sequences_layout_through_the_four_stages(workdir, capsys, task, test_csv):
    """ids in a CSV naming .npy/.pt arrays, any task kind, no layout flag: make_folds -> train -> infer -> submit;
    the submission follows the sample's (or test.csv's) ids and order, and the model learned."""
    import pandas as pd

    from pipeline import infer, make_folds, submit, train

    truth = write_generic(workdir / "comp", task, test_csv)
    assert make_folds.main(["--data", "comp", "--n-splits", "2"]) == 0
    out = capsys.readouterr().out
    assert "sequences: " in out and "id seq_id naming train/ arrays" in out
    assert train.main(["--data", "comp", "--exp", "g", "--model", "gru", "--hidden", "32", "--epochs", "6",
                       "--lr", "3e-3"]) == 0
    assert infer.main(["--data", "comp", "--exp", "g", "--out", "sub.csv"]) == 0
    assert submit.main(["sub.csv", "--data", "comp", "--dry-run"]) == 0
    sub = pd.read_csv("sub.csv")
    assert list(sub.columns) == list(truth.columns) and sub["seq_id"].tolist() == truth["seq_id"].tolist()
    col = truth.columns[1]
    if task == "multiclass":
        assert (sub[col] == truth[col]).mean() > 0.4  # chance: 0.1
    else:
        assert np.corrcoef(sub[col], truth[col])[0, 1] > 0.5


@pytest.mark.parametrize("damage,expected", [
    ("missing", r"sample_submission\.csv: row \d+: no array 's250' \(\.pt or \.npy\) in test/"),
    ("header_only", r"test\.csv: header only, no rows"),
    ("other_width", r"test/s2\d\d\.pt: 20 features per frame, but \S+/train/\S+\.npy has 28"),
    ("group_is_target", r"--group-col: label is the target column"),
    ("one_class", r"train\.csv: column label holds 1 class \(3\); a multiclass task needs at least 2"),
])
def test_the_generic_layout_refuses_a_bad_test_side_or_group_at_make_folds(workdir, capsys, damage, expected):
    import re

    from pipeline import make_folds

    write_generic(workdir / "comp", "multiclass", damage == "header_only")
    args = ["--data", "comp"]
    if damage == "missing":
        (workdir / "comp/test/s250.pt").unlink()
    elif damage == "header_only":
        (workdir / "comp/test.csv").write_text("seq_id\n")
    elif damage == "one_class":
        (workdir / "comp/train.csv").write_text("seq_id,label\n" + "".join(f"s{i:03d},3\n" for i in range(240)))
    elif damage == "other_width":
        for f in (workdir / "comp/test").glob("*.pt"):
            torch.save(torch.zeros(5, 20), f)
    else:
        args += ["--group-col", "label", "--target-col", "label"]
    assert make_folds.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(expected, err) and len(err.splitlines()) == 1, err


def test_upper_case_npy_arrays_load_as_numpy(workdir, capsys):
    from pipeline import data

    write_generic(workdir / "comp", "multiclass", False)
    for f in (workdir / "comp/train").glob("*.npy"):
        f.rename(f.with_suffix(".NPY"))
    src = data.resolve("comp")
    desc, train = data.describe(src)
    rows = data.train_rows(src, desc, train, 0, "")
    assert len(rows) == 240 and rows.packed.values.shape[1] == 28


def test_half_precision_arrays_load_as_float32(tmp_path):
    from pipeline.data.sequences import load_features
    from pipeline.data.source import Source

    torch.save(torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16), tmp_path / "a.pt")
    array = load_features(Source(tmp_path), "a.pt")
    assert array.dtype.name == "float32" and array.tolist() == [[1.5, -2.0]]
    torch.save(torch.nn.Parameter(torch.ones(2, 3)), tmp_path / "p.pt")  # a saved Parameter, gradients on
    torch.save(torch._neg_view(torch.ones(2, 3)), tmp_path / "n.pt")  # a lazily negated view
    assert load_features(Source(tmp_path), "p.pt").tolist() == [[1.0] * 3] * 2
    assert load_features(Source(tmp_path), "n.pt").tolist() == [[-1.0] * 3] * 2


@pytest.mark.parametrize("name,content,expected", [
    ("a.pt", "numpy", r"a\.pt: holds pickled objects other than tensors \(numpy\.\S+\); save a torch tensor"),
    ("b.pt", b"not a torch file", r"b\.pt: not a readable tensor file \("),
    ("c.npy", "object", r"c\.npy: not a readable tensor file \("),
    ("d.pt", torch.zeros(7), r"d\.pt: expected a float tensor of \(frames, features\), found \(7,\)"),
    ("e.pt", torch.zeros(3, 2, dtype=torch.int64), r"e\.pt: expected a float tensor .* found \(3, 2\) int64"),
    ("f.pt", torch.tensor([[0.0, float("nan")]]), r"f\.pt: frame 0: NaN or infinite values"),
    pytest.param("g.pt", torch.zeros(3, 2).to_sparse(), r"g\.pt: a sparse_coo tensor; save a dense one",
                 marks=pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")),
    ("h.pt", torch.zeros(3, 2, device="meta"), r"h\.pt: a tensor on the meta device holds no values"),
    ("i.pt", torch.zeros(3, 0), r"i\.pt: no features in its frames \(shape \(3, 0\)\)"),
    ("k.pt", torch.zeros(1, 28).expand(2_000_000, 28), r"k\.pt: a view of \(2000000, 28\) over far fewer stored"),
    ("l.pt", torch.zeros(3, 2).to(torch.float8_e4m3fn), r"l\.pt: a float8_e4m3fn tensor numpy cannot read"),
    ("j.pt", torch.tensor([[0.0, 1e300]], dtype=torch.float64), r"j\.pt: frame 0: values beyond float32's range "
                                                                  r"\(up to 1e\+300\)"),
])
def test_a_bad_array_file_is_one_plain_line_naming_it(tmp_path, name, content, expected):
    """Every untrusted .pt/.npy fault is one line naming the file, without torch's advice or terminal escapes."""
    import re

    import numpy as np

    from pipeline.data.sequences import load_features
    from pipeline.data.source import Source
    from pipeline.errors import PipelineError

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "numpy":
        torch.save(np.zeros((3, 4), np.float32), path)
    elif content == "object":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    else:
        torch.save(content, path)
    with pytest.raises(PipelineError) as e:
        load_features(Source(tmp_path), name)
    message = str(e.value)
    assert re.search(expected, message) and "\n" not in message and "\x1b" not in message, message


def test_a_packed_set_larger_than_free_gpu_memory_stays_in_host_memory_and_says_so(monkeypatch, capsys):
    """Past 80% of free GPU memory the packed frames are not moved (batches are gathered on the host and streamed);
    on the CPU nothing moves and nothing is said. Free memory is patched: no GPU is needed."""
    from pipeline.data.sequences import SequenceRows
    from pipeline.device import on_device, to_device

    rows = SequenceRows(pack([np.ones((1000, 40)), np.ones((500, 40))]), torch.arange(2))  # 240,000 bytes of frames
    assert on_device(rows, torch.device("cpu")) is rows and capsys.readouterr().out == ""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (250_000, 10**9))  # 80% is 200,000
    assert on_device(rows, torch.device("cuda")) is rows
    assert "0.0 GiB of frames exceed free GPU memory; batches are gathered in host memory" in capsys.readouterr().out
    batch = torch.ones(3, 4)
    assert to_device(batch, torch.device("cpu")) is batch


@pytest.mark.parametrize("kind", ["sequences", "frames"])
@pytest.mark.parametrize("budget", [1, 7 * 40, 1 << 24])
def test_a_folds_normalisation_read_in_chunks_equals_one_over_all_its_frames(kind, budget):
    """fit_fold's mean and std come from chunks of about `budget` values (a row larger than that is a chunk of its
    own), never from a float64 copy of every training frame; they equal the statistics of that copy."""
    from pipeline.data.sequences import FrameRows, SequenceRows

    rng = np.random.default_rng(1)
    packed = pack([rng.normal(3.0, 2.0, (int(n), 40)) for n in rng.integers(1, 30, 50)])
    rows = (SequenceRows(packed, torch.arange(50)[::3]) if kind == "sequences"
            else FrameRows(packed, torch.arange(len(packed.values))[::2]))
    every = rows.frames().double()
    mean, std = rows.moments(budget)
    assert torch.allclose(mean, every.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(std, every.std(0, unbiased=False), rtol=0, atol=1e-12)
