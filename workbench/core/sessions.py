"""A session on disk: the model, the source, the configuration shown and every configuration
tried with its ``compare`` report, as one JSON file written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError, OptimizationConfig, checked_steps, read_config_block, read_json
from .files import atomic_path

SESSION_VERSION = 1


def save_session(path: str | Path, model: str, source: str | None, current: OptimizationConfig,
                 reports: list[dict], recovered_steps: int | None = None) -> Path:
    """``recovered_steps``: the distillation steps in the model shown for ``current`` (*Recover
    accuracy*), replayed when the session is opened; None if it was not distilled."""
    path = Path(path)
    data = {"workbench_session": SESSION_VERSION, "model": model, "source": source,
            "current": current.to_dict(), "recovered_steps": recovered_steps, "tried": reports}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    return path


def load_session(path: str | Path) -> dict:
    """``{"model", "source", "current": OptimizationConfig, "recovered_steps": int | None,
    "tried": [(OptimizationConfig, report)]}``;
    raises ConfigError saying what is wrong (not a session, a newer version, out-of-range values)."""
    data = read_json(path, "session")
    if not isinstance(data, dict) or "workbench_session" not in data:
        raise ConfigError(f"{path} is not a Workbench session")
    if data["workbench_session"] != SESSION_VERSION:
        raise ConfigError(f"session version {data['workbench_session']!r} is not {SESSION_VERSION}")
    if not isinstance(data.get("model"), str) or not isinstance(data.get("source"), (str, type(None))):
        raise ConfigError("a session needs a model name or file and a source (or null for the sample photos)")
    if not isinstance(data.get("current"), dict) or not isinstance(data.get("tried"), list):
        raise ConfigError("a session needs 'current' (a configuration) and 'tried' (a list of reports)")
    current = OptimizationConfig.from_dict(data["current"])
    steps = checked_steps(data.get("recovered_steps"), path)  # absent in sessions saved before it was kept
    tried = []
    for report in data["tried"]:
        if not isinstance(report, dict) or not isinstance(report.get("config"), dict):
            raise ConfigError("each tried configuration must be a compare report with a 'config' block")
        tried.append((read_config_block(report["config"])[0], report))
    return {"model": data["model"], "source": data["source"], "current": current, "recovered_steps": steps,
            "tried": tried}
