"""The static site in a real headless browser (Debian chromium + chromedriver, Selenium).

The overview loads with one table row per scored submission and every image decoded
(naturalWidth > 0); every task page renders its table and both plots; the browser console
holds no SEVERE entry on any page; a screenshot of the overview is saved and its path printed
(set QSM_LEADERBOARD_SCREENSHOT=path to choose it, e.g. docs/leaderboard/overview.png).

Chromium missing: skipped with the reason, except under CI=true, where it fails (.ci/run
installs chromium and chromium-driver when run as root).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from qsmgym.leaderboard.site import build_site


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        reason = ("Debian chromium and chromium-driver are not installed "
                  "(apt-get install -y chromium chromium-driver)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,1600"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium session (session-scoped and requested first, so a missing browser
    skips or fails before the submissions are scored)."""
    driver = _driver()
    yield driver
    driver.quit()


IMAGES_LOADED = ("return Array.from(document.images).map("
                 "i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")


def _check_page(driver, url, n_rows, n_images):
    from selenium.webdriver.common.by import By

    driver.get(url)
    rows = driver.find_elements(By.CSS_SELECTOR, "table#ranking tbody tr")
    assert len(rows) == n_rows, url
    images = driver.execute_script(IMAGES_LOADED)
    assert len(images) == n_images and all(ok for _, ok in images), images
    assert driver.find_elements(By.TAG_NAME, "script") == []  # plain HTML/CSS
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    return rows


def test_site_in_headless_chromium(chromium, ci_scores, tmp_path):
    from selenium.webdriver.common.by import By

    index = build_site(ci_scores, tmp_path / "site")
    results = ci_scores["results"]
    tasks = sorted({r["env_id"] for r in results})
    driver = chromium
    rows = _check_page(driver, index.as_uri(), len(results), 1)
    assert "qsm-gym leaderboard" in driver.title
    links = {a.text: a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "nav a")}
    assert sorted(links) == sorted(t.split("/", 1)[1] for t in tasks)
    shot = Path(os.environ.get("QSM_LEADERBOARD_SCREENSHOT", tmp_path / "overview.png")).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1300, min(int(height) + 120, 4000))
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\nleaderboard overview screenshot: {shot}")
    for t in tasks:
        n = sum(r["env_id"] == t for r in results)
        _check_page(driver, links[t.split("/", 1)[1]], n, 2)
        assert driver.find_element(By.TAG_NAME, "h1").text == t
    assert len(rows) == len(results)
