"""Image folders of your own: torchvision's ImageFolder layout, decoded once into one uint8 tensor cache.

Layout: <path>/<class>/<image>, or <path>/{train,val,test}/<class>/<image> (val/ and test/ optional: what is missing
is carved from train/ with data.split_seed). Images are PNG, JPEG, BMP, TIFF, WebP, PPM or PGM files
(torchvision's IMG_EXTENSIONS), of any size and mode: each becomes `channels` channels (1 grey, 3 RGB) of
`image_size` x `image_size` pixels, decoded with a thread per CPU, and the whole set is cached in one file.
"""

import hashlib
import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from nnlab import inputs
from nnlab.atomic import atomic_open
from nnlab.data import (
    check_shares,
    files_fingerprint,
    fingerprints,
    hashed_split,
    read_cache,
    split_record,
    writable_cache_dir,
)
from nnlab.data.batches import SplitLoaders, TensorBatches, placement
from nnlab.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's IMG_EXTENSIONS
SPLITS = ("train", "val", "test")
FITS = ("crop", "stretch")
CACHE_VERSION = 2  # 2: splits by hash, with their record and each image's fingerprint


def load_image(path, channels: int, size: int, fit: str):
    """nnlab.inputs.load_image with the pixels as a (channels, size, size) uint8 tensor."""
    pixels, *rest = inputs.load_image(path, channels, size, fit)
    return (None if pixels is None else torch.from_numpy(pixels), *rest)


def random_affine(x, rotate: float, scale: float, translate: float, fill, flip: bool = False):
    """Independent small rotation (degrees), zoom (fraction) and shift (pixels) for every image of a batch, and with
    flip a left-right mirror of a random half; `fill` (a number, or one per channel) is what uncovered pixels get."""
    b, c, h, _ = x.shape
    if flip:
        x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(-1), x)
    if not (rotate or scale or translate):
        return x
    u = lambda *s: torch.rand(*s, device=x.device) * 2 - 1  # noqa: E731  uniform in [-1, 1)
    angle = u(b) * math.radians(rotate)
    zoom = 1 + u(b) * scale
    shift = u(b, 2) * translate * 2 / h  # pixels -> affine_grid's [-1, 1] coordinates
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    # grid_sample pads with zeros; shift so the padding is the background value instead.
    return F.grid_sample(x - fill, grid, align_corners=False) + fill


def list_classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under a class folder (any depth), and the other files there (not hidden ones)."""
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            (images if path.suffix.lower() in SUFFIXES else others).append(path)
    return images, others


def find_layout(root: Path) -> tuple[dict[str, Path], list[str]]:
    """The split folders ({"train": root} for a plain class-folder layout) and the classes (training's folders)."""
    if not root.is_dir():
        raise DatasetError(f"data.path={root} is not a folder; point it at a folder of class folders "
                           "(<class>/<image>.png) or of train/, val/ and test/ holding them")
    splits = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in splits:
        if splits:
            raise DatasetError(f"{root} holds {', '.join(f'{s}/' for s in splits)} but no train/: put the training "
                               "images in train/<class>/, or the class folders directly in the folder")
        splits = {"train": root}
    classes = list_classes(splits["train"])
    if not classes:
        raise DatasetError(f"{splits['train']} holds no class folders: one folder per class of images, "
                           "<class>/<image>.png (torchvision's ImageFolder layout)")
    if len(classes) == 1:
        raise DatasetError(f"{splits['train']} holds one class folder ({classes[0]}): a classifier needs two or "
                           "more classes, each a folder of its images")
    for split, folder in splits.items():
        if unknown := sorted(set(list_classes(folder)) - set(classes)):
            raise DatasetError(f"{folder} holds class folder(s) {unknown} that {splits['train']} does not: a class "
                               f"never trained on cannot be {'validated' if split == 'val' else 'tested'}; add its "
                               "training images or remove the folder")
    return splits, classes


def build(root: Path, channels: int, image_size: int, fit: str, shares: dict, seed: int, max_bad_share: float,
          workers: int) -> dict:
    """Decode every image: {"classes", "train"|"val"|"test": {"images" (N, C, S, S) uint8, "labels", "paths"},
    "mean", "std"}. Bad files are skipped and named; more than max_bad_share of them stop the run."""
    splits, classes = find_layout(root)
    files, others = {}, []
    for split, folder in splits.items():
        files[split] = []
        for label, name in enumerate(classes):
            if not (folder / name).is_dir():
                continue
            images, extra = list_images(folder / name)
            others += extra
            if not images and split == "train":
                raise DatasetError(f"class folder {folder / name} holds no image files ({', '.join(SUFFIXES)}): "
                                   "add its images or remove the folder")
            files[split] += [(path, label) for path in images]
    decoded = decode_all([p for split in files.values() for p, _ in split], channels, image_size, fit, workers)
    results = iter(decoded)
    out, bad, converted, resized = {"classes": classes}, [], 0, 0
    for split, items in files.items():
        kept = []
        for (path, label), (pixels, problem, conv, res) in zip(items, results):
            if problem:
                bad.append((path, problem))
                continue
            kept.append((pixels, label, str(path.relative_to(root))))
            converted, resized = converted + conv, resized + res
        out[split] = kept
    total = sum(len(items) for items in files.values())
    log.info(f"{root}: {total} images in {len(classes)} classes, {len(bad)} skipped as unusable, {converted} "
             f"converted to {'grey' if channels == 1 else 'RGB'}, {resized} resized to {image_size}x{image_size} "
             f"({fit}); {len(others)} other file(s) ignored{f' {[str(p) for p in others[:3]]}' if others else ''}")
    if bad:
        share = len(bad) / max(total, 1)
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:5])
        message = f"{len(bad)} of {total} image files ({share:.1%}) are unusable and were skipped, first: {listing}"
        if share > max_bad_share:
            raise DatasetError(f"{message}. That is more than data.max_bad_share={max_bad_share}: repair or remove "
                               "them, or raise data.max_bad_share to train on the rest.")
        log.warning(message)
    missing = {s: shares[s] for s in ("val", "test") if s not in splits}
    if missing:  # carved from the training images by a hash of each one's path in its class folder
        pool = out["train"]
        keys = [os.path.relpath(root / path, splits["train"]) for _, _, path in pool]
        index, notes = hashed_split(keys, [label for _, label, _ in pool], missing, seed)
        for note in notes:
            log.warning(f"{root}: {note}")
        for split, rows in index.items():
            out[split] = [pool[i] for i in rows]
    for split in SPLITS:
        items = out[split]
        out[split] = {"images": torch.stack([p for p, _, _ in items]) if items else
                      torch.zeros(0, channels, image_size, image_size, dtype=torch.uint8),
                      "labels": torch.tensor([label for _, label, _ in items], dtype=torch.int64),
                      "paths": [path for _, _, path in items]}
        out[split]["fingerprints"] = fingerprints(out[split]["images"])
    given = [f"{s}/" for s in SPLITS if s in splits and s != "train"]
    how = (f"{' and '.join(given)} as given" if given else "") + ("; " if given and missing else "") + (
        f"{' and '.join(missing)} carved from training by a hash of each image's path (data.split_seed={seed})"
        if missing else "")
    out["split"] = split_record({s: out[s]["paths"] for s in SPLITS}, seed if missing else None, how)
    counts = torch.bincount(out["train"]["labels"], minlength=len(classes))
    if few := [classes[i] for i in range(len(classes)) if counts[i] < 2]:
        log.warning(f"class(es) {few[:5]} have fewer than 2 usable training images: they are trained on but hardly "
                    f"learnt (add images to {splits['train']}/<class>/)")
    for split in ("val", "test"):
        if not len(out[split]["labels"]):
            raise DatasetError(f"the {split} split of {root} holds no images: give {split}/ images, or enough "
                               f"images per class for data.{split}_share={shares[split]} to take some")
    pixels = out["train"]["images"].float() / 255
    out["mean"] = pixels.mean((0, 2, 3)).tolist()
    out["std"] = pixels.std((0, 2, 3)).clamp_min(1e-3).tolist()
    return out


def decode_all(paths: list[Path], channels: int, size: int, fit: str, workers: int) -> list:
    """load_image() over many files in `workers` threads (PIL releases the GIL while it decodes and resizes).

    PIL warns about an image of more than 89 million pixels (a "decompression bomb"); such images are decoded, each
    said once in a line of ours, and images over twice that are refused by PIL and skipped as unusable."""
    from PIL import Image

    work = lambda p: load_image(p, channels, size, fit)  # noqa: E731
    with warnings.catch_warnings():  # set once for all the threads, not in each
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if workers <= 1:
            results = [work(p) for p in paths]
        else:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(work, paths))
    huge = [(p, r[4]) for p, r in zip(paths, results) if r[4]]
    if huge:
        listing = ", ".join(f"{p} ({w}x{h})" for p, (w, h) in huge[:3])
        log.warning(f"{len(huge)} image(s) of more than {Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels were "
                    f"decoded and shrunk to {size}x{size}: {listing}{', ...' if len(huge) > 3 else ''}")
    return [r[:4] for r in results]


def load_or_build_cache(root: Path, cache_dir: Path, workers: int, **settings) -> dict:
    """The decoded images, read from `cache_dir` when a cache for these settings and files exists; else built and
    written under a temporary name, renamed when complete (a killed run's cache is never read)."""
    every = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    key = ":".join(f"{k}={settings[k]}" for k in sorted(settings))
    key += f":{CACHE_VERSION}:{files_fingerprint(every, root)}"
    path = Path(cache_dir) / f"images-{hashlib.sha1(f'{root.resolve()}:{key}'.encode()).hexdigest()[:16]}.pt"
    if (cached := read_cache(path, ("classes", "train", "val", "test", "mean", "std", "split"))) is not None:
        log.info(f"reading the decoded images from {path}")
        return cached
    log.info(f"decoding the images of {root} ({', '.join(f'{k}={v}' for k, v in sorted(settings.items()))})")
    built = build(root, workers=workers, **settings)
    with atomic_open(path) as f:
        torch.save(built, f)
    return built


class ImageFolderDataModule(SplitLoaders, L.LightningDataModule):
    """Your own images in class folders, held in memory as uint8 (on the GPU when training there), normalised per
    channel with the training split's mean and deviation, augmented on whole batches on the device."""

    kind = "image"
    augmentation_off = ("augment.rotate=0", "augment.scale=0", "augment.translate=0", "augment.flip=false")

    def __init__(
        self,
        path: str,
        num_classes: int | None,
        channels: int,
        image_size: int,
        fit: str,
        cache_dir: str,
        val_share: float,
        test_share: float,
        split_seed: int,
        max_bad_share: float,
        batch_size: int,
        eval_batch_size: int,
        augment: dict,
        workers: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels}: images are read as 1 (grey) or 3 (RGB) channels")
        if not (isinstance(image_size, int) and image_size >= 4):
            raise ConfigError(f"data.image_size={image_size}: give the side in pixels, 4 or more")
        if fit not in FITS:
            raise ConfigError(f"data.fit={fit!r} is not one of {', '.join(FITS)}")
        check_shares(self.hparams, "images")
        self.root = Path(path).expanduser()

    def class_names_found(self) -> list[str]:
        """The classes (the training class folders), known before any decoding."""
        return find_layout(self.root)[1]

    def _cache(self):
        hp = self.hparams
        return load_or_build_cache(self.root, writable_cache_dir(hp.cache_dir),
                                   workers=hp.workers or os.cpu_count() or 1,
                                   channels=hp.channels, image_size=hp.image_size, fit=hp.fit,
                                   shares={"val": hp.val_share, "test": hp.test_share}, seed=hp.split_seed,
                                   max_bad_share=hp.max_bad_share)

    def prepare_data(self):
        # One process per node decodes; the others wait, then read the cache.
        self._cache()

    def setup(self, stage=None):
        if hasattr(self, "data"):
            return
        cache = self._cache()
        self.class_names = tuple(cache["classes"])
        n = self.hparams.num_classes
        if n is not None and n != len(self.class_names):
            raise ConfigError(f"data.num_classes={n} but {self.root} holds {len(self.class_names)} class folders "
                              f"{list(self.class_names)[:10]}; set data.num_classes=null to take them from the data")
        self.mean, self.std = cache["mean"], cache["std"]
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        # uint8 in memory (a quarter of float32's); each batch is scaled on the device (on_after_batch_transfer).
        self.data = {split: (cache[split]["images"].to(device), cache[split]["labels"].to(device)) for split in SPLITS}
        self.paths = {split: cache[split]["paths"] for split in SPLITS}
        self.split = cache["split"]
        self._fingerprints = {split: cache[split]["fingerprints"] for split in SPLITS}
        mean = torch.tensor(self.mean, device=device)[:, None, None]
        std = torch.tensor(self.std, device=device)[:, None, None]
        self.scale = (std * 255, mean / std)

    def fingerprints(self, split: str):
        """Each image of a split as a 64-bit number (nnlab.data.fingerprints of its pixels as decoded)."""
        return self._fingerprints[split]

    def preprocessing(self) -> dict:
        """What turns an image file into the model's input, stored in every checkpoint (nnlab.predict reads it)."""
        hp = self.hparams
        return {"kind": "image", "channels": hp.channels, "image_size": hp.image_size, "fit": hp.fit,
                "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names)}

    def _batches(self, split, batch_size, shuffle):
        x, y = self.data[split]
        return TensorBatches(x, y, batch_size, shuffle, **placement(self.trainer))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        scale, shift = self.scale
        x = x.float() / scale - shift  # (x / 255 - mean) / std
        aug = self.hparams.augment
        if self.trainer is not None and self.trainer.training and any(aug.values()):
            x = random_affine(x, **aug, fill=-shift.flatten())  # uncovered pixels black
        return x, y
