"""Plain-text tables and shortened texts for command output."""

from __future__ import annotations


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Left-aligned columns under a header line; ``(no results)`` for no rows."""
    if not rows:
        return "(no results)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def print_table(rows: list[dict], columns: list[str]) -> None:
    print(format_table(rows, columns))


def short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
