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

    driver.get((board / "digits.html").as_uri())
    assert "digits" in driver.title
    tables = driver.find_elements("css selector", "table.sortable")
    assert len(tables) >= 3
    # Plots: inline SVG with one polyline per row.
    plots = driver.find_elements("css selector", "svg.plot")
    assert len(plots) == len(tables)
    assert plots[0].find_elements("css selector", "polyline")
    assert plots[0].size["width"] > 100

    # Sorting: the N=1,000 protocol table: two reproduced sigmas and the claimed row.
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
    driver.get((board / "index.html").as_uri())
    links = [a.get_attribute("href") for a in driver.find_elements("css selector",
                                                                   "#datasets a")]
    assert any(h.endswith("/digits.html") for h in links)
    assert any(h.endswith("/cifar10.html") for h in links)
    driver.find_element("link text", "cifar10").click()
    assert driver.find_elements("css selector", "tr.kind-reported")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
