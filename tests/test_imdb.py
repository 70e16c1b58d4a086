"""aclImdb preparation: a present folder is used as is; archives are verified and extracted atomically."""

import itertools
import logging
import tarfile

import pytest
import torch

from nnlab.data import DatasetError
from nnlab.data.imdb import md5sum, prepare_aclimdb, read_split
from tests.helpers import make_aclimdb

NO_NETWORK = "http://127.0.0.1:9/aclImdb_v1.tar.gz"  # a closed local port: any download fails at once


def make_archive(tmp_path):
    make_aclimdb(tmp_path / "src")
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "aclImdb", arcname="aclImdb")
    return archive


def test_extracted_folder_is_used_without_network(tmp_path):
    make_aclimdb(tmp_path)
    assert prepare_aclimdb(tmp_path, download=True, url=NO_NETWORK) == tmp_path / "aclImdb"


def test_download_verifies_and_extracts(tmp_path):
    archive = make_archive(tmp_path)
    data = tmp_path / "data"
    root = prepare_aclimdb(data, download=True, url=archive.as_uri(), md5=md5sum(archive))
    assert len(list((root / "train" / "pos").glob("*.txt"))) == 6
    assert sorted(p.name for p in data.iterdir()) == ["aclImdb", "aclImdb_v1.tar.gz"]  # no partial files left


def test_wrong_checksum_names_the_archive_and_extracts_nothing(tmp_path):
    archive = make_archive(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "aclImdb_v1.tar.gz").write_bytes(archive.read_bytes()[:-10])  # a truncated download
    with pytest.raises(DatasetError, match=r"aclImdb_v1.tar.gz has MD5 .* expected"):
        prepare_aclimdb(data, download=True, url=NO_NETWORK, md5=md5sum(archive))
    assert not (data / "aclImdb").exists()


def test_interrupted_extraction_is_not_trusted(tmp_path):
    archive = make_archive(tmp_path)
    data = tmp_path / "data"
    (data / ".aclImdb.partial123" / "aclImdb" / "train").mkdir(parents=True)  # left by a killed run
    (data / "aclImdb_v1.tar.gz").write_bytes(archive.read_bytes())
    root = prepare_aclimdb(data, download=False, md5=md5sum(archive))
    assert len(list((root / "test" / "neg").glob("*.txt"))) == 6


def test_missing_data_without_network_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError, match=r"download of .* failed .*Put aclImdb_v1.tar.gz"):
        prepare_aclimdb(tmp_path / "data", download=True, url=NO_NETWORK)
    assert list(tmp_path.iterdir()) == []  # no empty data folder, no partial archive
    with pytest.raises(DatasetError, match="data.download=false"):
        prepare_aclimdb(tmp_path, download=False)


def test_missing_label_folder_is_named(tmp_path):
    root = make_aclimdb(tmp_path)
    for f in (root / "test" / "neg").iterdir():
        f.unlink()
    (root / "test" / "neg").rmdir()
    with pytest.raises(DatasetError, match=r"aclImdb/test/neg is missing"):
        prepare_aclimdb(tmp_path, download=False)


def test_reading_cleans_breaks_counts_bad_utf8_and_skips_empty(tmp_path, caplog):
    root = make_aclimdb(tmp_path)
    (root / "train" / "pos" / "0_8.txt").write_bytes(b"caf\xe9 latte, lovely<br />film")
    (root / "train" / "neg" / "1_2.txt").write_text("  <br /> ")
    with caplog.at_level(logging.WARNING):
        texts, labels = read_split(root, "train")
    assert len(texts) == 11 and labels.count(1) == 6 and labels.count(0) == 5
    assert "caf\ufffd latte, lovely film" in texts and not any("<br" in t for t in texts)
    assert "1 review(s) not valid UTF-8" in caplog.text and "1 empty review(s) skipped" in caplog.text


def truncate(review: list[int], max_length: int) -> list[int]:
    """truncate_flat on one review, as a list."""
    from nnlab.data.imdb import truncate_flat

    ids, offsets = truncate_flat(torch.tensor(review, dtype=torch.int32), torch.tensor([0, len(review)]), max_length)
    return ids[offsets[0] : offsets[1]].tolist()


def test_truncation_keeps_head_and_tail():
    assert truncate(list(range(10)), 4) == [0, 1, 8, 9]
    assert truncate(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert truncate([1, 2], 5) == [1, 2]


@pytest.mark.parametrize("max_length", [1, 2, 5, 6, 50])
def test_flat_truncation_cuts_each_review_on_its_own(max_length):
    from nnlab.data.imdb import truncate_flat

    reviews = [list(range(100 * i, 100 * i + n)) for i, n in enumerate([1, 5, 6, 7, 12, 3])]
    ids = torch.tensor([t for r in reviews for t in r], dtype=torch.int32)
    offsets = torch.tensor([0] + [len(r) for r in reviews]).cumsum(0)
    cut, cut_offsets = truncate_flat(ids, offsets, max_length)
    got = [cut[a:b].tolist() for a, b in itertools.pairwise(cut_offsets)]
    head = max_length // 2
    expected = [r if len(r) <= max_length else r[:head] + r[len(r) - (max_length - head) :] for r in reviews]
    assert got == expected and cut.dtype == torch.int32


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path):
    from nnlab.data.text import PAD, UNK, train_tokenizer

    tok = train_tokenizer(["Great film!", "great acting, dull plot"], vocab_size=100, min_frequency=1)
    assert tok.token_to_id("[PAD]") == PAD and tok.token_to_id("[UNK]") == UNK
    assert tok.encode("GREAT").ids == [tok.token_to_id("great")]  # lower-cased
    assert tok.encode("zebra").ids == [UNK]
    assert "!" in tok.get_vocab() and "," in tok.get_vocab()  # punctuation is its own token


def test_cache_is_reused_and_rebuilt_when_a_setting_or_file_changes(tmp_path, caplog):
    from nnlab.data.imdb import load_or_build_cache

    root = make_aclimdb(tmp_path)
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="nnlab.data.imdb"):
        first = load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=1)
        again = load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=1)
    assert caplog.text.count("tokenising") == 1 and "reading the tokenised reviews" in caplog.text
    assert (again["train"]["ids"] == first["train"]["ids"]).all()
    train = first["train"]
    assert len(train["offsets"]) == 13 and int(train["offsets"][-1]) == len(train["ids"])
    assert train["labels"].tolist() == [0] * 6 + [1] * 6
    load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=2)
    (root / "train" / "pos" / "0_8.txt").write_text("Changed: the best film of the year.")
    load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=2)
    assert len(list(cache_dir.glob("imdb-*.pt"))) == 3


def test_half_written_cache_is_never_read(tmp_path):
    from nnlab.data.imdb import load_or_build_cache

    root = make_aclimdb(tmp_path)
    cache_dir = tmp_path / "cache"
    load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=1)
    (cache_file,) = cache_dir.glob("imdb-*.pt")
    cache_file.rename(cache_dir / f".{cache_file.name}.tmp4242")  # as a run killed during the write leaves it
    (cache_dir / f".{cache_file.name}.tmp4242").write_bytes(b"half a file")
    rebuilt = load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=1)
    assert len(rebuilt["test"]["labels"]) == 12 and cache_file.is_file()


def test_bucket_batches_pad_little_cover_everything_and_shard():
    from nnlab.data.batches import BucketBatches

    torch.manual_seed(0)
    lengths = torch.randint(1, 50, (103,))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = torch.arange(2, int(offsets[-1]) + 2, dtype=torch.int32)  # every token unique, never PAD (0)
    labels = torch.arange(103)
    index = torch.arange(103)
    seen = []
    for rank in range(2):
        batches = BucketBatches(ids, offsets, labels, index, 8, True, 0, seed=1, rank=rank, world=2, bucket_batches=4)
        got = list(batches)
        assert len(got) == len(batches)
        for (tokens, lens), y in got:
            assert torch.equal(lens, lengths[y]) and tokens.shape == (len(y), int(lens.max()))
            for row, n, i in zip(tokens, lens, y):
                assert torch.equal(row[:n], ids[offsets[i] : offsets[i] + n].long()) and not row[n:].any()
        seen.append(set(torch.cat([y for _, y in got]).tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 102
    # Sorting inside buckets keeps padding small: far less than padding random batches to 49.
    (tokens, lens), _ = next(iter(BucketBatches(ids, offsets, labels, index, 8, False, 0)))
    assert int(lens.max()) - int(lens.min()) < 10
    # Evaluation sorts the whole split by length, whatever order the files came in.
    evaluated = list(BucketBatches(ids, offsets, labels, index, 8, False, 0, bucket_batches=1))
    order = torch.cat([lens for (_, lens), _ in evaluated])
    assert torch.equal(order, lengths.sort(descending=True, stable=True).values)


def test_datamodule_reads_tiny_tree(tmp_path):
    from nnlab.data.imdb import IMDBDataModule

    make_aclimdb(tmp_path)
    dm = IMDBDataModule(
        num_classes=2,
        data_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        download=False,
        vocab_size=100,
        min_frequency=1,
        max_length=16,
        val_size=2,
        split_seed=0,
        batch_size=4,
        eval_batch_size=8,
    )
    dm.prepare_data()
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(len(y) for _, y in batches) == 10 and max(len(y) for _, y in batches) == 4
    for (tokens, lengths), _ in batches:
        assert tokens.dtype == torch.int64 and tokens.shape[1] == int(lengths.max()) <= 16
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 2 and sum(len(b[1]) for b in dm.test_dataloader()) == 12
    assert dm.preprocessing()["max_length"] == 16


def test_evaluation_reads_longer_reviews_than_training(tmp_path):
    from nnlab.data.imdb import IMDBDataModule

    make_aclimdb(tmp_path)
    settings = dict(
        num_classes=2,
        data_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        download=False,
        vocab_size=100,
        min_frequency=1,
        val_size=2,
        split_seed=0,
        batch_size=4,
        eval_batch_size=8,
    )
    dm = IMDBDataModule(max_length=3, eval_max_length=1000, **settings)
    dm.prepare_data()
    dm.setup()
    longest = lambda loader: max(int(lengths.max()) for (_, lengths), _ in loader)
    assert longest(dm.train_dataloader()) == 3
    assert longest(dm.test_dataloader()) > 3 and longest(dm.val_dataloader()) > 3
    assert dm.preprocessing()["max_length"] == 1000  # predict reads texts as the test did
    with pytest.raises(ValueError, match="data.eval_max_length=0"):
        IMDBDataModule(max_length=3, eval_max_length=0, **settings).setup()


@pytest.mark.parametrize("how", ["truncate", "random", "other"])
def test_damaged_cache_is_named_and_rebuilt(tmp_path, caplog, how):
    from nnlab.data.imdb import load_or_build_cache

    root = make_aclimdb(tmp_path)
    cache_dir = tmp_path / "cache"
    first = load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=1)
    (cache_file,) = cache_dir.glob("imdb-*.pt")
    if how == "other":
        torch.save({"something": torch.zeros(3)}, cache_file)  # a torch file, but not this cache
    else:
        data = cache_file.read_bytes()
        cache_file.write_bytes(data[: len(data) // 2] if how == "truncate" else bytes(range(256)) * 8)
    with caplog.at_level(logging.WARNING, logger="nnlab.data"):
        rebuilt = load_or_build_cache(root, cache_dir, vocab_size=50, min_frequency=1)
    assert f"cache {cache_file}" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(rebuilt["train"]["ids"], first["train"]["ids"])
    assert torch.load(cache_file, weights_only=True)["settings"] == first["settings"]  # written again, whole


@pytest.mark.slow
def test_a_read_only_data_folder_keeps_its_cache_elsewhere(tmp_path, monkeypatch, caplog):
    """A real read-only bind mount (root can write through permissions, not through a read-only mount)."""
    import os
    import subprocess

    from nnlab.data.imdb import IMDBDataModule

    make_aclimdb(tmp_path / "src")
    mount = tmp_path / "ro"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "--bind", "-o", "ro", str(tmp_path / "src"), str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("a read-only bind mount needs root")
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
        dm = IMDBDataModule(
            num_classes=2,
            data_dir=str(mount),
            cache_dir=str(mount / "cache"),
            download=False,
            vocab_size=100,
            min_frequency=1,
            max_length=16,
            val_size=2,
            split_seed=0,
            batch_size=4,
            eval_batch_size=8,
        )
        with caplog.at_level(logging.WARNING, logger="nnlab.data"):
            dm.prepare_data()
            dm.setup()
        assert f"cache folder {mount / 'cache'} is not writable" in caplog.text
        assert (
            list((tmp_path / "home-cache" / "nnlab").glob("*/imdb-*.pt")) and not (tmp_path / "src" / "cache").exists()
        )
        assert sum(len(y) for _, y in dm.train_dataloader()) == 10
    finally:
        subprocess.run(["umount", str(mount)], check=True)
