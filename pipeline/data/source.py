"""Where competition files come from: a folder, or the zip `kaggle competitions download` leaves (read safely)."""
from __future__ import annotations

import lzma
import os
import posixpath
import sys
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError

DOWNLOAD = "kaggle competitions download -c digit-recognizer -p data/  (or your competition's slug)"
MAX_MEMBER_BYTES = 4 << 30  # one file read into memory: Digit Recognizer's train.csv is 77 MB
MAX_RATIO = 100  # Kaggle's CSV zips expand about 9x; deflate bombs reach 1000x
RATIO_FROM_BYTES = 64 << 20  # small members may compress far better than that without harm


@dataclass(frozen=True)
class Source:
    """A competition folder or zip. Paths inside are relative and '/'-separated, whatever the source."""
    path: Path
    _zip: threading.local = field(default_factory=threading.local, compare=False, repr=False)

    @property
    def is_zip(self) -> bool:
        return self.path.suffix == ".zip"

    def label(self, name: str) -> str:
        return f"{self.path}:{name}" if self.is_zip else str(self.path / name)

    def files(self) -> list[str]:
        """Every file, relative to the source, sorted (a zip's members, or the folder's tree)."""
        cached = getattr(self._zip, "files", None)
        if cached is None:
            if self.is_zip:
                cached = sorted(m for m in self._zipfile().namelist() if not m.endswith("/"))  # duplicates kept
            else:
                cached = sorted(str(PurePosixPath(Path(root).relative_to(self.path), f))
                                for root, _, names in os.walk(self.path, followlinks=False) for f in names)
            self._zip.files = cached
        return cached

    def folders(self) -> set[str]:
        """Every folder, relative and '/'-separated, empty ones included (files() cannot show those)."""
        if self.is_zip:
            names = self._zipfile().namelist()
            found = {m.rstrip("/") for m in names if m.endswith("/")}
            found |= {str(p) for f in self.files() for p in PurePosixPath(f).parents if str(p) != "."}
            return found
        return {str(PurePosixPath(Path(root).relative_to(self.path), d))
                for root, dirs, _ in os.walk(self.path, followlinks=False) for d in dirs}

    def find(self, name: str) -> str | None:
        """The shallowest file called `name` (a Kaggle zip may nest everything one folder down)."""
        hits = [f for f in self.files() if PurePosixPath(f).name == name]
        if not hits:
            return None
        depth = min(f.count("/") for f in hits)
        top = [f for f in hits if f.count("/") == depth]
        if len(top) > 1:  # two train.csv side by side (or a member stored twice): which one is meant is unknowable
            raise PipelineError(f"{self.path}: {len(top)} files called {name} ({', '.join(top[:3])}); "
                                "keep one, or pass the folder that holds the right one to --data")
        return top[0]

    def read_bytes(self, name: str) -> bytes:
        """The CSV called `name`, found by its base name."""
        rel = self.find(name)
        if rel is None:
            where = self.label(name)
            if not self.is_zip and (self.path / name).is_dir():
                raise PipelineError(f"{where}: is a directory, expected a CSV file")
            found = ", ".join(self.files()[:5]) or "nothing"
            raise PipelineError(f"{where}: not found (the competition {'zip' if self.is_zip else 'folder'} holds "
                                f"{found}{', ...' if len(self.files()) > 5 else ''})")
        return self.read_file(rel)

    def read_file(self, rel: str) -> bytes:
        """One file by its relative path, within the size limits; a path leading outside the source is refused."""
        if not inside(rel):
            raise PipelineError(f"{self.label(rel)}: outside the competition data {self.path}; every file it names "
                                "must be inside --data")
        if self.is_zip:
            return read_zip_member(self._zipfile(), self.path, rel)
        file = self.path / rel
        if file.stat().st_size > MAX_MEMBER_BYTES:
            raise PipelineError(f"{file}: {file.stat().st_size:,} bytes, over the {MAX_MEMBER_BYTES:,} one file may have here")
        return file.read_bytes()

    def stat(self, rel: str) -> tuple:
        """What identifies a file's content cheaply: size and mtime (folder) or size and CRC (zip)."""
        if self.is_zip:
            info = self._zipfile().getinfo(rel)
            return info.file_size, info.CRC
        st = (self.path / rel).stat()
        return st.st_size, st.st_mtime_ns

    def _zipfile(self) -> zipfile.ZipFile:
        """One open ZipFile per thread (parallel image decoding reads members concurrently)."""
        zf = getattr(self._zip, "handle", None)
        if zf is None:
            try:
                zf = _open_zip(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                if isinstance(e, OSError) and not isinstance(e, zipfile.BadZipFile) and self.path.is_file():
                    raise
                raise PipelineError(f"{self.path}: not a readable zip file") from None
            self._zip.handle = zf
        return zf


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Member names as UTF-8 (what Info-ZIP and Kaggle write, flagged or not); cp437 when they are not UTF-8."""
    try:
        return zipfile.ZipFile(path, metadata_encoding="utf-8")
    except UnicodeDecodeError:
        return zipfile.ZipFile(path)


def inside(rel: str) -> bool:
    """Does a relative path stay inside the folder it is relative to (no leading '/', no '..' above it)?

    >>> inside("feat/a.pt"), inside("a/../b.pt"), inside("../secret.pt"), inside("/etc/shadow"), inside("a/../../b")
    (True, True, False, False, False)
    """
    norm = posixpath.normpath(rel)
    return not rel.startswith("/") and norm != ".." and not norm.startswith("../") and "\x00" not in rel


def read_zip_member(zf: zipfile.ZipFile, path: Path, rel: str) -> bytes:
    """A member, after checking its size, ratio, encryption and method; the bytes read never exceed its header."""
    info = zf.getinfo(rel)
    where = f"{path}:{rel}"
    if info.flag_bits & 0x1:
        raise PipelineError(f"{where}: encrypted; unzip it with its password and pass the folder to --data")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        raise PipelineError(f"{where}: compression method {info.compress_type} is not supported; "
                            "unzip it with another tool and pass the folder to --data")
    ratio = info.file_size / max(1, info.compress_size)
    if info.file_size > MAX_MEMBER_BYTES or (info.file_size > RATIO_FROM_BYTES and ratio > MAX_RATIO):
        raise PipelineError(f"{where}: expands to {info.file_size:,} bytes ({ratio:,.0f}x its compressed size); "
                            f"refused (limits: {MAX_MEMBER_BYTES:,} bytes, {MAX_RATIO}x)")
    try:
        with zf.open(info) as member:
            raw = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError, OSError) as e:
        # corrupt deflate, LZMA or BZIP2 data (bz2 reports it as an OSError)
        raise PipelineError(f"{path}: not a readable zip file: member {rel} is corrupt "
                            f"({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})") from None
    if len(raw) > info.file_size:
        raise PipelineError(f"{where}: holds more bytes than its header declares; refused")
    return raw


def resolve(data: str, default: str, samples: dict, recognised=lambda src: False) -> Source:
    """--data as given (`samples`: name -> the function writing that bundled offline sample, e.g. 'sample',
    'sample-images', 'sample-table'); the default path falls back to 'sample' with a one-line notice. A folder
    without train.csv beside a zip of the same name reads the zip, unless `recognised(folder)` (some layout's
    files are in the folder itself: MNIST's IDX files, numpy arrays)."""
    if data in samples:
        return Source(samples[data]())
    write_sample = samples["sample"]
    path = Path(data)
    if path.exists():
        if path.is_dir() and not any(path.iterdir()) and path.with_suffix(".zip").is_file():
            return Source(path.with_suffix(".zip"))
        if path.is_dir() and not (path / "train.csv").exists() and path.with_suffix(".zip").is_file() \
                and not recognised(Source(path)):
            return Source(path.with_suffix(".zip"))
        if path.suffix == ".zip" and path.is_dir():
            raise PipelineError(f"--data: {data} is a directory named like a zip; pass the folder without .zip")
        return Source(path)
    if path.with_suffix(".zip").is_file():
        return Source(path.with_suffix(".zip"))
    if data.rstrip("/") != default:
        raise PipelineError(f"--data: {data} not found; download the competition with: {DOWNLOAD}")
    print(f"notice: no competition data at {default}/ -- using the bundled sample "
          f"(scikit-learn's 1,797 digits). For the real data: {DOWNLOAD}",
          file=sys.stderr)
    return Source(write_sample())


def parse_csv(raw: bytes, where: str, text_first: bool = False) -> "pd.DataFrame":
    """A CSV's rows; an empty, header-only or unparsable file is a one-line error naming it.

    text_first: read the first column as text, as ids are ('00042' stays '00042', not 42).
    """
    import io

    import pandas as pd

    if not raw.strip():
        raise PipelineError(f"{where}: empty file")
    try:  # the header row as pandas reads it (a bare CR ends a line for pandas, not for csv)
        header = list(pd.read_csv(io.BytesIO(raw), header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0])
        df = pd.read_csv(io.BytesIO(raw), low_memory=False, dtype={header[0]: str} if text_first else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, IndexError) as e:
        raise PipelineError(f"{where}: not a readable CSV ({str(e).strip().splitlines()[0][:120]})") from None
    if len(df) == 0:
        raise PipelineError(f"{where}: header only, no rows")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:  # pandas would quietly rename the second one to NAME.1
        raise PipelineError(f"{where}: column {repeated[0]!r} appears twice in the header")
    return df
