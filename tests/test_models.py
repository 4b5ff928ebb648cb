import pandas as pd
import pytest
import timm
import torch

from pipeline import infer, make_folds, train
from pipeline.errors import PipelineError
from pipeline.models import build_model


def test_digit_cnn_is_a_timm_model():
    assert "digit_cnn" in timm.list_models("digit*")
    model = timm.create_model("digit_cnn", num_classes=7, in_chans=1)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_pretrained_offline_is_one_line_naming_pretrained_path(monkeypatch):
    """No route to the hub (a .invalid host never resolves, RFC 2606): refused at once, before timm's minute of retries."""
    from pipeline import models

    monkeypatch.setattr(models, "HUB_HOST", "hub.invalid")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(PipelineError, match=r"--pretrained: no internet to download resnet18's weights from hub.invalid; .*--pretrained-path FILE"):
        build_model("resnet18", 10, 1, 28, pretrained=True)
    with pytest.raises(PipelineError, match="digit_cnn has no published weights"):
        build_model("digit_cnn", 10, 1, 28, pretrained=True)


def test_pretrained_failure_of_the_hub_client_is_one_line(tmp_path, sample_dir):
    """timm's real loading path, made to fail by the hub client's own offline mode, as a user's process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run([sys.executable, "-c", "from pipeline.models import build_model; "
                             "build_model('resnet18', 10, 1, 28, pretrained=True)"],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "PipelineError: --pretrained: could not load resnet18's pretrained weights" in result.stderr, result.stderr[-500:]
    assert "--pretrained-path FILE" in result.stderr.strip().splitlines()[-1]


def test_unknown_model_suggests_names():
    with pytest.raises(PipelineError, match="unknown model 'resnet181'; did you mean"):
        build_model("resnet181", 10, 1, 28)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(PipelineError, match="convnext_atto cannot take 28x28 inputs.*--img-size"):
        build_model("convnext_atto", 10, 1, 28)


def test_pretrained_path_adapts_stem_and_skips_head(tmp_path, capsys):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000, in_chans=3)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", 10, 1, 28, pretrained_path=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.out_features == 10
    assert "loaded" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("model, img_size", [
    ("efficientnet_b0", 32), ("convnext_atto", 64), ("edgenext_xx_small", 64),
    ("tiny_vit_5m_224", 64), ("vit_tiny_patch16_224", 32), ("resnet18", 28),
])
def test_backbone_families_train_and_infer(model, img_size, tmp_path, sample_dir, workdir):
    """The notebooks' timm families go through the same train and infer path with --img-size."""
    from conftest import write_comp
    rows = pd.read_csv(sample_dir / "train.csv").groupby("label", group_keys=False).head(6).reset_index(drop=True)
    comp = str(write_comp(tmp_path / "c", rows, pd.read_csv(sample_dir / "test.csv").head(8)))
    assert make_folds.main(["--data", comp, "--n-splits", "2"]) == 0
    assert train.main(["--data", comp, "--model", model, "--img-size", str(img_size), "--epochs", "1",
                       "--batch-size", "16", "--exp", "m"]) == 0
    assert infer.main(["--data", comp, "--exp", "m", "--tta"]) == 0
    assert len(pd.read_csv("submissions/m.csv")) == 8


def test_checkpoints_hold_the_unwrapped_module():
    from pipeline.models import unwrap

    model = build_model("digit_cnn", 10, 1, 28)
    wrapped = torch.nn.DataParallel(model)
    assert unwrap(wrapped) is model and unwrap(model) is model
    assert not any(k.startswith("module.") for k in unwrap(wrapped).state_dict())
