"""Names and titles for ROOT files: valid object names, TLatex from matplotlib text.

Every ROOT file calibrew writes names its objects with :func:`root_name` (so that a process,
category or systematic has the same name in every file and tool: ``shapes.root``, the
datacard, the pyhf workspace, ``histograms.root``) and titles them with :func:`tlatex`: the
labels of the configuration are matplotlib text (``$p_T$``, ``$t\\bar{t}$``), which ROOT
draws wrong; ROOT's TLatex uses ``#`` where TeX uses a backslash (and a title with a
backslash is handed to ROOT's TMathText instead). :func:`root_hist` and :func:`write_hist`
give a :class:`hist.Hist` its ROOT titles: uproot writes a histogram's ``name`` as the TH1's
title and each axis' ``label`` as the axis title.

Examples
--------
>>> tlatex("Jet $p_T$ [GeV]")
'Jet p_{T} [GeV]'
>>> tlatex("$t\\\\bar{t}$"), tlatex("$p_T^{miss}$"), tlatex("$\\\\Delta R(\\\\ell, j)$")
('t#bar{t}', 'p_{T}^{miss}', '#DeltaR(#it{l},j)')
>>> root_name("W+jets (HT>100)")
'W_jets__HT_100_'
"""

from __future__ import annotations

import re
from typing import Any

import hist

#: characters of an object name every ROOT tool (and combine's ``$PROCESS`` patterns) takes
_INVALID = re.compile(r"[^A-Za-z0-9_]")

#: TeX commands whose TLatex name differs (the others are ``#`` + their name)
_RENAMED = {
    "to": "#rightarrow", "gets": "#leftarrow", "le": "#leq", "ge": "#geq", "ne": "#neq",
    "leqslant": "#leq", "geqslant": "#geq", "ell": "#it{l}", "cdot": "#upoint",
    "ldots": "#3dots", "dots": "#3dots", "cdots": "#3dots", "prime": "'", "quad": "  ",
    "qquad": "    ", "lbrace": "{", "rbrace": "}", "overline": "#bar", "widehat": "#hat",
    "widetilde": "#tilde", "dfrac": "#frac", "tfrac": "#frac",
}
#: font commands: their argument is kept (TLatex has no roman font command) or wrapped
_FONTS = {"mathrm": "", "rm": "", "text": "", "textrm": "", "mathregular": "", "mathsf": "",
          "mathtt": "", "operatorname": "", "mbox": "", "mathit": "#it", "textit": "#it",
          "it": "#it", "mathbf": "#bf", "textbf": "#bf", "bf": "#bf", "boldsymbol": "#bf"}
#: commands taking one argument (accents) or two (fractions)
_ONE_ARGUMENT = {"bar", "vec", "hat", "tilde", "dot", "ddot", "acute", "grave", "check",
                 "slash", "overline", "widehat", "widetilde"}
_TWO_ARGUMENTS = {"frac", "dfrac", "tfrac"}
#: spacing commands of mathtext: ``\\,`` ``\\;`` ``\\:`` ``\\ `` are spaces, ``\\!`` none
_SPACES = {",": " ", ";": " ", ":": " ", " ": " ", "!": ""}


def root_name(name: str) -> str:
    """``name`` as a ROOT object name: letters, digits and ``_`` (anything else becomes ``_``).

    Used for every process, category and systematic written to a ROOT file, a datacard or a
    workspace, so that one name is the same everywhere.

    Examples
    --------
    >>> root_name("ttH(bb)"), root_name("jes-up"), root_name("tt_2022")
    ('ttH_bb_', 'jes_up', 'tt_2022')
    """
    return _INVALID.sub("_", name) or "_"


def tlatex(text: str) -> str:
    """``text``, matplotlib text with ``$...$`` mathtext, as ROOT TLatex.

    In math: ``\\name`` becomes ``#name`` (Greek letters, accents, arrows, ``\\frac``,
    ``\\sqrt``), font commands keep their argument (``\\mathrm{GeV}`` -> ``GeV``; ``\\mathbf``
    -> ``#bf``), a sub- or superscript gets braces (``p_T`` -> ``p_{T}``; TLatex only takes
    ``_{...}``), spaces are dropped as mathtext drops them (``\\,`` and ``\\ `` are spaces).
    Outside math the text is kept (``\\$`` -> ``$``). Text with unbalanced ``$`` is kept as
    it is (matplotlib would not draw it either).

    Examples
    --------
    >>> tlatex("$\\\\eta$"), tlatex("$H_T$"), tlatex("$m_{\\\\mu\\\\mu}$ [GeV]")
    ('#eta', 'H_{T}', 'm_{#mu#mu} [GeV]')
    >>> tlatex("$\\\\sqrt{s} = 13.6\\\\,\\\\mathrm{TeV}$")
    '#sqrt{s}=13.6 TeV'
    """
    parts = re.split(r"(?<!\\)\$", text)
    if len(parts) % 2 == 0:  # unbalanced: not mathtext
        return text
    out = []
    for i, part in enumerate(parts):
        out.append(_Math(part).convert() if i % 2 else part.replace("\\$", "$"))
    return "".join(out)


class _Math:
    """A recursive-descent converter of one ``$...$`` span."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def convert(self, stop: str = "") -> str:
        """Convert up to the end, or up to (and over) the ``stop`` character."""
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == stop:
                self.pos += 1
                break
            if char in "_^":
                self.pos += 1
                out.append(f"{char}{{{self.atom()}}}")
            elif char == "{":
                self.pos += 1
                out.append(f"{{{self.convert('}')}}}")
            elif char == "\\":
                out.append(self.command())
            else:
                self.pos += 1
                if not char.isspace():
                    out.append(char)
        return "".join(out)

    def atom(self) -> str:
        """The next argument, converted, without its braces: a group, a command or a
        character."""
        self.skip_spaces()
        if self.pos >= len(self.text):
            return ""
        char = self.text[self.pos]
        if char == "{":
            self.pos += 1
            return self.convert("}")
        if char == "\\":
            return self.command()
        self.pos += 1
        return char

    def command(self) -> str:
        """Convert the ``\\...`` command at the position (with its arguments)."""
        self.pos += 1  # the backslash
        match = re.match(r"[A-Za-z]+", self.text[self.pos:])
        if match is None:  # a symbol: spacing or an escaped character
            char = self.text[self.pos:self.pos + 1]
            self.pos += len(char)
            return _SPACES.get(char, char)
        name = match.group()
        self.pos += len(name)
        self.skip_spaces()  # mathtext: a space ends a command name and is not drawn
        if name in _FONTS:
            body = self.atom()
            return f"{_FONTS[name]}{{{body}}}" if _FONTS[name] else body
        if name == "sqrt":
            root = ""
            if self.text.startswith("[", self.pos):
                end = self.text.find("]", self.pos)
                end = len(self.text) if end < 0 else end
                root = f"[{_Math(self.text[self.pos + 1:end]).convert()}]"
                self.pos = end + 1
            return f"#sqrt{root}{{{self.atom()}}}"
        converted = _RENAMED.get(name, f"#{name}")
        if name in _ONE_ARGUMENT:
            return f"{converted}{{{self.atom()}}}"
        if name in _TWO_ARGUMENTS:
            return f"{converted}{{{self.atom()}}}{{{self.atom()}}}"
        return converted

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1


def root_hist(h: hist.Hist, title: str | None = None) -> hist.Hist:
    """A copy of ``h`` ready for uproot: every axis label in TLatex (uproot writes it as the
    axis title) and ``title`` (matplotlib text, converted) as the histogram's title.

    Examples
    --------
    >>> h = hist.Hist.new.Reg(2, 0, 100, name="pt", label="Jet $p_T$ [GeV]").Weight()
    >>> ready = root_hist(h, "$t\\\\bar{t}$")
    >>> ready.axes[0].label, ready.name, h.axes[0].label
    ('Jet p_{T} [GeV]', 't#bar{t}', 'Jet $p_T$ [GeV]')
    """
    out = h.copy()
    for axis in out.axes:
        axis.label = tlatex(axis.label)
    out.name = tlatex(title) if title is not None else None
    return out


def write_hist(out: Any, key: str, h: hist.Hist, title: str | None = None) -> None:
    """Write ``h`` to the uproot file ``out`` at ``key`` (``folder/name``) as a TH1/TH2/TH3
    with ROOT titles (:func:`root_hist`)."""
    out[key] = root_hist(h, title)
