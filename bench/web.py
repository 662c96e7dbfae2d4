"""Benchmark: the page of `apollo web` in headless Chromium: how long one window (16 bars of the
bundled model) takes to generate and decode in the page, against its playing time; and a
screenshot of the page playing.

    python bench/web.py [--windows 50] [--screenshot docs/web.png]

Needs Debian's chromium and chromium-driver and selenium (`make install` brings them). The page is
built from the bundled model into a temporary folder and served on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.select import Select

from apollo.web import address, build_page, make_server

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--autoplay-policy=no-user-gesture-required", "--window-size=1040,720", "--hide-scrollbars")


def wait_ready(driver, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script("return window.apolloState ? apolloState() : null")
        if state and state["ready"]:
            return state
        time.sleep(0.1)
    raise SystemExit(f"the page was not ready after {timeout:g} s: {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=50, help="windows to time, after one to warm up")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of --windows each")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page playing here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        page = build_page(Path(tmp) / "page", checkpoint="bundled")
        print(f"built the page in {time.perf_counter() - began:.1f} s")
        spec = page.spec
        server = make_server(page.folder, port=0, quiet=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (*FLAGS, f"--user-data-dir={Path(tmp) / 'chromium'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        driver.set_script_timeout(600)
        try:
            began = time.perf_counter()
            driver.get(address(server))
            state = wait_ready(driver)
            print(f"page ready in {time.perf_counter() - began:.2f} s ({state['status']})")
            runs = [driver.execute_script("return await apolloBench(arguments[0])", args.windows)
                    for _ in range(args.repeats)]
            ms = statistics.median(runs)
            playing = spec["n_steps"] / spec["grid"]["steps_per_beat"] * 60 / spec["tempo"]
            bars = spec["n_steps"] // spec["steps_per_bar"]
            print(f"one window ({bars} bars, {playing:.1f} s at {spec['tempo']:g} bpm): {ms:.1f} ms "
                  f"(runs of {args.windows}: {', '.join(f'{r:.1f}' for r in runs)} ms), "
                  f"{playing * 1000 / ms:,.0f}x faster than it plays; a window adds "
                  f"{spec['chaining']['hop'] // spec['steps_per_bar']} new bars")
            if args.screenshot:
                Select(driver.find_element("id", "instrument")).select_by_value("40")  # violin
                driver.find_element("id", "play").click()
                time.sleep(6)
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.screenshot))
                print(f"wrote {args.screenshot}")
            print(f"Chromium {driver.capabilities.get('browserVersion')}, {platform.machine()}, "
                  f"{os.cpu_count()} CPUs")
        finally:
            driver.quit()
            server.shutdown()


if __name__ == "__main__":
    main()
