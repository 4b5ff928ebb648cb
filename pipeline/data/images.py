"""Image-file layouts (csv-images, class-folders) and the decode-once cache they train from.

Each image is decoded once, in parallel, to uint8 at the training size, into a memory-mapped .npy under
the cache folder, keyed by the files (path, size, mtime or CRC), the size and the channels; every fold,
experiment and inference run reuses it.
"""
from __future__ import annotations

import hashlib
import io
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.data.source import Source
from pipeline.errors import PipelineError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
TRAIN_DIRS = ("train_images", "train", "images", "train_img", "train_imgs", "img", "imgs")
TEST_DIRS = ("test_images", "test", "test_img", "test_imgs")
CACHE_VERSION = "1"


def is_image(rel: str) -> bool:
    return PurePosixPath(rel).suffix.lower() in IMAGE_EXTS


def image_folders(src: Source, root: str) -> dict[str, list[str]]:
    """Folders under `root` (relative, '/'-separated) holding image files, with their files."""
    out: dict[str, list[str]] = {}
    for f in src.files():
        if f.startswith(root) and is_image(f):
            out.setdefault(str(PurePosixPath(f[len(root):]).parent), []).append(f)
    return out


def pick_folder(folders: dict[str, list[str]], names: tuple[str, ...], word: str, given: str = "") -> str | None:
    """The image folder called `given`, else the first of `names`, else the largest whose path says `word`."""
    if given:
        return given.strip("/") if given.strip("/") in folders else None
    for name in names:
        if name in folders:
            return name
    named = [d for d in folders if word in d.lower()]
    return max(named, key=lambda d: len(folders[d])) if named else None


def file_index(files: list[str]) -> dict[str, str]:
    """Each file by its name and by its stem (ids come with or without the extension)."""
    index = {}
    for f in files:
        p = PurePosixPath(f)
        index.setdefault(p.stem, f)
        index[p.name] = f
    return index


def match_ids(ids: pd.Series, index: dict[str, str], where: str, folder: str) -> list[str]:
    """The file of every id; the first id without one is a one-line error naming it."""
    keys = ids.astype(str).to_numpy()
    files = [index.get(k) for k in keys]
    missing = [i for i, f in enumerate(files) if f is None]
    if missing:
        i = missing[0]
        raise PipelineError(f"{where}: row {i + 1}: no image {keys[i]!r} (with or without {'/'.join(IMAGE_EXTS[:3])}, "
                            f"...) in {folder}/ ({len(missing):,} ids have none)")
    return files


def guess_id_col(df: pd.DataFrame, index: dict[str, str]) -> str | None:
    """The column whose values name the image files (checked on its first 50 rows)."""
    for col in df.columns:
        head = df[col].head(50).astype(str)
        if head.map(lambda v: v in index).mean() >= 0.8:
            return str(col)
    return None


def class_folder_files(src: Source, root: str, train_dir: str) -> tuple[list[str], list[str]]:
    """Files of train/<class>/... and the class folder of each."""
    files, labels = [], []
    prefix = f"{root}{train_dir}/"
    for f in src.files():
        if f.startswith(prefix) and is_image(f) and "/" in f[len(prefix):]:
            files.append(f)
            labels.append(f[len(prefix):].split("/", 1)[0])
    return files, labels


GRAY_MODES = ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1", "F")


def detect_channels(src: Source, files: list[str], samples: int = 64) -> int:
    """1 when every sampled image (64, spread over the list) is grayscale, else 3 (RGB)."""
    from PIL import Image

    for rel in [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(samples, len(files))).astype(int))]:
        try:
            with Image.open(io.BytesIO(src.read_file(rel))) as im:
                if im.mode not in GRAY_MODES:
                    return 3
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise PipelineError(f"{src.label(rel)}: unreadable image ({str(e).splitlines()[0][:80]})") from None
    return 1


def to_8bit(im):
    """16-bit and float images scaled to 0..255 (PIL's convert would clip them to black and white)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if im.mode.startswith("I;16") else (float(a.min()), float(a.max()))
        return Image.fromarray(np.clip((a - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8), "L")
    return im


def decode(raw: bytes, side: int, channels: int, where: str) -> np.ndarray:
    """(channels, side, side) uint8 from an image file's bytes (resized, not cropped)."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.draft(mode, (side, side))  # JPEG: let libjpeg decode at a reduced scale when shrinking a lot
            im = to_8bit(im).convert(mode).resize((side, side), Image.BILINEAR, reducing_gap=3.0)
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise PipelineError(f"{where}: unreadable image ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def cache_key(src: Source, files: list[str], side: int, channels: int) -> str:
    h = hashlib.sha256(f"{CACHE_VERSION}|{src.path.resolve()}|{side}|{channels}".encode())
    for rel in files:
        h.update(f"|{rel}:{src.stat(rel)}".encode())
    return h.hexdigest()[:20]


def cached_images(src: Source, files: list[str], side: int, channels: int, cache_dir: str, what: str) -> np.ndarray:
    """(N, channels, side, side) uint8, memory-mapped from the cache; decoded (in parallel) on first use."""
    path = Path(cache_dir) / "images" / f"{what}_{side}px_{cache_key(src, files, side, channels)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, mmap_mode="c")  # copy-on-write: writable for torch, the file never changes
            if cached.shape == (len(files), channels, side, side) and cached.dtype == np.uint8:
                return cached
        except (ValueError, OSError, EOFError):
            pass  # damaged or empty: decode again
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")  # ranks on several nodes
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), channels, side, side))
    try:
        def work(i: int) -> None:
            out[i] = decode(src.read_file(files[i]), side, channels, src.label(files[i]))

        with ThreadPoolExecutor(max_workers=min(32, 2 * (os.cpu_count() or 1))) as pool:  # PIL decodes without the GIL
            list(tqdm(pool.map(work, range(len(files))), total=len(files), desc=f"decoding {what} images once",
                      unit="img", disable=None, leave=False))
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"cached {len(files):,} {what} images at {side}x{side} in {path}")
    return np.load(path, mmap_mode="c")


def files_hash(src: Source, files: list[str], labels: list[str]) -> str:
    """The identity of a class-folders train set: its files, their sizes and their classes."""
    h = hashlib.sha256()
    for rel, label in zip(files, labels):
        h.update(f"{rel}|{label}|{src.stat(rel)[0]}\n".encode())
    return h.hexdigest()[:16]


def empty_class_folders(src: Source, class_root: str, labels: list[str]) -> list[str]:
    """Sub-folders of the class root that hold no image file (empty, or other files only): no class comes from them."""
    prefix = f"{class_root}/"
    children = {f[len(prefix):].split("/", 1)[0] for f in src.folders() if f.startswith(prefix)}
    return sorted(children - set(labels))
