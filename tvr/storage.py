"""Files on disk, for every store of this project: atomic writes and versioned manifests.

The stores (training checkpoints, the frame cache, the CLIP-feature store, the video index)
write through :func:`atomic_write`: the file is written under a temporary name in the same
folder, flushed and fsync'ed, then renamed over the final name (``os.replace``), and the folder
is fsync'ed. A crash at any point leaves either the previous file or the new one under the final
name, never a partial file; a writer that fails leaves the previous file and no temporary one.

A store's manifest is a JSON object holding a format version under a key of the store's
choosing; :func:`read_manifest` refuses one of another version, and :func:`require_same`
refuses a store whose recorded configuration differs from the one asked for, naming each
differing field (:func:`differences`) with both values and what to do.

A store has one writer at a time: a writer holds :func:`writer_lock` of the store's folder while
it writes, and a second one waits for it or is refused, naming the holder (its pid and host).
The lock is ``fcntl.flock`` on ``.<name>.lock`` beside the folder ``<name>`` (outside it, so that
a writer that deletes the folder to start over keeps it); the kernel drops it when its process
dies, so a killed writer never leaves a stale lock. ``flock`` rather than the ``filelock``
package: the waiting writer reads who holds the lock from the lock file, which ``filelock``'s
Unix lock truncates on every attempt in its 3.x releases (4.x keeps it), so the message would
depend on the version installed; the lock itself is a few lines of the standard library.
Readers take no lock: a store replaces its manifests atomically and writes the data a manifest
points into before the manifest, so a reader sees the old manifest or the new one, both whole.
A write killed mid-way leaves its temporary file (``.<name>.<pid>.tmp``);
:func:`remove_stale_temporaries` removes those when the store is next opened for writing.
POSIX only (``fcntl``, ``os.kill``), as the rest of the project.

Stores read large ``.npy`` files through :class:`MappedNpy`: memory-mapped, and able to read
the rows a reader is about to use ahead, all at once.

This module is the bottom layer of ``tvr``: it imports only the standard library, and torch
when :func:`atomic_save` writes a file (numpy when :class:`MappedNpy` maps one), so that the
command lines name its errors without them.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]
TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")  # atomic_write's temporary name: .<name>.<pid>.tmp


class ConfigMismatchError(ValueError):
    """A recorded configuration differs from the one asked for."""


class StoreBusyError(RuntimeError):
    """Another process is writing the store."""


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically (module docstring): ``write(f)`` fills a temporary file in the
    same folder, which is fsync'ed and renamed over ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    import torch  # here: the module docstring says why
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: PathLike, value: Any, pretty: bool = False) -> Path:
    """``value`` as JSON in ``path``, written atomically; returns the path. ``pretty``: one
    item a line (indent 1) and keys sorted, else compact in the given order."""
    text = json.dumps(value, indent=1, sort_keys=True) if pretty else json.dumps(value)
    return atomic_write(path, lambda f: f.write(text.encode()))


def file_sha256(path: PathLike, chunk: int = 2**22) -> str:
    """The sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(path: PathLike, version_key: str, version: int, error: type[Exception],
                  remedy: str, convertible: tuple[int, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, whose ``version_key`` must hold ``version`` or one of
    ``convertible`` (older versions the store converts itself). Raises ``error`` (the store's)
    for a file that cannot be read or parsed, or that holds another version, with ``remedy``:
    what to do then."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not a readable manifest ({exc}); {remedy}") from exc
    found = record.get(version_key) if isinstance(record, dict) else None
    if found != version and found not in convertible:
        raise error(f"{path}: format version {found}, this code reads version {version}; "
                    f"{remedy}")
    return record


def differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """``field: stored X, this run Y`` for every leaf where two JSON values differ; a field of
    a dict is named by its keys joined with dots, and one missing on a side reads as None."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return [line for key in sorted(set(stored) | set(wanted))
                for line in differences(stored.get(key), wanted.get(key), f"{prefix}{key}.")]
    if stored != wanted:
        return [f"{prefix.rstrip('.')}: stored {stored!r}, this run {wanted!r}"]
    return []


def require_same(stored: Any, wanted: Any, error: type[Exception], what: str,
                 remedy: str) -> None:
    """Raise ``error`` unless the recorded ``stored`` equals ``wanted``: ``{what}: {each
    difference}. {remedy}``, where ``what`` names the store and how it differs, and ``remedy``
    says what to do."""
    found = differences(stored, wanted)
    if found:
        raise error(f"{what}: {'; '.join(found)}. {remedy}")


@contextlib.contextmanager
def writer_lock(folder: PathLike, remedy: str, *, wait: bool = False,
                error: type[Exception] = StoreBusyError) -> Iterator[None]:
    """Hold the writer lock of the store ``folder`` (module docstring) for a ``with`` block.

    When another process holds it, wait for it if ``wait`` (saying on stderr whom for), else
    raise ``error`` (the store's): ``another process is writing {folder} (pid N on HOST);
    {remedy}``, where ``remedy`` says what to do. Once held, the lock file names this process,
    and the temporary files that killed writes left in the folder are removed (no one else
    writes there).
    """
    path = Path(folder).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "pid unknown"
            if not wait:
                raise error(f"another process is writing {folder} ({holder}); {remedy}") from None
            print(f"{folder}: waiting for {holder}, which is writing it", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        remove_stale_temporaries(path, every=True)
        yield
    finally:
        if held:  # unlocked explicitly: forked children (loader workers) share the descriptor
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_stale_temporaries(folder: PathLike, every: bool = False) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` and its subfolders (one
    level down) whose process is not running: writes killed mid-way. ``every``: all of them,
    for a caller that holds the folder's :func:`writer_lock`. Returns the removed paths.

    A process is looked up on this host: without the lock, a temporary file of a live writer on
    another host sharing the folder could be taken for a stale one.
    """
    folder = Path(folder)
    removed = []
    for path in [*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")]:
        match = TEMPORARY.fullmatch(path.name)
        if match and (every or not _running(int(match[1]))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MappedNpy:
    """The array of a ``.npy`` file, memory-mapped copy-on-write, as ``np.load(path,
    mmap_mode="c", allow_pickle=False)`` reads it (nothing is read until used; an array of Python
    objects is refused: no file runs code), whose rows can be read ahead (:meth:`read_ahead`).

    Why not ``np.load``: a page fault on a mapped file that is not in the page cache reads the
    device's whole read-ahead window around the page (``read_ahead_kb``: 8 MiB on the machine of
    bench/RESULTS.md §4), one fault at a time, so rows scattered over a large file cost a
    read of megabytes each. :meth:`read_ahead` asks the kernel for exactly the pages of the rows
    (``madvise(MADV_WILLNEED)``, numpy's memmap does not expose its map), all at once; the reads
    then go to the device together and the copy that follows finds the pages in the cache.
    Raises OSError or ValueError for a file that cannot be read as such an array.
    """

    def __init__(self, path: PathLike):
        import numpy as np
        form = np.lib.format
        with open(path, "rb") as file:
            version = form.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version} is not read")
            read_header = form.read_array_header_1_0 if version == (1, 0) else \
                form.read_array_header_2_0
            shape, fortran, dtype = read_header(file)
            if dtype.hasobject:
                raise ValueError("an array of Python objects, which is not read")
            self.offset = file.tell()
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        self.array = np.ndarray(shape, dtype, buffer=self._map, offset=self.offset,
                                order="F" if fortran else "C")

    def read_ahead(self, rows: Any) -> None:
        """Start reading the pages of ``rows`` (indices along the first axis, a sequence or
        numpy array) into the page cache without waiting for them: one request per run of
        adjacent rows; pages already cached cost a look-up (about a microsecond a request).
        Nothing to do for an array whose rows are not contiguous, or where the system has no
        ``madvise``."""
        import numpy as np
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if not len(rows) or not hasattr(mmap, "MADV_WILLNEED") or \
                not self.array.flags.c_contiguous:
            return
        row_bytes = self.array.itemsize * (self.array.size // len(self.array))
        starts = self.offset + rows * row_bytes
        ends = starts + row_bytes
        runs = np.flatnonzero(np.r_[True, starts[1:] > ends[:-1]])  # first row of each run
        first = starts[runs] - starts[runs] % mmap.PAGESIZE
        last = ends[np.r_[runs[1:] - 1, len(ends) - 1]]
        for start, length in zip(first.tolist(), (last - first).tolist()):
            self._map.madvise(mmap.MADV_WILLNEED, start, length)
