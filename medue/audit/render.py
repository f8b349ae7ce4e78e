"""Open a protection report in headless Chromium and check that it renders: every picture decoded, no script errors.

Used by ``scripts/render_report.py`` and the tests. Needs the ``playwright`` Python package (the driver only; no
browser download) and a Chromium binary on the machine, e.g. Debian's ``chromium`` package.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on ``PATH``, or ``None``."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def render_report(html_path: str | Path, *, screenshot: str | Path | None = None, executable: str | None = None,
                  width: int = 1280, timeout_ms: int = 30_000) -> dict[str, Any]:
    """Load ``html_path`` in headless Chromium and describe what rendered.

    Returns:
        ``{"title", "headings", "verdict" (the verdict box's headings and items, as shown),
        "images": [{"alt", "width", "height", "complete"}], "broken_images",
        "console_errors", "page_height", "ok"}``; ``ok`` is true when at least one image is shown, no image
        failed to decode and the page raised no error.

    Raises:
        RuntimeError: No Chromium binary or no ``playwright`` package, with how to install them.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("rendering needs the playwright package: pip install playwright "
                           "(the browser itself comes from the system, e.g. apt-get install chromium)") from exc
    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError(f"no Chromium found on PATH (looked for {', '.join(CHROMIUM_NAMES)}); install one, "
                           "e.g. apt-get install chromium, or pass executable=")
    url = Path(html_path).resolve().as_uri()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            info = page.evaluate("""() => ({
                title: document.title,
                headings: Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent.trim()),
                verdict: Array.from(document.querySelectorAll('.verdict h3, .verdict li')).map(
                    e => e.tagName + ': ' + e.textContent.trim()),
                images: Array.from(document.images).map(i => ({alt: i.alt, width: i.naturalWidth,
                                                                height: i.naturalHeight, complete: i.complete})),
                page_height: document.documentElement.scrollHeight,
            })""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    broken = [i for i in info["images"] if not i["complete"] or i["width"] == 0 or i["height"] == 0]
    info.update(broken_images=broken, console_errors=errors,
                ok=bool(info["images"]) and not broken and not errors)
    return info
