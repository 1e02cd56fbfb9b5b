"""How sigmas, radii and curves are named in files, tables and metrics, and the radius grid."""

from __future__ import annotations

import math

RADIUS_UNIT = 0.01
"""Curves are tabulated on a grid of multiples of this radius; a metric step counts them."""
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


def grid_units(step: float) -> int:
    """How many RADIUS_UNITs the grid spacing ``step`` is; a ValueError unless it is a positive
    whole number of them."""
    is_number = isinstance(step, int | float) and not isinstance(step, bool)
    units = round(step / RADIUS_UNIT) if is_number else 0
    if units < 1 or not math.isclose(units * RADIUS_UNIT, step, rel_tol=1e-9):
        raise ValueError(f"step must be a positive multiple of {RADIUS_UNIT}, got {step!r}")
    return units
