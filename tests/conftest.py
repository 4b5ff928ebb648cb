from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import data

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """The bundled sample (scikit-learn digits at 28x28), written once per test session."""
    return data.write_sample(str(tmp_path_factory.mktemp("sample") / "sample-digits"))


def write_comp(root, train: pd.DataFrame, test: pd.DataFrame):
    root.mkdir(parents=True, exist_ok=True)
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    pd.DataFrame({"ImageId": np.arange(1, len(test) + 1), "Label": 0}).to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def tiny_comp(tmp_path, sample_dir):
    """A tiny competition in the Digit Recognizer format: 200 train rows (20 per digit), 40 test rows."""
    train = pd.read_csv(sample_dir / "train.csv")
    train = train.groupby("label", group_keys=False).head(20).reset_index(drop=True)
    test = pd.read_csv(sample_dir / "test.csv").head(40)
    return write_comp(tmp_path / "comp", train, test)


@pytest.fixture(scope="session")
def small_comp(tmp_path_factory, sample_dir):
    """A small competition in the Digit Recognizer format, written once: 600 train rows (60 per digit), 40 test
    rows; enough epochs of it to kill a run mid-fold, short enough to run it four times."""
    train = pd.read_csv(sample_dir / "train.csv")
    train = train.groupby("label", group_keys=False).head(60).reset_index(drop=True)
    test = pd.read_csv(sample_dir / "test.csv").head(40)
    return write_comp(tmp_path_factory.mktemp("small") / "comp", train, test)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run stages inside tmp_path so folds/, weights/, submissions/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def kaggle_env(monkeypatch, tmp_path):
    """Credentials in the environment and the client's API address pointed at the local stand-in server
    (tests/fake_kaggle.py); the real kaggle client does the rest."""
    import kagglesdk.kaggle_env as kaggle_env

    from fake_kaggle import PORT

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, f"http://localhost:{PORT}")
