"""Headless Chromium through Selenium, for the browser tests and the screenshots script.

Debian's ``chromium`` and ``chromium-driver`` packages put the browser and its
driver at /usr/bin/chromium and /usr/bin/chromedriver; ``$KVMODEL_CHROMIUM``
and ``$KVMODEL_CHROMEDRIVER`` point elsewhere. Selenium comes with the
``test`` extra.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

__all__ = ["chromium_paths", "headless_chromium"]


def chromium_paths() -> tuple[str, str] | str:
    """The browser and driver executables, or a sentence saying what is missing."""
    browser = os.environ.get("KVMODEL_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    driver = os.environ.get("KVMODEL_CHROMEDRIVER") or shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path
        )
        return (
            f"{missing} not found: install the Debian packages chromium and chromium-driver "
            "(or set $KVMODEL_CHROMIUM and $KVMODEL_CHROMEDRIVER)."
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install 'kvmodel[test]'."
    return browser, driver


def headless_chromium(width: int = 1200, height: int = 800) -> Any:
    """A Selenium WebDriver on a new headless Chromium; the caller quits it.

    Raises:
        RuntimeError: the browser, its driver or selenium is missing (the message says which).
    """
    found = chromium_paths()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver = found
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)
