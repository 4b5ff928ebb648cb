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


# Cases from a hostile review of the image layouts

def tiny_csv_comp(root: Path, digits, ids, labels, rgb=True, sample_cols=None, test_ids=None, folder="train_images",
                  test_folder="test_images") -> Path:
    images, target, train_idx, test_idx = digits
    for i, ident in zip(train_idx, ids):
        save(root / folder / f"{ident}.png", images[i], rgb)
    test_ids = test_ids or [f"t{i:03d}" for i in range(len(test_idx))]
    for i, ident in zip(test_idx, test_ids):
        save(root / test_folder / f"{ident}.png", images[i], rgb)
    pd.DataFrame({"id": ids, "label": labels}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": test_ids, **(sample_cols or {"label": 0})}).to_csv(root / "sample_submission.csv", index=False)
    return root


def test_zero_padded_ids_are_kept_as_written(tmp_path, workdir, digits, capsys):
    _, target, train_idx, test_idx = digits
    comp = tiny_csv_comp(tmp_path / "c", digits, [f"{i:03d}" for i in range(len(train_idx))],
                         target[train_idx], test_ids=[f"{i:05d}" for i in range(len(test_idx))])
    desc, sub = run_all(str(comp), capsys)
    assert desc["id_col"] == "id"
    raw = (Path("submissions") / "digit_cnn.csv").read_text().splitlines()
    assert raw[1].startswith("00000,") and raw[2].startswith("00001,")


def test_integer_labels_not_from_zero_and_float_labels(tmp_path, workdir, digits, capsys, monkeypatch):
    _, target, train_idx, _ = digits
    binary = tiny_csv_comp(tmp_path / "b", digits, [f"i{i}" for i in range(len(train_idx))],
                           1 + (target[train_idx] % 2), sample_cols={"target": 0.5})
    assert make_folds.main(["--data", str(binary), "--metric", "log_loss"]) == 0
    assert "multiclass, 2 classes (1, 2), metric log_loss" in capsys.readouterr().out
    assert train.main(["--data", str(binary), *FAST]) == 0 and infer.main(["--data", str(binary)]) == 0
    sub = pd.read_csv("submissions/digit_cnn.csv")
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 2  # P(class "2"), not hard labels
    floats = tiny_csv_comp(tmp_path / "f", digits, [f"i{i}" for i in range(len(train_idx))],
                           (target[train_idx] % 3).astype(float))
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "second")
    desc, sub = run_all(str(floats), capsys)  # written as floats (0.0, 1.0, 2.0): a quantity, not three classes
    assert desc["task"]["kind"] == "regression" and desc["task"]["metric"] == "rmse"
    assert sub["label"].nunique() > 3  # predicted values, not class names
    ids = [f"i{i}" for i in range(len(train_idx))]
    for sample_value, found in ((4.5, "regression on label, metric rmse"), (0.5, "multiclass, 5 classes"),
                                (3, "multiclass, 5 classes")):  # a value, a probability, a class
        rating = tiny_csv_comp(tmp_path / f"r{sample_value}", digits, ids, 1 + target[train_idx] % 5,
                               sample_cols={"label": sample_value})
        assert make_folds.main(["--data", str(rating), "--folds-path", f"r{sample_value}.csv"]) == 0
        assert found in capsys.readouterr().out, sample_value


def test_class_names_with_spaces_are_classes(tmp_path, workdir, digits, capsys):
    _, target, train_idx, _ = digits
    names = ["big cat", "big dog", "small cat", "small dog", "big bird"]
    comp = tiny_csv_comp(tmp_path / "c", digits, [f"i{i}" for i in range(len(train_idx))],
                         [names[t % 5] for t in target[train_idx]], sample_cols={"label": "big cat"})
    desc, sub = run_all(str(comp), capsys)
    assert desc["task"]["kind"] == "multiclass" and desc["task"]["classes"] == sorted(names)
    assert set(sub["label"]) <= set(names)


def test_train_and_test_images_in_one_folder(tmp_path, workdir, digits, capsys):
    """Plant pathology 2020: images/Train_0.jpg and images/Test_0.jpg side by side."""
    _, target, train_idx, test_idx = digits
    comp = tiny_csv_comp(tmp_path / "pp", digits, [f"Train_{i}" for i in range(len(train_idx))], target[train_idx],
                         test_ids=[f"Test_{i}" for i in range(len(test_idx))], folder="images", test_folder="images")
    desc, sub = run_all(str(comp), capsys)
    assert desc["image_dir"] == "images" and desc["test_dir"] == "images"
    same_shape(sub, comp / "sample_submission.csv")


def test_test_side_problems_are_found_by_make_folds(tmp_path, workdir, digits, capsys):
    _, target, train_idx, _ = digits
    comp = tiny_csv_comp(tmp_path / "c", digits, [f"i{i}" for i in range(len(train_idx))], target[train_idx])
    pd.DataFrame({"id": ["nope1", "nope2"], "label": 0}).to_csv(comp / "sample_submission.csv", index=False)
    assert make_folds.main(["--data", str(comp)]) == 2
    assert "sample_submission.csv: its ids (nope1, nope2, ...) name no image" in capsys.readouterr().err
    pd.DataFrame({"id": ["t000"], "cat": 0.1, "dog": 0.9}).to_csv(comp / "sample_submission.csv", index=False)
    assert make_folds.main(["--data", str(comp)]) == 2
    assert "columns cat, dog fit neither id + one label column nor id + one column per class" in capsys.readouterr().err


def test_out_inside_the_competition_data_is_refused(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "names")
    run_all(str(comp), capsys)
    before = (comp / "sample_submission.csv").read_bytes()
    assert infer.main(["--data", str(comp), "--out", str(comp / "sample_submission.csv")]) == 2
    assert "is inside the competition data" in capsys.readouterr().err
    assert (comp / "sample_submission.csv").read_bytes() == before


def test_sixteen_bit_and_mixed_colour_images(tmp_path, digits):
    from pipeline.data import images as img

    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0..65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # mode I;16
    decoded = img.decode(path.read_bytes(), 32, 1, str(path))
    assert len(np.unique(decoded)) > 100  # a ramp, not black and white
    images, target, train_idx, test_idx = digits
    ids = [f"i{i}" for i in range(len(train_idx))]
    comp = tiny_csv_comp(tmp_path / "mix", digits, ids, target[train_idx], rgb=False)
    save(comp / "train_images" / f"{ids[-1]}.png", images[train_idx[-1]], rgb=True)  # one colour image, at the end
    desc, _ = data.describe(data.Source(comp))
    assert desc.channels == 3


def test_odd_files_are_one_line(tmp_path, workdir, digits, capsys):
    _, target, train_idx, _ = digits
    ids = [f"i{i}" for i in range(len(train_idx))]
    comp = tiny_csv_comp(tmp_path / "c", digits, ids, target[train_idx])
    bomb = comp / "train_images" / f"{ids[0]}.png"
    with bomb.open("r+b") as f:  # a PNG header claiming 100000 x 100000 pixels
        f.seek(16)
        f.write((100_000).to_bytes(4, "big") * 2)
    assert make_folds.main(["--data", str(comp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{ids[0]}.png: unreadable image" in err[0]
    dup = tiny_csv_comp(tmp_path / "d", digits, ids[:-1] + [ids[0]], target[train_idx])
    assert make_folds.main(["--data", str(dup), "--folds-path", "d.csv"]) == 2
    assert f"id '{ids[0]}' appears in more than one row" in capsys.readouterr().err
    rare = tiny_csv_comp(tmp_path / "r", digits, ids, ["solo"] + [NAMES[t] for t in target[train_idx][1:]],
                         sample_cols={"label": "zero"})
    assert make_folds.main(["--data", str(rare), "--folds-path", "r.csv"]) == 2
    assert "class 'solo' has 1" in capsys.readouterr().err


def test_empty_cache_file_is_decoded_again(tmp_path, workdir, digits, capsys):
    comp = csv_images(tmp_path / "comp", digits, "names")
    run_all(str(comp), capsys)
    for cached in Path(".cache/images").glob("test_*.npy"):
        cached.write_bytes(b"")
    assert infer.main(["--data", str(comp)]) == 0
    assert "cached 20 test images" in capsys.readouterr().out


def test_utf8_member_names_without_the_zip_flag(tmp_path, workdir, digits, capsys):
    """Info-ZIP writes UTF-8 names without flag bit 11; read as cp437 they would not match the CSV's ids."""
    _, target, train_idx, test_idx = digits
    comp = tiny_csv_comp(tmp_path / "c", digits, [f"ü{i}" for i in range(len(train_idx))], target[train_idx],
                         test_ids=[f"é{i}" for i in range(len(test_idx))])
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(comp.rglob("*")):
            if f.is_file():
                zf.write(f, str(f.relative_to(comp)))
    raw = bytearray(archive.read_bytes())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # clear the UTF-8 flag in every header
        start = 0
        while (pos := raw.find(sig, start)) >= 0:
            raw[pos + at] &= 0xFF
            raw[pos + at + 1] &= ~0x08 & 0xFF
            start = pos + 4
    archive.write_bytes(bytes(raw))
    desc, sub = run_all(str(archive), capsys)
    assert sub["id"].tolist() == [f"é{i}" for i in range(len(test_idx))]
