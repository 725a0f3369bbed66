"""Headless Chromium through Selenium, offline: the `chromium` fixture for tests that look at a page."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium (its own profile in tmp_path, a 1280x800 window); skipped where
    chromium / chromedriver are not installed, a failure on CI where they must be."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed (.ci/run installs them)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for downloads
    opts = Options()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield browser
    finally:
        browser.quit()
