"""The web dashboard in headless Chromium against a real 3-node cluster: log in, see the
nodes, start an instance and watch its state change live, migrate it from the page,
type in its serial console, and lose the node the page came from (the master): the page
moves to another node, says so, and shows the node's alarm raised, then cleared when the
node is back.

Playwright drives Debian's chromium (no browser download).  Screenshots of each step go
to the test's tmp_path (printed).  Every wait is on a condition that, once true, stays
true (a row that appears, a count that reaches N), never on a value that may flash past.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PageTimeout

from tests.e2e.conftest import Sim

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SECOND = 1000  # Playwright's timeouts are in ms


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def endpoint(sim: Sim, node: str) -> str:
    conf = json.loads((sim.base / "client.json").read_text())
    addr = sim.address(node)
    for ep in conf["endpoints"]:
        if ep.startswith(addr + ":"):
            return f"https://{ep}"
    raise AssertionError(f"{node} ({addr}) is not in {conf['endpoints']}")


def has_alarms(url: str) -> bool:
    """Whether this cluster's API has alarms (``GET /haven/alarms``)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url + "/haven/alarms", context=ctx, timeout=10) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError:
        return False


class Shots:
    def __init__(self, page: Page, out: Path) -> None:
        self.page, self.out, self.n = page, out, 0

    def __call__(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.out / f"{self.n:02d}-{name}.png"),
                             full_page=True)


def test_dashboard_follows_the_cluster_live_and_survives_losing_its_node(
        cluster3: Sim, browser: Browser, tmp_path: Path) -> None:
    sim = cluster3
    master = sim.wait_master()
    # vm1 lives on the two other nodes: losing the master later moves no instance.
    pnode, snode = (n for n in ("node01", "node02", "node03") if n != master)
    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
                "memory=128", "-o", "busybox", "-n", f"{pnode}:{snode}", "--no-start",
                "vm1", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    url = endpoint(sim, master)
    alarms = has_alarms(url)
    conf = json.loads((sim.base / "client.json").read_text())
    print(f"\nscreenshots: {tmp_path}  (page from {master}, alarms API: {alarms})")

    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60 * SECOND)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    shot = Shots(page, tmp_path)

    # Log in with the cluster's RAPI user; the nodes show, all three online.
    page.goto(url + "/ui/")
    page.fill("#login-user", conf["user"])
    page.fill("#login-password", conf["password"])
    page.click("#login-submit")
    page.wait_for_selector("#login", state="hidden")
    page.wait_for_function("document.querySelectorAll("
                           "'#nodes-table [data-field=health] .badge.ok').length >= 3")
    assert page.inner_text("#card-master").endswith(master)
    shot("overview")

    # Start vm1 from its page, with confirmation; its state changes without a reload.
    page.goto(url + "/ui/#/instance/vm1")
    page.wait_for_selector("#instance-status [data-status=ADMIN_down]")
    page.click("button[data-act=startup]")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    page.wait_for_selector("#instance-status [data-status=running]", timeout=120 * SECOND)
    shot("started")

    # Migrate it to its secondary from the page.
    page.click("button[data-act=migrate]")
    page.wait_for_selector("#confirm[open]")
    assert snode in page.inner_text("#confirm-text")
    page.click("#confirm-ok")
    page.wait_for_function(f"document.querySelector('#instance-pnode')"
                           f"?.textContent === '{snode}'", timeout=120 * SECOND)
    page.wait_for_selector("#instance-status [data-status=running]")
    shot("migrated")

    # Its serial console in the browser: uname answers Linux.
    page.click("#console-open")
    page.wait_for_function("document.querySelector('#console-status')"
                           ".textContent.startsWith('connected')")
    page.click("#terminal")
    deadline = time.monotonic() + 60
    while True:
        # A guest that lost a line (early in its boot) gets it again.
        page.keyboard.type("uname\n")
        try:
            page.wait_for_function("document.querySelector('#terminal')"
                                   ".innerText.includes('Linux')", timeout=5 * SECOND)
            break
        except PageTimeout:
            if time.monotonic() > deadline:
                raise
    shot("console")
    page.click("#console-close")

    # The node the page came from, the master, dies: the page moves to another node and
    # says so, and the node's alarm (or its health, without an alarms API) shows.
    page.goto(url + "/ui/#/alarms" if alarms else url + "/ui/#/nodes")
    sim.run("haven", "kill", master, check=True)
    page.wait_for_function("document.querySelector('#banner')"
                           ".textContent.includes('Now connected to')",
                           timeout=60 * SECOND)
    page.wait_for_selector("#conn[data-state=live]")
    assert master not in page.inner_text("#conn")  # "live · <another node>"
    if alarms:
        row = f"tr[data-alarm='node-unreachable:{master}']"
        page.wait_for_selector(row + "[data-state=active]", timeout=120 * SECOND)
        # A person acknowledges it from the page: it stays active, marked acknowledged.
        page.click(row + "[data-state=active] button[data-act=ack]")
        page.wait_for_selector(row + "[data-state=active] [data-field=state] .badge.info")
    else:
        page.wait_for_function(
            f"['unreachable', 'fenced'].includes(document.querySelector("
            f"'tr[data-node={master}] [data-field=health]')?.textContent.trim())",
            timeout=120 * SECOND)
    shot("node-lost")

    # It comes back: the alarm clears (into the history), or its health is online again.
    sim.run("haven", "start", master, check=True, timeout=120)
    if alarms:
        page.wait_for_selector(row + "[data-state=cleared]", timeout=120 * SECOND)
    else:
        page.wait_for_selector(f"tr[data-node={master}] [data-field=health] .badge.ok",
                               timeout=120 * SECOND)
    shot("node-back")
    assert not errors, errors
    ctx.close()
