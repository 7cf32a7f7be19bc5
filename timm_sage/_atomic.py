"""Atomic file writes that honour the umask: the one helper every writer of the package uses.

A temporary file beside the target, filled, flushed to disk, then renamed over the target: a reader (or a
killed process) sees the old file or the new one, never half of one. The temporary file is created with
``os.open(..., 0o666)`` so the kernel applies the umask, as for any ordinary file (0644 under umask
0022); ``tempfile.NamedTemporaryFile``/``mkstemp`` would leave it 0600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _create_temporary(path: Path) -> tuple[int, Path]:
    """An exclusive new file beside ``path``, mode ``0o666 & ~umask``; (descriptor, its path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")  # pragma: no cover


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """``with atomic_open(path) as handle: handle.write(...)``: a binary handle on a temporary file that
    replaces ``path`` when the block ends without an error (and is removed when it raises)."""
    path = Path(path)
    descriptor, temporary = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(path) as temporary: figure.savefig(temporary)``: for writers that take a file
    name (matplotlib); the temporary file (already created, umask mode) replaces ``path`` at the end."""
    path = Path(path)
    descriptor, temporary = _create_temporary(path)
    os.close(descriptor)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))
