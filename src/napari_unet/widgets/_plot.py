"""A small live plot of training loss and validation scores, drawn with QPainter.

napari does not ship a plotting library, and two curves need none: the loss is drawn
scaled to its own range, validation IoU and AP (both in [0, 1]) on a fixed 0-1 axis.
"""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Series name -> colour.
SERIES = {"loss": "#f0a030", "iou": "#40a0f0", "ap50": "#60d060"}


class TrainingPlot(QWidget):
    """Training loss (per step) and validation IoU/AP50 (per epoch) against steps."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in SERIES}

    def clear(self) -> None:
        for points in self.series.values():
            points.clear()
        self.update()

    def add(self, name: str, step: float, value: float) -> None:
        self.series[name].append((float(step), float(value)))
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        margin, width, height = 6, self.width(), self.height()
        legend_height = 16
        plot_height = height - legend_height - 2 * margin
        painter.setPen(QPen(QColor("#808080")))
        painter.drawRect(margin, margin + legend_height, width - 2 * margin, plot_height)
        last_step = max((points[-1][0] for points in self.series.values() if points), default=1.0)
        losses = [value for _, value in self.series["loss"]]
        loss_top = max(losses, default=1.0) or 1.0
        x = margin
        for name, colour in SERIES.items():
            painter.setPen(QPen(QColor(colour), 2))
            points = self.series[name]
            top = loss_top if name == "loss" else 1.0
            if len(points) > 1:
                polygon = QPolygonF(
                    [
                        QPointF(
                            margin + (width - 2 * margin) * step / max(last_step, 1.0),
                            margin + legend_height + plot_height * (1.0 - min(value / top, 1.0)),
                        )
                        for step, value in points
                    ]
                )
                painter.drawPolyline(polygon)
            label = f"{name} {points[-1][1]:.3f}" if points else name
            painter.drawText(x, margin, 110, legend_height, Qt.AlignmentFlag.AlignLeft, label)
            x += 110
        painter.end()
