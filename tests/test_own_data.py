"""Your own data, no code: image folders and text tables, written here in the real on-disk formats."""

import itertools
import json
import logging
import shutil

import pytest
import torch

from nnlab.data.images import ImageFolderDataModule
from nnlab.data.text_table import TextTableDataModule
from nnlab.errors import DatasetError
from tests.helpers import make_image_folder, make_text_table, predict, train

IMAGES = dict(
    num_classes=None,
    channels=3,
    image_size=16,
    fit="crop",
    val_share=0.1,
    test_share=0.1,
    split_seed=0,
    max_bad_share=0.1,
    batch_size=8,
    eval_batch_size=32,
    augment={"rotate": 0.0, "scale": 0.0, "translate": 0.0, "flip": False},
    workers=2,
)
TEXTS = dict(
    format=None,
    text_column="text",
    label_column="label",
    num_classes=None,
    vocab_size=100,
    min_frequency=1,
    max_length=32,
    eval_max_length=None,
    val_share=0.1,
    test_share=0.1,
    split_seed=0,
    max_bad_share=0.1,
    batch_size=8,
    eval_batch_size=32,
)


def images(path, tmp_path, **overrides):
    dm = ImageFolderDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), **{**IMAGES, **overrides})
    dm.prepare_data()
    dm.setup()
    return dm


def texts(path, tmp_path, **overrides):
    dm = TextTableDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), **{**TEXTS, **overrides})
    dm.prepare_data()
    dm.setup()
    return dm


# ---------------------------------------------------------------------------------------------------- image folders
def test_image_folder_is_decoded_once_split_per_class_and_normalised(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", per_class=30)
    with caplog.at_level(logging.INFO, logger="nnlab.data.images"):
        dm = images(root, tmp_path)
    assert dm.class_names == ("class_0", "class_1", "class_2")
    sizes = {s: len(dm.data[s][1]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 90 and min(sizes["val"], sizes["test"]) >= 4  # the broken file skipped
    assert dm.data["train"][1].bincount().min() >= 15  # each split by a hash of the path: about a tenth each
    assert dm.split["counts"] == sizes and "hash of each image's path (data.split_seed=0)" in dm.split["by"]
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert dm.data["train"][0].dtype == torch.uint8 and x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    whole = dm.on_after_batch_transfer((dm.data["train"][0], dm.data["train"][1]), 0)[0]
    assert whole.mean((0, 2, 3)).abs().max() < 1e-4 and (whole.std((0, 2, 3)) - 1).abs().max() < 1e-2
    log = caplog.text
    assert "91 images in 3 classes, 1 skipped as unusable, 24 converted to RGB, 90 resized to 16x16 (crop)" in log
    assert "1 of 91 image files (1.1%) are unusable" in log and "class_0/broken.png" in log
    assert "1 other file(s) ignored" in log and "notes.txt" in log
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nnlab.data.images"):
        again = images(root, tmp_path)
    assert "reading the decoded images" in caplog.text and "decoding" not in caplog.text
    assert torch.equal(again.data["test"][0], dm.data["test"][0])
    preprocessing = dm.preprocessing()
    assert preprocessing["kind"] == "image" and preprocessing["channels"] == 3 and len(preprocessing["mean"]) == 3


def test_image_cache_follows_the_files_and_settings_and_a_killed_write_is_never_read(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", per_class=12)
    images(root, tmp_path)
    caches = lambda: sorted((tmp_path / "cache").glob("images-*.pt"))
    assert len(caches()) == 1
    grey = images(root, tmp_path, channels=1)  # another setting: another cache
    assert grey.data["train"][0].shape[1] == 1 and len(caches()) == 2
    (root / "class_1" / "img0.png").unlink()  # a changed folder: another cache
    images(root, tmp_path)
    assert len(caches()) == 3
    stale = caches()[0]
    stale.rename(stale.with_name(f".{stale.name}.tmp999"))  # what a killed write leaves
    stale.parent.joinpath("images-0000000000000000.pt").write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, logger="nnlab.data.images"):
        images(root, tmp_path)
    assert "reading the decoded images" in caplog.text


def test_train_val_test_folders_are_used_as_given(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=12, splits=True)
    dm = images(root, tmp_path)
    assert len(dm.data["test"][1]) == 3 * 4  # test/ as it is
    assert all(p.startswith("train/") for p in dm.paths["val"]) and len(dm.data["val"][1]) >= 1  # val from train/
    assert dm.split["by"].startswith("test/ as given; val carved from training")


def where_each_is(paths: dict) -> dict:
    """{file: its split} from a data module's `paths` (or `texts`) per split."""
    return {item: split for split, items in paths.items() for item in items}


def test_adding_or_removing_images_moves_only_those_images(tmp_path):
    """Each image's split depends on its path alone: a grown folder keeps every old test image out of training."""
    from PIL import Image

    root = make_image_folder(tmp_path / "imgs", per_class=40)
    before = where_each_is(images(root, tmp_path).paths)
    for i in range(25):  # new images in a class; others removed
        Image.new("RGB", (32, 32), (i * 9, 200, 30)).save(root / "class_1" / f"new{i}.png")
    removed = sorted((root / "class_2").glob("img*.png"))[:6]
    for path in removed:
        path.unlink()
    grown = images(root, tmp_path)
    after = where_each_is(grown.paths)
    kept = set(before) - {f"class_2/{p.name}" for p in removed}
    assert {f: after[f] for f in kept} == {f: before[f] for f in kept}  # nothing that stayed moved
    assert {f"class_1/new{i}.png" for i in range(25)} <= set(after) and not set(after) - kept - {
        f"class_1/new{i}.png" for i in range(25)
    }
    assert (
        grown.split["digest"]
        != images(make_image_folder(tmp_path / "as_before", per_class=40), tmp_path).split["digest"]
    )
    other_seed = where_each_is(images(root, tmp_path, split_seed=1).paths)
    assert other_seed != after  # data.split_seed draws another split


def test_adding_rows_to_a_table_moves_only_those_rows_and_equal_rows_share_a_split(tmp_path):
    from tokenizers import Tokenizer

    def rows(dm) -> dict:  # {split: the texts, read back through the vocabulary (every word is in it)}
        tokenizer = Tokenizer.from_str(dm.cache["tokenizer"])
        offsets = {s: dm.cache[s]["offsets"].tolist() for s in ("train", "val", "test")}
        return {s: [tokenizer.decode(dm.cache[s]["ids"][a:b].tolist()) for a, b in itertools.pairwise(o)]
                for s, o in offsets.items()}  # fmt: skip

    path = make_text_table(tmp_path / "t.csv", rows=90)
    before = where_each_is(rows(texts(path, tmp_path, vocab_size=1000)))
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(f"Text {i}: a wonderful moving film,good\n" for i in range(90, 120))
        f.writelines(["Twice the same row,bad\n"] * 2)
    after = rows(texts(path, tmp_path, vocab_size=1000))
    placed = where_each_is(after)
    assert sum(map(len, after.values())) == 122
    assert {t: placed[t] for t in before} == before  # no row that was there moved
    twice = [s for s, texts_ in after.items() for t in texts_ if t == "twice the same row"]
    assert len(twice) == 2 and twice[0] == twice[1]  # equal rows: one split, never one in training and one tested


@pytest.mark.parametrize(
    "damage,message",
    [
        ("empty_class", "class folder .*class_2 holds no image files"),
        ("one_class", "holds one class folder \\(class_0\\): a classifier needs two or more classes"),
        ("unknown_test_class", "test holds class folder\\(s\\) \\['class_9'\\] that .*train does not"),
        ("mostly_broken", "are unusable and were skipped.*more than data.max_bad_share=0.1"),
        ("no_folder", "data.path=.* is not a folder"),
    ],
)
def test_bad_image_folders_are_named_and_nothing_is_cached(tmp_path, damage, message):
    root = make_image_folder(tmp_path / "imgs", per_class=6, splits=damage == "unknown_test_class")
    if damage == "empty_class":
        shutil.rmtree(root / "class_2")
        (root / "class_2").mkdir()
    elif damage == "one_class":
        shutil.rmtree(root / "class_1")
        shutil.rmtree(root / "class_2")
    elif damage == "unknown_test_class":
        shutil.copytree(root / "test" / "class_0", root / "test" / "class_9")
    elif damage == "mostly_broken":
        for path in list((root / "class_1").glob("*.png"))[:4]:
            path.write_bytes(b"GIF89a broken")
    elif damage == "no_folder":
        root = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=message):
        images(root, tmp_path)
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_mixed_sizes_and_modes_are_converted_and_grey_images_become_one_channel(tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path / "imgs", per_class=8)
    Image.new("RGBA", (50, 20), (255, 0, 0, 0)).save(root / "class_1" / "transparent.png")  # onto white
    Image.new("P", (10, 10)).save(root / "class_2" / "palette.bmp")
    dm = images(root, tmp_path, channels=1, fit="stretch")
    assert dm.data["train"][0].shape[1:] == (1, 16, 16)
    from nnlab.data.images import load_image

    pixels, problem, converted, resized, _ = load_image(root / "class_1" / "transparent.png", 3, 16, "crop")
    assert problem is None and converted and resized and pixels.min() == 255  # transparent is white, not black


# ------------------------------------------------------------------------------------------------------ text tables
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_text_tables_in_every_format_give_the_same_splits_and_classes(tmp_path, fmt):
    path = make_text_table(tmp_path / f"reviews.{fmt}", rows=60, fmt=fmt)
    dm = texts(path, tmp_path)
    assert dm.class_names == ("bad", "good", "meh")
    # each row placed by a hash of its text: the same split whatever the format
    assert {s: len(dm.labels[s]) for s in ("train", "val", "test")} == {"train": 48, "val": 4, "test": 8}
    (tokens, lengths), y = next(iter(dm.train_dataloader()))
    assert tokens.dtype == torch.int64 and lengths.max() <= 32 and len(y) == 8
    assert dm.preprocessing()["class_names"] == ["bad", "good", "meh"]


def test_integer_labels_keep_numeric_order_and_split_files_are_used_as_given(tmp_path):
    folder = tmp_path / "table"
    make_text_table(folder / "train.csv", rows=40, labels=(10, 2, 1))
    make_text_table(folder / "dev.jsonl", rows=9, fmt="jsonl", labels=(10, 2, 1))
    make_text_table(folder / "test.tsv", rows=12, fmt="tsv", labels=(10, 2, 1))
    dm = texts(folder, tmp_path)
    assert dm.class_names == ("1", "2", "10")
    assert {s: len(dm.labels[s]) for s in ("train", "val", "test")} == {"train": 40, "val": 9, "test": 12}


def test_text_cache_is_reused_and_follows_the_file(tmp_path, caplog):
    path = make_text_table(tmp_path / "reviews.csv", rows=30)
    texts(path, tmp_path)
    with caplog.at_level(logging.INFO, logger="nnlab.data.text_table"):
        texts(path, tmp_path)
    assert "reading the tokenised texts" in caplog.text
    make_text_table(path, rows=33)
    texts(path, tmp_path)
    assert len(list((tmp_path / "cache").glob("text-*.pt"))) == 2


def write(path, content: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    "table,message",
    [
        (
            "review,stars\nfine,1\nbad,0\n",
            "has no column 'text', 'label'; its columns are \\['review', 'stars'\\]: set "
            "data.text_column=<column> and data.label_column=<column>",
        ),
        ("text,label\n" + "same label,x\n" * 10, "has one label \\(x\\) in column 'label'"),
        ("text,label\n" + ",a\n,b\n" * 5 + "fine,a\n", "rows .* were skipped.*line 2 \\(empty text\\)"),
        ('{"text": "a"}\nnot json\n', "has no column 'label'"),
    ],
)
def test_bad_text_tables_are_named(tmp_path, table, message):
    with pytest.raises(DatasetError, match=message):
        texts(write(tmp_path / ("t.jsonl" if table.startswith("{") else "t.csv"), table), tmp_path)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_a_label_training_never_saw_is_named(tmp_path):
    folder = tmp_path / "table"
    make_text_table(folder / "train.csv", rows=30, labels=("good", "bad"))
    make_text_table(folder / "test.csv", rows=6, labels=("good", "bad", "meh"))
    with pytest.raises(DatasetError, match="test.csv has label\\(s\\) \\['meh'\\] that .*train.csv never has"):
        texts(folder, tmp_path)


def test_a_class_of_one_and_a_few_bad_rows_warn_and_train(tmp_path, caplog):
    rows = (
        "text,label\n"
        + "".join(f"nice film {i},good\nawful film {i},bad\n" for i in range(20))
        + "odd one,rare\n,good\n"
    )
    with caplog.at_level(logging.WARNING):
        dm = texts(write(tmp_path / "t.csv", rows), tmp_path)
    assert dm.class_names == ("bad", "good", "rare")
    assert "label(s) ['rare'] have fewer than 2 training rows" in caplog.text
    assert "1 of 42 rows (2.4%) were skipped" in caplog.text and "line 43 (empty text)" in caplog.text


# ----------------------------------------------------------------------------------------------------- end to end
def run_args(run_dir, data):
    return [
        f"hydra.run.dir={run_dir}",
        f"data.path={data}",
        f"paths.data_dir={run_dir.parent / 'data'}",
        "trainer.max_epochs=2",
        "logger=csv",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_models_train_on_an_image_folder_and_predict_from_the_checkpoint_alone(tmp_path, model):
    root = make_image_folder(tmp_path / "imgs", per_class=20)
    run = tmp_path / "run"
    train(f"model={model}", "data=image_folder", "data.image_size=24", "data.channels=1", *run_args(run, root))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] is not None and (run / "confusion_matrix.png").is_file()
    ckpt = run / "checkpoints" / "best.ckpt"
    stored = torch.load(ckpt, weights_only=True)["preprocessing"]
    assert stored["class_names"] == ["class_0", "class_1", "class_2"] and stored["image_size"] == 24
    evaluation = tmp_path / "eval"  # the checkpoint names its data: the folder and its settings, not MNIST
    train("train=false", f"ckpt_path={ckpt}", f"hydra.run.dir={evaluation}", "logger=csv")
    assert json.loads((evaluation / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    shutil.copy(root / "class_2" / "img2.png", tmp_path / "new.png")
    shutil.rmtree(root)  # the checkpoint alone
    proc = predict(ckpt, tmp_path / "new.png", tmp_path / "missing.jpg", check=False)
    assert proc.returncode == 1 and proc.stdout.count("class_") == 3 and "missing.jpg is not a file" in proc.stderr


@pytest.mark.slow
def test_lstm_trains_on_a_text_table_and_predicts_from_the_checkpoint_alone(tmp_path):
    table = make_text_table(tmp_path / "reviews.jsonl", rows=90, fmt="jsonl")
    run = tmp_path / "run"
    train(
        "model=lstm",
        "data=text_table",
        "data.vocab_size=200",
        "data.min_frequency=1",
        "model.arch.embed_dim=16",
        "model.arch.hidden=16",
        *run_args(run, table),
    )
    rows = (run / "test_samples.csv").read_text().splitlines()
    tested = json.loads((run / "run.json").read_text())["split"]["counts"]["test"]
    assert rows[0] == "text,label,prediction,confidence,correct" and len(rows) == 1 + tested
    table.unlink()
    out = predict(run / "checkpoints" / "best.ckpt", "a dull boring mess", "great acting").stdout.splitlines()
    assert len(out) == 2 and all(line.split()[0] in ("bad", "good", "meh") for line in out)


@pytest.mark.slow
def test_a_missing_data_path_is_one_line(tmp_path):
    proc = train("model=cnn", "data=image_folder", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1 and "data.path" in proc.stderr and "Traceback" not in proc.stderr


def test_a_cache_file_planted_as_a_link_is_refused_and_not_written_through(tmp_path):
    from nnlab.atomic import LinkError

    path = make_text_table(tmp_path / "t.csv", rows=30)
    texts(path, tmp_path)
    (cache,) = (tmp_path / "cache").glob("text-*.pt")
    victim = tmp_path / "victim"
    victim.write_bytes(b"mine")
    cache.unlink()
    cache.symlink_to(victim)
    with pytest.raises(LinkError, match=f"cache file {cache} is a symbolic link \\(to {victim}\\)"):
        texts(path, tmp_path)
    assert victim.read_bytes() == b"mine"


def test_a_huge_image_is_said_in_one_line_of_ours(tmp_path, caplog):
    from PIL import Image

    root = make_image_folder(tmp_path / "imgs", per_class=10)
    Image.new("L", (10_000, 10_000), 40).save(root / "class_2" / "huge.png")  # 100 million pixels
    with caplog.at_level(logging.WARNING):
        dm = images(root, tmp_path)
    assert "1 image(s) of more than 89 million pixels were decoded and shrunk to 16x16" in caplog.text
    assert "class_2/huge.png (10000x10000)" in caplog.text and "DecompressionBomb" not in caplog.text
    assert "class_2/huge.png" in [p for s in dm.paths.values() for p in s]


def test_a_split_too_small_for_its_share_takes_an_item_and_says_so(tmp_path, caplog):
    rows = "text,label\n" + "".join(f"nice film number {i},good\nawful film number {i},bad\n" for i in range(3))
    with caplog.at_level(logging.WARNING):
        dm = texts(write(tmp_path / "t.csv", rows), tmp_path, val_share=0.05, test_share=0.05)
    assert len(dm.labels["val"]) >= 1 and len(dm.labels["test"]) >= 1
    assert "are too few for data." in caplog.text and "was moved there from" in caplog.text
