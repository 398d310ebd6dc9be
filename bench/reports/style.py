"""One style for every figure, ``bench plot`` and the leaderboard alike: the palette and the
method-to-colour rule (no torch, no matplotlib)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Tableau 10 (matplotlib's tab10), then the light colours of Tableau 20 (the dark ones are
# tab10's): 20 distinct colours.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)

# The leaderboard's SVG dash patterns: one per sigma (and m) within a plot, in sorted order.
DASHES = ("", "8 4", "2 3", "10 3 2 3", "4 2", "1 2", "12 3 2 3 2 3", "6 2 1 2")


def color_order(methods: Iterable[str], known: Sequence[str] = ()) -> list[str]:
    """The fixed order colours are taken in: ``known`` names (the registry's) sorted, then the
    other ``methods`` sorted. A method's colour is ``PALETTE[rank % len(PALETTE)]``."""
    first = sorted(set(known))
    return first + sorted(set(methods) - set(first))


def method_colors(methods: Iterable[str], known: Sequence[str] = ()) -> dict[str, str]:
    """A colour per method by :func:`color_order`: with the registry's method names as
    ``known``, a method has one colour in every figure and on every leaderboard page."""
    methods = list(methods)
    order = color_order(methods, known)
    return {m: PALETTE[order.index(m) % len(PALETTE)] for m in methods}
