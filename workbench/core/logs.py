"""The log: a rotating file in the user's data folder, and stderr with ``--verbose``.

Set once by an entry point (the CLI, the app); modules log through ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

LOG_NAME = "workbench.log"
MAX_BYTES = 1_000_000
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"

_file_handler: logging.Handler | None = None
_stderr_handler: logging.Handler | None = None


def data_dir() -> Path:
    """The user's data folder for Workbench: ``$WORKBENCH_DATA_HOME``, else
    ``$XDG_DATA_HOME/workbench`` (``~/.local/share/workbench``), ``%LOCALAPPDATA%\\Workbench``
    on Windows, ``~/Library/Application Support/Workbench`` on macOS."""
    root = os.environ.get("WORKBENCH_DATA_HOME")
    if root:
        return Path(root)
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "Workbench"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Workbench"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "workbench"


def log_path() -> Path:
    return data_dir() / "logs" / LOG_NAME


def setup_logging(verbose: bool = False) -> Path | None:
    """Log the ``workbench`` loggers to the rotating file (INFO, DEBUG with ``verbose``) and,
    with ``verbose``, to stderr. Returns the file's path (None when it cannot be written:
    the app runs on without a file). Calling it again re-reads the location."""
    global _file_handler, _stderr_handler
    logger = logging.getLogger("workbench")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in (_file_handler, _stderr_handler):
        if h is not None:
            logger.removeHandler(h)
            h.close()
    _file_handler = _stderr_handler = None
    path: Path | None = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                             encoding="utf-8")
        _file_handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(_file_handler)
    except OSError as exc:
        print(f"workbench: cannot write the log at {path}: {exc}", file=sys.stderr)
        path = None
    if verbose:
        _stderr_handler = logging.StreamHandler()
        _stderr_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(_stderr_handler)
    return path


def current_log() -> Path | None:
    """The file the log goes to now (None before :func:`setup_logging` or when it failed)."""
    return Path(_file_handler.baseFilename) if _file_handler is not None else None
