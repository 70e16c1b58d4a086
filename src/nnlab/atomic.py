"""Files replaced all at once, and never written through a link: a kill mid-write leaves the old file (or none),
never half a new one, and a symbolic link planted under a name nnlab writes (a run's `train.log`, `.lock`,
`checkpoints/`, a cache file) is refused and named, never followed.

Run directories, sweep trials and caches have predictable paths, so in an outputs folder that other users can write
to, one of them could plant such a link to make a run overwrite a file of yours (docs/running.md, Shared folders).
"""

import os
from contextlib import contextmanager
from pathlib import Path

from nnlab.errors import UserError


class LinkError(UserError, OSError):
    """A symbolic link where nnlab writes a file of its own."""


@contextmanager
def folders_kept_if_used(path):
    """Yield; if the block raises, the folders it made for `path` (`path` and its parents that did not exist) are
    removed where they are still empty: a download that failed leaves the data folder as it found it."""
    path = Path(path).absolute()
    made = [p for p in (path, *path.parents) if not p.exists()]  # the deepest first
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty, or gone: the folders above hold it
                break
        raise


def refuse_link(path: Path, what: str = ""):
    """A LinkError naming `path` and where it points, if it is a symbolic link."""
    path = Path(path)
    if path.is_symlink():
        raise LinkError(
            f"{what or path} is a symbolic link (to {os.readlink(path)}), which nnlab did not make: it never writes "
            f"through a link. Remove the link ({path}) and run again"
        )


def open_no_follow(path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symbolic link at `path` (O_NOFOLLOW) with a LinkError naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if Path(path).is_symlink():
            refuse_link(Path(path))
        raise e


def append_no_follow(path, encoding: str | None = "utf-8"):
    """`path` opened for appending (created if missing), never through a link: text, or bytes with encoding None."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return open(fd, "ab") if encoding is None else open(fd, "a", encoding=encoding)


@contextmanager
def atomic_open(path):
    """Yield a binary file beside `path`; when the block completes, fsync it and rename it over `path`.

    If the block raises (or the process dies), the temporary file is removed or left under a hidden
    `.name.tmp<pid>` name that nothing reads. A link at `path`, or at the temporary name, is refused (LinkError).
    The file's folder is made if missing, but not the folders above it.
    """
    path = Path(path)
    path.parent.mkdir(exist_ok=True)  # one level only: a run directory moved away mid-run is not made again
    refuse_link(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():  # left by a killed write of this pid's predecessor, or planted
        tmp.unlink()
    fd = open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # a link planted since is refused, not followed
    try:
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def links_in(folder: Path, theirs: tuple[str, ...] = ("wandb",)) -> list[Path]:
    """The symbolic links under `folder` (not followed), but for those inside folders named in `theirs` (a run's, or a
    sweep trial's): W&B links its own logs there (to ~/.cache/wandb, say), and writes them itself."""
    folder = Path(folder)
    found = []
    for here, dirs, names in os.walk(folder):
        found += [Path(here) / n for n in [*dirs, *names] if (Path(here) / n).is_symlink()]
        dirs[:] = [d for d in dirs if not (Path(here) / d).is_symlink() and d not in theirs]
    return found


def refuse_links_in(folder: Path, what: str):
    """A LinkError naming the first links under `folder` that nnlab did not make (links_in), if there are any."""
    if found := links_in(folder):
        shown = ", ".join(f"{p.relative_to(folder)} -> {os.readlink(p)}" for p in found[:3])
        raise LinkError(
            f"{what} {folder} holds {len(found)} symbolic link(s) that nnlab did not make ({shown}"
            f"{', ...' if len(found) > 3 else ''}): it never writes through a link. Remove them and run again"
        )


def write_atomic(path: Path, text: str):
    """Write `text` to `path` atomically (atomic_open)."""
    with atomic_open(path) as f:
        f.write(text.encode())
