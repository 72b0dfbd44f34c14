"""Tests of ``kvmodel browse`` in a real browser: headless Chromium driven by Selenium.

The app runs under hypercorn in a thread on a memory store filled by the
orders example; each test opens the printed form of the URL (with the token)
and acts as a user would: following the tree, filtering the table, running a
model's checks, watching a value change, saving a stale edit. Without
chromium, chromedriver or selenium the tests skip, saying which is missing;
with ``KVMODEL_REQUIRE_BROWSER=1`` (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

if os.environ.get("KVMODEL_REQUIRE_BROWSER") != "1":
    pytest.importorskip("starlette", reason="the browse extra is not installed")

import kvmodel as km
from kvmodel.cli.browse import ThreadedServer, create_app
from kvmodel.cli.browse._chromium import chromium_paths, headless_chromium
from kvmodel.examples.orders import Order, OrderItem, create_order

TOKEN = "chromium-test-token"
PWN = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    found = chromium_paths()
    if isinstance(found, str):
        if os.environ.get("KVMODEL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KVMODEL_REQUIRE_BROWSER=1 but {found}")
        pytest.skip(found)
    browser = headless_chromium()
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


@pytest.fixture
def kv() -> Iterator[km.Kv]:
    with km.open_kv() as kv:
        create_order(kv, "cus_1", [OrderItem("p1", 2, 1250)])
        create_order(kv, "cus_2", [OrderItem("p2", 1, 990)])
        kv.set(("users", "ada"), {"name": "Ada", "visits": km.KvU64(3)})
        kv.set(("users", "bob"), {"name": "Bob"})
        kv.set(("users", "pwn"), PWN)
        yield kv


@pytest.fixture
def url(kv: km.Kv) -> Iterator[str]:
    app = create_app(kv, token=TOKEN, write=True, models=[Order], store_name="demo")
    server = ThreadedServer(app, token=TOKEN).start()
    yield server.url
    server.stop()


def wait(driver: Any, condition: Any, timeout: float = 15) -> Any:
    """Waits for ``condition``; a live region replaced while it is read is read again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(condition)


def by(how: str, what: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, how), what


def login(driver: Any, url: str, path: str = "/tree") -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}{path}{'&' if '?' in path else '?'}token={TOKEN}")
    assert "token" not in driver.current_url  # redirected without it


def test_the_tree_leads_from_the_top_level_to_a_prefix(driver: Any, url: str) -> None:
    """The top level lists orders and users with counts; following users lists its keys."""
    login(driver, url)
    rows = driver.find_elements(*by("CSS_SELECTOR", "#tree tbody tr"))
    parts = [r.find_element(*by("CSS_SELECTOR", "td.key")).text for r in rows]
    assert "users" in parts and "orders" in parts
    users = rows[parts.index("users")]
    assert users.find_elements(*by("CSS_SELECTOR", "td.num"))[0].text == "3"
    users.find_element(*by("LINK_TEXT", "users")).click()
    wait(driver, lambda d: "prefix=users" in d.current_url)
    assert "3 keys under this prefix" in driver.find_element(*by("ID", "summary")).text


def test_the_table_filters_by_start_key_and_decodes_values(driver: Any, url: str) -> None:
    """The table shows decoded values; the start-key filter skips earlier keys."""
    login(driver, url, "/entries?prefix=users")
    text = driver.find_element(*by("ID", "rows")).text
    assert "u64(3)" in text
    field = driver.find_element(*by("NAME", "start"))
    field.send_keys("users,bob")
    field.submit()
    wait(driver, lambda d: "start=users" in d.current_url)
    keys = [e.text for e in driver.find_elements(*by("CSS_SELECTOR", "#rows td.key"))]
    assert keys == ["users,bob", "users,pwn"]


def test_a_model_page_shows_indexes_and_runs_a_check(driver: Any, url: str) -> None:
    """Order's page lists its ready indexes; Check indexes shows the report."""
    login(driver, url, "/models")
    driver.find_element(*by("PARTIAL_LINK_TEXT", "Order")).click()
    wait(driver, lambda d: "/model?" in d.current_url)
    indexes = driver.find_element(*by("ID", "indexes")).text
    assert "by_customer" in indexes and "by_status" in indexes and "ready" in indexes
    assert driver.find_element(*by("ID", "documents")).text == "2"
    driver.find_element(*by("ID", "check-indexes")).click()
    report = wait(driver, lambda d: d.find_elements(*by("ID", "report-indexes")))
    assert "ok" in report[0].get_attribute("class")


def test_an_entry_and_a_table_update_live_after_a_write(driver: Any, url: str, kv: km.Kv) -> None:
    """A value written through the Kv appears on the open pages without a reload."""
    login(driver, url, "/entry?key=users,ada")
    wait(driver, lambda d: "on" in d.find_element(*by("ID", "live")).get_attribute("class"))
    driver.execute_script("window.__same_page = true")
    kv.set(("users", "ada"), {"name": "Ada Lovelace"})
    wait(driver, lambda d: "Ada Lovelace" in d.find_element(*by("ID", "value")).text)
    assert driver.execute_script("return window.__same_page") is True  # no reload
    driver.get(f"{url}/entries?prefix=users")
    wait(driver, lambda d: "on" in d.find_element(*by("ID", "live")).get_attribute("class"))
    kv.set(("users", "zed"), "new")
    wait(driver, lambda d: "users,zed" in d.find_element(*by("ID", "rows")).text)


def test_a_stale_edit_is_refused_and_shown(driver: Any, url: str, kv: km.Kv) -> None:
    """Saving a value another writer changed meanwhile is refused; the store keeps theirs."""
    login(driver, url, "/entry?key=users,bob")
    kv.set(("users", "bob"), {"name": "Bob, changed elsewhere"})
    box = driver.find_element(*by("CSS_SELECTOR", "#edit textarea"))
    box.clear()
    box.send_keys('{"name": "mine"}')
    driver.find_element(*by("ID", "save")).click()
    error = wait(driver, lambda d: d.find_elements(*by("ID", "error")))
    assert "changed since the page showed it" in error[0].text
    wait(driver, lambda d: "changed elsewhere" in d.find_element(*by("ID", "value")).text)
    assert kv.get(("users", "bob")).value == {"name": "Bob, changed elsewhere"}
    box = driver.find_element(*by("CSS_SELECTOR", "#edit textarea"))  # the current value
    box.clear()
    box.send_keys('{"name": "mine"}')
    driver.find_element(*by("ID", "save")).click()
    wait(driver, lambda d: d.find_elements(*by("ID", "notice")))
    assert kv.get(("users", "bob")).value == {"name": "mine"}


def test_stored_markup_shows_as_text_and_never_runs(driver: Any, url: str, kv: km.Kv) -> None:
    """A stored <script> and an <img onerror> are displayed as text on every page."""
    for path in ("/entries?prefix=users", "/entry?key=users,pwn"):
        login(driver, url, path)
        assert PWN in driver.find_element(*by("TAG_NAME", "main")).text
        assert driver.execute_script("return window.__pwned") is None
    login(driver, url, "/entry?key=users,pwn")
    kv.set(("users", "pwn"), PWN + " again")  # arrives through the live stream
    wait(driver, lambda d: "again" in d.find_element(*by("ID", "value")).text)
    assert driver.execute_script("return window.__pwned") is None
