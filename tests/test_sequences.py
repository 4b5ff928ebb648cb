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
def test_speakers_and_frames_through_the_four_stages_with_no_layout_flags(workdir, capsys):
    """HW4's and HW2's layouts (the digits as utterances): make_folds -> train -> infer -> submit --dry-run; the
    submissions have the course's headers in the test split's order; frames never straddle two folds' sides."""
    import pandas as pd

    from pipeline import infer, make_folds, submit, train

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
    folds = pd.read_csv("folds/fr.csv")
    from pipeline import data as data_module

    groups = data_module.read_train(data_module.resolve("sample-frames")).groups
    sides = pd.DataFrame({"utt": groups, "fold": folds["fold"]}).groupby("utt")["fold"].nunique()
    assert (sides == 1).all() and len(sides) > 100  # every utterance's frames in one fold
