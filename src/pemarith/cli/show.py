"""Plain-text tables for the subcommands' output."""

from __future__ import annotations

from typing import Any


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(v) for v in value) if value else "-"
    if value is None or value == {}:
        return "-"
    return str(value)


def table(rows: dict[str, Any], first: str) -> list[str]:
    """A dict of rows (each a number or a dict of columns) as aligned text lines."""
    columns: list[str] = []
    for row in rows.values():
        for col in row if isinstance(row, dict) else ["norm"]:
            if col not in columns:
                columns.append(col)
    cells = [[first, *columns]]
    for name, row in rows.items():
        row = row if isinstance(row, dict) else {"norm": row}
        cells.append([name, *(fmt(row.get(c)) for c in columns)])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for r in cells:
        first = r[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:]))
        lines.append(f"  {first}  {rest}".rstrip())
    return lines
