"""The Large Movie Review Dataset (aclImdb v1): download, verify, extract atomically, read reviews.

Layout after extraction: <data_dir>/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt
"""

import hashlib
import logging
import os
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path

from nnlab.data import DatasetError

log = logging.getLogger(__name__)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"  # of the official archive
LABELS = ("neg", "pos")  # class 0, class 1
BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_layout(root: Path):
    for split in ("train", "test"):
        for label in LABELS:
            if not (root / split / label).is_dir():
                raise DatasetError(
                    f"{root / split / label} is missing: an aclImdb folder holds train/pos, train/neg, test/pos "
                    f"and test/neg. Delete {root} to download it again, or put the reviews in that layout."
                )


def prepare_aclimdb(data_dir: Path, download: bool, url: str = URL, md5: str = MD5) -> Path:
    """Return <data_dir>/aclImdb, downloading and extracting the archive first if the folder is missing.

    An extracted folder is used as it is, with no network. Every step writes to a temporary name and
    renames when complete, so an interrupted download or extraction is never mistaken for data.
    """
    data_dir = Path(data_dir)
    root = data_dir / "aclImdb"
    if root.is_dir():
        check_layout(root)
        return root
    archive = data_dir / "aclImdb_v1.tar.gz"
    if not archive.is_file():
        how = (f"Put aclImdb_v1.tar.gz, or the extracted aclImdb/ folder, in {data_dir.resolve()}, or point "
               "data.data_dir (or NNLAB_DATA_DIR) at the folder that holds it.")
        if not download:
            raise DatasetError(f"IMDB not found in {data_dir.resolve()} and data.download=false. {how}")
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(f".{archive.name}.partial{os.getpid()}")
        try:
            log.info(f"downloading {url} to {archive}")
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
            os.replace(partial, archive)
        except OSError as e:
            raise DatasetError(f"IMDB not found in {data_dir.resolve()} and the download of {url} failed ({e}). {how}") from e
        finally:
            partial.unlink(missing_ok=True)
    if (found := md5sum(archive)) != md5:
        raise DatasetError(
            f"{archive} has MD5 {found}, expected {md5}: the download is incomplete or the file is another archive. "
            "Delete it and run again to download a fresh copy."
        )
    staging = data_dir / f".aclImdb.partial{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        if not (staging / "aclImdb").is_dir():
            raise DatasetError(f"{archive} holds no aclImdb/ folder")
        check_layout(staging / "aclImdb")
        os.replace(staging / "aclImdb", root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def read_split(root: Path, split: str) -> tuple[list[str], list[int]]:
    """Reviews and labels (0 neg, 1 pos) of one split, `<br />` turned into spaces.

    Files that are not valid UTF-8 are decoded with replacement characters, empty reviews are
    skipped; both are counted in one warning rather than failing the run.
    """
    texts, labels, not_utf8, empty = [], [], [], []
    for label, name in enumerate(LABELS):
        for path in sorted((root / split / name).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                not_utf8.append(path)
            text = " ".join(BREAK.sub(" ", text).split())
            if not text:
                empty.append(path)
                continue
            texts.append(text)
            labels.append(label)
    if not_utf8 or empty:
        log.warning(
            f"{root / split}: {len(not_utf8)} review(s) not valid UTF-8, decoded with replacement characters "
            f"{[str(p) for p in not_utf8[:3]]}; {len(empty)} empty review(s) skipped {[str(p) for p in empty[:3]]}"
        )
    if not texts:
        raise DatasetError(f"{root / split} holds no reviews (*.txt files under pos/ and neg/)")
    return texts, labels
