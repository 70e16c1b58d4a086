"""The Large Movie Review Dataset (aclImdb v1): download, verify, extract atomically, read reviews.

Layout after extraction: <data_dir>/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt
"""

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

import lightning as L
import torch

from nnlab.atomic import atomic_open, folders_kept_if_used
from nnlab.data import files_fingerprint, read_cache, split_record, text_fingerprints, writable_cache_dir
from nnlab.data.batches import BucketBatches, placement
from nnlab.data.text import PAD, clean, encode, train_tokenizer, truncate_flat
from nnlab.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"  # of the official archive
LABELS = ("neg", "pos")  # class 0, class 1


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
        try:
            log.info(f"downloading {url} to {archive}")
            with folders_kept_if_used(data_dir):
                data_dir.mkdir(parents=True, exist_ok=True)
                with urllib.request.urlopen(url, timeout=60) as response, atomic_open(archive) as f:
                    shutil.copyfileobj(response, f, 1 << 20)
        except OSError as e:
            raise DatasetError(f"IMDB not found in {data_dir.resolve()} and the download of {url} failed ({e}). {how}") from e
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
            text = clean(text)
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


def fingerprint(root: Path) -> str:
    """Files, sizes and modification times of the dataset: a changed review changes the cache key."""
    return files_fingerprint(root.glob("*/*/*.txt"), root)


def load_or_build_cache(root: Path, cache_dir: Path, vocab_size: int, min_frequency: int,
                        tokenizer: str | None = None) -> dict:
    """The tokenised dataset (whole reviews: truncation is applied when batches are made), read from
    `cache_dir` when a cache for these settings and files exists.

    The file name holds a hash of the settings and of the dataset's files, so a changed setting or
    review builds a new one. It is written to a temporary file and renamed when complete: a cache
    left half-written by a killed run has a temporary name and is never read.
    """
    from tokenizers import __version__ as tokenizers_version

    vocabulary = "" if tokenizer is None else hashlib.sha1(tokenizer.encode()).hexdigest()  # a checkpoint's own
    settings = f"whole:{vocab_size}:{min_frequency}:{tokenizers_version}:{fingerprint(root)}:2:{vocabulary}"
    path = Path(cache_dir) / f"imdb-{hashlib.sha1(settings.encode()).hexdigest()[:16]}.pt"
    if (cached := read_cache(path, ("tokenizer", "settings", "train", "test"))) is not None:
        log.info(f"reading the tokenised reviews from {path}")
        return cached
    train_texts, train_labels = read_split(root, "train")
    test_texts, test_labels = read_split(root, "test")
    if tokenizer is None:
        log.info(f"tokenising {root} (vocab_size={vocab_size}, min_frequency={min_frequency})")
        tokenizer = train_tokenizer(train_texts, vocab_size, min_frequency)  # the training split only
    else:
        from tokenizers import Tokenizer

        log.info(f"tokenising {root} with the checkpoint's vocabulary")
        tokenizer = Tokenizer.from_str(tokenizer)
    cache = {"tokenizer": tokenizer.to_str(), "settings": settings}
    for split, texts, labels in (("train", train_texts, train_labels), ("test", test_texts, test_labels)):
        ids, offsets = encode(tokenizer, texts, None)
        cache[split] = {"ids": ids, "offsets": offsets, "labels": torch.tensor(labels, dtype=torch.int64),
                        "fingerprints": text_fingerprints(ids, offsets)}
    with atomic_open(path) as f:
        torch.save(cache, f)
    return cache


class IMDBDataModule(L.LightningDataModule):
    """aclImdb reviews, tokenised once and cached; length-bucketed batches of token ids."""

    kind = "text"
    class_names = ("negative", "positive")

    def __init__(
        self,
        num_classes: int,
        data_dir: str,
        cache_dir: str,
        download: bool,
        vocab_size: int,
        min_frequency: int,
        max_length: int,
        val_size: int,
        split_seed: int,
        batch_size: int,
        eval_batch_size: int,
        eval_max_length: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)

    vocabulary: str | None = None  # a checkpoint's tokenizer (train=false): its token ids, not a new vocabulary's

    def _cache(self, download: bool) -> dict:
        hp = self.hparams
        if getattr(self, "_built", None) is None:  # prepare_data and setup read it once
            root = prepare_aclimdb(Path(hp.data_dir), download)
            self._built = load_or_build_cache(root, writable_cache_dir(hp.cache_dir), hp.vocab_size,
                                              hp.min_frequency, self.vocabulary)
        return self._built

    def prepare_data(self):
        # One process per node downloads, extracts and tokenises; the others wait, then read the cache.
        self._cache(self.hparams.download)

    def setup(self, stage=None):
        if hasattr(self, "cache"):
            return
        hp = self.hparams
        for key in ("max_length", "eval_max_length"):
            if hp[key] is not None and hp[key] < 1:
                raise ConfigError(f"data.{key}={hp[key]} must be a positive number of tokens")
        self.cache = {split: dict(part) if isinstance(part, dict) else part
                      for split, part in self._cache(download=False).items()}
        n = len(self.cache["train"]["labels"])
        if not 0 < hp.val_size < n:
            raise ConfigError(f"data.val_size={hp.val_size} must be between 1 and {n - 1} (the training reviews)")
        # Training reads reviews cut to max_length; validation and test read them cut to eval_max_length.
        train, test = self.cache["train"], self.cache["test"]
        self.tokens = {
            "train": truncate_flat(train["ids"], train["offsets"], hp.max_length),
            "val": truncate_flat(train["ids"], train["offsets"], self.eval_max_length),
            "test": truncate_flat(test["ids"], test["offsets"], self.eval_max_length),
        }
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.split_seed))
        self.train_index, self.val_index = perm[hp.val_size :], perm[: hp.val_size]
        self.test_index = torch.arange(len(self.cache["test"]["labels"]))
        self.split = split_record(
            {"train": [str(i) for i in self.train_index.tolist()], "val": [str(i) for i in self.val_index.tolist()],
             "test": [str(i) for i in self.test_index.tolist()]},
            hp.split_seed, f"train/ and test/ as given; val {hp.val_size} reviews of train/ drawn with data.split_seed",
        )
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for split in ("train", "test"):
            self.cache[split]["labels"] = self.cache[split]["labels"].to(device)

    def fingerprints(self, split: str):
        """Each review of a split as a 64-bit number (of its token ids)."""
        part = self.cache["test" if split == "test" else "train"]["fingerprints"]
        return part if split == "test" else part[{"train": self.train_index, "val": self.val_index}[split]]

    @property
    def eval_max_length(self) -> int:
        return self.hparams.eval_max_length or self.hparams.max_length

    def preprocessing(self) -> dict:
        """What turns raw text into the model's input, stored in every checkpoint: predicting needs no dataset
        and reads texts as the test did (eval_max_length)."""
        return {"kind": "text", "tokenizer": self.cache["tokenizer"], "max_length": self.eval_max_length,
                "class_names": list(self.class_names)}

    def _batches(self, split, index, batch_size, shuffle):
        ids, offsets = self.tokens[split]
        labels = self.cache["test" if split == "test" else "train"]["labels"]
        return BucketBatches(ids, offsets, labels, index, batch_size, shuffle, PAD, **placement(self.trainer))

    def train_dataloader(self):
        return self._batches("train", self.train_index, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._batches("val", self.val_index, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._batches("test", self.test_index, self.hparams.eval_batch_size, shuffle=False)
