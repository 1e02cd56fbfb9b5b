"""How sigmas, radii and curves are named in files, tables and metrics."""

from __future__ import annotations

BEST = "best"
"""The label of the best-over-sigma envelope, in place of a sigma."""


def format_value(value: float) -> str:
    """A sigma or radius as a label: two decimals, more only where needed (0.5 -> "0.50",
    0.125 -> "0.125")."""
    text = f"{value:.2f}"
    return text if float(text) == value else repr(float(value))


def sigma_label(sigma: float) -> str:
    """The one name of a sigma's model, in files, tables and metrics: 0.5 -> "sigma_0.50"."""
    return curve_name(format_value(sigma))


def curve_name(label: str) -> str:
    """A curve's name from its label: "0.50" -> "sigma_0.50", "best" -> "best"."""
    return label if label == BEST else f"sigma_{label}"
