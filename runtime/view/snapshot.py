"""Screenshot of the viewer page in headless Chromium, once live data is on it.

    python -m runtime.view.snapshot http://127.0.0.1:8080/ docs/img/viewer.png [--settle 2]

Needs the system Chromium and selenium (``dev`` extra); ``deploy/demo.py`` uses it when
DEMO_SCREENSHOT is set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime.view.browser import headless_chromium


def snapshot(url: str, out: str | Path, settle_s: float = 2.0, timeout_s: float = 20.0,
             width: int = 1400, height: int = 780) -> Path:
    """Load ``url``, wait for a station with a tick, let the view settle, save a PNG."""
    from selenium.webdriver.common.by import By

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver = headless_chromium(width, height)
    try:
        driver.get(url)
        deadline = time.monotonic() + timeout_s
        while not driver.find_elements(By.CSS_SELECTOR, "article.station .tick[data-tick]:not([data-tick=''])"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no live station on {url} after {timeout_s:.0f} s")
            time.sleep(0.2)
        time.sleep(settle_s)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.view.snapshot", description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--settle", type=float, default=2.0, help="seconds of live updates before the shot")
    args = p.parse_args(argv)
    print(snapshot(args.url, args.out, args.settle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
