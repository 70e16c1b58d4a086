"""Speech Commands preparation: splits from the lists, both label sets, bad files, the cache, augmentation."""

import logging
import shutil

import numpy as np
import pytest
import torch

from nnlab.data import DatasetError
from nnlab.data.speech import (
    FOLDER,
    SILENCE,
    UNKNOWN,
    SpeechCommandsDataModule,
    decode,
    load_or_build_cache,
    prepare_speech_commands,
)
from nnlab.inputs import wav_is_truncated
from tests.helpers import SPEECH_WORDS, make_speech_commands

SETTINGS = dict(
    num_classes=None,
    download=False,
    labels="folder",
    sample_rate=16000,
    clip_seconds=1.0,
    unknown_share=0.5,
    silence_share=0.25,
    split_seed=0,
    max_bad_share=0.05,
    batch_size=16,
    eval_batch_size=64,
    time_shift_ms=100.0,
    noise_prob=1.0,
    noise_level=0.1,
    workers=1,
)


def datamodule(data_dir, **overrides):
    dm = SpeechCommandsDataModule(
        data_dir=str(data_dir), cache_dir=str(data_dir / "cache"), **{**SETTINGS, **overrides}
    )
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture
def tree(tmp_path):
    return make_speech_commands(tmp_path)


def test_folder_labels_are_the_words_found_and_lists_give_the_splits(tree, caplog):
    with caplog.at_level(logging.INFO, logger="nnlab.data.speech"):
        dm = datamodule(tree)
    assert dm.class_names == tuple(sorted(SPEECH_WORDS)) == tuple(dm.class_names_found())
    sizes = {split: len(dm.cache[split]["labels"]) for split in ("train", "val", "test")}
    assert sizes == {"train": 5 * 4 * 4 + 1, "val": 20, "test": 20}  # + the stereo clip; the corrupt one skipped
    assert dm.cache["train"]["audio"].dtype == torch.int16 and dm.cache["train"]["audio"].shape[1] == 16000
    assert all(p.startswith("spk0_") for p in (path.split("/")[1] for path in dm.cache["test"]["paths"]))
    assert "1 stereo downmixed to mono, 1 resampled to 16000 Hz" in caplog.text
    assert "1 of 122 audio files (0.8%) are unusable" in caplog.text and "dog/spk9_nohash_1.wav" in caplog.text
    assert dm.preprocessing() == {
        "kind": "audio",
        "sample_rate": 16000,
        "samples": 16000,
        "class_names": sorted(SPEECH_WORDS),
    }


def test_decoding_in_threads_gives_the_same_clips(tree):
    serial = datamodule(tree).cache
    shutil.rmtree(tree / "cache")
    threaded = datamodule(tree, workers=3).cache
    for split in ("train", "val", "test"):
        assert torch.equal(serial[split]["audio"], threaded[split]["audio"])
        assert serial[split]["paths"] == threaded[split]["paths"]


def test_twelve_class_task_adds_unknown_and_silence(tree):
    dm = datamodule(tree, labels="v12")
    assert dm.class_names[-2:] == (UNKNOWN, SILENCE) and len(dm.class_names) == 12
    test = dm.cache["test"]["labels"].tolist()
    known = sum(t < 10 for t in test)
    assert known == 3 * 4  # yes, no, up: 4 takes of the test speaker each
    assert test.count(dm.class_names.index(UNKNOWN)) == round(0.5 * known)  # cat and dog clips
    assert test.count(dm.class_names.index(SILENCE)) == round(0.25 * known)
    silence = dm.cache["test"]["audio"][torch.tensor(test) == dm.class_names.index(SILENCE)]
    assert silence.abs().float().mean() > 0  # cut from the background noise


def test_all35_needs_the_35_words(tree):
    with pytest.raises(DatasetError, match="data.labels=all35 needs the 35 word folders.*data.labels=folder"):
        datamodule(tree, labels="all35")


def test_too_many_bad_files_stop_the_run_naming_them(tree):
    with pytest.raises(DatasetError, match=r"dog/spk9_nohash_1.wav \(unreadable.*data.max_bad_share=0.001"):
        datamodule(tree, max_bad_share=0.001)


def test_truncated_and_empty_files_are_recognised(tmp_path):
    import soundfile as sf

    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    assert not wav_is_truncated(path) and decode(str(path), 16000, 16000)[1] is None
    data = path.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert wav_is_truncated(tmp_path / "cut.wav") and decode(str(tmp_path / "cut.wav"), 16000, 16000)[1] == "truncated"
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    assert decode(str(tmp_path / "empty.wav"), 16000, 16000)[1] == "empty"
    assert decode(str(tmp_path / "missing.wav"), 16000, 16000)[1].startswith("unreadable")


def test_short_clips_are_centred_and_long_ones_keep_their_middle(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "short.wav", np.full(8000, 0.5, dtype=np.float32), 16000, subtype="PCM_16")
    clip = decode(str(tmp_path / "short.wav"), 16000, 16000)[0]
    assert clip[:4000].abs().max() == 0 and clip[4000:12000].min() > 0 and clip[12000:].abs().max() == 0
    sf.write(tmp_path / "long.wav", np.linspace(-0.5, 0.5, 32000, dtype=np.float32), 16000, subtype="PCM_16")
    clip = decode(str(tmp_path / "long.wav"), 16000, 16000)[0]
    assert len(clip) == 16000 and abs(int(clip[8000])) < 10  # the middle of the ramp


def test_cache_is_reused_rebuilt_on_change_and_never_read_half_written(tree, caplog):
    cache_dir = tree / "cache"
    settings = dict(
        labels="folder",
        sample_rate=16000,
        samples=16000,
        unknown_share=0.1,
        silence_share=0.1,
        seed=0,
        max_bad_share=0.05,
    )
    root = tree / FOLDER
    with caplog.at_level(logging.INFO, logger="nnlab.data.speech"):
        first = load_or_build_cache(tree, root, cache_dir, **settings)
        again = load_or_build_cache(tree, root, cache_dir, **settings)
    assert caplog.text.count("decoding the clips") == 1 and "reading the decoded clips" in caplog.text
    assert torch.equal(first["train"]["audio"], again["train"]["audio"]) and again["classes"] == first["classes"]
    assert len(list(cache_dir.glob("speech-*.pt"))) == 4  # train, val, test, noise
    # A run killed while writing leaves a part under a temporary name: the set is rebuilt.
    (test_part,) = cache_dir.glob("speech-*-test.pt")
    test_part.rename(cache_dir / f".{test_part.name}.tmp4242")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nnlab.data.speech"):
        load_or_build_cache(tree, root, cache_dir, **settings)
        load_or_build_cache(tree, root, cache_dir, **{**settings, "sample_rate": 8000})
    assert caplog.text.count("decoding the clips") == 2 and test_part.is_file()


def test_missing_data_is_named(tmp_path):
    with pytest.raises(DatasetError, match="data.download=false"):
        prepare_speech_commands(tmp_path / "nowhere", download=False)


def test_a_failed_download_is_named_and_leaves_no_folder(tmp_path, monkeypatch):
    # A proxy on a closed local port: torchaudio's download fails at once, as with no network.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(DatasetError, match=r"the download of Speech Commands into .* failed .*Extract"):
        prepare_speech_commands(tmp_path / "data", download=True)
    assert list(tmp_path.iterdir()) == []  # no data folder, no staging folder


def speakers(dm, split):
    return {path.split("/")[1].split("_nohash_")[0] for path in dm.cache[split]["paths"]}


def test_without_the_lists_the_splits_are_carved_by_speaker(tree, caplog):
    (tree / FOLDER / "testing_list.txt").unlink()
    with caplog.at_level(logging.INFO, logger="nnlab.data.speech"):
        dm = datamodule(tree, max_bad_share=0.1)
    assert speakers(dm, "val") == {"spk1"}  # validation_list.txt still names the validation clips
    assert len(speakers(dm, "test")) == 1 and not speakers(dm, "test") & (speakers(dm, "train") | {"spk1"})
    assert "no testing_list.txt: test (10%) carved from the clips by a hash of each speaker's name" in caplog.text
    (tree / FOLDER / "validation_list.txt").unlink()
    dm = datamodule(tree, max_bad_share=0.1)
    held = speakers(dm, "val") | speakers(dm, "test")
    assert len(held) >= 2 and not held & speakers(dm, "train")
    assert sum(len(dm.cache[s]["labels"]) for s in ("train", "val", "test")) == 5 * 6 * 4 + 1


def test_new_speakers_move_no_clip_that_was_there(tree):
    for name in ("testing_list.txt", "validation_list.txt"):
        (tree / FOLDER / name).unlink()
    placed = lambda dm: {p: s for s in ("train", "val", "test") for p in dm.cache[s]["paths"]}
    shares = dict(max_bad_share=0.1, val_share=0.3, test_share=0.3)  # 7 speakers: some fall in each split by hash
    before = placed(datamodule(tree, **shares))
    for word in SPEECH_WORDS:  # ten new speakers, two takes of every word each
        for s in range(10, 20):
            for take in range(2):
                folder = tree / FOLDER / word
                shutil.copy(folder / "spk2_nohash_0.wav", folder / f"new{s}_nohash_{take}.wav")
    grown = datamodule(tree, **shares)
    after = placed(grown)
    assert {p: after[p] for p in before} == before and len(after) == len(before) + 100
    assert "hash of each speaker's name" in grown.split["by"]


def test_without_speakers_in_the_names_the_splits_are_carved_by_file_per_word(tree, caplog):
    for name in ("testing_list.txt", "validation_list.txt"):
        (tree / FOLDER / name).unlink()
    for i, path in enumerate(sorted((tree / FOLDER).glob("[a-z]*/*.wav"))):
        path.rename(path.with_name(f"take{i}.wav"))
    with caplog.at_level(logging.INFO, logger="nnlab.data.speech"):
        dm = datamodule(tree, max_bad_share=0.1)
    assert "by a hash of each file's path (the names carry no <speaker>_nohash_" in caplog.text
    sizes = {split: len(dm.cache[split]["labels"]) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 5 * 6 * 4 + 1 and min(sizes["val"], sizes["test"]) >= 6  # about a tenth each


def test_augmentation_shifts_and_mixes_noise_in_training_only(tree):
    dm = datamodule(tree)
    x = dm.cache["train"]["audio"][:8]
    plain = x.float() / 32768
    shifted = dm.augment(plain)
    assert shifted.shape == plain.shape and not torch.equal(shifted, plain)
    dm.hparams.noise_prob = 0.0
    torch.manual_seed(0)
    only_shift = dm.augment(plain)
    # Without noise, each clip is itself moved by at most 100 ms (1,600 samples), silence shifted in.

    def moved(wave, s):
        out = torch.zeros_like(wave)
        if s >= 0:
            out[s:] = wave[: len(wave) - s]
        else:
            out[:s] = wave[-s:]
        return out

    for i in range(8):
        assert any(torch.equal(only_shift[i], moved(plain[i], s)) for s in range(-1600, 1601))
    assert torch.equal(dm.on_after_batch_transfer((x, None), 0)[0], plain)  # no trainer: not training


def test_a_clean_tree_without_noise_trains_without_mixing(tmp_path):
    make_speech_commands(tmp_path)
    shutil.rmtree(tmp_path / FOLDER / "_background_noise_")
    dm = datamodule(tmp_path)
    plain = dm.cache["train"]["audio"][:4].float() / 32768
    dm.hparams.time_shift_ms = 0.0
    assert torch.equal(dm.augment(plain), plain) and len(dm.noise) == 0


def test_a_damaged_cache_part_is_named_and_the_set_rebuilt(tree, caplog):
    settings = dict(
        labels="folder",
        sample_rate=16000,
        samples=16000,
        unknown_share=0.1,
        silence_share=0.1,
        seed=0,
        max_bad_share=0.05,
    )
    cache_dir, root = tree / "cache", tree / FOLDER
    first = load_or_build_cache(tree, root, cache_dir, **settings)
    (part,) = cache_dir.glob("speech-*-val.pt")
    part.write_bytes(part.read_bytes()[:200])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = load_or_build_cache(tree, root, cache_dir, **settings)
    assert f"cache {part} is damaged" in caplog.text and "decoding the clips" in caplog.text
    assert torch.equal(again["val"]["audio"], first["val"]["audio"])
    assert torch.equal(torch.load(part, weights_only=True)["audio"], first["val"]["audio"])
