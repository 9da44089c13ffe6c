"""Every length is in metres. A length that fits its expected range only once scaled gets a hint saying so."""

from __future__ import annotations

SCALES = (("centimetres", 0.01), ("millimetres", 0.001))


def unit_hint(length: float, centimetre_band: tuple[float, float], millimetre_band: tuple[float, float]) -> str | None:
    """A length read as metres -> "centimetres: multiply by 0.01" (or millimetres, 0.001) when it lies in that
    unit's band, else None (the bands are the caller's: what the measured thing spans in each unit)."""
    for (unit, factor), (low, high) in zip(SCALES, (centimetre_band, millimetre_band), strict=True):
        if low <= length <= high:
            return f"{unit}: multiply by {factor}"
    return None
