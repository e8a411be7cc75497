"""A screenshot of seq2seq-serve's demo page translating a sentence, taken in headless Chromium.

    .venv/bin/python benchmarks/serve_screenshot.py --ckpt RUN/checkpoints/best.ckpt \\
        --sentence "A man sleeping in a green room on a couch." --out docs/serve_demo.png
    .venv/bin/python benchmarks/serve_screenshot.py --url http://127.0.0.1:8000 --out demo.png   # a running server

Starts the server (``python -m seq2seq.serve ckpt_path=... port=0``, its default decoding unless ``--decoding``)
unless ``--url`` is given, opens the page, types the sentence, clicks Translate, waits for the
translation and the heatmap, hovers the strongest cell of the first target word (so the hover
read-out shows), fits the window to the page and saves the PNG. Prints one JSON line: the
translation, the heatmap's rows and columns, the file.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``apt-get install chromium
chromium-driver``) and selenium (the ``dev`` extra); the system chromedriver is used, nothing is
downloaded. ``tests/test_serve.py`` drives the page with the functions defined here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> tuple[str | None, str | None]:
    """Paths of Chromium and its chromedriver on PATH (``None`` for what is missing)."""
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    return browser, shutil.which("chromedriver")


def chromium_driver(browser: str, chromedriver: str, width: int = 1100, height: int = 900):
    """A headless Chromium driven through the given chromedriver (Selenium Manager is not used)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def translate_on_page(driver, url: str, sentence: str, timeout: float = 60.0) -> dict:
    """Open the demo page, type ``sentence``, click Translate and read the page back: the model
    line, the translation, the heatmap's row labels (target words), column labels (source words)
    and cells per row. Raises when the page shows an error or does not finish within ``timeout``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url.rstrip("/") + "/")
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: "parameters" in d.find_element(By.ID, "model-line").text
               or "unavailable" in d.find_element(By.ID, "model-line").text)
    source = driver.find_element(By.ID, "source")
    source.clear()
    source.send_keys(sentence)
    driver.find_element(By.ID, "translate").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    if driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error":
        raise RuntimeError(f"the page shows an error: {driver.find_element(By.ID, 'error').text}")
    rows = driver.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")
    return {
        "model_line": driver.find_element(By.ID, "model-line").text,
        "translation": driver.find_element(By.ID, "translation").text,
        "target_words": [row.find_element(By.TAG_NAME, "th").get_attribute("textContent") for row in rows],
        "source_words": [th.get_attribute("textContent")
                         for th in driver.find_elements(By.CSS_SELECTOR, "#heatmap thead th")][1:],
        "cells_per_row": [len(row.find_elements(By.TAG_NAME, "td")) for row in rows],
    }


def hover_strongest(driver, row: int = 0) -> tuple[float, str]:
    """Move the mouse over the strongest cell of heatmap row ``row``; its weight and the hover read-out."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")[row].find_elements(By.TAG_NAME, "td")
    cell = max(cells, key=lambda c: float(c.get_attribute("data-weight")))
    ActionChains(driver).move_to_element(cell).perform()
    return float(cell.get_attribute("data-weight")), driver.find_element(By.ID, "hover-info").text


def fit_window(driver, width: int) -> None:
    """Make the window as tall as the page, so that one screenshot holds all of it (no scroll bar)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, int(height) + 200)  # the window's frame counts, even headless
    driver.execute_script("document.documentElement.style.overflow = 'hidden'")


def screenshot(url: str, sentence: str, out: Path, width: int = 1100) -> dict:
    browser, chromedriver = find_browser()
    if browser is None or chromedriver is None:
        sys.exit("error: Chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    driver = chromium_driver(browser, chromedriver, width=width)
    try:
        page = translate_on_page(driver, url, sentence)
        fit_window(driver, width)
        hover_strongest(driver)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    return {**page, "screenshot": str(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--ckpt", help="checkpoint to serve (a server is started for the screenshot)")
    where.add_argument("--url", help="a running server instead")
    parser.add_argument("--sentence", default="A man sleeping in a green room on a couch.")
    parser.add_argument("--out", type=Path, default=Path("docs/serve_demo.png"))
    parser.add_argument("--decoding", help="the server's decoding config (greedy, beam, sampling; default: the server's, beam)")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args(argv)
    if args.url:
        result = screenshot(args.url, args.sentence, args.out, args.width)
    else:
        from seq2seq.serving.process import ServerProcess

        overrides = [f"ckpt_path={args.ckpt}", "device=cpu", *([f"decoding={args.decoding}"] if args.decoding else [])]
        with ServerProcess(overrides) as server:
            result = screenshot(server.url, args.sentence, args.out, args.width)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
