"""Headless Chromium through selenium, with the system browser and driver (Debian's ``chromium``
and ``chromium-driver``; nothing is downloaded). Used by the viewer's benchmark and tests; needs
the ``dev`` extra (selenium)."""

from __future__ import annotations

import shutil

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")


def find_browser() -> tuple[str, str] | None:
    """(browser, driver) executables on PATH, or None."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    return (browser, driver) if browser and driver else None


def headless_chromium(width: int = 1400, height: int = 900):
    """A selenium WebDriver on headless Chromium with software WebGL (SwiftShader)."""
    found = find_browser()
    if found is None:
        raise RuntimeError("headless Chromium needs the system `chromium` and `chromedriver` on PATH: "
                           "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu-sandbox",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
