"""Find, fetch and verify the canonical Fashion-MNIST files, and split them.

Verification is of content, not presence: the gzip stream, the IDX header (magic number and
shape), the label range and the SHA-256 of the *decompressed* payload, because the Debian
package ships recompressed files whose .gz bytes differ from the canonical ones.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study import config, files
from study.errors import DataError


@dataclass(frozen=True)
class IdxFile:
    stem: str  # file name without .gz
    magic: int  # 2051: unsigned-byte 3-D images; 2049: unsigned-byte 1-D labels
    count: int
    sha256: str  # of the decompressed bytes

    @property
    def filename(self) -> str:
        return f"{self.stem}.gz"

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.count, *config.IMAGE_SHAPE) if self.magic == 2051 else (self.count,)

    @property
    def size(self) -> int:
        """Bytes of the decompressed file (header and payload): the most a download or a
        decompression of it may read, so a gzip bomb is refused after size + 1 bytes."""
        return 4 + 4 * len(self.dims) + int(np.prod(self.dims))


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", 2051, 60000,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", 2049, 60000,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", 2051, 10000,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", 2049, 10000,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}

FIX = (
    f"fix: `apt-get install {config.DEBIAN_PACKAGE}`, or point --data-dir / "
    f"{config.DATA_DIR_ENV} at a folder holding the four canonical .gz files"
)


@dataclass(frozen=True)
class FashionMNIST:
    """The 60k/10k canonical arrays (uint8 images, int64 labels) and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Path


def read_idx(path: Path, spec: IdxFile) -> np.ndarray:
    """Decode and verify one IDX .gz file; raise DataError naming the file on any defect."""
    name = str(path)
    if not path.is_file():
        raise DataError(f"{name}: file not found; {FIX}")
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read(spec.size + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{name}: not a readable gzip stream ({exc}); the file is truncated or corrupt; {FIX}"
        ) from None
    if len(raw) > spec.size:
        raise DataError(f"{name}: decompresses to more than the {spec.size} bytes of "
                        f"{spec.stem} (reading stopped there); not the canonical file; {FIX}")
    header_len = 4 + 4 * len(spec.dims)
    if len(raw) < header_len:
        raise DataError(f"{name}: only {len(raw)} bytes after decompression, too short for an "
                        f"IDX header; the file is truncated; {FIX}")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != spec.magic:
        raise DataError(f"{name}: IDX magic number {magic}, expected {spec.magic}; "
                        f"this is not the {spec.stem} file; {FIX}")
    dims = struct.unpack(f">{len(spec.dims)}I", raw[4:header_len])
    if dims != spec.dims:
        raise DataError(f"{name}: IDX shape {dims}, expected {spec.dims}; {FIX}")
    expected = int(np.prod(spec.dims))
    if len(raw) - header_len != expected:
        raise DataError(f"{name}: {len(raw) - header_len} payload bytes, expected {expected}; "
                        f"the file is truncated or padded; {FIX}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(spec.dims)
    if spec.magic == 2049 and array.max(initial=0) >= config.N_CLASSES:
        raise DataError(f"{name}: label {int(array.max())} outside 0..9; {FIX}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise DataError(f"{name}: SHA-256 of the decompressed content is {digest[:12]}..., "
                        f"expected {spec.sha256[:12]}... (not the canonical file); {FIX}")
    return array.astype(np.int64) if spec.magic == 2049 else array


def has_all_files(folder: Path) -> bool:
    return all((folder / f.filename).is_file() for f in FILES.values())


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for the files, in order of preference."""
    explicit = data_dir or os.environ.get(config.DATA_DIR_ENV)
    if explicit:
        return [Path(explicit).expanduser()]
    return [config.DEBIAN_DATA_DIR, config.keras_cache_dir(), config.download_cache_dir()]


def locate(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The first folder holding all four files; download into the cache when there is none.

    An explicit folder (argument or FASHION_MNIST_DIR) is never silently bypassed: when it
    lacks files, that is an error, since the user asked for exactly that copy.
    """
    dirs = candidate_dirs(data_dir)
    explicit = bool(data_dir or os.environ.get(config.DATA_DIR_ENV))
    for folder in dirs:
        if has_all_files(folder):
            return folder
    if explicit:
        missing = [f.filename for f in FILES.values() if not (dirs[0] / f.filename).is_file()]
        raise DataError(f"data directory {dirs[0]} lacks {', '.join(missing)}; "
                        f"put the four canonical Fashion-MNIST .gz files there or drop the option")
    if not download:
        raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, dirs))}; {FIX}")
    return download_all(config.download_cache_dir())


def download_all(target: Path, base_url: str = config.DOWNLOAD_URL) -> Path:
    """Download each missing file to a temporary name, verify it, then rename it into place."""
    target.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        final = target / spec.filename
        if final.is_file():
            continue
        url = base_url + spec.filename
        try:
            with files.replacing(final) as tmp:
                _fetch(url, tmp, spec.size)
                read_idx(tmp, spec)  # raises on a bad download; the final name never sees it
        except OSError as exc:
            raise DataError(f"download of {url} failed ({exc}); no internet? {FIX}") from None
    return target


def _fetch(url: str, path: Path, limit: int) -> None:
    """The body at `url` into `path`, refused once it passes `limit` bytes (the gzip of a
    file is smaller than the file itself): a hostile or broken server cannot fill the disk."""
    with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as out:
        left = limit + 1
        while left > 0 and (chunk := resp.read(min(left, 1 << 20))):
            out.write(chunk)
            left -= len(chunk)
    if left <= 0:
        raise DataError(f"download of {url} refused: more than {limit} bytes, larger than the "
                        f"file it should hold; {FIX}")


def load(data_dir: str | os.PathLike | None = None, download: bool = True) -> FashionMNIST:
    """Locate and verify the four files and return the canonical arrays."""
    folder = locate(data_dir, download=download)
    arrays = {key: read_idx(folder / spec.filename, spec) for key, spec in FILES.items()}
    return FashionMNIST(arrays["train_images"], arrays["train_labels"],
                        arrays["test_images"], arrays["test_labels"], folder)


def ensure(data_dir: str | os.PathLike | None = None) -> Path:
    """`make setup`'s data step: an existing copy, else the Debian package, else a download."""
    try:
        return locate(data_dir, download=False)
    except DataError:
        if data_dir or os.environ.get(config.DATA_DIR_ENV):
            raise
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", config.DEBIAN_PACKAGE]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        if has_all_files(config.DEBIAN_DATA_DIR):
            return config.DEBIAN_DATA_DIR
    return download_all(config.download_cache_dir())


@dataclass(frozen=True)
class Splits:
    """Train/validation rows of the 60k training set, and the untouched 10k test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_idx: np.ndarray  # row numbers in the canonical 60k training file
    val_idx: np.ndarray

    def rows(self) -> dict[str, int]:
        """Rows per split, as runs record them."""
        return {"train": len(self.y_train), "validation": len(self.y_val),
                "test": len(self.y_test)}


def split_indices(labels: np.ndarray, seed: int = config.SEED,
                  val_fraction: float = config.VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation row numbers, deterministic for a given seed."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    train_idx, val_idx = train_test_split(rows, test_size=val_fraction, random_state=seed,
                                          stratify=labels)
    return np.sort(train_idx), np.sort(val_idx)


def stratified_subsample(idx: np.ndarray, labels: np.ndarray, size: int | None,
                         seed: int = config.SEED) -> np.ndarray:
    """A class-balanced subset of `idx` (row numbers) of `size` rows; all rows when None."""
    if size is None or size >= len(idx):
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=size, random_state=seed, stratify=labels[idx])
    return np.sort(keep)


def train_part(splits: Splits, fraction: float, seed: int = config.SEED) -> Splits:
    """`splits` with a stratified `fraction` of its training rows (a time budget's cut);
    validation and test untouched."""
    keep = stratified_subsample(np.arange(len(splits.y_train)), splits.y_train,
                                max(10, int(fraction * len(splits.y_train))), seed)
    return dataclasses.replace(splits, x_train=splits.x_train[keep], y_train=splits.y_train[keep],
                               train_idx=splits.train_idx[keep])


def make_splits(data: FashionMNIST, profile: config.Profile) -> Splits:
    """The 80/20 stratified split (seed 2020), subsampled as the profile asks."""
    train_idx, val_idx = split_indices(data.y_train)
    train_idx = stratified_subsample(train_idx, data.y_train, profile.train_subsample)
    val_idx = stratified_subsample(val_idx, data.y_train, profile.val_subsample)
    return Splits(
        data.x_train[train_idx], data.y_train[train_idx],
        data.x_train[val_idx], data.y_train[val_idx],
        data.x_test, data.y_test, train_idx, val_idx,
    )


def as_flat(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, 784) float32 in [0, 1]: the classical models' input."""
    return (images.reshape(len(images), -1).astype(np.float32) / 255.0)


def as_image(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, 28, 28, 1) float32 in [0, 1]: the networks' input."""
    return images[..., None].astype(np.float32) / 255.0


def fingerprint(splits: Splits) -> str:
    """Which data a model saw: the verified files' digests and the exact train/validation
    rows. Equal fingerprints let an interrupted compare's finished models be reused."""
    h = hashlib.sha256()
    for spec in sorted(FILES.values(), key=lambda s: s.filename):
        h.update(spec.sha256.encode())
    h.update(np.asarray(splits.train_idx, dtype=np.int64).tobytes())
    h.update(np.asarray(splits.val_idx, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]
