"""The generated HTML in a real headless Chromium: renders, sorts, plots, no errors, no XSS.

Needs Debian's ``chromium`` and ``chromium-driver`` (CI installs them) and selenium (the
``test`` extra). Selenium is pointed at the system chromedriver, so nothing is downloaded.
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.test_leaderboard import XSS_DESC, XSS_NAME, make_board

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver are not installed (apt-get install chromium "
           "chromium-driver); CI installs them")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return make_board(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def driver():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def value_of(text):
    """The number of a cell whose text is e.g. ``83.3=`` then ``[52.0, 99.6]`` on a new line."""
    return float(re.match(r"-?\d+(\.\d+)?", text).group(0))


def rank_number(text):
    return int(text.rstrip("="))


def column_values(table, col):
    return [tr.find_elements("css selector", "td")[col].text
            for tr in table.find_elements("css selector", "tbody tr")]


def test_page_renders_sorts_plots_without_errors_or_script_injection(driver, board):
    from selenium.common.exceptions import NoAlertPresentException

    driver.set_window_size(1400, 900)
    driver.get((board / "digits.html").as_uri())
    assert "digits" in driver.title
    tables = driver.find_elements("css selector", "table.sortable")
    assert len(tables) >= 3
    # Plots: inline SVG with one polyline per row.
    plots = driver.find_elements("css selector", "svg.plot")
    assert len(plots) == len(tables)
    assert plots[0].find_elements("css selector", "path.curve")
    assert plots[0].size["width"] > 100
    # the accuracy-vs-compute panels (gaussian at two budgets on one image set) render too
    panels = driver.find_elements("css selector", "section.compute svg.compute-plot")
    assert len(panels) == 4 and all(p.size["width"] > 100 for p in panels)
    assert panels[0].find_elements("css selector", "g.pareto circle.front-point")

    # Sorting: the N=1,000 group's table: two reproduced sigmas and the claimed row.
    table = next(t for t in tables
                 if len(t.find_elements("css selector", "tbody tr")) >= 3)
    headers = table.find_elements("css selector", "thead th")
    r0 = next(i for i, h in enumerate(headers) if h.text.strip() == "r=0.5")
    ranks = column_values(table, 0)  # 1, 2, ... or shared: 1=, 1=, 3, ...
    assert all(re.fullmatch(r"\d+=?", v) for v in ranks), ranks
    assert [rank_number(v) for v in ranks] == sorted(rank_number(v) for v in ranks)
    # The 95% interval is shown in the cell (under the value), not only on hover.
    cell = table.find_elements("css selector", "tbody tr")[0].find_elements("css selector",
                                                                              "td")[r0]
    assert re.search(r"\[\d+\.\d, \d+\.\d\]", cell.text), cell.text
    assert cell.find_element("css selector", ".ci").is_displayed()
    before = column_values(table, 1)  # method names in rank order
    headers[r0].click()
    first = column_values(table, r0)
    numbers = [value_of(v) for v in first if v != "-"]
    assert numbers == sorted(numbers, reverse=True)
    headers[r0].click()
    second = column_values(table, r0)
    numbers = [value_of(v) for v in second if v != "-"]
    assert numbers == sorted(numbers)
    assert second != first
    assert column_values(table, 1) != before  # the rows moved, not just the header
    assert "sorted-asc" in headers[r0].get_attribute("class")
    # Shared ranks sort as numbers (data-sort), "1=" next to "1".
    headers[0].click()
    assert [rank_number(v) for v in column_values(table, 0)] == sorted(
        (rank_number(v) for v in ranks), reverse=True)

    # Markup in a method name or description is shown as text and never runs.
    body = driver.find_element("css selector", "body").text
    assert XSS_NAME in body and XSS_DESC in body
    assert driver.execute_script("return window.__xss === undefined")
    assert not driver.find_elements("css selector", "td img, td script")
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018

    # Three kinds of rows, visibly different.
    styles = {k: driver.find_element("css selector", f"tr.kind-{k} td.method")
              .value_of_css_property("border-left-style") for k in ("reproduced", "claimed",
                                                                     "reported")}
    assert len(set(styles.values())) == 3

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_index_links_to_every_dataset_page(driver, board):
    driver.set_window_size(1400, 900)
    driver.get((board / "index.html").as_uri())
    links = [a.get_attribute("href") for a in driver.find_elements("css selector",
                                                                   "#datasets a")]
    assert any(h.endswith("/digits.html") for h in links)
    assert any(h.endswith("/cifar10.html") for h in links)
    driver.find_element("link text", "cifar10").click()
    assert driver.find_elements("css selector", "tr.kind-reported")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


# ----- layout at 1400 px and on a 390 px phone, and printed ---------------------------------------
WIDTHS = {"desktop": 1400, "phone": 390}


def open_at(driver, url, width):
    """Load ``url`` with a viewport ``width`` CSS pixels wide (mobile emulation on a phone)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.get(url)
    assert driver.execute_script("return window.innerWidth") == width


@pytest.fixture
def viewport(driver):
    yield driver
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


def rect(driver, element):
    return driver.execute_script("var r = arguments[0].getBoundingClientRect();"
                                 "return {left: r.left, right: r.right, width: r.width};", element)


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_no_page_overflow_sticky_method_column_and_legend(viewport, board, width):
    driver = viewport
    for page in ("digits.html", "cifar10.html", "index.html"):
        open_at(driver, (board / page).as_uri(), width)
        overflow = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], (page, overflow)

    open_at(driver, (board / "digits.html").as_uri(), width)
    # The widest table scrolls inside its wrapper; the method column stays in view.
    wrappers = driver.find_elements("css selector", "div.table-scroll")
    wrapper = max(wrappers, key=lambda w: driver.execute_script(
        "return arguments[0].scrollWidth - arguments[0].clientWidth", w))
    assert driver.execute_script(
        "return arguments[0].scrollWidth > arguments[0].clientWidth", wrapper)
    assert wrapper.value_of_css_property("overflow-x") == "auto"
    method = wrapper.find_element("css selector", "tbody tr td.method")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", method)
    assert method.value_of_css_property("position") == "sticky"
    before = rect(driver, method)
    driver.execute_script("arguments[0].scrollLeft = arguments[0].scrollWidth", wrapper)
    assert driver.execute_script("return arguments[0].scrollLeft", wrapper) > 0
    box, after = rect(driver, wrapper), rect(driver, method)
    assert abs(after["left"] - box["left"]) <= 2, (box, after)  # stuck to the left edge
    assert after["right"] <= box["right"] and after["width"] == pytest.approx(before["width"])
    hit = driver.execute_script(
        "var r = arguments[0].getBoundingClientRect();"
        "return document.elementFromPoint(r.left + 3, r.top + r.height / 2)"
        ".closest('td.method') === arguments[0];", method)
    assert hit  # drawn on top of the scrolled cells, not under them

    # Plots scale to the page; every legend entry is inside the viewport.
    for plot in driver.find_elements("css selector", "svg.plot"):
        assert rect(driver, plot)["right"] <= width
    items = driver.find_elements("css selector", "ul.legend li")
    assert items
    assert all(0 <= rect(driver, li)["left"] and rect(driver, li)["right"] <= width
               for li in items)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_greyed_cells_descriptions_and_index_headlines(viewport, board):
    driver = viewport
    open_at(driver, (board / "digits.html").as_uri(), 1400)
    greyed = driver.find_elements("css selector", "td.beyond")
    assert greyed
    for td in greyed[:5]:
        title = td.get_attribute("title")
        assert re.match(r"beyond this run's maximum certifiable radius \d+\.\d{3} \(N = [\d,]+, "
                        r"alpha = 0\.001\): no image can be certified here", title), title
        assert td.value_of_css_property("background-color") != "rgba(255, 255, 255, 1)"
    # One description per method: in the Methods list, not in the rows.
    names = [dt.get_attribute("data-method")
             for dt in driver.find_elements("css selector", "dl.methods dt")]
    assert sorted(names) == sorted(set(names)) and "gaussian" in names
    descs = [d.text for d in driver.find_elements("css selector", ".method-desc")]
    assert len(descs) == len(names)
    body = driver.find_element("css selector", "body").text
    for desc in descs:
        assert body.count(desc) == 1, desc
    assert XSS_DESC in descs  # markup shown as text, once
    assert not driver.find_elements("css selector", "td .method-desc, td .desc")

    open_at(driver, (board / "index.html").as_uri(), 390)
    import bench

    generated = driver.find_element("id", "generated").text
    assert re.search(r"Generated \d{4}-\d{2}-\d{2} by certbench " + re.escape(bench.__version__),
                     generated)
    headlines = driver.find_elements("css selector", "table.headline")
    assert {t.get_attribute("data-dataset") for t in headlines} >= {"digits", "cifar10"}
    digits = next(t for t in headlines if t.get_attribute("data-dataset") == "digits")
    heads = [th.text for th in digits.find_elements("css selector", "thead th")]
    assert heads[:3] == ["rank", "method", "sigma"] and heads[-1] == "ACR"
    assert digits.find_elements("css selector", "tbody tr.kind-reproduced")
    link = digits.find_element("css selector", "tr.group a")
    assert "digits.html#group-" in link.get_attribute("href")


def test_print_stylesheet(viewport, board):
    driver = viewport
    open_at(driver, (board / "digits.html").as_uri(), 1400)
    wrapper = driver.find_element("css selector", "div.table-scroll")
    method = wrapper.find_element("css selector", "tbody td.method")
    assert wrapper.value_of_css_property("overflow-x") == "auto"
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert wrapper.value_of_css_property("overflow-x") == "visible"
    assert method.value_of_css_property("position") == "static"
    table = wrapper.find_element("css selector", "table")
    assert rect(driver, table)["width"] == pytest.approx(rect(driver, wrapper)["width"], abs=2)
    assert float(table.value_of_css_property("font-size").rstrip("px")) >= 9  # 7.5pt = 10px
    for hidden in driver.find_elements("css selector", "nav, .interactive"):
        assert not hidden.is_displayed()
    assert driver.find_element("css selector", "svg.plot").is_displayed()
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    assert wrapper.value_of_css_property("overflow-x") == "auto"
