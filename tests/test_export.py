"""pipeline.export: the weights and code datasets and the inference notebook of a code competition, pushed through
the real kaggle client to the stand-in server, and the notebook reproducing the local predictions offline."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import export, make_folds, submit, train
from pipeline.kaggle_client import NO_CREDENTIALS

from fake_kaggle import FakeKaggle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sample_dir):
    """Two experiments on a tiny competition, exported once (wheels built) as alice/tiny-digits; with the files of
    weights/ that the export changed (it must change none)."""
    root = tmp_path_factory.mktemp("export")
    comp = root / "comp"
    comp.mkdir()
    train_csv = pd.read_csv(sample_dir / "train.csv").groupby("label", group_keys=False).head(20)
    train_csv.to_csv(comp / "train.csv", index=False)
    pd.read_csv(sample_dir / "test.csv").head(40).to_csv(comp / "test.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 41), "Label": 0}).to_csv(comp / "sample_submission.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        folds = ["--folds-path", str(root / "folds/folds.csv")]  # absolute: a local path the export must not carry
        assert make_folds.main(["--data", str(comp), *folds]) == 0
        for exp, lr in (("a", "3e-3"), ("b", "1e-3")):
            assert train.main(["--data", str(comp), "--epochs", "1", "--batch-size", "32", "--lr", lr, "--exp", exp,
                               *folds]) == 0
        stale_side_files(root / "weights")
        before = file_states(root / "weights")
        assert export.main(["--exp", "a", "b", "--ensemble", "learned", "--tta", "--data", str(comp),
                            "--dataset", "alice/tiny-digits", "--competition", "digit-recognizer"]) == 0
        after = file_states(root / "weights")
    return root, comp, sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def stale_side_files(weights: Path) -> None:
    """What an earlier `infer --exp a b --ensemble mean` (no TTA) leaves in weights/: each experiment's test
    predictions and the blend file of another method."""
    for e in ("a", "b"):
        np.save(weights / e / "test_probs.npy", np.full((40, 10), 0.1, dtype=np.float32))
        (weights / e / "test_probs.json").write_text('{"tta": false, "tta_preset": null, "folds": 5, "rows": 40}\n')
    (weights / "blend_a+b.json").write_text('{"experiments": ["a", "b"], "method": "mean", "weights": [0.5, 0.5]}\n')


def file_states(folder: Path) -> dict[str, tuple]:
    """Each file under folder: the hash of its bytes, its inode and modification time (a rewrite of the same bytes,
    or one put back afterwards, still shows)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino,
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_export_writes_nothing_under_weights(exported):
    """The check infers on the export's own copies: a kill -9 during it can leave nothing half-done in weights/
    (test predictions without TTA beside a test_probs.json saying tta, a blend file of another method)."""
    assert exported[2] == []


def test_export_refuses_a_blend_of_one_experiment_with_itself(exported, capsys, monkeypatch):
    root, comp, _ = exported
    monkeypatch.chdir(root)
    assert export.main(["--exp", "a", "b", "a", "--data", str(comp), "--competition", "digit-recognizer",
                        "--dataset", "alice/twice-a"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --exp: a is named twice; a blend takes each experiment once"]
    assert not (root / "export/twice-a").exists()


def test_export_refuses_to_replace_the_export_of_other_experiments(exported, capsys, monkeypatch):
    """A slug another export holds (here alice/tiny-digits' folder, copied) is refused, not rebuilt for other
    experiments (and, with --push, versioned on Kaggle as theirs)."""
    root, comp, _ = exported
    monkeypatch.chdir(root)
    shutil.copytree(root / "export/tiny-digits", root / "export/shared-slug", symlinks=True)
    before = file_states(root / "export/shared-slug")
    assert export.main(["--exp", "a", "--data", str(comp), "--competition", "digit-recognizer",
                        "--dataset", "alice/shared-slug"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: export/shared-slug: holds the export of a, b (export.json), not of a; "
        "choose another --dataset or --export-dir"]
    assert file_states(root / "export/shared-slug") == before


def test_export_builds_the_datasets_and_the_kernel(exported):
    root, _, _ = exported
    out = root / "export" / "tiny-digits"
    weights = json.loads((out / "weights/dataset-metadata.json").read_text())
    assert weights["id"] == "alice/tiny-digits" and weights["licenses"] == [{"name": "CC0-1.0"}]
    assert sorted(p.name for p in (out / "weights/a").iterdir()) == sorted(
        [f"fold{k}.pth" for k in range(5)] + ["config.json", "cv.json", "oof.csv"])  # no local test predictions
    code = json.loads((out / "code/dataset-metadata.json").read_text())
    assert code["id"] == "alice/tiny-digits-code"
    kernel = json.loads((out / "kernel/kernel-metadata.json").read_text())
    assert kernel | {"title": None} == {
        "id": "alice/tiny-digits-inference", "title": None, "code_file": "inference.ipynb", "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_internet": False,
        "dataset_sources": ["alice/tiny-digits", "alice/tiny-digits-code"], "competition_sources": ["digit-recognizer"],
        "kernel_sources": [], "model_sources": []}
    nb = json.loads((out / "kernel/inference.ipynb").read_text())
    source = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "COMPETITION = '/kaggle/input/digit-recognizer'" in source and "CODE = '/kaggle/input/tiny-digits-code'" in source
    assert "'exp': ['a', 'b']" in source and "'tta': True" in source and "'ensemble': 'learned'" in source
    assert all(c.get("outputs", []) == [] for c in nb["cells"])
    local, exported_csv = (out / "check/local.csv").read_bytes(), (out / "check/exported.csv").read_bytes()
    assert local == exported_csv and len(pd.read_csv(io.BytesIO(local))) == 40


def test_every_listed_wheel_is_there_and_installs_offline_into_a_fresh_venv(exported, tmp_path):
    """A Kaggle-like interpreter (this environment's packages minus what the code dataset ships) installs the wheels
    with the notebook's own cell, offline, then runs the notebook on the local files: the predictions are those of
    the local infer."""
    root, comp, _ = exported
    out = root / "export" / "tiny-digits"
    pins = (out / "code/requirements.txt").read_text().split()
    wheels = {p.name.split("-")[0].replace("_", "-").lower(): p.name.split("-")[1] for p in (out / "code").glob("*.whl")}
    assert {p.split("==")[0]: p.split("==")[1] for p in pins} == wheels  # each pin has its wheel, no more
    assert {"pipeline", "ttach", "iterative-stratification"} <= set(wheels)
    image = kaggle_like_venv(tmp_path, shipped=set(wheels))
    notebook = json.loads((out / "kernel/inference.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    cells[0] = cells[0].replace("'/kaggle/input/digit-recognizer'", repr(str(comp))).replace(
        "'/kaggle/input/tiny-digits-code'", repr(str(out / "code"))).replace(
        "'/kaggle/input/tiny-digits'", repr(str(out / "weights"))).replace(
        '"/kaggle/working/submission.csv"', repr(str(tmp_path / "submission.csv")))
    script = tmp_path / "notebook.py"
    script.write_text("\n".join(cells) + "\nimport pipeline; print('PIPELINE_AT', pipeline.__file__)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(image), str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    where = next(line for line in done.stdout.splitlines() if line.startswith("PIPELINE_AT"))
    assert str(tmp_path / "venv") in where  # the installed wheel, not the checkout
    assert (tmp_path / "submission.csv").read_bytes() == (out / "check/local.csv").read_bytes()


def kaggle_like_venv(tmp_path: Path, shipped: set[str]) -> Path:
    """A fresh venv that sees this environment's distributions, except the ones the code dataset ships (and the
    editable pipeline): what the Kaggle image offers the notebook."""
    import importlib.metadata as md
    import site

    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    image = tmp_path / "image"
    image.mkdir()
    hidden = set()
    for dist in md.distributions():
        name = dist.metadata["Name"].replace("_", "-").lower()
        if name in shipped:
            hidden |= {Path(str(f)).parts[0] for f in dist.files or []}
    site_packages = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
    for entry in site_packages.iterdir():
        if entry.name in hidden or entry.name.startswith(("__editable__", "pipeline", "_pipeline")) \
                or entry.suffix == ".pth":
            continue
        (image / entry.name).symlink_to(entry)
    target = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    (target / "kaggle_image.pth").write_text(str(image) + "\n")
    return tmp_path / "venv" / "bin" / "python"


def test_push_creates_then_versions_the_datasets_and_pushes_the_kernel(exported, kaggle_env, capsys, monkeypatch):
    root, comp, _ = exported
    monkeypatch.chdir(root)
    args = ["--exp", "a", "b", "--ensemble", "learned", "--tta", "--data", str(comp), "--dataset", "alice/tiny-digits",
            "--competition", "digit-recognizer", "--push"]
    with FakeKaggle() as server:
        assert export.main(args) == 0
        first = capsys.readouterr().out
        assert export.main(args) == 0
        second = capsys.readouterr().out
    assert set(server.datasets) == {"alice/tiny-digits", "alice/tiny-digits-code"}
    created = server.datasets["alice/tiny-digits"][0]
    assert created["licenseName"] == "CC0-1.0" and created["isPrivate"] is True
    uploaded = {server.blobs[f["token"]]["name"]: server.blobs[f["token"]]["body"] for f in created["files"]}
    assert set(uploaded) == {"a.zip", "b.zip", "blend_a+b.json"}  # one folder per experiment, zipped by the client
    with zipfile.ZipFile(io.BytesIO(uploaded["a.zip"])) as z:
        assert sorted(z.namelist()) == sorted([f"fold{k}.pth" for k in range(5)] + ["config.json", "cv.json", "oof.csv"])
        exported = json.loads(z.read("config.json"))
    local = json.loads((root / "weights/a/config.json").read_text())
    assert local["folds_path"].startswith("/") and exported["folds_path"] == Path(local["folds_path"]).name
    assert not [v for v in exported.values() if isinstance(v, str) and v.startswith("/")]  # no local path leaves
    code = {server.blobs[f["token"]]["name"] for f in server.datasets["alice/tiny-digits-code"][0]["files"]}
    assert "requirements.txt" in code and any(n.startswith("pipeline-0.1.0-") for n in code)
    assert any(n.startswith("ttach-") for n in code)
    assert [len(v) for v in server.datasets.values()] == [2, 2]  # the second push added a version to each
    assert "versionNotes" in server.datasets["alice/tiny-digits"][1]["body"]
    pushes = server.kernels["alice/tiny-digits-inference"]
    assert len(pushes) == 2 and pushes[0]["competitionDataSources"] == ["digit-recognizer"]
    assert pushes[0]["datasetDataSources"] == ["alice/tiny-digits", "alice/tiny-digits-code"]
    assert pushes[0]["enableInternet"] is False and pushes[0]["enableGpu"] is True
    assert "'exp': ['a', 'b']" in pushes[0]["text"]
    assert "kaggle: created dataset alice/tiny-digits" in first and "new version of dataset alice/tiny-digits" in second
    assert "python -m pipeline.submit --kernel alice/tiny-digits-inference --version 2 --competition digit-recognizer" in second


def test_push_without_credentials_or_accepted_rules_is_one_line(exported, kaggle_env, capsys, monkeypatch):
    root, comp, _ = exported
    monkeypatch.chdir(root)
    args = ["--exp", "a", "--data", str(comp), "--dataset", "alice/only-a-weights", "--competition", "digit-recognizer",
            "--push"]
    with FakeKaggle(accept_rules=False):
        assert export.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: kaggle: notebook alice/only-a-weights-inference refused (403): accept the competition "
                   "rules first at https://www.kaggle.com/competitions/digit-recognizer/rules"]
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    before = file_states(root / "export")
    assert export.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {NO_CREDENTIALS}"]
    assert file_states(root / "export") == before  # said before building anything


def test_export_refuses_unfinished_experiments_before_replacing_anything(exported, capsys, monkeypatch):
    root, comp, _ = exported
    monkeypatch.chdir(root)
    export_args = ["--data", str(comp), "--competition", "digit-recognizer", "--dataset", "alice/tiny-digits"]
    before = sorted(p.relative_to(root) for p in (root / "export/tiny-digits").rglob("*"))
    assert train.main(["--data", str(comp), "--epochs", "1", "--batch-size", "32", "--exp", "part", "--fold", "0"]) == 0
    capsys.readouterr()
    assert export.main(["--exp", "part", *export_args]) == 2
    assert "weights/part: missing fold weights fold1.pth, fold2.pth, fold3.pth, fold4.pth of 5" in capsys.readouterr().err
    shutil.copytree(root / "weights/a", root / "weights/busy")  # every fold's weights, but fold 2 being retrained:
    (root / "weights/busy/fold2.last.pth").write_bytes(b"snapshot")
    assert export.main(["--exp", "busy", *export_args]) == 2
    assert "weights/busy: fold2.last.pth left by an unfinished training" in capsys.readouterr().err
    (root / "weights/busy/fold2.last.pth").unlink()
    oof = pd.read_csv(root / "weights/busy/oof.csv")
    oof[oof["fold"] != 2].to_csv(root / "weights/busy/oof.csv", index=False)  # killed after its rows were removed
    assert export.main(["--exp", "busy", *export_args]) == 2
    assert "weights/busy: fold(s) 2 unfinished (no OOF rows yet): finish them with:" in capsys.readouterr().err
    assert export.main(["--exp", "a", "--with-full", *export_args]) == 2
    assert "weights/a/full.pth: missing; the export needs it (train it with --fold full)" in capsys.readouterr().err
    assert export.main(["--exp", "a", "--data", str(comp)]) == 2
    assert "--competition: the competition's slug" in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in (root / "export/tiny-digits").rglob("*")) == before  # kept as it was


def test_submit_a_pushed_kernel(kaggle_env, capsys):
    with FakeKaggle() as server:
        assert submit.main(["--kernel", "alice/tiny-digits-inference", "--version", "2", "--competition", "cassava",
                            "-m", "5 folds"]) == 0
    assert server.code_submissions == [{"fileName": "submission.csv", "competitionName": "cassava",
                                        "kernelOwner": "alice", "kernelSlug": "tiny-digits-inference",
                                        "kernelVersion": 2, "submissionDescription": "5 folds"}]
    assert "Your code submission was queued (alice/tiny-digits-inference version 2)" in capsys.readouterr().out
    with FakeKaggle(accept_rules=False):
        assert submit.main(["--kernel", "alice/x-inference", "--competition", "cassava", "-m", "m"]) == 2
    assert "code submission refused (403): accept the competition rules" in capsys.readouterr().err
