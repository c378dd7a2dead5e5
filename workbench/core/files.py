"""Files the app writes appear whole or not at all."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that pick a format by the
    suffix still work); when the block ends without error it replaces ``path`` in one step
    (``os.replace``), otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.partial{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written for {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_TEMP = re.compile(r"workbench-[a-z]+-(\d+)-[a-z0-9_]+")  # workbench-KIND-PID-suffix


def temp_dir(kind: str) -> Path:
    """A new folder in the temporary folder, named after ``kind`` and this process. Folders that a
    process left when it was killed before it could remove them (model files: tens of MB each)
    are removed first."""
    import psutil

    for folder in Path(tempfile.gettempdir()).glob("workbench-*-*-*"):
        match = _TEMP.fullmatch(folder.name)
        if match and not psutil.pid_exists(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"workbench-{kind}-{os.getpid()}-"))


@contextmanager
def temp_folder(kind: str) -> Iterator[Path]:
    """:func:`temp_dir`, removed when the block ends."""
    path = temp_dir(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
