"""What the tests comparing compiled kernels with correctionlib share: the payloads the
analyses use, the tolerance, and the arguments to evaluate a correction on (every combination
of its string keys, up to a number; numbers spread beyond every edge and inside the edges of
every binning)."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator

import numpy as np

from pipeline.inputs.datafiles import find_data_file

#: the payloads of the shipped analyses (files of the sample data)
PAYLOADS = [
    "jet_jerc_Summer22_V3.json.gz",
    "pog/2022_Summer22/JME_fatJet_jerc.json.gz",
    "pog/2022_Summer22/BTV_btagging.json.gz",
    "pog/2022_Summer22/JME_jetvetomaps.json.gz",
    "pog/2022_Summer22/EGM_electronSS.json.gz",
    "pog/2022_Summer22/EGM_photonSS.json.gz",
    "pog/2022_Summer22/EGM_electron.json.gz",
    "pog/2022_Summer22/MUO_muon_Z.json.gz",
    "pog/2022_Summer22/LUM_puWeights.json.gz",
]
#: compiled against correctionlib: the same to these tolerances (exp, pow: other libms)
RTOL, ATOL = 1e-12, 2e-13


def read_payload(name: str) -> dict:
    """The parsed JSON of payload ``name``."""
    with gzip.open(find_data_file(name)) as fh:
        return json.load(fh)


def _keys(node, out: dict[str, set]) -> None:
    """Category keys by input, over the whole tree."""
    if not isinstance(node, dict):
        return
    kind = node.get("nodetype")
    if kind == "category":
        out.setdefault(node["input"], set()).update(i["key"] for i in node["content"])
        for item in node["content"]:
            _keys(item["value"], out)
        _keys(node.get("default"), out)
    elif kind in ("binning", "multibinning"):
        for child in node["content"]:
            _keys(child, out)
    elif kind == "transform":
        _keys(node["content"], out)


def _domain(node, out: dict[str, list[float]], given: dict[str, str]) -> None:
    """Per real input, the range inside every binning's edges (where none refuses), in the
    branches of the string categories ``given``."""
    if not isinstance(node, dict):
        return
    kind = node.get("nodetype")
    if kind == "category" and node["input"] in given:
        chosen = [i["value"] for i in node["content"] if i["key"] == given[node["input"]]]
        _domain(chosen[0] if chosen else node.get("default"), out, given)
        return
    if kind in ("binning", "multibinning"):
        inputs = [node["input"]] if kind == "binning" else node["inputs"]
        edges = [node["edges"]] if kind == "binning" else node["edges"]
        for name, e in zip(inputs, edges):
            low, high = (e["low"], e["high"]) if isinstance(e, dict) else (e[0], e[-1])
            current = out.setdefault(name, [-np.inf, np.inf])
            current[0], current[1] = max(current[0], low), min(current[1], high)
        for child in node["content"]:
            _domain(child, out, given)
    elif kind == "category":
        for item in node["content"]:
            _domain(item["value"], out, given)
    elif kind == "transform":
        _domain(node["content"], out, given)


def argument_cases(correction: dict, rng: np.random.Generator, n: int = 4000,
                   combinations: int = 40) -> Iterator[list]:
    """Argument tuples: every combination of string keys, arrays for the numeric inputs,
    once spread beyond every edge and once inside the edges of every binning."""
    keys: dict[str, set] = {}
    _keys(correction["data"], keys)
    strings = [sorted(keys.get(i["name"], {"none"})) for i in correction["inputs"]
               if i["type"] == "string"]
    for combo in itertools.islice(itertools.product(*strings), combinations):
        given = iter(combo)
        args = []
        for spec in correction["inputs"]:
            if spec["type"] == "string":
                args.append(next(given))
            elif spec["type"] == "int":
                choices = sorted(keys.get(spec["name"], {0, 1, 2}))
                args.append(rng.choice(np.array(choices, dtype=np.int64), n))
            else:  # small and large values of both signs, beyond every edge
                values = np.concatenate([rng.uniform(-6, 6, n // 2),
                                         np.exp(rng.uniform(-3, 9, n - n // 2))])
                args.append(values * rng.choice([-1.0, 1.0], n, p=[0.1, 0.9]))
        yield args
        domain: dict[str, list[float]] = {}
        names = [i["name"] for i in correction["inputs"] if i["type"] == "string"]
        _domain(correction["data"], domain, dict(zip(names, combo)))
        inside = list(args)
        for i, spec in enumerate(correction["inputs"]):
            low, high = domain.get(spec["name"], [-np.inf, np.inf])
            if spec["type"] == "real" and (np.isfinite(low) or np.isfinite(high)):
                low = low if np.isfinite(low) else high - 100
                high = high if np.isfinite(high) else low + 1000
                if low >= high:  # nested binnings without a common range
                    continue
                inside[i] = rng.uniform(low, np.nextafter(high, low), n)
        yield inside
