"""Multi-index hashing's band layout, shared by the pHash dedup rule (select) and the pHash safety list (ingest)."""

from __future__ import annotations


def band_layout(n_bands: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of each band: 64 bits cut into ``n_bands`` bands whose widths differ by at most one."""
    if not 1 <= n_bands <= 64:
        raise ValueError(f"n_bands must be within 1..64, got {n_bands}")
    base, extra = divmod(64, n_bands)
    layout, shift = [], 0
    for band in range(n_bands):
        width = base + (1 if band < extra else 0)
        layout.append((shift, width))
        shift += width
    return layout
