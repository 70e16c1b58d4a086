"""Google Speech Commands v0.02, and any keyword set recorded in its layout.

Layout: <data_dir>/SpeechCommands/speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav, with
validation_list.txt and testing_list.txt beside the word folders and, optionally,
_background_noise_/*.wav. torchaudio's SPEECHCOMMANDS downloads it and lists the official splits;
the audio is read with soundfile (torchaudio's own loader needs TorchCodec and FFmpeg), decoded
once into one int16 tensor file per split under <data_dir>/cache, and batched from memory.
"""

import hashlib
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch

from nnlab import inputs
from nnlab.atomic import atomic_open, folders_kept_if_used
from nnlab.data import files_fingerprint, fingerprints, hashed_split, read_cache, split_record, writable_cache_dir
from nnlab.data.batches import SplitLoaders, TensorBatches, placement
from nnlab.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FOLDER = Path("SpeechCommands") / "speech_commands_v0.02"
ARCHIVE = "speech_commands_v0.02.tar.gz"
NOISE = "_background_noise_"
UNKNOWN, SILENCE = "_unknown_", "_silence_"
# The standard 12-class task: these ten words, every other word as _unknown_, and _silence_.
V12_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ALL35 = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
         "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila",
         "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
LABEL_SETS = ("folder", "all35", "v12")
SUBSETS = {"train": "training", "val": "validation", "test": "testing"}


def prepare_speech_commands(data_dir: Path, download: bool) -> Path:
    """Return the dataset folder, downloading and extracting it first (through torchaudio) if missing.

    torchaudio extracts into the final folder directly, so it works in a staging folder here that is
    renamed into place when complete: an interrupted download or extraction is never taken for data.
    """
    data_dir = Path(data_dir)
    root = data_dir / FOLDER
    if root.is_dir():  # validation_list.txt and testing_list.txt are optional: list_splits carves what is missing
        return root
    if not download:
        raise DatasetError(
            f"Speech Commands not found: {root.resolve()} does not exist and data.download=false. Extract the "
            f"dataset (or a set in its layout) there, or point data.data_dir (or NNLAB_DATA_DIR) at the folder "
            f"that holds {FOLDER}/."
        )
    from torchaudio.datasets import SPEECHCOMMANDS

    staging = data_dir / f".speech_commands.partial{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    archive = data_dir / ARCHIVE
    with folders_kept_if_used(data_dir):  # a failed download leaves no empty folder
        staging.mkdir(parents=True)
        try:
            if archive.is_file():  # a complete earlier download: torchaudio extracts it without downloading
                os.link(archive, staging / ARCHIVE)
            log.info(f"downloading and extracting Speech Commands v0.02 (2.3 GB) under {staging}")
            try:
                SPEECHCOMMANDS(staging, download=True)
            except Exception as e:
                raise DatasetError(
                    f"the download of Speech Commands into {data_dir.resolve()} failed ({e}). Extract "
                    f"speech_commands_v0.02.tar.gz into {root.resolve()} yourself, or retry."
                ) from e
            if not archive.is_file():
                os.replace(staging / ARCHIVE, archive)  # kept: a deleted dataset folder is extracted again offline
            root.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staging / FOLDER, root)
            except OSError:
                if not root.is_dir():  # else another process (a DDP rank) finished first: use its copy
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def classes_for(root: Path, labels: str) -> list[str]:
    """The class names of a label set: the word folders found (sorted), the 35 words, or the 12-class task."""
    if labels not in LABEL_SETS:
        raise ConfigError(f"data.labels={labels!r} is not one of {', '.join(LABEL_SETS)}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if labels == "v12":
        missing = [w for w in V12_WORDS if w not in found]
        if len(missing) == len(V12_WORDS):
            raise DatasetError(
                f"data.labels=v12 is Speech Commands' 12-class task, which classifies the word folders "
                f"{', '.join(V12_WORDS)}; {root} holds none of them (its words: {', '.join(found[:8])}"
                f"{', ...' if len(found) > 8 else ''}). Use data.labels=folder for a set of your own words"
            )
        if missing:
            log.warning(f"data.labels=v12: {root} has no folder for {missing}: those classes get no examples")
        return [*V12_WORDS, UNKNOWN, SILENCE]
    if labels == "all35":
        if missing := sorted(set(ALL35) - set(found)):
            raise DatasetError(
                f"data.labels=all35 needs the 35 word folders of Speech Commands v0.02; {root} lacks {missing}. "
                "Use data.labels=folder for a set of your own words."
            )
        return list(ALL35)
    if not found:
        raise DatasetError(f"{root} holds no word folders (<word>/<speaker>_nohash_<n>.wav)")
    return found


def decode(path: str, sample_rate: int, samples: int | None):
    """One clip as an int16 tensor of `samples` samples at `sample_rate`, mono; or the reason it is unusable.

    Returns (clip or None, problem or None, was_stereo, was_resampled). Shorter clips are padded with
    silence on both sides, longer ones keep their middle; samples=None keeps the whole file (nnlab.inputs)."""
    wave, problem, stereo, resampled = inputs.read_audio(path, sample_rate)
    if problem:
        return None, problem, False, False
    if samples is not None:
        wave = inputs.fit_length(wave, samples)
    return torch.from_numpy(inputs.as_int16(wave)), None, stereo, resampled


def decode_all(paths: list[str], sample_rate: int, samples: int, workers: int) -> list:
    """decode() over many files in `workers` threads (libsndfile and torch release the GIL while they work)."""
    if workers <= 1:
        return [decode(p, sample_rate, samples) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: decode(p, sample_rate, samples), paths))


def list_split(data_dir: Path, subset: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, word) of each clip torchaudio's SPEECHCOMMANDS lists for a subset, and the listed names
    it cannot parse (not <speaker>_nohash_<n>.wav)."""
    from torchaudio.datasets import SPEECHCOMMANDS

    dataset = SPEECHCOMMANDS(data_dir, download=False, subset=subset)
    clips, odd = [], []
    for i, path in enumerate(dataset._walker):
        try:
            relpath, _, word, _, _ = dataset.get_metadata(i)
        except ValueError:
            odd.append(path)
            continue
        clips.append((str(data_dir / "SpeechCommands" / relpath), word))
    return clips, odd


LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # what libsndfile reads


def list_splits(data_dir: Path, root: Path, shares: dict[str, float], seed: int) -> tuple[dict, str]:
    """{split: (clips [(path, word)], names it cannot parse)}, and how the split was made. With both lists:
    torchaudio's SPEECHCOMMANDS reads them. Without one or both: the clips the lists name keep their split, and each
    missing split is carved from the rest with `seed`, by speaker when every file is named <speaker>_nohash_<n> and
    there are 3 speakers or more (a speaker's clips all in one split, as in Speech Commands), otherwise by file."""
    if all((root / name).is_file() for name in LISTS.values()):
        listed = {split: list_split(data_dir, subset) for split, subset in SUBSETS.items()}
        return listed, f"{LISTS['val']} and {LISTS['test']} as given"
    clips = sorted((str(p), p.parent.name) for p in root.glob("*/*") if p.suffix.lower() in AUDIO_SUFFIXES
                   and not p.parent.name.startswith(("_", ".")) and not p.name.startswith("."))
    fixed = {}
    for split, name in LISTS.items():
        if (root / name).is_file():
            for line in (root / name).read_text().splitlines():
                if line.strip():
                    fixed[os.path.normpath(root / line.strip())] = split
    out = {split: [c for c in clips if fixed.get(os.path.normpath(c[0])) == split] for split in ("val", "test")}
    rest = [c for c in clips if os.path.normpath(c[0]) not in fixed]
    missing = {split: shares[split] for split, name in LISTS.items() if not (root / name).is_file()}
    speakers = sorted({Path(p).name.split("_nohash_")[0] for p, _ in rest})
    # Each speaker (or file) placed by a hash of its name alone, as Speech Commands places its speakers: adding or
    # removing clips moves only those clips.
    if all("_nohash_" in Path(p).name for p, _ in rest) and len(speakers) >= 3:
        index, notes = hashed_split(speakers, [0] * len(speakers), missing, seed)
        held = {speakers[i]: split for split, rows in index.items() for i in rows}
        for split in ("train", *missing):
            out[split] = [c for c in rest if held[Path(c[0]).name.split("_nohash_")[0]] == split]
        how = f"by a hash of each speaker's name ({len(speakers)} speakers)"
    else:
        words = sorted({w for _, w in rest})
        keys = [os.path.relpath(p, root) for p, _ in rest]
        index, notes = hashed_split(keys, [words.index(w) for _, w in rest], missing, seed)
        out.update({split: [rest[i] for i in rows] for split, rows in index.items()})
        how = "by a hash of each file's path (the names carry no <speaker>_nohash_, or fewer than 3 speakers)"
    log.info(f"{root}: no {' or '.join(LISTS[s] for s in missing)}: "
             f"{' and '.join(f'{s} ({share:.0%})' for s, share in missing.items())} carved from the clips {how}, "
             f"data.split_seed={seed}")
    for note in notes:
        log.warning(f"{root}: {note}")
    given = " and ".join(f"{LISTS[s]} as given" for s in LISTS if s not in missing)
    how = f"{given}; " * bool(given) + f"{' and '.join(missing)} carved {how} (data.split_seed={seed})"
    return {split: (out[split], []) for split in SUBSETS}, how


def fingerprint(root: Path) -> str:
    """Names, sizes and modification times of the clips and lists: a changed file changes the cache key."""
    clips = [p for p in root.glob("*/*") if p.suffix.lower() in AUDIO_SUFFIXES]
    return files_fingerprint([*clips, *root.glob("*_list.txt")], root)


def build_splits(data_dir: Path, root: Path, labels: str, sample_rate: int, samples: int, unknown_share: float,
                 silence_share: float, seed: int, max_bad_share: float, workers: int, val_share: float = 0.1,
                 test_share: float = 0.1) -> dict:
    """Decode every split: {"train"|"val"|"test": {"audio": (N, samples) int16, "labels": (N,), "paths"},
    "noise": (n,) int16, "classes": [...]}. Bad files are skipped and reported; too many stop the run."""
    classes = classes_for(root, labels)
    index = {c: i for i, c in enumerate(classes)}
    rng = random.Random(seed)
    noise_paths = sorted(str(p) for p in (root / NOISE).glob("*.wav"))
    noise_clips = [decode_noise(p, sample_rate) for p in noise_paths]
    noise = torch.cat([torch.zeros(0, dtype=torch.int16), *(n for n in noise_clips if n is not None)])
    out = {"classes": classes, "noise": noise}
    bad, total, stereo, resampled, odd_names = [], 0, 0, 0, []
    listings, how = list_splits(data_dir, root, {"val": val_share, "test": test_share}, seed)
    for split in SUBSETS:
        clips, odd = listings[split]
        odd_names += odd
        if labels == "v12":
            known = [(p, w) for p, w in clips if w in index]
            others = [(p, UNKNOWN) for p, w in clips if w not in index]
            rng.shuffle(others)
            clips = known + others[: round(unknown_share * len(known))]
        elif labels == "all35":
            clips = [(p, w) for p, w in clips if w in index]
        results = decode_all([p for p, _ in clips], sample_rate, samples, workers)
        keep = [(c, p, w) for (p, w), (c, problem, *_) in zip(clips, results) if problem is None]
        bad += [(p, problem) for (p, _), (_, problem, *_) in zip(clips, results) if problem is not None]
        stereo += sum(r[2] for r in results)
        resampled += sum(r[3] for r in results)
        total += len(clips)
        audio = torch.stack([c for c, _, _ in keep]) if keep else torch.zeros(0, samples, dtype=torch.int16)
        targets = [index[w] for _, _, w in keep]
        paths = [os.path.relpath(p, root) for _, p, _ in keep]
        if labels == "v12":
            n = round(silence_share * len([t for t in targets if t < len(V12_WORDS)]))
            audio = torch.cat([audio, silence_clips(noise, n, samples, rng)])
            targets += [index[SILENCE]] * n
            paths += [SILENCE] * n
        out[split] = {"audio": audio, "labels": torch.tensor(targets, dtype=torch.int64), "paths": paths,
                      "fingerprints": fingerprints(audio)}
    sizes = ", ".join(f"{split} {len(out[split]['labels'])}" for split in SUBSETS)
    log.info(
        f"{root}: {total} clips listed, {len(bad)} skipped as unusable, {stereo} stereo downmixed to mono, "
        f"{resampled} resampled to {sample_rate} Hz; {len(noise_paths)} background noise file(s); "
        f"{sizes} clips; {len(classes)} classes"
    )
    if odd_names:
        log.warning(f"{len(odd_names)} listed file(s) not named <speaker>_nohash_<n>.wav were left out: {odd_names[:3]}")
    if bad:
        share = len(bad) / max(total, 1)
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:5])
        message = f"{len(bad)} of {total} audio files ({share:.1%}) are unusable and were skipped, first: {listing}"
        if share > max_bad_share:
            raise DatasetError(
                f"{message}. That is more than data.max_bad_share={max_bad_share}: repair or remove them, or raise "
                "data.max_bad_share to train on the rest."
            )
        log.warning(message)
    for split in SUBSETS:
        if not len(out[split]["labels"]):
            raise DatasetError(f"the {split} split of {root} holds no usable clips; check the files and the lists")
    out["split"] = split_record({s: out[s]["paths"] for s in SUBSETS}, seed, how)
    return out


def decode_noise(path: str, sample_rate: int):
    """A whole background-noise file as int16 mono at `sample_rate`, or None (with a warning) if unusable."""
    clip, problem, _, _ = decode(path, sample_rate, None)
    if problem:
        log.warning(f"background noise {path} is {problem} and left out")
    return clip


def silence_clips(noise, n: int, samples: int, rng: random.Random):
    """n `_silence_` clips: one-second stretches of the background noise at a random volume (0-1),
    or digital silence when the set has no noise files."""
    clips = torch.zeros(n, samples, dtype=torch.int16)
    if len(noise) > samples:
        for i in range(n):
            start = rng.randrange(len(noise) - samples)
            clips[i] = (noise[start : start + samples].float() * rng.random()).round().to(torch.int16)
    return clips


CACHE_PARTS = ("train", "val", "test", "noise")
CACHE_VERSION = 2  # 2: splits by hash, with their record and each clip's fingerprint


def load_or_build_cache(data_dir: Path, root: Path, cache_dir: Path, workers: int = 1, **settings) -> dict:
    """The decoded splits, read from `cache_dir` when files for these settings and clips exist.

    One int16 tensor file per split (and one for the background noise), named by a hash of the
    settings and the files' names, sizes and times. Each is written under a temporary name and
    renamed when complete, and all four must be there to be read: a cache left by a killed run is
    rebuilt, never read, and a damaged one is named and rebuilt."""
    key = ":".join(f"{k}={settings[k]}" for k in sorted(settings)) + f":{fingerprint(root)}:{CACHE_VERSION}"
    stem = f"speech-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    paths = {part: Path(cache_dir) / f"{stem}-{part}.pt" for part in CACHE_PARTS}
    parts = {part: read_cache(p, ("audio", "split") if part == "noise" else ("audio", "labels", "paths", "classes"))
             for part, p in paths.items()}
    if all(part is not None for part in parts.values()):
        log.info(f"reading the decoded clips from {Path(cache_dir) / stem}-*.pt")
        return {**{s: parts[s] for s in SUBSETS}, "noise": parts["noise"]["audio"], "classes": parts["train"]["classes"],
                "split": parts["noise"]["split"]}
    log.info(f"decoding the clips of {root} ({', '.join(f'{k}={v}' for k, v in sorted(settings.items()))})")
    built = build_splits(data_dir, root, workers=workers, **settings)
    for part, path in paths.items():
        content = {"audio": built["noise"], "split": built["split"]} if part == "noise" else \
            {**built[part], "classes": built["classes"]}
        with atomic_open(path) as f:
            torch.save(content, f)
    return built


class SpeechCommandsDataModule(SplitLoaders, L.LightningDataModule):
    """Speech Commands clips as int16 tensors in memory (on the GPU when training there).

    labels: folder (the word folders found: a custom keyword set, or all 35 words of the full set) |
    all35 | v12 (yes, no, up, down, left, right, on, off, stop, go, _unknown_, _silence_).
    Training batches are augmented on the device: each clip shifted in time by up to
    `time_shift_ms` and, with probability `noise_prob`, mixed with a random stretch of the
    background noise at a volume drawn up to `noise_level`. Features are the model's business.
    """

    kind = "audio"
    augmentation_off = ("time_shift_ms=0", "noise_prob=0")  # scripts/benchmark.py; SpecAugment is the network's

    def __init__(
        self,
        num_classes: int | None,
        data_dir: str,
        cache_dir: str,
        download: bool,
        labels: str,
        sample_rate: int,
        clip_seconds: float,
        unknown_share: float,
        silence_share: float,
        split_seed: int,
        max_bad_share: float,
        batch_size: int,
        eval_batch_size: int,
        time_shift_ms: float,
        noise_prob: float,
        noise_level: float,
        workers: int | None = None,
        val_share: float = 0.1,
        test_share: float = 0.1,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        if labels not in LABEL_SETS:
            raise ConfigError(f"data.labels={labels!r} is not one of {', '.join(LABEL_SETS)}")

    @property
    def samples(self) -> int:
        return round(self.hparams.sample_rate * self.hparams.clip_seconds)

    def _cache(self):
        if getattr(self, "_built", None) is not None:  # prepare_data and setup read it once
            return self._built
        hp = self.hparams
        root = prepare_speech_commands(Path(hp.data_dir), hp.download)
        settings = dict(labels=hp.labels, sample_rate=hp.sample_rate, samples=self.samples,
                        unknown_share=hp.unknown_share, silence_share=hp.silence_share, seed=hp.split_seed,
                        max_bad_share=hp.max_bad_share, val_share=hp.val_share, test_share=hp.test_share)
        self._built = load_or_build_cache(Path(hp.data_dir), root, writable_cache_dir(hp.cache_dir),
                                          workers=hp.workers or os.cpu_count() or 1, **settings)
        return self._built

    def class_names_found(self) -> list[str]:
        """The classes, known before any decoding (the word folders, for labels=folder)."""
        hp = self.hparams
        return classes_for(prepare_speech_commands(Path(hp.data_dir), hp.download), hp.labels)

    def prepare_data(self):
        # One process per node downloads and decodes; the others wait, then read the cache.
        self._cache()

    def setup(self, stage=None):
        if hasattr(self, "cache"):
            return
        self.cache = self._cache()
        self.class_names = tuple(self.cache["classes"])
        n = self.hparams.num_classes
        if n is not None and n != len(self.class_names):
            raise ConfigError(
                f"data.num_classes={n} but data.labels={self.hparams.labels} gives {len(self.class_names)} classes "
                f"{list(self.class_names)}; set data.num_classes=null to take them from the data"
            )
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for split in SUBSETS:
            for key in ("audio", "labels"):
                self.cache[split][key] = self.cache[split][key].to(device)
        self.noise = self.cache["noise"].to(device)
        self.split = self.cache["split"]
        if self.hparams.noise_prob > 0 and len(self.noise) <= self.samples:
            log.info(f"no {NOISE} files in the data set: training mixes in no background noise")

    def fingerprints(self, split: str):
        """Each clip of a split as a 64-bit number (nnlab.data.fingerprints of its samples as decoded)."""
        return self.cache[split]["fingerprints"]

    def preprocessing(self) -> dict:
        """What turns a WAV file into the model's input, stored in every checkpoint."""
        return {"kind": "audio", "sample_rate": self.hparams.sample_rate, "samples": self.samples,
                "class_names": list(self.class_names)}

    def _batches(self, split, batch_size, shuffle):
        data = self.cache[split]
        return TensorBatches(data["audio"], data["labels"], batch_size, shuffle, **placement(self.trainer))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        x = x.float() / 32768  # int16 travels to the device; float32 in [-1, 1) from here
        if self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        return x, y

    def augment(self, x):
        """Random time shift (zeros shifted in) and background-noise mixing, on the batch's device."""
        hp, (batch, samples) = self.hparams, x.shape
        shift = round(hp.sample_rate * hp.time_shift_ms / 1000)
        if shift:
            offsets = torch.randint(-shift, shift + 1, (batch, 1), device=x.device)
            source = torch.arange(samples, device=x.device)[None, :] - offsets  # (B, samples)
            x = torch.where((source >= 0) & (source < samples), x.gather(1, source.clamp(0, samples - 1)), 0.0)
        if hp.noise_prob > 0 and len(self.noise) > samples:
            starts = torch.randint(0, len(self.noise) - samples, (batch, 1), device=x.device)
            noise = self.noise[starts + torch.arange(samples, device=x.device)[None, :]].float() / 32768
            volume = torch.rand(batch, 1, device=x.device) * hp.noise_level
            volume = volume * (torch.rand(batch, 1, device=x.device) < hp.noise_prob)
            x = x + volume * noise
        return x
