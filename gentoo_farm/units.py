"""Quantities as people read them."""


def human_size(size: int) -> str:
    """Bytes as people read them: ``512 B``, ``3.0 MiB``, ``1.2 TiB`` (binary units, one decimal)."""
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
