"""Records streamed to disk as a run goes, so long runs keep no trajectory in memory.

``RecordStream`` holds one ``.npy`` file per recorded quantity in a folder, each of shape
(n_t, *shape): record j is written at its own offset as soon as it is taken, with plain file writes (no
memory map while writing, so the process does not hold the pages). ``RecordStream.read`` opens a file
read-only as a memory map, so a finished run's trajectories are read from disk only where they are used.

Writing record j again overwrites it with the same bytes, which is how a resumed run continues: it rewrites
from its checkpoint's record count on, and the records before it are already on disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ._io import RunIOError, claim_file, describe_os_error, owned_files, owned_folder
from .validation import ConfigError

__all__ = ["RecordStream"]


class RecordStream:
    """A folder of per-quantity ``.npy`` files of shape (n_t, *record_shape), written one record at a time.

    ``folder``: created if missing; a folder that holds files the library did not write is refused
    (ConfigError naming ``field``), so no user file is ever replaced. ``n_t``: number of records per
    quantity; ``fresh``: remove the record files this library wrote there first (a new run), else keep them
    (a resumed run continues them); ``writer``: False for a stream that only reads (makes, removes and writes
    nothing).
    """

    def __init__(self, folder, n_t: int, fresh: bool = True, field: str = "record_to", writer: bool = True):
        self.n_t, self.field, self.writer = int(n_t), field, writer
        self._offsets: dict = {}
        if not writer:  # a process that only reads (several processes: all but process 0); it checks, makes nothing
            self.folder = Path(folder)
            if self.folder.exists() and (not self.folder.is_dir() or (
                    owned_files(self.folder) is None and any(self.folder.iterdir()))):
                owned_folder(folder, field)  # raises the writer's ConfigError
            return
        self.folder = owned_folder(folder, field)
        if fresh:
            try:
                for name in owned_files(self.folder) or []:
                    (self.folder / name).unlink(missing_ok=True)
            except OSError as e:
                raise RunIOError(e.errno, describe_os_error(e, self.folder)) from None

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def _open(self, name: str, x: np.ndarray) -> int:
        """Byte offset of record 0 in ``name``'s file, creating the file when it is missing or its shape or
        dtype does not match."""
        if name in self._offsets:
            return self._offsets[name]
        path = self.path(name)
        shape = (self.n_t,) + x.shape
        if path.exists():
            if path.name not in (owned_files(self.folder) or []):
                raise ConfigError(self.field, f"{path} is a file that slowsde_jax did not write; it is left alone")
            try:
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    hshape, fortran, dtype = read(f)
                    if hshape == shape and not fortran and dtype == x.dtype:
                        self._offsets[name] = f.tell()
                        return self._offsets[name]
            except ValueError:  # a file of ours left damaged (cut before its header was written): rebuilt
                pass
        header = {"descr": np.lib.format.dtype_to_descr(x.dtype), "fortran_order": False, "shape": shape}
        claim_file(self.folder, path.name)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            offset = f.tell()
            f.truncate(offset + int(np.prod(shape)) * x.dtype.itemsize)  # sparse: no pages written yet
        self._offsets[name] = offset
        return offset

    def write(self, j: int, name: str, x: ArrayLike) -> None:
        """Write record ``j`` (0 <= j < n_t) of quantity ``name`` (an array of the same shape every time); an
        OSError (a full disk) becomes a ``RunIOError`` naming the file. Nothing in a stream that only reads."""
        if not self.writer:
            return
        x = np.ascontiguousarray(x)
        try:
            offset = self._open(name, x)
            with open(self.path(name), "r+b") as f:
                f.seek(offset + j * x.nbytes)
                f.write(x.tobytes())
        except RunIOError:
            raise
        except OSError as e:
            raise RunIOError(e.errno, describe_os_error(e, self.path(name))) from None

    def names(self) -> list[str]:
        """The quantities in the folder."""
        return sorted(Path(n).stem for n in owned_files(self.folder) or [] if n.endswith(".npy")
                      and (self.folder / n).exists())

    def read(self, name: str) -> np.ndarray:
        """The records of ``name``, shape (n_t, *record_shape), as a read-only memory map."""
        return np.load(self.path(name), mmap_mode="r")
