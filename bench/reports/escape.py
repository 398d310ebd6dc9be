"""Escaping free text for each output format (no dependencies).

Method names, descriptions, subset names, sources, notes and settings come from imports and
registries, that is from whoever wrote the file: as text they must not become markup where a
table is pasted or opened. Each function here turns any string into plain text of one format:

* :func:`latex`: the special characters ``\\ { } $ & # ^ _ % ~ < >`` escaped and every line
  break made a space, so no cell, caption or ``%`` comment can start a live LaTeX line
  (``x\\n\\input{/etc/passwd}``);
* :func:`markdown`: ``& < >`` as HTML entities (no raw HTML, no autolinks), backslash,
  backticks and the characters of links, emphasis and tables (``[ ] * _ ~ |``) backslashed,
  line breaks made spaces (a cell stays in its row);
* :func:`csv_cell`: a text cell starting with ``= + - @``, a tab or a carriage return gets a
  leading ``'`` (OWASP's rule against spreadsheet formula injection); numbers, including
  negative ones such as ``-0.5``, are left alone.

HTML is escaped by jinja2's autoescape (:mod:`bench.reports.leaderboard`). Control characters (other
than the line breaks above, which become spaces) are dropped by every text escape: the table
code uses a few as placeholders for the markup it adds itself.
"""

from __future__ import annotations

import re
from typing import Any

# Everything str.splitlines() treats as a line break, and the other C0/C1 control characters.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\t"
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
_BREAK_RE = re.compile("[" + re.escape(_BREAKS) + "]")


def plain(text: Any) -> str:
    """``text`` as one line: line breaks (and tabs) become spaces, control characters go."""
    return _BREAK_RE.sub(" ", _CONTROL.sub("", str(text)))


_LATEX = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "^": r"\^{}", "_": r"\_", "%": r"\%", "~": r"\textasciitilde{}",
    "<": r"\ensuremath{<}", ">": r"\ensuremath{>}",
}
_LATEX_RE = re.compile("[" + re.escape("".join(_LATEX)) + "]")


def latex(text: Any) -> str:
    """Free text as LaTeX text on one line (cells, captions and ``%`` comments alike)."""
    return _LATEX_RE.sub(lambda m: _LATEX[m.group()], plain(text))


_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_BACKSLASHED = "\\`*_[]|~"
_MD_RE = re.compile("[" + re.escape("".join(_MD_ENTITIES) + _MD_BACKSLASHED) + "]")


def markdown(text: Any) -> str:
    """Free text as inline Markdown text on one line, safe inside a GitHub table cell."""
    return _MD_RE.sub(lambda m: _MD_ENTITIES.get(m.group(), "\\" + m.group()), plain(text))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet reads as a formula; anything but text is unchanged.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'`` unless it
    is a plain decimal number (``-0.5``, ``+1e-3``), which spreadsheets read as a number.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    if _NUMBER.fullmatch(value):
        return value
    return "'" + value
