"""Where the two models differ: the images whose top-1 changed, with the confidence shift;
click one to show it in both panes."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("image", "true label", "original", "optimized", "shift")


class DifferencesView(QWidget):
    frame_clicked = Signal(int)  # index of the frame

    def __init__(self, parent=None):
        super().__init__(parent)
        self.summary = QLabel("no evaluation yet", objectName="differencesSummary")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS), objectName="differencesTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        # every column in view (long file names must not push the two predictions off to the right):
        # the names share the width, shortened in the middle; a cell's tooltip has its whole text
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setToolTip("Images whose top-1 the optimized model changed; shift: the confidence it gives "
                              "the original's class, minus the original's. Click one to show it in both panes")
        header.setToolTip(self.table.toolTip())  # a cell's own tooltip is its whole text
        self.table.cellClicked.connect(lambda row, _: self.frame_clicked.emit(self.rows[row]["index"]))
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        self.rows: list[dict] = []

    def show_rows(self, rows: list[dict], total: int, classes: list[str], scored_from: int = 0) -> None:
        """``scored_from``: the first frame the accuracy figures count (the report's
        ``scored.first``); the frames before it calibrate, and their rows say so."""
        self.rows = rows
        calibrating = sum(row["index"] < scored_from for row in rows)
        where = (f" ({calibrating} among the {scored_from} that calibrate, marked \"calibrates:\")"
                 if calibrating else "")
        self.summary.setText(f"{len(rows)} of {total} images changed their top-1 class{where}"
                             + (": most confident change first" if rows else ""))
        self.table.setRowCount(len(rows))

        def name(i):
            return "" if i is None else (classes[i] if i < len(classes) else str(i))

        for r, row in enumerate(rows):
            image = ("calibrates: " if row["index"] < scored_from else "") + row["name"]  # kept when shortened
            values = (image, name(row["label"]), f"{name(row['original'])} {row['original_p']:.0%}",
                      f"{name(row['optimized'])} {row['optimized_p']:.0%}", f"{row['shift']:+.0%}")
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(r, c, item)
