"""The recipe flags of issue 10 that change what training does: schedules, SWA, background checkpoint writes.

Each test is written to fail when its flag does nothing."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.augment import MEAN, STD
from pipeline.io import BackgroundWriter
from pipeline.config import Config, with_lr
from pipeline.inputs.spec import DataSpec
from helpers import one_epoch
from pipeline.training.recipe import load_scheduler_state, make_scheduler, scheduler_state
from pipeline.errors import PipelineError
from pipeline.tasks import Task

SPEC = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")


def applied_lrs(cfg: Config, epochs: int, steps: int, metrics=None) -> list[list[float]]:
    """The lr of every optimizer step as train_one_epoch applied it, epoch by epoch."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps, higher_is_better=True)
    images = torch.randint(0, 255, (4 * steps, 1, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 3, (4 * steps,))
    out, step = [], 0
    for epoch in range(epochs):
        result = one_epoch(net, optimizer, scheduler, images, torch.arange(4 * steps), labels, cfg, SPEC, step,
                                 torch.Generator().manual_seed(epoch))
        step = result.step
        out.append(result.lrs)
        scheduler.step(epoch + 1, None if metrics is None else metrics[epoch])
    return out


BASE = dict(batch_size=4, lr=0.1, rotate=0, scale=0, shift=0, img_size=16, label_smoothing=0.0)


def test_cosine_warms_up_from_warmup_lr_and_decays_to_min_lr_every_step():
    cfg = Config(**BASE, epochs=4, warmup_epochs=1, warmup_lr=0.01, min_lr=0.001, sched="cosine")
    lrs = sum(applied_lrs(cfg, 4, 5), [])
    assert lrs[0] == pytest.approx(0.01)  # warmup starts at --warmup-lr ...
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4] > lrs[0]  # ... and rises linearly, step by step
    assert np.diff(lrs[:5]) == pytest.approx([0.018] * 4)  # (0.1 - 0.01) / 5 steps
    assert max(lrs) <= 0.1 + 1e-12 and all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # then decays every step
    assert len(set(np.round(lrs[5:10], 9))) == 5  # per optimizer step, not per epoch
    assert lrs[5] == pytest.approx(0.1)  # the peak right after warmup: the cosine runs over the 15 steps left
    assert lrs[-1] == pytest.approx(0.001 + 0.5 * 0.099 * (1 + np.cos(np.pi * 14 / 15)))  # towards --min-lr


def test_step_schedule_multiplies_by_decay_rate_every_decay_epochs():
    cfg = Config(**BASE, epochs=6, warmup_epochs=0, sched="step", decay_epochs=2, decay_rate=0.5)
    per_epoch = applied_lrs(cfg, 6, 3)
    assert [e[0] for e in per_epoch] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    auto = applied_lrs(Config(**BASE, epochs=6, warmup_epochs=0, sched="step", decay_rate=0.5), 6, 3)
    assert [e[0] for e in auto] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])  # auto: a third of --epochs


def test_step_default_decays_even_with_two_epochs():
    """The default interval is a third of the epochs after warmup: with --epochs 2 (1 of warmup) the lr still
    decays twice in the second epoch (a third of --epochs, at least 1, never decayed at all)."""
    lrs = applied_lrs(Config(**BASE, epochs=2, warmup_epochs=1, sched="step", decay_rate=0.5), 2, 6)[1]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_warmup_as_long_as_the_run_is_said(tiny_comp, workdir, capsys):
    from pipeline import make_folds, train

    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "1", "--batch-size", "32"]) == 0
    assert "notice: --warmup-epochs 1 >= --epochs 1: the whole run warms up" in capsys.readouterr().out
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "2", "--batch-size", "32", "--exp", "b"]) == 0
    assert "notice: --warmup-epochs" not in capsys.readouterr().out


def test_constant_holds_the_lr_after_warmup():
    lrs = sum(applied_lrs(Config(**BASE, epochs=3, warmup_epochs=1, sched="constant"), 3, 4), [])
    assert lrs[0] == pytest.approx(0.025) and lrs[:4] == sorted(lrs[:4])  # --warmup-lr 0: --lr / 4 warmup steps
    assert lrs[4:] == pytest.approx([0.1] * 8)


def test_plateau_decays_only_when_the_metric_stops_improving_and_its_state_resumes():
    cfg = Config(**BASE, epochs=8, warmup_epochs=0, sched="plateau", decay_epochs=1, decay_rate=0.5)
    improving = applied_lrs(cfg, 5, 2, metrics=[0.1, 0.2, 0.3, 0.4, 0.5])
    assert [e[0] for e in improving] == pytest.approx([0.1] * 5)
    stuck = applied_lrs(cfg, 6, 2, metrics=[0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert [e[0] for e in stuck] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025])
    assert stuck[0][0] == stuck[0][1]  # once an epoch: the lr is the same for every step inside it
    # the counters survive a snapshot: a resumed scheduler decays when the uninterrupted one would
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    a = make_scheduler(optimizer, cfg, 2)
    for epoch, m in enumerate([0.5, 0.5], 1):
        a.step(epoch, m)
    saved = scheduler_state(a)
    b = make_scheduler(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), cfg, 2)
    load_scheduler_state(b, saved)
    assert b.lr_scheduler.num_bad_epochs == a.lr_scheduler.num_bad_epochs == 1 and b.lr_scheduler.best == 0.5
    lower = make_scheduler(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), cfg, 2, higher_is_better=False)
    assert lower.lr_scheduler.mode == "min"  # rmse, log loss: lower is better


def test_plateau_warms_up_by_epoch_without_a_wasted_epoch():
    cfg = Config(**BASE, epochs=4, warmup_epochs=1, sched="plateau")
    assert [e[0] for e in applied_lrs(cfg, 3, 2, metrics=[0.1, 0.2, 0.3])] == pytest.approx([0.05, 0.1, 0.1])


def test_lr_flags_are_checked_and_min_lr_moves_with_lr():
    moved = with_lr(Config(lr=1e-3, min_lr=1e-5, warmup_lr=2e-5), 4e-3)
    assert (moved.min_lr, moved.warmup_lr) == pytest.approx((4e-5, 8e-5))
    assert Config(lr=5e-6).warmup_lr == 0  # fine-tuning rates work with the default warmup (lr / 100)
    with pytest.raises(PipelineError, match=r"--min-lr: must be below --lr \(0.001\), got 0.01"):
        Config(lr=1e-3, min_lr=1e-2)
    with pytest.raises(PipelineError, match="--sched: must be cosine, step, plateau or constant, got 'linear'"):
        Config(sched="linear")
    with pytest.raises(PipelineError, match=r"--swa-epochs: at most --epochs \(3\), got 4"):
        Config(epochs=3, swa_epochs=4)


def test_sweep_moves_min_lr_with_each_cells_lr(tiny_comp, workdir):
    from pipeline import make_folds, sweep

    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert sweep.main(["--data", str(tiny_comp), "--lr", "2e-3", "4e-3", "--batch-size", "32", "--min-lr", "1e-4",
                       "--fold", "0", "--epochs", "1", "--name", "s"]) == 0
    saved = {json.loads(p.read_text())["lr"]: json.loads(p.read_text())["min_lr"]
             for p in (workdir / "weights/sweeps/s").glob("*/config.json")}
    assert saved == pytest.approx({2e-3: 1e-4 * 2 / 3, 4e-3: 1e-4 * 4 / 3})  # the ratio of 1e-4 to --lr's 3e-3


def test_background_writer_saves_what_was_there_at_save_time_and_reports_failures(tmp_path):
    weights = torch.ones(1000)
    with BackgroundWriter() as writer:
        writer.save({"w": weights}, tmp_path / "a.pth")
        weights.mul_(0)  # training goes on changing the tensor in place at once
        writer.wait()
        assert writer.seconds > 0
    assert torch.load(tmp_path / "a.pth", weights_only=True)["w"].sum().item() == 1000
    (tmp_path / "dir.pth").mkdir()
    writer = BackgroundWriter()
    writer.save({"w": weights}, tmp_path / "dir.pth")
    with pytest.raises(PipelineError, match="is a directory"):
        writer.wait()


class Spy:
    """Wraps torch's AveragedModel to see which weights it averaged (its behaviour unchanged)."""
    seen: list = []

    @classmethod
    def make(cls):
        from torch.optim.swa_utils import AveragedModel

        class Watched(AveragedModel):
            def update_parameters(self, model):
                cls.instance = self
                cls.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                super().update_parameters(model)
        return Watched


@pytest.mark.slow
def test_swa_averages_the_last_n_epochs_recomputes_batchnorm_and_keeps_the_better(tiny_comp, workdir, capsys,
                                                                                   monkeypatch):
    from pipeline import make_folds, train
    from pipeline.training import recipe

    Spy.seen = []
    monkeypatch.setattr(recipe, "AveragedModel", Spy.make())
    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "4", "--batch-size", "32",
                       "--swa-epochs", "2"]) == 0
    out = capsys.readouterr().out
    exp = workdir / "weights/digit_cnn"
    assert len(Spy.seen) == 2  # the last 2 of 4 epochs, nothing else
    sel = pd.read_csv(exp / "selection.csv").iloc[0]
    assert sel["swa_epochs"] == 2 and sel["kept"] in ("swa", "best_epoch")
    better = sel["swa_accuracy"] > sel["best_epoch_accuracy"]  # accuracy: higher is better (ties: by the loss)
    if sel["swa_accuracy"] != sel["best_epoch_accuracy"]:
        assert (sel["kept"] == "swa") == better
    kept = "SWA" if sel["kept"] == "swa" else "the best epoch"
    assert f"fold 0: SWA of the last 2 epochs: valid accuracy {sel['swa_accuracy']:.5f} vs best epoch " \
           f"{sel['best_epoch']}: {sel['best_epoch_accuracy']:.5f} -> keeping {kept}" in out
    cv = json.loads((exp / "cv.json").read_text())
    assert cv["selection"]["0"]["swa_accuracy"] == pytest.approx(sel["swa_accuracy"])  # side by side in cv.json
    assert cv["per_fold"]["0"]["accuracy"] == pytest.approx(
        sel["swa_accuracy"] if sel["kept"] == "swa" else sel["best_epoch_accuracy"])  # OOF is the kept model's
    averaged = Spy.instance.module.state_dict()
    for name, value in averaged.items():
        mean = (Spy.seen[0][name] + Spy.seen[1][name]) / 2
        if "running" in name:  # BatchNorm statistics: recomputed for the averaged weights (update_bn), not averaged
            assert not torch.allclose(value, mean), name
        elif value.is_floating_point():  # weights: the mean of the two epochs' weights
            assert torch.allclose(value, mean, atol=1e-6) and not torch.allclose(value, Spy.seen[1][name]), name
    saved = torch.load(exp / "fold0.pth", weights_only=True)
    if sel["kept"] == "swa":  # the averaged model is what the fold keeps
        assert all(torch.equal(saved["state_dict"][k], v) for k, v in averaged.items())
    else:
        assert saved["epoch"] == sel["best_epoch"]
    assert "checkpoints written in the background" in out


@pytest.mark.slow
def test_schedule_flags_end_to_end(tiny_comp, workdir, capsys):
    from pipeline import make_folds, train

    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "3", "--batch-size", "32",
                       "--sched", "step", "--decay-epochs", "1", "--decay-rate", "0.5", "--warmup-epochs", "0"]) == 0
    exp = workdir / "weights/digit_cnn"
    schedule = pd.read_csv(exp / "schedule.csv")
    per_epoch = schedule.groupby("epoch")["lr"].agg(["min", "max"])
    assert per_epoch["max"].tolist() == pytest.approx([3e-3, 1.5e-3, 0.75e-3])  # lr.png draws these applied values
    assert json.loads((exp / "config.json").read_text())["sched"] == "step"
    capsys.readouterr()
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "3", "--batch-size", "32",
                       "--sched", "cosine", "--decay-epochs", "1", "--decay-rate", "0.5", "--warmup-epochs", "0",
                       "--resume"]) == 2
    assert "was trained with sched='step', this run has 'cosine'" in capsys.readouterr().err
    assert train.main(["--data", str(tiny_comp), "--fold", "full", "--sched", "plateau", "--exp", "f"]) == 2
    assert "--sched plateau: decays on the validation metric, and --fold full has no validation rows" in \
        capsys.readouterr().err


def test_resume_snapshot_carries_the_plateau_counters_and_the_swa_average(tmp_path):
    from torch.optim.swa_utils import AveragedModel

    from pipeline.training.recipe import FoldProgress, FoldState

    cfg = Config(**BASE, epochs=8, warmup_epochs=0, sched="plateau", decay_epochs=3)

    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, optimizer, make_scheduler(optimizer, cfg, 2), AveragedModel(model), torch.Generator()

    model, optimizer, scheduler, swa, generator = parts()
    for epoch, metric in enumerate([0.9, 0.5, 0.5], 1):
        scheduler.step(epoch, metric)
    with torch.no_grad():
        model.weight.add_(1.0)
    swa.update_parameters(model)
    progress = FoldProgress(3, 6, {"accuracy": 0.9, "loss": 1.0}, np.zeros((2, 2), np.float32), 1)
    saved = FoldState(model, optimizer, generator, scheduler, model=model, swa=swa, progress=progress).state_dict()
    model2, optimizer2, scheduler2, swa2, generator2 = parts()
    fold2 = FoldState(model2, optimizer2, generator2, scheduler2, model=model2, swa=swa2)
    fold2.load_state_dict(saved, tmp_path / "x")
    back = fold2.progress
    assert (back.epoch, back.step, back.best, back.best_epoch) == (3, 6, {"accuracy": 0.9, "loss": 1.0}, 1)
    assert scheduler2.lr_scheduler.num_bad_epochs == 2 and scheduler2.lr_scheduler.best == 0.9
    assert int(swa2.n_averaged) == 1 and torch.equal(swa2.module.weight, swa.module.weight)
