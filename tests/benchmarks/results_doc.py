"""Printing a benchmark's table and writing it into docs/benchmarks.md, between its
markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def write_block(name: str, table: str, heading: str) -> Path:
    """Replace the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` with
    ``table`` (a new section titled ``heading`` at the end if the markers are missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = DOC.read_text() if DOC.exists() else ""
    if begin in text and end in text:
        text = text.split(begin)[0] + begin + "\n" + table + "\n" + end + text.split(end)[1]
    else:
        text += f"\n## {heading}\n\n{begin}\n{table}\n{end}\n"
    DOC.write_text(text)
    print(f"updated {DOC}")
    return DOC


def publish(lines: list[str], name: str, heading: str, write: bool) -> str:
    """Print the table made of ``lines``; with ``write``, put it in the docs
    (:func:`write_block`). Returns the table."""
    table = "\n".join(lines)
    print(table)
    if write:
        write_block(name, table, heading)
    return table
