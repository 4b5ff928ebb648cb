"""The bundled offline samples: scikit-learn's load_digits written out as a competition.

    --data sample          pixels layout (Digit Recognizer's format) in data/sample-digits/
    --data sample-images   csv-images layout: PNG files, class names, in data/sample-digit-images/
    --data sample-table    table layout (HW1's shape): load_diabetes (442 patients) in data/sample-diabetes/
20% is held out as the test set; its labels are in solution.csv, which Kaggle would not give you.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.pixels import LABEL, PIXELS

SAMPLE_DIR = "data/sample-digits"
SAMPLE_IMAGES_DIR = "data/sample-digit-images"
SAMPLE_TABLE_DIR = "data/sample-diabetes"
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits_28():
    """(1797, 28, 28) uint8 digits (8x8 upscaled to 20x20, centred as in MNIST), labels, and the split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)  # (1797, 1, 8, 8)
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    big = F.pad(big, (4, 4, 4, 4)).clamp(0, 255).round().to(torch.uint8)[:, 0].numpy()
    train_idx, test_idx = train_test_split(np.arange(len(big)), test_size=0.2, random_state=0, stratify=digits.target)
    return big, digits.target, train_idx, test_idx


def _complete(root: Path, names: tuple[str, ...]) -> bool:
    return all((root / f).is_file() for f in names)


def write_sample(root: str = SAMPLE_DIR) -> Path:
    """The pixels layout: train.csv (label, pixel0..783), test.csv, sample_submission.csv (ImageId from 1)."""
    from pipeline.io import write_csv

    root_path = Path(root)
    if _complete(root_path, ("train.csv", "test.csv", "sample_submission.csv", "solution.csv")):
        return root_path
    big, target, train_idx, test_idx = _digits_28()
    flat = big.reshape(len(big), -1)
    frame = lambda idx: pd.DataFrame(flat[idx], columns=PIXELS)  # noqa: E731
    train = frame(train_idx)
    train.insert(0, LABEL, target[train_idx])
    ids = np.arange(1, len(test_idx) + 1)
    write_csv(train, root_path / "train.csv")
    write_csv(frame(test_idx), root_path / "test.csv")
    write_csv(pd.DataFrame({"ImageId": ids, "Label": 0}), root_path / "sample_submission.csv")
    write_csv(pd.DataFrame({"ImageId": ids, "Label": target[test_idx]}), root_path / "solution.csv")
    return root_path


def write_sample_images(root: str = SAMPLE_IMAGES_DIR) -> Path:
    """The csv-images layout: train.csv (image_id, label as a name), train_images/*.png (RGB), test_images/*.png."""
    from PIL import Image

    from pipeline.io import atomic_path, write_csv

    root_path = Path(root)
    if _complete(root_path, ("train.csv", "sample_submission.csv", "solution.csv")):
        return root_path
    big, target, train_idx, test_idx = _digits_28()
    rng = np.random.default_rng(0)
    for folder, idx in (("train_images", train_idx), ("test_images", test_idx)):
        for i in idx:
            tint = rng.uniform(0.4, 1.0, size=3)  # a colour per image: channels carry information, as in photos
            rgb = (big[i][..., None] * tint).round().astype(np.uint8)
            with atomic_path(root_path / folder / f"img_{i:04d}.png") as tmp:
                Image.fromarray(rgb, "RGB").save(tmp, format="PNG")
    name = lambda idx: [f"img_{i:04d}" for i in idx]  # noqa: E731  ids without the extension, as cassava's have one
    write_csv(pd.DataFrame({"image_id": name(train_idx), "label": [NAMES[t] for t in target[train_idx]]}),
              root_path / "train.csv")
    write_csv(pd.DataFrame({"image_id": name(test_idx), "label": NAMES[0]}), root_path / "sample_submission.csv")
    write_csv(pd.DataFrame({"image_id": name(test_idx), "label": [NAMES[t] for t in target[test_idx]]}),
              root_path / "solution.csv")
    return root_path


def write_sample_table(root: str = SAMPLE_TABLE_DIR) -> Path:
    """The table layout as HW1 ships it: diabetes_train.csv (id, 10 features, target: disease progression after a
    year), diabetes_test.csv (id, features), sample_submission.csv (id,target); scikit-learn's real 442 patients."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    from pipeline.io import write_csv

    root_path = Path(root)
    names = ("diabetes_train.csv", "diabetes_test.csv", "sample_submission.csv", "solution.csv")
    if _complete(root_path, names):
        return root_path
    frame = load_diabetes(as_frame=True, scaled=False).frame  # age, sex, bmi, bp, s1..s6, target
    frame.insert(0, "id", np.arange(len(frame)))
    train, test = train_test_split(frame, test_size=0.2, random_state=0)
    write_csv(train.reset_index(drop=True), root_path / names[0])
    write_csv(test.drop(columns="target").reset_index(drop=True), root_path / names[1])
    write_csv(pd.DataFrame({"id": test["id"].to_numpy(), "target": 0.0}), root_path / names[2])
    write_csv(test[["id", "target"]].reset_index(drop=True), root_path / names[3])
    return root_path
