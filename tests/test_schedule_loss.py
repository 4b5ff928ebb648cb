import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import MEAN, STD, to_model_input
from pipeline.config import Config
from pipeline.inputs.spec import DataSpec
from helpers import one_epoch
from pipeline.training.engine import auto_batch_size, predict
from pipeline.training.recipe import make_scheduler
from pipeline.metrics import log_loss, scores
from pipeline.tasks import Task


def test_auto_batch_size_keeps_enough_steps():
    assert auto_batch_size(33_600) == 256 and auto_batch_size(1_150) == 64 and auto_batch_size(100) == 32


class Recorder(torch.nn.Module):
    """A linear model that remembers the labels' smoothed loss it was trained with."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)[:, :4])


def test_label_smoothing_on_training_loss_only():
    torch.manual_seed(0)
    model = Recorder()
    images = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 3, (8,))
    cfg = Config(batch_size=8, lr=0.5, warmup_epochs=0, label_smoothing=0.2, rotate=0, scale=0, shift=0, img_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = to_model_input(images, 16, False)
    expected = F.cross_entropy(model(x), labels, label_smoothing=0.2).item()
    spec = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")
    result = one_epoch(model, opt, make_scheduler(opt, cfg, 1), images, torch.arange(8), labels, cfg, spec, 0,
                             torch.Generator().manual_seed(0))
    assert result.loss == pytest.approx(expected, rel=1e-5) and result.step == 1
    assert result.lrs == [pytest.approx(0.5)]  # the cosine's value at step 0 without warmup: the peak
    probs = predict(model, images, 4, spec, torch.device("cpu"))
    hard = F.cross_entropy(model(x), labels).item()  # validation: hard labels, no smoothing
    assert log_loss(probs, labels.numpy()) == pytest.approx(hard, rel=1e-4)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_scores():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    s = scores(probs, np.array([0, 1, 1]))
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.6) + np.log(0.3)) / 3)


def test_precision_choice_and_fp16_scaler():
    from pipeline.device import grad_scaler, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and grad_scaler("auto", cpu) is None
    assert grad_scaler("bf16", cpu) is None and grad_scaler("fp32", cpu) is None
    scaler = grad_scaler("fp16", cpu)
    assert isinstance(scaler, torch.amp.GradScaler)
    torch.manual_seed(0)
    model = Recorder()
    images = torch.randint(0, 255, (16, 1, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 3, (16,))
    cfg = Config(batch_size=4, lr=0.1, warmup_epochs=0, rotate=0, scale=0, shift=0, img_size=16, precision="fp16")
    spec = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.fc.weight.detach().clone()
    result = one_epoch(model, opt, None, images, torch.arange(16), labels, cfg, spec, 0,
                             torch.Generator().manual_seed(0), scaler=scaler)
    assert result.step == 4 and np.isfinite(result.loss)
    assert scaler._get_growth_tracker() == 4  # the scaler took all 4 optimizer steps (none skipped as inf)
    assert not torch.equal(before, model.fc.weight)


def test_ema_weights_follow_the_model_and_differ_from_it():
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = Recorder()
    ema = ModelEmaV3(model, decay=0.9)
    start = ema.module.fc.weight.detach().clone()
    images = torch.randint(0, 255, (32, 1, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 3, (32,))
    cfg = Config(batch_size=4, lr=0.5, warmup_epochs=0, rotate=0, scale=0, shift=0, img_size=16)
    spec = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")
    one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), None, images, torch.arange(32), labels, cfg,
                    spec, 0, torch.Generator().manual_seed(0), ema=ema)
    averaged, raw = ema.module.fc.weight.detach(), model.fc.weight.detach()
    assert not torch.equal(averaged, start) and not torch.equal(averaged, raw)  # moved, but behind the model
    assert (averaged - raw).abs().sum() < (start - raw).abs().sum()  # nearer the trained weights than the start


def test_training_with_ema_end_to_end(tiny_comp, workdir):
    from pipeline import make_folds, train

    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "2", "--batch-size", "32", "--ema", "0.9"]) == 0
    saved = torch.load(workdir / "weights/digit_cnn/fold0.pth", weights_only=True)
    assert saved["config"]["ema"] == 0.9


def test_clip_grad_bounds_each_step():
    def moved(clip: float) -> float:
        torch.manual_seed(0)
        model = Recorder()
        start = model.fc.weight.detach().clone()
        cfg = Config(batch_size=4, lr=1.0, warmup_epochs=0, rotate=0, scale=0, shift=0, img_size=16, clip_grad=clip)
        spec = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")
        images = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8)
        one_epoch(model, torch.optim.SGD(model.parameters(), lr=1.0), None, images, torch.arange(8),
                        torch.randint(0, 3, (8,)), cfg, spec, 0, torch.Generator().manual_seed(0))
        return (model.fc.weight.detach() - start).norm().item()

    assert moved(1e-3) <= 2 * 1e-3 + 1e-9  # 2 SGD steps of lr 1, each gradient's norm clipped to 1e-3
    assert moved(0.0) > 10 * moved(1e-3)


def test_patience_rule_and_drop_rates_and_determinism():
    import timm

    from pipeline.device import seed_everything
    from pipeline.models import build_model
    from pipeline.training.recipe import stop_early

    assert [stop_early(e, 2, 3) for e in (3, 4, 5)] == [False, False, True] and not stop_early(50, 1, 0)
    model = build_model("resnet18", 10, 1, 28, drop_rate=0.25, drop_path_rate=0.1)
    assert model.drop_rate == 0.25
    assert any(isinstance(m, timm.layers.DropPath) and m.drop_prob > 0 for m in model.modules())
    was = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(7, deterministic=True)
        assert torch.backends.cudnn.deterministic and torch.are_deterministic_algorithms_enabled()
        a = (np.random.rand(), torch.rand(1).item())
        seed_everything(7)
        assert (np.random.rand(), torch.rand(1).item()) == a
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.deterministic = False


def test_mixup_trains_on_mixed_soft_targets():
    from timm.data import Mixup

    def loss_with(mix) -> float:
        torch.manual_seed(0)
        np.random.seed(0)
        model = Recorder()
        cfg = Config(batch_size=8, lr=0.1, warmup_epochs=0, rotate=0, scale=0, shift=0, img_size=16, label_smoothing=0.1)
        spec = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")
        images = torch.randint(0, 255, (16, 1, 2, 2), dtype=torch.uint8)
        labels = torch.randint(0, 3, (16,))
        return one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), None, images, torch.arange(16),
                               labels, cfg, spec, 0, torch.Generator().manual_seed(0), mix=mix).loss

    plain = loss_with(None)
    never = loss_with(Mixup(mixup_alpha=0.4, prob=0.0, label_smoothing=0.1, num_classes=3))  # smoothing only
    mixed = loss_with(Mixup(mixup_alpha=0.4, prob=1.0, label_smoothing=0.1, num_classes=3))
    assert never == pytest.approx(plain, rel=1e-5)  # timm's soft targets give the same smoothed loss
    assert np.isfinite(mixed) and abs(mixed - plain) > 1e-4  # mixing changed the images and targets


def test_mixup_feeds_the_model_the_mixed_images_and_scores_the_mixed_targets():
    """Both halves must reach the step: the model sees Mixup's images (not the originals), and the loss is taken
    against Mixup's soft targets (not the hard labels): mixing only one of the two fails here."""
    from timm.data import Mixup

    class Recording(Mixup):
        def __call__(self, x, target):
            mixed, soft = super().__call__(x.clone(), target)
            self.seen = (x.clone(), mixed.clone(), soft.clone())
            return mixed, soft

    class Watcher(Recorder):
        def forward(self, x):
            self.inputs = x.detach().clone()
            return super().forward(x)

    torch.manual_seed(0)
    np.random.seed(0)
    model, mix = Watcher(), Recording(mixup_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=3)
    cfg = Config(batch_size=8, lr=0.1, warmup_epochs=0, rotate=0, scale=0, shift=0, img_size=16, label_smoothing=0.0)
    spec = DataSpec(Task("multiclass", ("a", "b", "c")), 16, (MEAN,), (STD,), "none")
    images = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    result = one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), None, images, torch.arange(8), labels,
                             cfg, spec, 0, torch.Generator().manual_seed(0), mix=mix)
    original, mixed, soft = mix.seen
    assert not torch.allclose(original, mixed)  # alpha 1.0: the images really were mixed
    assert torch.equal(model.inputs, mixed)  # ... and those are what the model was given
    assert not torch.allclose(soft, F.one_hot(soft.argmax(1), 3).float())  # targets mixed too
    with torch.no_grad():
        expected = torch.sum(-soft * F.log_softmax(model(mixed), 1), 1).mean().item()
    assert result.loss == pytest.approx(expected, rel=1e-5)  # the loss was taken against those soft targets


def test_optimizer_and_mixup_flags_end_to_end(tiny_comp, workdir, capsys):
    from pipeline import make_folds, train

    assert make_folds.main(["--data", str(tiny_comp)]) == 0
    assert train.main(["--data", str(tiny_comp), "--fold", "0", "--epochs", "1", "--batch-size", "32", "--opt", "sgd",
                       "--momentum", "0.8", "--mixup", "0.2", "--cutmix", "1.0"]) == 0
    config = torch.load(workdir / "weights/digit_cnn/fold0.pth", weights_only=True)["config"]
    assert (config["opt"], config["momentum"], config["mixup"], config["cutmix"]) == ("sgd", 0.8, 0.2, 1.0)
    capsys.readouterr()
    assert train.main(["--data", str(tiny_comp), "--exp", "x", "--opt", "nosuchopt"]) == 2
    assert "--opt: timm knows no optimizer 'nosuchopt'; valid: " in capsys.readouterr().err
    assert train.main(["--data", str(tiny_comp), "--exp", "y", "--mixup", "0.2", "--batch-size", "31"]) == 2
    assert "the batch size must be even" in capsys.readouterr().err


def test_opt_builds_the_named_timm_optimizer():
    from pipeline.training.recipe import make_optimizer

    sgd = make_optimizer(torch.nn.Linear(3, 2), Config(opt="sgd", momentum=0.8, lr=0.01))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert type(make_optimizer(torch.nn.Linear(3, 2), Config(opt="lamb"))).__name__ == "Lamb"
