"""``calibrew inspect``: a feature table's schema, rows, variations and provenance."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from pipeline.outputs.table_reader import Table


def describe_table(table: Table) -> dict[str, Any]:
    """The summary ``calibrew inspect`` prints, as a dict."""
    attrs = table.attrs
    part: Any = table.parts[0] if table.parts else None
    columns = {}
    for name in table.event_columns():
        array = part[name] if part is not None else None
        spec = attrs.get("columns", {}).get(name, {})
        columns[name] = {"dtype": str(array.dtype) if array is not None else "?",
                         "shape": list(array.shape[1:]) if array is not None else [],
                         "unit": spec.get("unit"), "sentinel": spec.get("sentinel")}
    return {
        "path": str(table.path),
        "dataset": attrs.get("dataset"),
        "level": attrs.get("level"),
        "rows": table.rows,
        "parts": len(table.part_rows),
        "events_total": attrs.get("events_total"),
        "sum_genweights": attrs.get("sum_genweights"),
        "columns": columns,
        "collections": {name: attrs.get("collections", {}).get(name, {"layout": layout})
                        for name, layout in table.collections().items()},
        "shape_variations": table.variations(),
        "weight_variations": table.weight_variations(),
        "labels": attrs.get("labels"),
        "provenance": attrs.get("provenance"),
    }


def print_table(table: Table, console: Console) -> None:
    """Print :func:`describe_table` for a person."""
    info = describe_table(table)
    console.print(f"[bold]{info['path']}[/]: dataset {info['dataset']}, level {info['level']}, "
                  f"{info['rows']:,} rows in {info['parts']} part(s); "
                  f"{info['events_total']} events before selection, sum of generator weights "
                  f"{info['sum_genweights']}")
    grid = RichTable("column", "dtype", "shape", "unit", "sentinel")
    for name, c in info["columns"].items():
        grid.add_row(name, c["dtype"], str(c["shape"] or ""), c["unit"] or "",
                     "" if c["sentinel"] is None else str(c["sentinel"]))
    console.print(grid)
    for name, c in info["collections"].items():
        console.print(f"collection [bold]{name}[/]: {c.get('layout')}"
                      + (f" to {c['length']}" if c.get("length") else "")
                      + f", fields {', '.join(c.get('fields', []))}")
    variations = info["shape_variations"]
    console.print(f"{len(variations)} shape variation(s):")
    for name, cols in variations.items():
        console.print(f"  {name}: {', '.join(cols)}")
    console.print(f"{len(info['weight_variations'])} weight variation(s): "
                  f"{', '.join(info['weight_variations'])}")
    labels = info["labels"] or {}
    if labels.get("classes"):
        source = (f"by sample {labels.get('by_sample')}" if labels.get("by_sample")
                  else f"from {labels.get('expr')!r}")
        console.print(f"labels: {labels['classes']} (index = label), {source}")
    prov = info["provenance"] or {}
    console.print(f"provenance: calibrew {prov.get('calibrew_version')}, config "
                  f"{prov.get('config_digest')}, "
                  f"{len(prov.get('input_files', []))} input file(s), "
                  f"{len(prov.get('payload_checksums', {}))} payload(s)")
    for path, digest in (prov.get("payload_checksums") or {}).items():
        console.print(f"  {path}: sha256 {digest[:16]}")
