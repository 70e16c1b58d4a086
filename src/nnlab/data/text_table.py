"""Text tables of your own: CSV, TSV or JSON Lines with a text column and a label column.

`data.path` is one table (split into train, val and test with data.split_seed, per class) or a folder holding
train.<ext> and optionally val.<ext> (or valid, validation, dev) and test.<ext>; what is missing is carved from
train. Labels are strings or integers; the class names are kept (sorted, numerically for integers). The texts are
tokenised as IMDB's (nnlab.data.text), cached once, and batched by length.
"""

import csv
import hashlib
import json
import logging
import sys
from pathlib import Path

import lightning as L
import torch

from nnlab.atomic import atomic_open
from nnlab.data import (
    check_shares,
    files_fingerprint,
    hashed_split,
    read_cache,
    split_record,
    text_fingerprints,
    writable_cache_dir,
)
from nnlab.data.batches import BucketBatches, SplitLoaders, placement
from nnlab.data.text import PAD, clean, encode, train_tokenizer, truncate_flat
from nnlab.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}
SPLITS = ("train", "val", "test")
CACHE_VERSION = 2  # 2: splits by hash, with their record and each text's fingerprint


def find_tables(path: Path) -> dict[str, Path]:
    """{"train": file, ...}: the one table given, or the split files of a folder."""
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise DatasetError(f"data.path={path} does not exist; point it at a CSV, TSV or JSON Lines file, or at a "
                           "folder holding train.csv (and optionally val.csv, test.csv)")
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            files = sorted(p for p in path.glob(f"{name}.*") if p.suffix.lower() in FORMATS)
            if files:
                found[split] = files[0]
                break
    if "train" not in found:
        tables = sorted(p.name for p in path.iterdir() if p.suffix.lower() in FORMATS)
        found = f" (tables found: {tables[:5]}: name the training one train.<ext>, or give its path)" if tables else ""
        raise DatasetError(f"{path} holds no train.csv, train.tsv or train.jsonl{found}")
    return found


def table_format(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in ("csv", "tsv", "jsonl"):
            raise ConfigError(f"data.format={given!r} is not one of csv, tsv, jsonl")
        return given
    if (fmt := FORMATS.get(path.suffix.lower())) is None:
        raise ConfigError(f"{path}: its suffix says no format (.csv, .tsv, .jsonl); set data.format=csv, tsv or jsonl")
    return fmt


def read_table(path: Path, fmt: str, text_column: str, label_column: str) -> tuple[list, list, list]:
    """(texts, labels as strings, problems): each row's text (cleaned) and label; rows that cannot be used are
    skipped and returned as (line, reason)."""
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        content = raw.decode("utf-8", errors="replace")
        log.warning(f"{path} is not valid UTF-8: decoded with replacement characters")
    texts, labels, problems = [], [], []
    if fmt == "jsonl":
        rows, columns = [], set()
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append((number, f"not JSON ({e.msg})"))
                continue
            if not isinstance(row, dict):
                problems.append((number, "not a JSON object"))
                continue
            columns |= row.keys()
            rows.append((number, row))
        check_columns(path, sorted(columns), text_column, label_column, bool(rows))
    else:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long review is one field
        reader = csv.DictReader(content.splitlines(), delimiter="," if fmt == "csv" else "\t")
        check_columns(path, reader.fieldnames or [], text_column, label_column, True)
        rows = [(reader.line_num, row) for row in reader]
    for number, row in rows:
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None:
            problems.append((number, f"no {text_column if text is None else label_column!r} value"))
            continue
        text, label = clean(str(text)), str(label).strip()
        if not text:
            problems.append((number, "empty text"))
            continue
        if not label:
            problems.append((number, "empty label"))
            continue
        texts.append(text)
        labels.append(label)
    return texts, labels, problems


def check_columns(path: Path, found: list, text_column: str, label_column: str, any_rows: bool):
    if not any_rows:
        raise DatasetError(f"{path} holds no rows")
    missing = [c for c in (text_column, label_column) if c not in found]
    if missing:
        keys = ["text_column" if c == text_column else "label_column" for c in missing]
        raise DatasetError(f"{path} has no column {', '.join(repr(c) for c in missing)}; its columns are "
                           f"{[str(c) for c in found][:20]}: set {' and '.join(f'data.{k}=<column>' for k in keys)}")


def class_order(labels: set[str]) -> list[str]:
    """The class names: integers in numeric order, any other labels sorted as strings."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def build(tables: dict[str, Path], fmt: str | None, text_column: str, label_column: str, vocab_size: int,
          min_frequency: int, shares: dict, seed: int, max_bad_share: float, tokenizer: str | None = None) -> dict:
    read = {split: read_table(path, table_format(path, fmt), text_column, label_column)
            for split, path in tables.items()}
    total = sum(len(t) + len(p) for t, _, p in read.values())
    problems = [(tables[split], line, why) for split, (_, _, p) in read.items() for line, why in p]
    if problems:
        share = len(problems) / max(total, 1)
        listing = "; ".join(f"{path} line {line} ({why})" for path, line, why in problems[:5])
        message = f"{len(problems)} of {total} rows ({share:.1%}) were skipped, first: {listing}"
        if share > max_bad_share:
            raise DatasetError(f"{message}. That is more than data.max_bad_share={max_bad_share}: repair them, or "
                               "raise data.max_bad_share to train on the rest.")
        log.warning(message)
    classes = class_order(set(read["train"][1]))
    if len(classes) < 2:
        raise DatasetError(f"{tables['train']} has one label ({classes[0] if classes else 'none'}) in column "
                           f"{label_column!r}: a classifier needs two or more (is data.label_column the label?)")
    index = {c: i for i, c in enumerate(classes)}
    for split in ("val", "test"):
        if split in read and (unknown := sorted(set(read[split][1]) - index.keys())):
            raise DatasetError(f"{tables[split]} has label(s) {unknown[:5]} that {tables['train']} never has: a class "
                               "never trained on cannot be evaluated; add training rows of it, or drop those rows")
    texts = {split: read[split][0] for split in read}
    labels = {split: [index[label] for label in read[split][1]] for split in read}
    if missing := {s: shares[s] for s in ("val", "test") if s not in read}:
        # carved from the training rows by a hash of each row's text: a row keeps its split when others are added
        rows, notes = hashed_split(texts["train"], labels["train"], missing, seed)
        for note in notes:
            log.warning(f"{tables['train']}: {note[:300]}")
        pool_texts, pool_labels = texts["train"], labels["train"]
        for split, chosen in rows.items():
            texts[split], labels[split] = [pool_texts[i] for i in chosen], [pool_labels[i] for i in chosen]
    counts = torch.bincount(torch.tensor(labels["train"]), minlength=len(classes))
    if few := [classes[i] for i in range(len(classes)) if counts[i] < 2]:
        log.warning(f"label(s) {few[:5]} have fewer than 2 training rows in {tables['train']}: they are trained on "
                    "but hardly learnt (add rows of them)")
    for split in ("val", "test"):
        if not labels[split]:
            raise DatasetError(f"the {split} split holds no rows: give a {split} table, or enough rows per label "
                               f"for data.{split}_share={shares[split]} to take some")
    if tokenizer is None:
        tokenizer = train_tokenizer(texts["train"], vocab_size, min_frequency)  # the training split only
    else:  # a checkpoint's own vocabulary, to evaluate it (train=false)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer)
    out = {"tokenizer": tokenizer.to_str(), "classes": classes}
    for split in SPLITS:
        ids, offsets = encode(tokenizer, texts[split], None)
        out[split] = {"ids": ids, "offsets": offsets, "labels": torch.tensor(labels[split], dtype=torch.int64),
                      "fingerprints": text_fingerprints(ids, offsets)}
    given = [s for s in ("val", "test") if s in read]
    how = (f"{' and '.join(f'{s} table' for s in given)} as given" if given else "") + ("; " if given and missing else "")
    how += f"{' and '.join(missing)} carved from training by a hash of each row's text (data.split_seed={seed})" \
        if missing else ""
    out["split"] = split_record({s: texts[s] for s in SPLITS}, seed if missing else None, how)
    log.info(f"{', '.join(str(p) for p in tables.values())}: {total} rows, {len(problems)} skipped; "
             f"{', '.join(f'{s} {len(labels[s])}' for s in SPLITS)} texts; {len(classes)} classes")
    return out


def load_or_build_cache(tables: dict[str, Path], cache_dir: Path, **settings) -> dict:
    """The tokenised tables, read from `cache_dir` when a cache for these settings and files exists; else built and
    written under a temporary name renamed when complete (a killed run's cache is never read)."""
    from tokenizers import __version__ as tokenizers_version

    files = list(tables.values())
    root = Path("/") if len({p.parent for p in files}) > 1 else files[0].parent
    key = ":".join(f"{k}={settings[k]}" for k in sorted(settings))
    key += f":{tokenizers_version}:{sorted((s, str(p.resolve())) for s, p in tables.items())}"
    key += f":{files_fingerprint(files, root)}:{CACHE_VERSION}"
    path = Path(cache_dir) / f"text-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if (cached := read_cache(path, ("tokenizer", "classes", "split", *SPLITS))) is not None:
        log.info(f"reading the tokenised texts from {path}")
        return cached
    built = build(tables, **settings)
    with atomic_open(path) as f:
        torch.save(built, f)
    return built


class TextTableDataModule(SplitLoaders, L.LightningDataModule):
    """Texts and labels from your own tables, tokenised once and cached; length-bucketed batches of token ids."""

    kind = "text"

    def __init__(
        self,
        path: str,
        format: str | None,
        text_column: str,
        label_column: str,
        num_classes: int | None,
        cache_dir: str,
        vocab_size: int,
        min_frequency: int,
        max_length: int,
        eval_max_length: int | None,
        val_share: float,
        test_share: float,
        split_seed: int,
        max_bad_share: float,
        batch_size: int,
        eval_batch_size: int,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        for key in ("max_length", "eval_max_length"):
            if self.hparams[key] is not None and self.hparams[key] < 1:
                raise ConfigError(f"data.{key}={self.hparams[key]} must be a positive number of tokens")
        check_shares(self.hparams, "rows")
        self.path = Path(path).expanduser()

    vocabulary: str | None = None  # a checkpoint's tokenizer (train=false): its token ids, not a new vocabulary's

    def _cache(self):
        hp = self.hparams
        if getattr(self, "_built", None) is None:  # prepare_data, setup and class_names_found read it once
            self._built = load_or_build_cache(
                find_tables(self.path), writable_cache_dir(hp.cache_dir), fmt=hp.format, text_column=hp.text_column,
                label_column=hp.label_column, vocab_size=hp.vocab_size, min_frequency=hp.min_frequency,
                shares={"val": hp.val_share, "test": hp.test_share}, seed=hp.split_seed,
                max_bad_share=hp.max_bad_share, tokenizer=self.vocabulary)
        return self._built

    def class_names_found(self) -> list[str]:
        """The labels of the training table (read once, then cached)."""
        return list(self._cache()["classes"])

    def prepare_data(self):
        self._cache()  # one process per node tokenises; the others wait, then read the cache

    def setup(self, stage=None):
        if hasattr(self, "cache"):
            return
        hp = self.hparams
        self.cache = self._cache()
        self.class_names = tuple(self.cache["classes"])
        if hp.num_classes is not None and hp.num_classes != len(self.class_names):
            raise ConfigError(f"data.num_classes={hp.num_classes} but the labels are {list(self.class_names)[:10]} "
                              f"({len(self.class_names)}); set data.num_classes=null to take them from the data")
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.tokens = {split: truncate_flat(self.cache[split]["ids"], self.cache[split]["offsets"],
                                            hp.max_length if split == "train" else self.eval_max_length)
                       for split in SPLITS}
        self.labels = {split: self.cache[split]["labels"].to(device) for split in SPLITS}
        self.split = self.cache["split"]

    def fingerprints(self, split: str):
        """Each text of a split as a 64-bit number (of its token ids)."""
        return self.cache[split]["fingerprints"]

    @property
    def eval_max_length(self) -> int:
        return self.hparams.eval_max_length or self.hparams.max_length

    def preprocessing(self) -> dict:
        """What turns raw text into the model's input, stored in every checkpoint (nnlab.predict reads it)."""
        return {"kind": "text", "tokenizer": self.cache["tokenizer"], "max_length": self.eval_max_length,
                "class_names": list(self.class_names)}

    def _batches(self, split, batch_size, shuffle):
        ids, offsets = self.tokens[split]
        index = torch.arange(len(self.labels[split]))
        return BucketBatches(ids, offsets, self.labels[split], index, batch_size, shuffle, PAD,
                             **placement(self.trainer))

