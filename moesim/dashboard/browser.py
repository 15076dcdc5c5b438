"""Open a dashboard in headless Chromium (Debian's ``chromium`` package, driven by Playwright), check
it rendered, and take a screenshot. Used by the browser test and to make README's picture::

    python -m moesim.dashboard.browser dashboard.html docs/images/dashboard.png

Never downloads a browser: it uses the system's chromium (``$MOESIM_CHROMIUM`` or ``chromium`` on PATH).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    env = os.environ.get("MOESIM_CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(path).exists():
            return path
    return None


@dataclass
class PageCheck:
    console_errors: list = field(default_factory=list)
    page_errors: list = field(default_factory=list)
    requests_outside: list = field(default_factory=list)
    figures: int = 0
    rendered: int = 0
    figure_ids: list = field(default_factory=list)
    unrendered: list = field(default_factory=list)
    after_filter_rendered: int = 0


def check_page(html_path: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1500,
               height: int = 1100, full_page: bool = False, select: dict | None = None,
               timeout_ms: int = 60000) -> PageCheck:
    """Load the dashboard, wait for its figures, record console/page errors and any request that
    leaves the file (there must be none), optionally change controls (``select``: {dim: value}), and
    screenshot."""
    from playwright.sync_api import sync_playwright
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no chromium found (apt-get install chromium, or set MOESIM_CHROMIUM)")
    url = Path(html_path).resolve().as_uri()
    out = PageCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.page_errors.append(str(e)))
            page.on("request", lambda r: out.requests_outside.append(r.url)
                    if not r.url.startswith(("file:", "data:", "blob:", "about:")) else None)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            page.wait_for_function("window.moesimDashboardReady === true", timeout=timeout_ms)
            out.figure_ids = page.eval_on_selector_all("div.plot", "els => els.map(e => e.id)")
            out.figures = len(out.figure_ids)
            out.unrendered = page.eval_on_selector_all(
                "div.plot", "els => els.filter(e => !(e.classList.contains('js-plotly-plot') && "
                            "e.querySelector('.main-svg'))).map(e => e.id)")
            out.rendered = out.figures - len(out.unrendered)
            if select:
                for dim, value in select.items():
                    page.select_option(f"#ctl-{dim}", value)
                page.wait_for_timeout(500)
                out.after_filter_rendered = page.eval_on_selector_all(
                    "div.plot", "els => els.filter(e => e.querySelector('.main-svg')).length")
                page.select_option(f"#ctl-{next(iter(select))}", "__all__")
                page.click("#ctl-reset")
                page.wait_for_timeout(300)
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python -m moesim.dashboard.browser DASHBOARD.html SCREENSHOT.png [--full]", file=sys.stderr)
        return 2
    res = check_page(argv[0], argv[1], full_page="--full" in argv)
    print(f"{res.rendered}/{res.figures} figures rendered, {len(res.console_errors)} console errors, "
          f"{len(res.page_errors)} page errors, {len(res.requests_outside)} requests outside the file; "
          f"screenshot {argv[1]}")
    for e in res.console_errors + res.page_errors:
        print(f"  {e}")
    return 0 if res.rendered == res.figures and not res.console_errors and not res.page_errors else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
