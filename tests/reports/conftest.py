"""Headless Chromium for the report checks, and the reports themselves (written once).

Chromium and its driver come from Debian's packages (``chromium``, ``chromium-driver``). Where
they are missing the set-up installs them (as root, with apt-get); where that is impossible the
browser tests skip with the reason, except under ``CI=true``, where they fail. Screenshots go
to a temporary folder, or to ``$PPL_SCREENSHOT_DIR`` when set (to look at them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The flags known to work on a closed network: without the background-networking ones
# Chromium keeps trying to reach Google's hosts.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900", "--hide-scrollbars",
)


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser checks cannot run: {reason}")
    pytest.skip(reason)


def _install_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver; None on success, else why not."""
    if not shutil.which("apt-get"):
        return "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed (apt-get install chromium chromium-driver, as root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                     "chromium", "chromium-driver"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr[-500:]}"
    return None


@pytest.fixture(scope="session")
def browser():
    """A Selenium-driven headless Chromium (one for the session), console log captured."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (it is in ppl's test extra)")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = _install_chromium()
        if reason:
            _unavailable(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ppl-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    wanted = os.environ.get("PPL_SCREENSHOT_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        return Path(wanted)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory) -> Path:
    """``ppl demo --quick``'s report (every engine's section included)."""
    from ppl import cli

    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    return out / "index.html"


@pytest.fixture(scope="session")
def coverage_report(tmp_path_factory) -> Path:
    """``ppl coverage``'s report: NUTS on the conjugate normal, 20 data sets (about 10 s)."""
    from ppl import cli

    out = tmp_path_factory.mktemp("coverage")
    assert cli.main(["coverage", "conjugate_normal", "--method", "nuts", "--num-sims", "20",
                     "--out", str(out), "--set", "num_chains=2", "--set", "num_warmup=200",
                     "--set", "num_samples=200"]) == 0
    return out / "report.html"


@pytest.fixture(scope="session")
def scaling_report(tmp_path_factory) -> Path:
    """``ppl lm scaling``'s report with a tiny configuration (about 30 s)."""
    from ppl import cli

    out = tmp_path_factory.mktemp("scaling")
    assert cli.main(["lm", "scaling", "--out", str(out), "--difficulties", "3",
                     "--particles", "1,2", "--methods",
                     "particle_filter,self_consistency,power_sampling", "--alphas", "2",
                     "--rewards", "oracle", "--num-problems", "4"]) == 0
    return out / "report.html"
