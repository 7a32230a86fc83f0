"""A small reader of CMS combine's datacard syntax, for the tests (what they check of it)."""

from __future__ import annotations

from typing import Any


def parse_datacard(text: str) -> dict[str, Any]:
    """A small reader of combine's datacard syntax (what the test needs of it)."""
    lines = [line.split() for line in text.splitlines()
             if line.strip() and not line.startswith(("#", "-"))]
    counts = {t[0]: t[1] for t in lines if t[0] in ("imax", "jmax", "kmax")}
    shapes = next(t for t in lines if t[0] == "shapes")
    bins = [i for i, t in enumerate(lines) if t[0] == "bin"]
    observation = dict(zip(lines[bins[0]][1:], map(float, lines[bins[0] + 1][1:]),
                           strict=True))
    assert lines[bins[0] + 1][0] == "observation"
    table = lines[bins[1]:bins[1] + 4]
    assert [t[0] for t in table] == ["bin", "process", "process", "rate"]
    columns = list(zip(table[0][1:], table[1][1:], map(int, table[2][1:]), table[3][1:],
                       strict=True))
    systematics = {t[0]: (t[1], t[2:]) for t in lines if len(t) > 1 and t[1] in
                   ("shape", "lnN")}
    for _, values in systematics.values():
        assert len(values) == len(columns)
    mcstats = [t for t in lines if len(t) > 1 and t[1] == "autoMCStats"]
    return {"counts": counts, "shapes": shapes, "observation": observation,
            "columns": columns, "systematics": systematics, "mcstats": mcstats}


def named_shapes(card: dict[str, Any]) -> list[str]:
    """Every object the datacard ``card`` (:func:`parse_datacard`) names in its shapes file:
    ``data_obs`` per channel, each column's nominal, and each shape systematic's Up and Down
    where it has a 1."""
    nominal, systematic = card["shapes"][4], card["shapes"][5]

    def key(pattern: str, channel: str, process: str, syst: str = "") -> str:
        return (pattern.replace("$CHANNEL", channel).replace("$PROCESS", process)
                .replace("$SYSTEMATIC", syst))

    names = [key(nominal, channel, "data_obs") for channel in card["observation"]]
    for i, (channel, process, _, _) in enumerate(card["columns"]):
        names.append(key(nominal, channel, process))
        for syst, (kind, values) in card["systematics"].items():
            if kind == "shape" and values[i] != "-":
                names += [key(systematic, channel, process, syst + side)
                          for side in ("Up", "Down")]
    return names
