"""Makes the screenshots of ``kvmodel browse`` in docs/img/ (``make browse-screenshots``).

``python -m kvmodel.cli.browse.screenshots [--out DIR]`` builds a demo store
(a SQLite file filled by the orders example in :mod:`kvmodel.examples.orders`:
orders in several states, their indexes, fulfillment and email jobs waiting
in the queue, a few settings and an expiring session key), serves the browser
on it in this process, and photographs each page with the same headless
Chromium the browser tests drive (see :mod:`kvmodel.cli.browse._chromium`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import kvmodel as km
from kvmodel.cli.browse._app import create_app
from kvmodel.cli.browse._chromium import headless_chromium
from kvmodel.cli.browse._server import ThreadedServer, new_token

__all__ = ["fill_demo_store", "main", "take_screenshots"]

PAGES = (
    ("browse-tree.png", "/tree", None),
    ("browse-entries.png", "/entries?prefix=orders&limit=12", None),
    ("browse-entry.png", "{order}", None),
    ("browse-models.png", "/models", None),
    ("browse-model.png", "/model?prefix=orders", "check-indexes"),
    ("browse-queue.png", "/queue?dead=failed_jobs", None),
    ("browse-stale-edit.png", "{order}", "stale"),
)


def fill_demo_store(kv: km.Kv) -> str:
    """Fills ``kv`` with the orders example's data; returns the text key of one order."""
    from kvmodel.examples.orders import OrderItem, create_order, update_order_status

    customers = ("cus_ada", "cus_grace", "cus_linus")
    orders = []
    for i in range(9):
        items = [OrderItem(f"sku_{i % 4}", 1 + i % 3, 1250 + 100 * i)]
        orders.append(create_order(kv, customers[i % 3], items))
    for order in orders[:3]:
        update_order_status(kv, order.id, "processing")
    update_order_status(kv, orders[0].id, "shipped", then_enqueue={"job": "email"})
    kv.set(("settings", "currency"), "EUR")
    kv.set(("settings", "orders_seen"), km.KvU64(9))
    kv.set(("settings", "logo"), b"\x89PNG\r\n\x1a\n")
    kv.set(("sessions", "s_01"), {"user": "cus_ada"}, expire_in=3600)
    kv.enqueue(
        {"job": "reminder", "customer_id": "cus_linus"},
        delay=3600,
        keys_if_undelivered=[("failed_jobs", "reminder_1")],
    )
    kv.set(("failed_jobs", "email_0"), {"job": "email", "order_id": orders[2].id})
    return f"/entry?key=orders,{orders[1].id}"


def take_screenshots(out: Path, *, width: int = 1200, height: int = 700) -> list[Path]:
    """Writes one PNG per page into ``out``; returns their paths."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from kvmodel.examples.orders import Order

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="kvmodel-browse-") as tmp:
        kv = km.open_kv(str(Path(tmp) / "shop.db"))
        order_page = fill_demo_store(kv)
        token = new_token()
        app = create_app(kv, token=token, write=True, models=[Order], store_name="shop.db")
        server = ThreadedServer(app, token=token).start()
        driver: Any = headless_chromium(width, height)
        try:
            driver.get(f"{server.url}/tree?token={token}")
            for name, path, action in PAGES:
                driver.get(server.url + path.format(order=order_page))
                if action == "check-indexes":
                    driver.find_element(By.ID, "check-indexes").click()
                    WebDriverWait(driver, 15).until(
                        lambda d: d.find_elements(By.ID, "report-indexes")
                    )
                elif action == "stale":
                    key = path.format(order=order_page).split("key=", 1)[1].split(",", 1)[1]
                    with km.Session(kv) as session:
                        found = session.get(Order, key)
                        assert found is not None
                        found.status = "delivered"  # another writer, behind the page's back
                    box = driver.find_element(By.CSS_SELECTOR, "#edit textarea")
                    box.send_keys(" ")
                    driver.find_element(By.ID, "save").click()
                    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.ID, "error"))
                else:
                    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.TAG_NAME, "main"))
                # The whole page, up to twice the window's height.
                full, chrome = driver.execute_script(
                    "return [document.documentElement.scrollHeight,"
                    " window.outerHeight - window.innerHeight]"
                )
                page = min(max(height, int(full)), 2 * height)
                driver.set_window_size(width, page + int(chrome))
                target = out / name
                driver.save_screenshot(str(target))
                driver.set_window_size(width, height)
                written.append(target)
        finally:
            driver.quit()
            server.stop()
            kv.close()
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="Directory for PNGs.")
    args = parser.parse_args(argv)
    for path in take_screenshots(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
