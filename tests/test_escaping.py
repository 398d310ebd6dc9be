"""Free text is escaped for each output format (issue 15, item 3).

Hostile strings go into every free-text field: an imported claimed run (method, subset, source
file name and description), a run stored with a hostile method, subset and device, and an extra
registry whose method name, description, reported source, notes, setting, model and string sigma
are hostile. The LaTeX, CSV and Markdown tables and the leaderboard's Markdown and HTML pages
must keep them text: no live LaTeX line, no spreadsheet formula, no raw markup, no broken table.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
import yaml

from bench.certify.records import Certificate, RunCard
from bench.registry.entries import load_registry
from bench.reports import escape, leaderboard, table
from bench.store.database import Store
from tests.conftest import ROOT

SINK = ('HYPERLINK("http://evil.example")\n\\input{/etc/passwd}\r\n'
        "<script>alert(1)</script><img src=x onerror=alert(2)>|a|b `c` "
        "[l](javascript:alert(3)) *e* _u_ ~~s~~ $ & # ^ % ~ {} \\\x02\x03")
# Each starts with one of OWASP's formula characters and carries every other attack.
HOSTILE = [c + SINK for c in ("=", "+", "-", "@", "\t", "\r")]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
IDX = [0, 1, 2, 3, 4, 5]
SAFE_HREF = ("runs/", "https://", "http://", "#", "data:,")  # links the site writes itself


def _tsv(path, radii):
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    lines += [f"{i}\t1\t{1 if r > 0 else 0}\t{r}\t{int(r > 0)}\t0.5"
              for i, r in zip(IDX, radii, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _file_name(text: str) -> str:
    return text.replace("/", "_") + ".tsv"  # a file name may hold anything but / and NUL


def _import(cli, tmp_path, method, subset, name, source, sigma, radii):
    folder = tmp_path / f"in{len(list(tmp_path.glob('in*')))}"
    folder.mkdir()
    tsv = _tsv(folder / _file_name(name), radii)
    code, _, err = cli("import", "--tsv", tsv, "--method", method, "--dataset", "digits",
                       "--sigma", sigma, "--subset", subset, "--source", source,
                       "--results", tmp_path / "results")
    assert code == 0, err


def _stored_run(results, method, subset, device):
    ident = {"method": method, "dataset": "digits", "sigma": 0.25, "n0": 100, "n": 1000,
             "m": 1, "alpha": 0.001, "subset": subset, "subset_size": len(IDX)}
    card = RunCard.from_json({"run_id": "eeee00000001", "identity": ident})
    certs = [Certificate(prediction=1, radius=r, p_lower=0.9, top_class=1, count=900, n0=100,
                         n=1000, classifier_passes=1100, seconds=0.25, idx=i, label=1,
                         device=device)
             for i, r in zip(IDX, [0.1, 0.3, 0.6, 0.2, 0.7, 0.4], strict=True)]
    store = Store(results)
    store.open_run(card)
    store.add_certs(card.run_id, certs)
    store.close()


def _registry(path):
    def rep(sigma, source, accuracy, **more):
        return {"dataset": "digits", "sigma": sigma, "N": 1000, "N0": 100, "alpha": 0.001,
                "images": 6, "accuracy": accuracy, "source": source, **more}

    data = {"methods": {HOSTILE[2]: {
        "description": HOSTILE[3], "paper": {"url": "javascript:alert(4)"},
        "reported": [
            # Two sigmas of one setting: an envelope row (sources joined, setting shown).
            rep(0.25, HOSTILE[5], {0.0: 90.0, 0.5: 40.0}, setting=HOSTILE[4], notes=HOSTILE[0],
                model=HOSTILE[1]),
            rep(0.5, HOSTILE[1], {0.0: 80.0, 0.5: 50.0}, setting=HOSTILE[4]),
            # A string sigma ("best" in the shipped registry).
            rep(HOSTILE[0], HOSTILE[2], {0.0: 95.0, 0.5: 55.0}, setting=HOSTILE[1]),
        ]}}}
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture
def hostile(cli, tmp_path):
    """A results store and an extra registry with hostile text in every free-text field."""
    n = len(HOSTILE)
    for i in range(n):  # each payload in each field: method, subset, file name, --source
        _import(cli, tmp_path, HOSTILE[i], HOSTILE[(i + 1) % n], HOSTILE[(i + 2) % n],
                HOSTILE[(i + 3) % n], 0.25, [0.1, 0.3, 0.6, 0.0, 0.5, 0.2])
    # A second sigma of run 0: an envelope titled with its hostile subset.
    _import(cli, tmp_path, HOSTILE[0], HOSTILE[1], "second", "", 0.5,
            [0.2, 0.6, 0.0, 0.0, 0.9, 0.4])
    # A second file at the same sigma as run 1: an envelope note naming it and its subset.
    _import(cli, tmp_path, HOSTILE[1], HOSTILE[2], "twin", "", 0.25,
            [0.1, 0.3, 0.0, 0.0, 0.5, 0.2])
    _stored_run(tmp_path / "results", HOSTILE[3], HOSTILE[4], HOSTILE[5])
    return tmp_path / "results", _registry(tmp_path / "extra.yaml")


def _expected_rows(results, extra) -> int:
    """Rows (and envelope rows) a table of digits must have, however the text is escaped."""
    registry = load_registry(ROOT / "registry.yaml", extra=[extra])
    store = Store(results)
    rows = table.collect_rows(store, registry, "digits")
    store.close()
    env, notes = table.envelope_groups(rows)
    assert env and notes  # the fixture makes both, so both are checked below
    return len(rows) + len(env)


def _table(cli, results, extra, fmt) -> str:
    code, out, err = cli("table", "--dataset", "digits", "--format", fmt, "--results", results,
                         "--extra-registry", extra)
    assert code == 0, err
    return out


# ----- LaTeX ------------------------------------------------------------------------------------
LATEX_ESCAPES = re.compile(
    r"\\textbackslash\{\}|\\textasciitilde\{\}|\\\^\{\}|\\ensuremath\{[<>]\}|\\[{}$&#_%]"
    r"|\\textbf\{|\{\\scriptsize\[|\\(?:begin|end)\{tabular\}(?:\{l+\})?|\\(?:top|mid|bottom)rule"
)


def _bare_latex(line: str) -> str:
    """What is left of a line once every escape and every piece of markup the table code
    writes itself are taken out: it must hold no LaTeX special character."""
    opened = line.count(r"\textbf{") + line.count(r"{\scriptsize[")  # each closed by a }
    line = LATEX_ESCAPES.sub("", line.removesuffix(" \\\\"))
    return line.replace("}", "", opened)


def test_latex_has_no_live_line_and_no_bare_special_character(cli, hostile):
    results, extra = hostile
    text = _table(cli, results, extra, "latex")
    assert "\\input" not in text and "\r" not in text
    n_columns = len(table.headers(table.grid_of([], "digits")))
    data_rows = 0
    for line in text.splitlines():
        if line.startswith("% "):  # a title, note or comment: one line, escaped
            bare = LATEX_ESCAPES.sub("", line[2:])
            assert not re.search(r"[\\{}$&#^_%~]", bare), line
            continue
        assert line.startswith((" ", "\\begin{tabular}", "\\toprule", "\\midrule",
                                "\\bottomrule", "\\end{tabular}")), line
        if line.startswith(" "):  # a row: every cell on it, separated by bare &
            assert line.endswith(" \\\\"), line
            body = LATEX_ESCAPES.sub("", line[:-3])
            assert body.count("&") == n_columns - 1, line
            bare = _bare_latex(line).replace("&", "")
            assert not re.search(r"[\\{}$#^_%~]", bare), line
            data_rows += 1
    headers = text.count("\\toprule")
    assert data_rows - headers == _expected_rows(results, extra)
    assert "\\textbackslash{}input\\{/etc/passwd\\}" in text  # shown, as text
    assert "\\textbf{" in text  # the table's own markup is kept


# ----- CSV --------------------------------------------------------------------------------------
def test_csv_has_no_cell_a_spreadsheet_reads_as_a_formula(cli, hostile):
    results, extra = hostile
    text = _table(cli, results, extra, "csv")
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert len(body) == _expected_rows(results, extra)
    for line in body:
        assert len(line) == len(header)
        for cell in line:
            assert not cell.startswith(FORMULA_START) or NUMBER.fullmatch(cell), cell
    cells = {cell for line in body for cell in line}
    for field in ("method", "subset", "source", "setting", "device", "sigma_label"):
        column = {line[header.index(field)] for line in body}
        assert any(c.startswith("'") and c[1:2] in "=+-@\t\r" for c in column), field
    assert "'" + HOSTILE[0] in cells  # the text itself is kept, after the quote
    # The numbers are still numbers.
    import pandas as pd

    df = pd.read_csv(io.StringIO(text))
    assert pd.api.types.is_float_dtype(df["acc@0.5"]) and df["acc@0.5"].notna().all()


# ----- Markdown ---------------------------------------------------------------------------------
def _split_cells(line: str) -> list[str]:
    """A GitHub table row split on its unescaped pipes (a backslash escapes the next char)."""
    cells, cur, i = [], "", 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            cur += line[i:i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    cells.append(cur)
    return cells[1:-1]  # the row starts and ends with a pipe


def _unescaped(text: str, chars: str) -> list[str]:
    """Characters of ``chars`` in ``text`` not preceded by an escaping backslash."""
    return [m.group(1) for m in re.finditer(r"(?<!\\)(?:\\\\)*([" + re.escape(chars) + "])",
                                            text)]


def _check_markdown_tables(text: str, expected_rows: int) -> None:
    assert "<script" not in text and "<img" not in text and "\r" not in text
    assert not re.search(r"(?<!\\)\]\(javascript:", text)
    lines = text.split("\n")
    n_columns = len(table.headers(table.grid_of([], "digits")))
    data_rows, i = 0, 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i]:
            block.append(lines[i])
            i += 1
        for line in block:  # no row spills onto a line of its own
            assert line.startswith("|") and line.endswith("|"), line
            assert len(_split_cells(line)) == n_columns, line
        data_rows += len(block) - 2  # header and separator
        for line in block[2:]:
            for cell in _split_cells(line):
                # The table's own marks: bold numbers and interval brackets.
                bare = re.sub(r"\*\*\d+\.\d+\*\*=?|\[\d+\.\d, \d+\.\d\]", "", cell)
                assert not _unescaped(bare, "`*_[]<>~"), cell
    assert data_rows == expected_rows


def test_markdown_table_keeps_its_shape_and_passes_no_markup(cli, hostile):
    results, extra = hostile
    text = _table(cli, results, extra, "markdown")
    _check_markdown_tables(text, _expected_rows(results, extra))
    for line in text.split("\n"):
        if line.startswith(("### ", "Note: ")):  # titles and notes: one line, no markup
            assert not _unescaped(line.split(" ", 1)[1], "`*_[]<>|~"), line
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown, as text
    assert "**" in text  # the table's own bold marks are kept


def test_leaderboard_markdown_and_html_escape_every_field(cli, hostile, tmp_path):
    results, extra = hostile
    out = tmp_path / "board"
    code, _, err = cli("leaderboard", "--results", results, "--out", out,
                       "--extra-registry", extra)
    assert code == 0, err
    md = (out / "digits.md").read_text(encoding="utf-8")
    tables, _, run_files = md.partition("## Run files")
    _check_markdown_tables(tables, _expected_rows(results, extra))
    links = re.findall(r"(?<!\\)\]\(([^)]*)\)", run_files)
    assert links and all(re.fullmatch(r"runs/[A-Za-z0-9._+-]+/(card\.json|certs\.tsv)", u)
                         for u in links), links
    for line in run_files.strip().split("\n")[1:]:
        text = re.sub(r"\[(card|TSV)\]\(runs/[^)]*\)", "", line)  # the generated links
        assert line.startswith("- ") and not _unescaped(text, "`*_[]<>|~"), line
    html = (out / "digits.html").read_text(encoding="utf-8")
    assert html.count("<script") == 1  # the sorting code, nothing else
    tags = _tags(html)
    assert [t for t, _ in tags].count("script") == 1 and "img" not in [t for t, _ in tags]
    for tag, attrs in tags:
        assert not [k for k, _ in attrs if k.startswith("on")], tag  # no event handler
        hrefs = [v for k, v in attrs if k == "href"]
        assert all(v.startswith(SAFE_HREF) or v.endswith(".html") for v in hrefs), attrs
    assert "&lt;img src=x onerror=alert(2)&gt;" in html  # shown, as text
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "<script" not in readme


def _tags(html: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every element of a page with its attributes, as a browser's parser sees them."""
    from html.parser import HTMLParser

    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, [(k, v or "") for k, v in attrs]))

    Parser().feed(html)
    return found


# ----- the helpers ------------------------------------------------------------------------------
def test_helpers():
    assert escape.latex("a\n\\input{x}_%") == r"a \textbackslash{}input\{x\}\_\%"
    assert escape.latex("1\r\n2\u20283") == "1  2 3"
    assert escape.markdown("<b>a|b</b> & [x](y) *z* `c` \\") == (
        r"&lt;b&gt;a\|b&lt;/b&gt; &amp; \[x\](y) \*z\* \`c\` \\")
    assert escape.markdown("a\nb\x02") == "a b"
    for text in ("=1+1", "+1x", "-cmd", "@SUM(1)", "\tx", "\rx", "-1+2", "+inf"):
        assert escape.csv_cell(text) == "'" + text
    for value in ("-0.5", "+1e-3", "0.25", "method", "", None, -0.5, 3):
        assert escape.csv_cell(value) == value
    # The numbers of a CSV stay numbers; negative ones are not quoted.
    row = table.Row(kind="reported", method="=evil", dataset="digits", sigma=-0.5, n0=1, n=2,
                    m=1, alpha=0.1, subset="-x", subset_size=1, images=1,
                    accuracy={0.0: 0.5}, acr=-0.25)
    lines = list(csv.reader(io.StringIO(table.render([row], "csv", [0.0]))))
    rec = dict(zip(lines[0], lines[1], strict=True))
    assert rec["method"] == "'=evil" and rec["subset"] == "'-x"
    assert rec["sigma"] == "-0.5" and rec["acr"] == "-0.25"


def test_markdown_page_helper_escapes_the_run_list():
    row = table.Row(kind="claimed", method="<script>x</script>|`", dataset="digits",
                    sigma=0.25, n0=1, n=2, m=1, alpha=0.1, subset="s", subset_size=1, images=1,
                    accuracy={0.0: 0.5}, folder="claimed-_script_x_-digits-sigma0.25-abc",
                    run_id="abc")
    page = leaderboard.markdown_page([row], "digits")
    assert "<script" not in page
    assert "(runs/claimed-_script_x_-digits-sigma0.25-abc/card.json)" in page


def test_a_dataset_name_cannot_write_outside_the_leaderboard_folder(cli, tmp_path):
    """A reported row's dataset becomes a page name: '../x' is refused, not written."""
    reg = tmp_path / "evil.yaml"
    reg.write_text("methods:\n  evil:\n    description: d\n    reported:\n"
                   "      - {dataset: ../escaped, sigma: 0.25, accuracy: {0.0: 50.0}, "
                   "source: s}\n")
    code, out, err = cli("leaderboard", "--out", tmp_path / "lb", "--results", tmp_path / "none",
                         "--extra-registry", reg)
    assert not (tmp_path / "escaped.html").exists() and not (tmp_path / "escaped.md").exists()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
