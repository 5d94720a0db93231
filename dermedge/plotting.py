"""Matplotlib figures without pyplot's global state, saved atomically as PNG (shared by the
evaluation and benchmark plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermedge.data.io import atomic_open


def new_figure(size: tuple[float, float] = (5.0, 4.5)) -> Any:
    """A Figure on the Agg canvas: thread-safe and headless, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path) -> Path:
    """Lay out and write the figure as PNG, atomically."""
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return path
