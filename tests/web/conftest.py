"""Fixtures of the web page tests: a server with its WebSocket port (the page and /ws) on,
and real Chromium browsers driven by Selenium.

- ``web_server`` (module): an embedded `imsrv serve` of its own with the WebSocket port on
  (tests/conftest.py turns it off by default only through the environment; the harness
  passes ``--ws-port``) and generous login limits: the POST /api relay names each
  browser's address to the API (relay key), and every browser here is 127.0.0.1, so the
  per-address login limits would count all the tests' logins as one client's.
- ``browser()``: a new headless Chromium (Debian's /usr/bin/chromium through
  /usr/bin/chromedriver), its viewport fixed at 1280x800; quit after the test.  When a
  test fails, each of its browsers is screenshot into the artifacts directory.  A missing
  chromium or chromedriver skips the test with the reason, and fails it under CI=true.
- ``artifacts``: the directory screenshots go to: $IMSRV_ARTIFACTS, else test-artifacts/
  at the repository root (gitignored).
"""
import os
import re
import shutil
from pathlib import Path

import pytest

import services
from harness.procs import REPO_ROOT
from harness.servers import running_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
VIEWPORT = (1280, 800)

WEB_SERVER_CONFIG = {
    "limits": {"login_user_attempts": 100000, "login_addr_attempts": 100000,
               "login_user_global_attempts": 100000},
}


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    with running_server("embedded", tmp_path_factory.mktemp("web"), WEB_SERVER_CONFIG, name="web") as srv:
        assert srv.ws_port, "the web tests need the WebSocket port"
        yield srv


@pytest.fixture(scope="session")
def artifacts():
    path = Path(os.environ.get("IMSRV_ARTIFACTS") or REPO_ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _need_chromium():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if not missing:
        return
    message = (f"{' and '.join(missing)} missing: the web page tests drive Debian's chromium "
               "(apt-get install chromium chromium-driver; `make system-packages` does it)")
    if services.IN_CI:
        pytest.fail(message + " (CI: a missing tool is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.web_failed = rep.failed


@pytest.fixture
def browser(request, artifacts):
    """browser(name) -> a Selenium Chrome WebDriver (``.who`` = name)."""
    _need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    made = []

    def make(name="browser"):
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "--lang=en-US",
                    "--disable-background-networking", "--no-first-run"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        made.append(driver)
        driver.who = name
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False})
        return driver

    yield make
    failed = getattr(request.node, "web_failed", False)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    for driver in made:
        try:
            if failed:
                driver.save_screenshot(str(artifacts / f"{test}-{driver.who}-failure.png"))
                (artifacts / f"{test}-{driver.who}-console.txt").write_text(
                    "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser")))
        finally:
            driver.quit()


def copy_to_docs(shot):
    """docs/chat-page.png for the README: written when missing or when
    IMSRV_UPDATE_DOCS_SCREENSHOT=1 (so an ordinary test run leaves the tree clean)."""
    target = REPO_ROOT / "docs" / "chat-page.png"
    if not target.exists() or os.environ.get("IMSRV_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, target)
