"""Random config files and damaged checkpoints: a clean one-line PipelineError or a valid result, nothing else."""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import train
from pipeline.config import RULES, Config, ExperimentConfig, parse_config
from pipeline.errors import PipelineError
from pipeline.predict import load_fold_model
from pipeline.models import build_model

FIELDS = [f.name for f in dataclasses.fields(Config)]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8), st.sampled_from(["1e-3", "inf", "nan", "all", "0", "..", "-1", "3.0", ""]),
                    st.sampled_from([2.5, 3.0, 5, 64, 0.001, 0.3, 16.0, 1, 0]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
configs = st.one_of(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), values, max_size=5),
                    st.dictionaries(st.sampled_from(FIELDS), scalars, min_size=1, max_size=2))  # mostly valid keys


def one_line(e: PipelineError) -> None:
    assert str(e).strip() and "\n" not in str(e).strip()


@settings(max_examples=150, deadline=None)
@given(values=configs, as_yaml=st.booleans())
def test_config_files_give_valid_configs_or_one_line(values, as_yaml):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "c.yaml" if as_yaml else "c.json")
        path.write_text(yaml.safe_dump(values) if as_yaml else json.dumps(values))
        try:
            cfg = parse_config(["--config", str(path)], "train", train.FLAGS)
        except PipelineError as e:
            one_line(e)
            return
    hints = typing.get_type_hints(Config)
    for name in FIELDS:  # every value has exactly its annotated type, is finite, and obeys its rule
        value, kind = getattr(cfg, name), hints[name]
        if typing.get_origin(kind) is tuple:
            assert isinstance(value, tuple) and all(isinstance(v, str) for v in value)
        else:
            assert type(value) is kind, (name, value)
        if isinstance(value, float):
            assert math.isfinite(value)
        if name in RULES:
            assert RULES[name][0](value), (name, value)
    for name, original in values.items():  # nothing coerced with loss: 2.7 never became 2, "yes" never True
        value = getattr(cfg, name)
        if isinstance(value, tuple):
            assert list(value) == ([original] if isinstance(original, str) else list(original))
        elif isinstance(value, float) and isinstance(original, str):
            assert value == float(original)
        elif name == "fold" and isinstance(original, int):
            assert value == str(original)
        else:
            assert value == original and isinstance(original, bool) == isinstance(value, bool), (name, original, value)


@pytest.fixture(scope="module")
def good_checkpoint():
    model = build_model("digit_cnn", 10, 1, 28)
    config = {"model": "digit_cnn", "num_classes": 10, "in_chans": 1, "img_size": 28, "n_splits": 5,
              "folds_hash": "abc"}
    return {"state_dict": model.state_dict(), "config": config, "fold": 0, "epoch": 1, "score": {"accuracy": 0.5}}


junk = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=5),
                 st.lists(st.integers(), max_size=2), st.just({}),
                 st.sampled_from([torch.zeros(3), torch.zeros(2, 2, dtype=torch.int64), torch.tensor(float("nan")),
                                  torch.zeros(0), torch.ones(64, 1, 3, 3)]))


EXPERIMENT = ExperimentConfig({}, n_splits=5, num_classes=10, in_chans=1, folds_hash="abc")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["top", "config", "state_dict"]), key_index=st.integers(0, 40), value=junk,
       delete=st.booleans(), cut=st.one_of(st.none(), st.integers(0, 200_000)))
def test_damaged_checkpoints_load_or_refuse(good_checkpoint, where, key_index, value, delete, cut):
    ckpt = {**good_checkpoint, "config": dict(good_checkpoint["config"]),
            "state_dict": dict(good_checkpoint["state_dict"])}
    target = ckpt if where == "top" else ckpt[where]
    key = sorted(target)[key_index % len(target)]
    if delete:
        del target[key]
    else:
        target[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "fold0.pth")
        torch.save(ckpt, path)
        if cut is not None:
            path.write_bytes(path.read_bytes()[:cut])
        try:
            model, spec = load_fold_model(path, torch.device("cpu"), EXPERIMENT)
        except PipelineError as e:
            one_line(e)
            return
    assert model(torch.zeros(2, 1, spec.img_size, spec.img_size)).shape == (2, 10)
