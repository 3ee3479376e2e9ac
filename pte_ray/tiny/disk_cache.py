"""The on-disk cache of built artefacts (tiny model, task files): shared, locked, atomic.

Entries are built in a temp dir and renamed into place, so a visible entry is always complete and
concurrent builders (pytest workers, Ray actors) wait for one another instead of racing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$PTE_RAY_CACHE``, else ``~/.cache/pte_ray``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PTE_RAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pte_ray"


@contextmanager
def locked(root: Path, name: str):
    """An exclusive per-entry file lock, so concurrent builders wait instead of racing."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached(root: Path, name: str, marker: str, force: bool, build) -> Path:
    """Builds into a temp dir and renames it into place: a visible entry is always complete."""
    final = root / name
    if not force and (final / marker).exists():
        return final
    with locked(root, name):
        if not force and (final / marker).exists():  # another process finished it meanwhile
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache entry is meant to be shared
        try:
            build(tmp)
            if final.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=root))
                os.replace(final, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
