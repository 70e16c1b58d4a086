"""Data modules, and the caches they keep of prepared data."""

import logging
import os
import tempfile
from pathlib import Path

from nnlab.errors import DatasetError  # noqa: F401  (data modules raise it; nnlab.data.DatasetError is its old name)

log = logging.getLogger(__name__)


def read_cache(path: Path, keys: tuple[str, ...]):
    """A cache file written by this project, or None when it is missing or damaged (then it is rebuilt).

    Caches are written atomically, so a damaged one was hurt afterwards: a disk error, a copy cut short, a file
    replaced by hand. It is named in a warning and read no further."""
    path = Path(path)
    if not path.is_file():
        return None
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  truncated, random bytes, another format: any failure means rebuild
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        log.warning(f"cache {path} is damaged ({reason}): rebuilding it")
        return None
    if not isinstance(content, dict) or not set(keys) <= content.keys():
        log.warning(f"cache {path} does not hold what this version writes (keys {sorted(keys)}): rebuilding it")
        return None
    return content


def writable_cache_dir(wanted: Path) -> Path:
    """`wanted` if files can be written there (created if missing); else a folder under the user's cache
    (XDG_CACHE_HOME, ~/.cache), said in a warning: a dataset on a read-only mount keeps its cache elsewhere."""
    wanted = Path(wanted)
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=wanted):
            pass
        return wanted
    except OSError as e:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnlab"
        fallback = base / str(wanted.resolve()).strip("/").replace("/", "_")
        fallback.mkdir(parents=True, exist_ok=True)
        log.warning(f"cache folder {wanted} is not writable ({e.strerror}): keeping the cache in {fallback} instead "
                    "(set paths.cache_dir to choose)")
        return fallback


def check_shares(hparams, what: str):
    """data.val_share and data.test_share, the shares carved from `what` where the layout gives no split: 0 to 0.5."""
    from nnlab.errors import ConfigError

    for key in ("val_share", "test_share"):
        if not 0 <= hparams[key] < 0.5:
            raise ConfigError(f"data.{key}={hparams[key]}: the share carved from the {what} is 0 to 0.5")


def seeded_split(labels, shares: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices of `labels` for "train" and each split in `shares` ({"val": 0.1, "test": 0.1}, say), drawn per class
    with a generator seeded by `seed`: every split holds each class in proportion, and each class keeps at least one
    example in training (a class of one is trained on, never evaluated)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    out = {"train": [], **{name: [] for name in shares}}
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        start = 0
        for name, share in shares.items():
            take = min(round(share * len(order)), len(order) - start - 1)
            out[name] += order[start : start + max(take, 0)]
            start += max(take, 0)
        out["train"] += order[start:]
    return {name: sorted(index) for name, index in out.items()}


def files_fingerprint(paths, root) -> str:
    """A digest of the files' names (relative to `root`), sizes and modification times: a changed, added or removed
    file changes a cache's key."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted(paths):
        st = Path(path).stat()
        digest.update(f"{Path(path).relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
