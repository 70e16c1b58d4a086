"""Data modules, and the caches they keep of prepared data."""

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from nnlab.atomic import refuse_link
from nnlab.errors import DatasetError  # noqa: F401  (data modules raise it; nnlab.data.DatasetError is its old name)

log = logging.getLogger(__name__)


def read_cache(path: Path, keys: tuple[str, ...]):
    """A cache file written by this project, or None when it is missing or damaged (then it is rebuilt).

    Caches are written atomically, so a damaged one was hurt afterwards: a disk error, a copy cut short, a file
    replaced by hand. It is named in a warning and read no further."""
    path = Path(path)
    refuse_link(path, f"cache file {path}")
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


def split_fraction(key: str, seed: int) -> float:
    """Where `key` falls in [0, 1) for data.split_seed `seed`: the first 8 bytes of SHA-256 of both. A file, row or
    speaker keeps its place whatever else is added to or removed from the data (Speech Commands splits this way)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hashed_split(keys: list[str], labels, shares: dict[str, float], seed: int) -> tuple[dict[str, list[int]], list]:
    """Indices of the items for "train" and each split in `shares` ({"val": 0.1, "test": 0.1}, say), each item placed
    by its key alone (split_fraction): below 0.1 validates, 0.1 to 0.2 tests, the rest trains. Adding or removing
    items moves only those items, and items with the same key (a table row twice) share a split.

    On data so small that no item falls in a split, that split takes the item that falls lowest from another
    evaluation split with two or more, else from training; only such a split can change when data is added, and the
    returned notes (which the caller logs as warnings) say so. A class whose items all fall outside training is not
    learnt; the data modules warn about classes with fewer than 2 training items."""
    where = [split_fraction(k, seed) for k in keys]
    bounds, edge = [], 0.0
    for name, share in shares.items():
        edge += share
        bounds.append((edge, name))
    placed = [next((name for top, name in bounds if u < top), "train") for u in where]
    notes = []
    for name, share in shares.items():
        if share <= 0 or name in placed:
            continue
        others = [n for n in shares if n != name and placed.count(n) >= 2]
        source = others[0] if others else "train"
        pool = [i for i, p in enumerate(placed) if p == source]
        if len(pool) >= 2:
            take = min(pool, key=lambda i: (where[i], keys[i]))
            placed[take] = name
            notes.append(
                f"no item fell in {name} by the hash of its name ({len(keys)} are too few for "
                f"data.{name}_share={share}): {keys[take]} was moved there from {source}"
                + (", so this split may change when data is added" if source == "train" else "")
            )
    out = {"train": [], **{name: [] for name in shares}}
    for i, name in enumerate(placed):
        out[name].append(i)
    return out, notes


def split_record(keys: dict[str, list[str]], seed: int | None, by: str) -> dict:
    """What a split was, for checkpoints and run.json: how items were placed, the counts, and a digest of which item
    went where (equal digests: the same split)."""
    digest = hashlib.sha256()
    for split in sorted(keys):
        for key in sorted(keys[split]):
            digest.update(f"{split}\0{key}\n".encode())
    return {"by": by, "seed": seed, "counts": {s: len(k) for s, k in keys.items()}, "digest": digest.hexdigest()[:16]}


def fingerprints(x) -> "torch.Tensor":
    """One 64-bit number per sample of a uint8 or int16 tensor (N, ...): equal samples give equal numbers, so the
    samples a checkpoint trained on can be recognised in other data (a multiply-add hash of each sample's bytes)."""
    import torch

    flat = x.reshape(len(x), -1).contiguous().view(torch.uint8)  # (N, bytes)
    weights = torch.randint(-(2**62), 2**62, (flat.shape[1],), generator=torch.Generator().manual_seed(12345)) | 1
    # int64 arithmetic wraps around; in chunks, so MNIST's 55,000 images never take 345 MB as int64
    parts = [(chunk.to(torch.int64) * weights).sum(1) for chunk in flat.split(2048)]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)) + flat.shape[1]


def text_fingerprints(ids, offsets) -> "torch.Tensor":
    """One 64-bit number per text of a flat split (text i is ids[offsets[i]:offsets[i+1]]): equal token sequences
    give equal numbers."""
    import torch

    out = []
    for i in range(len(offsets) - 1):
        digest = hashlib.blake2b(ids[offsets[i] : offsets[i + 1]].numpy().tobytes(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "big", signed=True))
    return torch.tensor(out, dtype=torch.int64)


def files_fingerprint(paths, root) -> str:
    """A digest of the files' names (relative to `root`), sizes and modification times: a changed, added or removed
    file changes a cache's key."""
    digest = hashlib.sha1()
    for path in sorted(paths):
        st = Path(path).stat()
        digest.update(f"{Path(path).relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
