"""An adapter folder's files, read so that what the folder holds cannot hurt the server.

Everything is read relative to one open directory descriptor, so renaming or swapping the path
afterwards changes nothing we read. Under a root (run-time loads), the directory and every file must
really lie under it, checked on the opened descriptor: a symlink may stay inside the root (a
Hugging Face cache links snapshots to blobs) but never leads out. Files must be regular and under a
size limit, and are read whole into memory: never memory-mapped, because a mapped file truncated
later kills the process with SIGBUS on the next access.
"""

import os
import stat
from pathlib import Path

from server.adapters.types import AdapterError

MAX_JSON_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused as not a regular file
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class AdapterDir:
    """An open adapter directory; use as a context manager."""

    def __init__(self, name: str, path: Path, root: Path | None = None):
        self.name = name
        self.path = path
        self.root = Path(os.path.realpath(root)) if root is not None else None
        try:
            self.fd = os.open(path, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise self.fail(f"{path} is not a directory") from None
        except OSError as e:
            raise self.fail(f"cannot open {path}: {e.strerror}") from None
        try:
            self._confine(self.fd, str(path), str(path))
        except BaseException:
            os.close(self.fd)
            raise

    def fail(self, problem: str) -> AdapterError:
        return AdapterError(f"adapter {self.name!r}: {problem}")

    def exists(self, filename: str) -> bool:
        try:
            os.stat(filename, dir_fd=self.fd)
        except OSError:
            return False
        return True

    def read(self, filename: str, limit: int) -> bytes | None:
        """The whole file, or None when it does not exist."""
        try:
            fd = os.open(filename, _FILE_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self.fail(f"cannot open {filename}: {e.strerror}") from None
        try:
            self._confine(fd, os.path.join(self.path, filename), filename)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self.fail(f"{filename} is not a regular file")
            if st.st_size > limit:
                raise self.fail(f"{filename} is {st.st_size} bytes, more than the {limit} allowed")
            return self._read_exactly(fd, st.st_size, filename)
        except OSError as e:
            raise self.fail(f"cannot read {filename}: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def _read_exactly(self, fd: int, size: int, filename: str) -> bytes:
        chunks, got = [], 0
        while got <= size:  # one byte past the size tells a file still growing
            chunk = os.read(fd, size + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got != size:
            raise self.fail(f"{filename} changed size while it was read")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one chunk: no copy

    def _confine(self, fd: int, path: str, shown: str) -> None:
        if self.root is None:
            return
        real = _real_path(fd, path)
        if real is None:
            raise self.fail(f"{shown} changed while it was opened")
        if not real.is_relative_to(self.root):
            raise self.fail(f"{shown} leads outside the allowed adapter root {self.root} (to {real})")

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "AdapterDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _real_path(fd: int, path: str) -> Path | None:
    """Where the opened file really is, or None when the path no longer names it."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))  # the kernel's own answer for this descriptor
    except OSError:  # no procfs: the resolved path must still name this very file
        real = os.path.realpath(path)
        try:
            same = os.path.samestat(os.stat(real), os.fstat(fd))
        except OSError:
            return None
        return Path(real) if same else None
