"""``python -m bench plot``: exact step curves, stable colours, unique legends, file formats."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bench.cli import main  # noqa: E402
from bench.reports import plot, style  # noqa: E402
from bench.reports.curves import step_curve  # noqa: E402
from bench.store.database import Store  # noqa: E402

RUN = ["run", "--dataset", "digits", "--n", "300", "--n0", "20", "--max-images", "12",
       "--quiet"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A small store: gaussian at sigma 0.25 and 0.5, clean at 0.25 (12 digits each)."""
    root = tmp_path_factory.mktemp("plot") / "results"
    for method, sigma in (("gaussian", "0.25"), ("gaussian", "0.5"), ("clean", "0.25")):
        assert main([*RUN, "--method", method, "--sigma", sigma, "--results", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def store(results):
    s = Store(results)
    yield s
    s.close()


def _lines(fig):
    return {line.get_gid().split(":", 1)[1]: line for ax in fig.axes for line in ax.get_lines()
            if (line.get_gid() or "").startswith("curve:")}


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_writes_pdf_png_svg(results, tmp_path, capsys):
    outs = [tmp_path / "fig.pdf", tmp_path / "sub" / "fig.png", tmp_path / "fig.svg"]
    code = main(["plot", "--dataset", "digits", "--results", str(results), "--title", "digits",
                 *(a for p in outs for a in ("--out", str(p)))])
    assert code == 0
    assert outs[0].read_bytes().startswith(b"%PDF")
    assert outs[1].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    root = ET.parse(outs[2]).getroot()
    assert root.tag.endswith("svg")
    assert capsys.readouterr().out.count("wrote ") == 3


def test_curves_are_the_exact_step_curves_of_the_certificates(store):
    summaries = plot.select(store, "digits")
    fig = plot.figure(summaries, max_radius=max(s.max_certifiable_radius for s in summaries))
    lines = _lines(fig)
    assert len(lines) == 3
    off_grid = 0
    for summary in summaries:
        run_id = summary.card.run_id
        certs = store.certs(run_id)
        xs, ys = step_curve([(c.radius, c.correct) for c in certs],
                            until=summary.max_certifiable_radius)
        line = lines[run_id]
        px, py = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        np.testing.assert_allclose(px, xs)
        np.testing.assert_allclose(py, 100 * ys)
        # A step function: every segment is horizontal or vertical, never a slope.
        dx, dy = np.diff(px), np.diff(py)
        assert np.all((np.abs(dx) < 1e-12) | (np.abs(dy) < 1e-12))
        # Its vertices sit at the images' own radii, not (only) at the radius grid.
        grid = set(summary.card.radius_grid)
        radii = {c.radius for c in certs if c.correct and c.radius > 0}
        off = radii - grid
        assert off <= set(px.tolist())
        off_grid += len(off)
        # The run's cap is marked at its maximum certifiable radius.
        cap = [ln for ax in fig.axes for ln in ax.get_lines()
               if ln.get_gid() == f"max-radius:{run_id}"]
        assert len(cap) == 1
        assert cap[0].get_xdata()[0] == pytest.approx(summary.max_certifiable_radius)
    assert off_grid > 0


def test_a_method_keeps_its_colour_across_figures(store):
    both = plot.figure(plot.select(store, "digits", sigmas=[0.25]))
    alone = plot.figure(plot.select(store, "digits", methods=["gaussian"], sigmas=[0.25]))
    colour = {ln.get_label().split()[0]: ln.get_color() for ln in _lines(both).values()}
    (only,) = _lines(alone).values()
    assert only.get_color() == colour["gaussian"]
    assert colour["clean"] != colour["gaussian"]
    assert set(colour.values()) <= set(style.PALETTE)
    # The order is the registry's, not the figure's: stable whatever a figure holds.
    order = style.color_order(["gaussian"], plot.registry_methods())
    assert colour["gaussian"] == style.PALETTE[order.index("gaussian") % len(style.PALETTE)]


def test_sigmas_get_line_styles_and_every_label_is_unique(store):
    fig = plot.figure(plot.select(store, "digits"))
    lines = list(_lines(fig).values())
    gauss = [ln for ln in lines if ln.get_label().startswith("gaussian ")]
    assert len(gauss) == 2
    assert gauss[0].get_linestyle() == "-" and gauss[1].get_linestyle() == "--"
    assert {ln.get_label() for ln in gauss} == {"gaussian sigma=0.25", "gaussian sigma=0.5"}
    texts = _legend_texts(fig)
    assert len(texts) == len(set(texts)) == 4  # three curves and the cap marker
    assert any("max. certifiable radius" in t for t in texts)
    # Caps past the default radius axis are not drawn; the legend counts them.
    xmax = fig.axes[0].get_xlim()[1]
    caps = [ln for ln in fig.axes[0].get_lines() if ln.get_gid().startswith("max-radius:")]
    assert all(ln.get_xdata()[0] <= xmax for ln in caps)
    beyond = 3 - len(caps)
    assert (f"({beyond} beyond the axis)" in texts[-1]) == (beyond > 0)
    ax = fig.axes[0]
    assert ax.get_xlabel() == plot.X_LABEL and ax.get_ylabel() == plot.Y_LABEL
    # The legend is below the axes (never over the curves).
    fig.draw_without_rendering()  # runs the constrained layout
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0


def test_labels_name_m_n_sequential_and_other_params(store):
    """Runs of one method that differ in m, N, protocol or params get labels that say so."""
    base = plot.select(store, "digits", methods=["gaussian"], sigmas=[0.25])[0]

    def variant(run_id, **ident):
        card = dataclasses.replace(base.card, identity={**base.card.identity, **ident},
                                   extra={**base.card.extra, "run_id": run_id})
        return dataclasses.replace(base, card=card)

    runs = [variant("a", n=2000, m=5), variant("b", n=1000, m=10),
            variant("c", n=2000, m=5, procedure="sequential"),
            variant("d", n=1000, m=10, params={"p": 1}), variant("e", n=1000, m=10,
                                                                  params={"p": 2})]
    fig = plot.figure(runs)
    labels = {run_id: line.get_label() for run_id, line in _lines(fig).items()}
    assert labels["a"] == "gaussian sigma=0.25 m=5 N=2,000"
    assert labels["c"] == "gaussian sigma=0.25 m=5 N=2,000 sequential"
    assert "p=1" in labels["d"] and "p=2" in labels["e"]
    assert len(set(labels.values())) == 5
    # One sigma: styles follow the method's curves in order, all distinct (the dash pattern:
    # get_linestyle() names every custom pattern "--").
    assert len({str(ln._unscaled_dash_pattern) for ln in _lines(fig).values()}) == 5
    # Another image set: shown, with its image count and a note.
    other = dataclasses.replace(variant("f", n=300), sample_key="elsewhere", images=5)
    fig = plot.figure([base, other])
    texts = _legend_texts(fig)
    assert any("[5 img]" in t for t in texts)
    assert "different image sets" in fig.legends[0].get_title().get_text()


def test_a_label_aware_run_is_labelled_so(store):
    base = plot.select(store, "digits", methods=["gaussian"], sigmas=[0.25])[0]

    def variant(run_id, **sequential):
        ident = {**base.card.identity, "procedure": "sequential", "sequential": sequential}
        card = dataclasses.replace(base.card, identity=ident,
                                   extra={**base.card.extra, "run_id": run_id})
        return dataclasses.replace(base, card=card)

    fig = plot.figure([variant("plain", label_aware=False), variant("aware", label_aware=True)])
    labels = {run_id: line.get_label() for run_id, line in _lines(fig).items()}
    assert labels == {"plain": "gaussian sigma=0.25 sequential",
                      "aware": "gaussian sigma=0.25 sequential label-aware"}


def test_filters_and_one_line_errors(results, tmp_path, capsys):
    out = str(tmp_path / "f.png")
    base = ["plot", "--dataset", "digits", "--results", str(results), "--out", out]
    assert main([*base, "--methods", "gaussian", "--sigmas", "0.5"]) == 0
    capsys.readouterr()
    assert main([*base, "--methods", "gaussian,nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuch" in err and "clean, gaussian" in err
    assert main([*base, "--sigmas", "0.75"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.25, 0.5" in err
    assert main([*base, "--budget", "999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gaussian (sigma 0.25, 0.5; budget 300)" in err
    assert main([*base, "--budget", "300", "--methods", "clean"]) == 0
    assert main([*base[:-1], str(tmp_path / "f.jpg")]) == 2
    assert ".pdf, .png, .svg" in capsys.readouterr().err
    assert main(["plot", "--dataset", "digits", "--results", str(tmp_path / "none"),
                 "--out", out]) == 2
    assert not (tmp_path / "none").exists()  # reading never creates a store


def test_without_matplotlib_one_line_install_hint(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", "--dataset", "digits", "--results", str(results),
                 "--out", str(tmp_path / "x.pdf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'certbench[plot]'" in err


def test_help_does_not_import_matplotlib():
    code = ("import sys; from bench.cli import main; main(['plot', '--help']); "
            "assert 'matplotlib' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--max-radius" in done.stdout
