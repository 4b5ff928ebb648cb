"""Every layout and task kind end to end, with no layout flags: make_folds -> train --fold all -> infer --tta ->
submit --dry-run, on tiny competitions made of real images (scikit-learn's digits as PNG/JPEG, RGB and gray)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import data, infer, make_folds, submit, train
from pipeline.data.sample import NAMES, _digits_28

pytestmark = pytest.mark.slow
FAST = ["--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def digits():
    """(N, 28, 28) uint8 digit images and their digits: 100 train (10 per digit), 20 test."""
    images, target, train_idx, test_idx = _digits_28()
    train_idx = np.concatenate([train_idx[target[train_idx] == d][:10] for d in range(10)])
    return images, target, train_idx, test_idx[:20]


def save(path: Path, image: np.ndarray, rgb: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.stack([image, image // 2, 255 - image], -1) if rgb else image  # colour that carries the digit
    Image.fromarray(pixels.astype(np.uint8), "RGB" if rgb else "L").save(path)


def attributes(d: int) -> dict[str, int]:
    return {"even": int(d % 2 == 0), "odd": int(d % 2 == 1), "big": int(d >= 5), "round": int(d in (0, 6, 8, 9))}


def csv_images(root: Path, digits, kind: str, rgb: bool = True, ext: str = ".png", id_with_ext: bool = False,
               train_name: str = "train.csv", folders=("train_images", "test_images")) -> Path:
    """A csv-images competition whose target is `kind`: names, probs (one column per class), onehot, spaced, value."""
    images, target, train_idx, test_idx = digits
    ident = lambda i: f"im{i:04d}{ext if id_with_ext else ''}"  # noqa: E731
    for folder, idx in zip(folders, (train_idx, test_idx)):
        for i in idx:
            save(root / folder / f"im{i:04d}{ext}", images[i], rgb)
    ids = [ident(i) for i in train_idx]
    test_ids = [ident(i) for i in test_idx[::-1]]  # the sample's order differs from the files' order
    if kind in ("names", "probs"):
        train = pd.DataFrame({"id": ids, "breed": [NAMES[t] for t in target[train_idx]]})
        sample = pd.DataFrame({"id": test_ids, "breed": "zero"}) if kind == "names" else \
            pd.DataFrame({"id": test_ids, **{n: 0.1 for n in sorted(NAMES)}})
    elif kind == "onehot":
        train = pd.DataFrame({"image_id": ids, **pd.DataFrame([attributes(t) for t in target[train_idx]])})
        sample = pd.DataFrame({"image_id": test_ids, "even": 0.5, "odd": 0.5, "big": 0.5, "round": 0.5})
    elif kind == "spaced":
        labels = [" ".join(k for k, v in attributes(t).items() if v) for t in target[train_idx]]
        train = pd.DataFrame({"image": ids, "labels": labels})
        sample = pd.DataFrame({"image": test_ids, "labels": "even"})
    else:  # a 0..100 score, like pawpularity
        train = pd.DataFrame({"Id": ids, "Pawpularity": [10 * t + (i % 7) for i, t in enumerate(target[train_idx])]})
        sample = pd.DataFrame({"Id": test_ids, "Pawpularity": 50.0})
    train.to_csv(root / train_name, index=False)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def class_folders(root: Path, digits) -> Path:
    images, target, train_idx, test_idx = digits
    for i in train_idx:
        save(root / "train" / NAMES[target[i]] / f"{i}.jpg", images[i], rgb=False)
    for i in test_idx:
        save(root / "test" / f"{i}.jpg", images[i], rgb=False)
    pd.DataFrame({"id": [f"{i}.jpg" for i in test_idx], "label": "zero"}).to_csv(root / "sample_submission.csv", index=False)
    return root


def run_all(comp: str, capsys) -> tuple[dict, pd.DataFrame]:
    """The README's workflow; returns the saved description and the submission."""
    assert make_folds.main(["--data", comp]) == 0
    found = capsys.readouterr().out.splitlines()[0]
    assert train.main(["--data", comp, *FAST]) == 0
    assert infer.main(["--data", comp, "--tta"]) == 0
    assert submit.main(["submissions/digit_cnn.csv", "--data", comp, "--dry-run"]) == 0
    description = json.loads(Path("folds/folds.json").read_text())["data"]
    description["printed"] = found
    return description, pd.read_csv("submissions/digit_cnn.csv")


def same_shape(sub: pd.DataFrame, sample_path: Path) -> pd.DataFrame:
    sample = pd.read_csv(sample_path)
    assert list(sub.columns) == list(sample.columns) and len(sub) == len(sample)
    assert sub.iloc[:, 0].astype(str).tolist() == sample.iloc[:, 0].astype(str).tolist()  # the sample's id order
    return sample


def test_csv_images_rgb_png_class_names(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "names")
    desc, sub = run_all(str(comp), capsys)
    assert desc["printed"].startswith("csv-images: id id, target breed, multiclass, 10 classes") and "RGB" in desc["printed"]
    assert (desc["layout"], desc["channels"], desc["image_dir"], desc["test_dir"]) == ("csv-images", 3, "train_images", "test_images")
    same_shape(sub, comp / "sample_submission.csv")
    assert set(sub["breed"]) <= set(NAMES)
    cv = json.loads(Path("weights/digit_cnn/cv.json").read_text())
    assert cv["metric"] == "accuracy" and cv["complete"]
    src = data.resolve(str(comp))  # test images come in the sample's id order, whatever the files' order
    images, sample = data.read_test(src, data.Description.from_dict(desc, "folds.json"), 28, ".cache")
    for row, ident in enumerate(sample["id"]):
        with Image.open(comp / "test_images" / f"{ident}.png") as im:
            assert (images[row].transpose(1, 2, 0) == np.asarray(im.convert("RGB"))).all()


def test_csv_images_gray_jpeg_ids_with_extension_in_a_zip(tmp_path, workdir, digits, capsys):
    folder = csv_images(tmp_path / "comp", digits, "names", rgb=False, ext=".jpg", id_with_ext=True)
    archive = tmp_path / "comp.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file():
                zf.write(f, "nested/" + str(f.relative_to(folder)))
    desc, sub = run_all(str(archive), capsys)
    assert desc["channels"] == 1 and desc["root"] == "nested/" and "gray" in desc["printed"]
    same_shape(sub, folder / "sample_submission.csv")


def test_dog_breeds_style_probabilities(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "probs", train_name="labels.csv", folders=("train", "test"))
    desc, sub = run_all(str(comp), capsys)
    assert desc["task"]["kind"] == "multiclass" and desc["train_file"] == "labels.csv"
    same_shape(sub, comp / "sample_submission.csv")
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1, atol=1e-4)  # a probability per breed, summing to one


def test_multilabel_onehot_columns(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "onehot")
    desc, sub = run_all(str(comp), capsys)
    assert desc["task"]["kind"] == "multilabel" and desc["task"]["metric"] == "roc_auc"
    assert desc["task"]["classes"] == ["even", "odd", "big", "round"]
    same_shape(sub, comp / "sample_submission.csv")
    assert ((sub.iloc[:, 1:] >= 0) & (sub.iloc[:, 1:] <= 1)).all().all()
    folds = pd.read_csv("folds/folds.csv")
    assert set(folds["fold"]) == set(range(5)) and "label" not in folds.columns  # multilabel-stratified


def test_multilabel_space_separated(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "spaced")
    desc, sub = run_all(str(comp), capsys)
    assert desc["task"]["kind"] == "multilabel" and sorted(desc["task"]["classes"]) == ["big", "even", "odd", "round"]
    same_shape(sub, comp / "sample_submission.csv")
    assert all(set(v.split()) <= {"big", "even", "odd", "round"} and v for v in sub["labels"])


def test_regression_pawpularity_style(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "value")
    desc, sub = run_all(str(comp), capsys)
    assert desc["task"]["kind"] == "regression" and desc["task"]["metric"] == "rmse"
    assert "label smoothing" not in desc["printed"]
    same_shape(sub, comp / "sample_submission.csv")
    assert np.isfinite(sub["Pawpularity"]).all() and sub["Pawpularity"].dtype == np.float64
    cv = json.loads(Path("weights/digit_cnn/cv.json").read_text())
    assert cv["metric"] == "rmse" and cv["higher_is_better"] is False


def test_class_folders(tmp_path, workdir, digits, capsys):
    comp = class_folders(tmp_path / "food", digits)
    desc, sub = run_all(str(comp), capsys)
    assert desc["layout"] == "class-folders" and desc["task"]["classes"] == sorted(NAMES)
    same_shape(sub, comp / "sample_submission.csv")


def test_pixels_with_ids_and_other_sizes(tmp_path, workdir, sample_dir, capsys):
    """Kannada-MNIST's test.csv has an id column; FER-style images are 48x48 with 7 classes."""
    train_df = pd.read_csv(sample_dir / "train.csv").groupby("label").head(12).reset_index(drop=True)
    side = 48
    big = np.kron(train_df.drop(columns="label").to_numpy().reshape(-1, 28, 28), np.ones((2, 2)))[:, 4:52, 4:52]
    fer = pd.DataFrame(big.reshape(len(big), -1).astype(int), columns=[f"pixel{i}" for i in range(side * side)])
    fer.insert(0, "label", train_df["label"] % 7)
    comp = tmp_path / "fer"
    comp.mkdir()
    fer.to_csv(comp / "train.csv", index=False)
    test = fer.drop(columns="label").head(15)
    test.insert(0, "id", np.arange(15) * 3)
    test.to_csv(comp / "test.csv", index=False)
    pd.DataFrame({"id": (np.arange(15) * 3)[::-1], "label": 0}).to_csv(comp / "sample_submission.csv", index=False)
    desc, sub = run_all(str(comp), capsys)
    assert desc["side"] == 48 and desc["task"]["classes"] == [str(i) for i in range(7)]
    same_shape(sub, comp / "sample_submission.csv")


def test_missing_and_unreadable_images(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "names")
    victim = sorted((comp / "train_images").iterdir())[3]
    victim.unlink()
    assert make_folds.main(["--data", str(comp)]) == 2
    assert f"no image {victim.stem!r}" in capsys.readouterr().err
    victim.write_bytes(b"not a png at all")
    assert make_folds.main(["--data", str(comp)]) == 0
    capsys.readouterr()
    assert train.main(["--data", str(comp), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{victim}: unreadable image" in err[0]
    assert not list(Path("weights/digit_cnn").glob("fold*.pth"))  # found before any training


def test_image_cache_is_reused(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "names")
    assert make_folds.main(["--data", str(comp)]) == 0
    assert train.main(["--data", str(comp), *FAST, "--fold", "0", "--exp", "a"]) == 0
    assert "cached 100 train images" in capsys.readouterr().out
    cached = sorted(Path(".cache/images").glob("train_*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert train.main(["--data", str(comp), *FAST, "--fold", "0", "--exp", "b"]) == 0
    assert "cached" not in capsys.readouterr().out and cached[0].stat().st_mtime_ns == stamp
    assert train.main(["--data", str(comp), *FAST, "--fold", "0", "--exp", "c", "--img-size", "32"]) == 0
    assert len(list(Path(".cache/images").glob("train_*.npy"))) == 2  # another size: another cache


def test_overrides_of_each_guess(tmp_path, workdir, digits, capsys):
    """--target-col among several candidates, --task regression on small integers, --metric, --id-col, --image-dir."""
    images, target, train_idx, test_idx = digits
    comp = tmp_path / "comp"
    for i in train_idx:
        save(comp / "pics" / f"{i}.png", images[i], rgb=False)
    for i in test_idx:
        save(comp / "test_images" / f"{i}.png", images[i], rgb=False)
    pd.DataFrame({"file": [f"{i}.png" for i in train_idx], "name": [f"n{i}" for i in train_idx],
                  "digit": target[train_idx], "noise": np.arange(len(train_idx)) % 3}).to_csv(comp / "train.csv", index=False)
    pd.DataFrame({"file": [f"{i}.png" for i in test_idx], "pred": 0.0}).to_csv(comp / "sample_submission.csv", index=False)
    assert make_folds.main(["--data", str(comp)]) == 2
    assert "several candidate target columns" in capsys.readouterr().err
    assert make_folds.main(["--data", str(comp), "--target-col", "digit", "--metric", "macro_f1"]) == 0
    desc = json.loads(Path("folds/folds.json").read_text())["data"]
    assert (desc["id_col"], desc["image_dir"], desc["task"]["kind"], desc["task"]["metric"]) == \
        ("file", "pics", "multiclass", "macro_f1")
    assert make_folds.main(["--data", str(comp), "--target-col", "digit", "--task", "regression", "--id-col", "file",
                            "--image-dir", "pics", "--overwrite"]) == 0
    desc = json.loads(Path("folds/folds.json").read_text())["data"]
    assert desc["task"]["kind"] == "regression" and desc["task"]["metric"] == "rmse"
    assert make_folds.main(["--data", str(comp), "--target-col", "digit", "--metric", "rmse", "--overwrite"]) == 2
    assert "--metric: rmse does not apply to a multiclass task" in capsys.readouterr().err


def test_albumentations_route_and_bad_files(tmp_path, workdir, digits, capsys):
    import albumentations as A

    comp = csv_images(tmp_path / "comp", digits, "names")
    A.save(A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-10, 10), p=1.0)]), str(tmp_path / "aug.json"))
    assert make_folds.main(["--data", str(comp)]) == 0
    assert train.main(["--data", str(comp), *FAST, "--fold", "0", "--aug", str(tmp_path / "aug.json")]) == 0
    config = json.loads(Path("weights/digit_cnn/config.json").read_text())
    assert config["data_spec"]["augment"] == str(tmp_path / "aug.json")
    (tmp_path / "bad.json").write_text('{"transform": {"__class_fullname__": "NoSuchTransform"}}')
    capsys.readouterr()
    assert train.main(["--data", str(comp), *FAST, "--exp", "b", "--aug", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json: not an albumentations pipeline" in err[0]
    assert not Path("weights/b").exists()


def test_bundled_sample_images(workdir, capsys):
    assert make_folds.main(["--data", "sample-images"]) == 0
    assert capsys.readouterr().out.startswith("csv-images: id image_id, target label, multiclass, 10 classes")
    assert len(list(Path("data/sample-digit-images/train_images").glob("*.png"))) == 1437


def test_pretrained_statistics_follow_the_backbone():
    from pipeline.models import pretrained_stats

    mean, std = pretrained_stats("resnet18", 3)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    gray_mean, _ = pretrained_stats("resnet18", 1)
    assert gray_mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert pretrained_stats("digit_cnn", 1) is None
