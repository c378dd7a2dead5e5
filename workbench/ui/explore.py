"""Exploration from the window: sweeps, the most accurate configuration under a budget,
export, and sessions. The work is the core's (``core.sweep``, ``core.export``,
``core.sessions``), run as jobs with progress and cancel; results land on the trade-off plot."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QFileDialog, QInputDialog

from ..core.config import ConfigError, OptimizationConfig, read_config_block
from .controller import FOLDER_LIMIT
from .plots import TradeoffPoint

SWEEP_SPARSITY = (0.0, 0.25, 0.5)
SWEEP_BITS = (32, 8, 4)


def last_session_path() -> Path:
    from ..core.logs import data_dir

    return data_dir() / "last-session.json"


class Explorer(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.w, self.c = window, window.controller
        self._pending: dict | None = None  # a session's points, added once its model has loaded
        self.c.loaded.connect(self._on_loaded)

    # jobs -----------------------------------------------------------------------------------
    def _folder(self, title: str) -> str | None:
        path = QFileDialog.getExistingDirectory(self.w, title)
        return path or None

    def _submit(self, kind: str, fn, *args, on_result) -> None:
        c = self.c
        if c.ws is None or c.ws.is_stream:
            self.w.show_status("sweeps, budgets and exports run on images: open an image folder first", True)
            return
        c.runner.submit(kind, fn, *args, on_result=on_result, on_progress=c._on_progress, on_error=c._on_error)

    def _limit(self):
        return None if self.c.ws.is_stream else FOLDER_LIMIT

    def sweep(self, out: str | None = None) -> None:
        """Every combination of SWEEP_SPARSITY x SWEEP_BITS with the current methods, measured like
        compare on the current source; results.csv/.json and pareto.png in ``out``."""
        from ..core.sweep import sweep_configs, sweep_steps

        out = out or self._folder("Folder for the sweep's results")
        if out is None or self.c.ws is None:
            return
        configs = sweep_configs(SWEEP_SPARSITY, SWEEP_BITS, base=self.c.config.with_(exclude=(), layer_bits=()))
        self._submit("sweep", sweep_steps, self.c.ws.loaded, self.c.source_spec, configs, self.c.settings,
                     self._limit(), Path(out), on_result=lambda r: self._on_rows(r, out))

    def budget(self, kind: str = "ms", value: float | None = None, out: str | None = None) -> None:
        """The most accurate configuration under ``value`` ms (or MB): found, drawn, and shown."""
        from ..core.sweep import budget_search

        if value is None:
            unit = "milliseconds (median latency)" if kind == "ms" else "megabytes (file size)"
            value, ok = QInputDialog.getDouble(self.w, "Budget", f"At most how many {unit}?", 10.0, 0.1, 1e5, 1)
            if not ok:
                return
        out = out or self._folder("Folder for the search's files")
        if out is None or self.c.ws is None:
            return
        budget = {"budget_ms": value} if kind == "ms" else {"budget_mb": value}
        self._submit("budget", _budget_job, budget_search, self.c.ws.loaded, self.c.source_spec, budget,
                     self.c.settings, self._limit(), Path(out), on_result=lambda r: self._on_budget(r, out))

    def export(self, out: str | None = None) -> None:
        """The current configuration's model as ONNX, TorchScript and its packed file, with a report."""
        from ..core.export import export_steps

        out = out or self._folder("Folder for the exported model")
        if out is None or self.c.ws is None:
            return
        self._submit("export", export_steps, self.c.ws.loaded, self.c.source_spec, self.c.config,
                     self.c.settings, self._limit(), Path(out), list(self.c.tried.items()), self.c.recovered_steps,
                     on_result=lambda r: self.w.show_status(f"exported {self.c.config.label()} to {out}"))

    def _add_rows(self, rows: list[dict]) -> None:
        for row in rows:
            config = read_config_block(row["report"]["config"])[0]
            self.c.tried[config] = row["report"]
            self._add_point(config, row["report"])

    def _add_point(self, config: OptimizationConfig, report: dict) -> None:
        q = report["optimized"]
        score = q["top1"] if q.get("top1") is not None else q["agreement"]
        self.w.plots.add_point(TradeoffPoint(config, q["latency_ms"]["median"], q["size_bytes"], score,
                                             report["original"]["latency_ms"]["median"]))

    def _on_rows(self, result: dict, out: str) -> None:
        from ..core.sweep import write_sweep

        self._add_rows(result["rows"])
        write_sweep(result, out)
        self.w.show_status(f"sweep of {len(result['rows'])} configurations written to {out} "
                           "(results.csv, results.json, pareto.png); click a point to show it")

    def _on_budget(self, result: dict, out: str) -> None:
        from ..core.sweep import write_sweep

        self._add_rows(result["tried"])
        write_sweep(result, out, budget_ms=result["budget"]["latency_ms"])
        best = result["best"]
        if best is not None:
            self.w.set_config(read_config_block(best["report"]["config"])[0])
        self.w.show_status(result["reason"], best is None)

    # sessions ---------------------------------------------------------------------------------
    def save_session(self, path: str | None = None) -> Path | None:
        from ..core.sessions import save_session

        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.w, "Save session", "session.json", "Sessions (*.json)")
            if not path:
                return None
        c = self.c
        source = None if c.source_spec is None else str(c.source_spec)
        try:
            saved = save_session(path, c.model_spec, source, c.config, list(c.tried.values()), c.recovered_steps)
        except OSError as exc:
            self.w.show_status(f"session not saved: {exc}", True)
            return None
        self.w.show_status(f"session saved: {saved} ({len(c.tried)} configurations)")
        return saved

    def open_session(self, path: str | None = None) -> bool:
        from ..core.sessions import load_session

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self.w, "Open session", "", "Sessions (*.json)")
            if not path:
                return False
        try:
            session = load_session(path)
        except ConfigError as exc:
            self.w.show_status(str(exc), True)  # what was open stays open
            return False
        self._pending = session
        self.c.load(session["model"], session["source"])
        return True

    def _on_loaded(self, _ws) -> None:
        session, self._pending = self._pending, None
        if session is None:
            return
        for config, report in session["tried"]:
            self.c.tried[config] = report
            self._add_point(config, report)
        QTimer.singleShot(0, lambda: self._restore(session["current"], session["recovered_steps"]))

    def _restore(self, config, recovered_steps: int | None) -> None:
        self.w.set_config(config)
        if recovered_steps is not None:  # distilled when it was saved: the same steps again
            self.c.replay_recovery(config, recovered_steps)


def _budget_job(search, loaded, source, budget: dict, settings, limit, out):
    return search(loaded, source, settings=settings, limit=limit, out_dir=out, **budget)
