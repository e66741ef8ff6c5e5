"""The operator console in a real browser: headless Chromium from the system's packages
(Debian's `chromium` + `chromium-driver`), driven by Selenium, against the API served by
uvicorn on a loopback port with the console included, on the recorded demo payment of
`make serve` (cassette chain, the demo's clock, the demo tokens).

It walks what an on-call operator does: log in, find the proof, dry-run it (every check
shown), apply it with incident context, see the entitlement active and the audit trail, pause
the rail and see the blocked state, log out. Every page is checked for the accessibility
basics (a label on every input, one h1, headings in order) and saved as a screenshot
(RAILPROOF_CONSOLE_SCREENSHOTS=<dir> keeps them, e.g. docs/console; otherwise a temporary
folder).

Skipped, with the reason, only where Chromium or its driver is missing and CI is not set;
under CI it must run (.ci/run installs them)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.helpers import FIXTURES
from tests.live_server import LiveServer
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.db import upgrade
from verifier.storage.models import AuditEvent, Entitlement

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEMO = json.loads((FIXTURES / "solana" / "generated" / "demo_payment.json").read_text())["demo"]
SVC = {"Authorization": "Bearer demo-service-token"}


def _browser_or_skip(profile: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        why = (
            "browser test needs "
            + ", ".join(missing)
            + " (apt-get install -y chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(why + ": it must run under CI")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.add_argument(f"--user-data-dir={profile}")  # a profile of its own, never shared
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--disable-default-apps",
    ):
        opts.add_argument(arg)
    for attempt in range(3):  # a loaded machine can miss the driver's start-up deadline
        try:
            return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        except WebDriverException:
            if attempt == 2:
                raise


@pytest.fixture
def demo_engine(tmp_path):
    url = f"sqlite:///{tmp_path}/console.db"
    upgrade(url)
    e = Engine(
        Settings(
            database_url=url,
            chain="cassette",
            clock=DEMO["clock"],
            service_tokens={"demo-service-token": ["demo-owner"]},
            staff_tokens={
                "demo-staff-token": "demo-operator",
                "demo-staff-token-2": "demo-approver",
            },
            audit_key="demo-audit-key",
            env={"RAILPROOF_TREASURY_SOLANA_USDC": DEMO["recipient"]},
        )
    )
    e.ensure_rail_states()
    yield e
    e.db.dispose()


@pytest.fixture
def browser(tmp_path):
    driver = _browser_or_skip(tmp_path / "chromium-profile")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("RAILPROOF_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


A11Y_JS = """
const problems = [];
for (const el of document.querySelectorAll('input, select, textarea')) {
  if (el.type === 'hidden') continue;
  const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
             || el.getAttribute('aria-labelledby');
  if (!named) problems.push('no label: ' + (el.name || el.id || el.outerHTML.slice(0, 60)));
}
const levels = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map(h => +h.tagName[1]);
if (levels.filter(l => l === 1).length !== 1) problems.push('h1 count: ' + levels.join(','));
if (levels[0] !== 1) problems.push('first heading is not h1: ' + levels.join(','));
for (let i = 1; i < levels.length; i++)
  if (levels[i] > levels[i - 1] + 1) problems.push('heading skips a level: ' + levels.join(','));
if (!document.documentElement.lang) problems.push('no lang on html');
for (const svg of document.querySelectorAll('svg[role=img]'))
  if (!svg.getAttribute('aria-label')) problems.push('chart without aria-label');
for (const b of document.querySelectorAll('button'))
  if (!b.textContent.trim()) problems.push('button without text');
return problems;
"""


def check_page(driver, shots: Path, name: str) -> None:
    assert driver.execute_script(A11Y_JS) == [], (name, driver.current_url)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(600, min(int(height) + 120, 3000)))
    driver.save_screenshot(str(shots / f"{name}.png"))
    driver.set_window_size(1280, 900)


def submit(driver, css: str) -> None:
    """Click a submit button (or link) and wait for the next page to replace this one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, css).click()
    # Asked while the page is being replaced, chromium may answer "Node with given id does not
    # belong to the document" (a WebDriverException, not a stale element): look again.
    WebDriverWait(driver, 15, ignored_exceptions=(WebDriverException,)).until(EC.staleness_of(old))


def fill(driver, by_id: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By

    for element_id, value in by_id.items():
        el = driver.find_element(By.ID, element_id)
        el.clear()
        el.send_keys(value)


def test_operator_walks_the_demo_payment_through_the_console(demo_engine, browser, shots):
    from selenium.webdriver.common.by import By

    app = create_app(demo_engine)  # the console is part of the app
    with LiveServer(app) as srv:
        # The backend's part, through the public API: a session and the payer's proof.
        with httpx.Client(base_url=srv.url, timeout=30) as api:
            r = api.post(
                "/v1/payment-sessions",
                headers=SVC,
                json={
                    "owner_id": "demo-owner",
                    "rail_id": "solana_usdc",
                    "access_product_id": "pro-monthly",
                    "amount": DEMO["amount"],
                    "reference": DEMO["reference"],
                    "memo": DEMO["memo"],
                },
            )
            assert r.status_code == 201, r.text
            r = api.post(
                "/v1/proofs",
                headers=SVC,
                json={"session_id": r.json()["id"], "proof": DEMO["signature"]},
            )
            assert r.status_code == 201 and r.json()["status"] == "verified", r.text
            proof_id = r.json()["id"]

        d = browser
        # 1. Any page sends an operator without a session to the login form.
        d.get(srv.url + "/console/proofs")
        assert "/console/login" in d.current_url
        check_page(d, shots, "01-login")
        fill(d, {"token": "demo-service-token"})  # a service token is not a staff token
        submit(d, "form.login button[type=submit]")
        assert "Not a staff token" in d.find_element(By.CSS_SELECTOR, "[role=alert]").text
        fill(d, {"token": "demo-staff-token"})
        submit(d, "form.login button[type=submit]")
        assert d.current_url.endswith("/console/proofs")
        assert "demo-operator" in d.find_element(By.CSS_SELECTOR, ".who").text
        cookie = d.get_cookie("railproof_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert d.execute_script("return document.cookie") == ""  # invisible to scripts

        # 2. Find the proof: filter by status, search by the on-chain signature.
        d.find_element(By.ID, "f-status").send_keys("verified")
        fill(d, {"f-q": DEMO["signature"]})
        submit(d, "form.filters button")
        assert "status=verified" in d.current_url
        check_page(d, shots, "02-proofs")
        submit(d, f"a[href='/console/proofs/{proof_id}']")
        assert d.find_element(By.ID, "proof-status").text == "verified"

        # 3. Dry-run: every check of the gate, each passing.
        fill(d, {"dry-incident": "OPS-1", "dry-reason": "first payment"})
        submit(d, "#dry-run-form button")
        rows = d.find_elements(By.CSS_SELECTOR, "#checks tbody tr")
        checks = {
            r.find_element(By.TAG_NAME, "th").text: r.find_elements(By.TAG_NAME, "td")[0].text
            for r in rows
        }
        assert checks == {
            name: "pass"
            for name in (
                "proof_verified",
                "settlement_final",
                "rail_registered",
                "rail_network_current",
                "rail_not_paused",
                "rail_production_enabled",
                "rail_allowlisted",
                "live_apply_enabled",
                "receipt_creation_allowed",
                "tuple_bound",
                "transfer_not_sent_back",
                "settlement_not_another_proof",
            )
        }
        check_page(d, shots, "03-proof-dry-run")

        # 4. Apply, with confirm and the incident context (kept from the dry-run form).
        assert d.find_element(By.ID, "apply-incident").get_attribute("value") == "OPS-1"
        d.find_element(By.ID, "apply-confirm").click()
        submit(d, "#apply-form button")
        assert "done=applied." in d.current_url
        assert d.find_element(By.CSS_SELECTOR, "#entitlement .badge").text == "active"
        trail = d.find_element(By.ID, "audit").text
        for action in (
            "proof.dry_run_apply",
            "receipt.created",
            "entitlement.activated",
            "proof.applied",
        ):
            assert action in trail
        assert "OPS-1" in trail and "demo-operator" in trail
        assert DEMO["signature"] in d.page_source  # the public tx id, as the API shows it
        check_page(d, shots, "04-proof-applied")
        with demo_engine.db.tx() as s:
            assert s.scalars(select(Entitlement.status)).one() == "active"

        # 5. Pause the rail: the kill switch with its context, then the blocked state.
        submit(d, "nav a[href='/console/rails']")
        fill(d, {"pause-solana_usdc-incident": "OPS-2", "pause-solana_usdc-reason": "drill"})
        d.find_element(By.ID, "pause-solana_usdc-confirm").click()
        submit(d, "form[action='/console/rails/solana_usdc/pause'] button")
        assert "done=paused." in d.current_url
        assert d.find_element(By.CSS_SELECTOR, "#rail-solana_usdc .rail-state").text == "paused"
        check_page(d, shots, "05-rails-paused")
        with httpx.Client(base_url=srv.url, timeout=30) as api:
            r = api.post(
                "/v1/payment-sessions",
                headers=SVC,
                json={
                    "owner_id": "demo-owner",
                    "rail_id": "solana_usdc",
                    "access_product_id": "pro-monthly",
                    "amount": "1000000",
                },
            )
            assert r.status_code == 409 and r.json()["error"]["code"] == "rail_paused"
        d.get(f"{srv.url}/console/proofs/{proof_id}")
        submit(d, "#dry-run-form button")
        blocked = d.find_element(By.XPATH, "//table[@id='checks']//tr[th='rail_not_paused']")
        assert "FAIL" in blocked.text and "paused" in blocked.text

        # 5b. Release gates on the rails page, and a treasury change asked for from it: it
        #     waits in the approval queue for a second staff member.
        submit(d, "nav a[href='/console/rails']")
        gates = d.find_element(By.ID, "gates-solana_usdc")
        assert gates.text.count("missing") == 5
        new_treasury = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
        fill(
            d,
            {
                "treasury-solana_usdc-value": new_treasury,
                "treasury-solana_usdc-incident": "OPS-4",
                "treasury-solana_usdc-reason": "treasury rotation",
            },
        )
        d.find_element(By.ID, "treasury-solana_usdc-confirm").click()
        submit(d, "form[action='/console/rails/solana_usdc/treasury/request'] button")
        assert "/console/approvals" in d.current_url
        assert new_treasury in d.page_source and "your request" in d.page_source

        # 6. Reconciliation: start a dry run with its context and read the persisted run.
        submit(d, "nav a[href='/console/reconciliation']")
        fill(d, {"rec-incident": "OPS-3", "rec-reason": "after the drill"})
        submit(d, "#reconcile-form button")
        assert "/console/reconciliation/runs/" in d.current_url
        assert "dry run" in d.find_element(By.ID, "run").text
        check_page(d, shots, "08-reconciliation-run")

        # 7. The other pages: health charts, approvals and assurance.
        for name, link in (
            ("06-health", "/console"),
            ("07-approvals", "/console/approvals"),
            ("09-assurance", "/console/assurance"),
        ):
            submit(d, f"nav a[href='{link}']")
            assert d.find_element(By.TAG_NAME, "h1").text
            check_page(d, shots, name)
        submit(d, "nav a[href='/console']")
        assert len(d.find_elements(By.CSS_SELECTOR, "svg[role=img]")) == 4

        # 8. Log out: back to the login form, and the console is closed.
        submit(d, "form.logout button")
        assert "/console/login" in d.current_url
        d.get(srv.url + "/console/rails")
        assert "/console/login" in d.current_url

    with demo_engine.db.tx() as s:
        actions = [a for (a,) in s.execute(select(AuditEvent.action).order_by(AuditEvent.id))]
    assert actions.count("console.login") == 1 and actions[-1] == "console.logout"
    assert "rail.paused" in actions


def test_operator_credits_an_ambiguous_payment_from_the_console(demo_engine, browser, shots):
    """The demo payment carries its session's reference and another open session's: it waits
    for review. The operator reads both candidates on the proof's page and credits it to its
    own session with the incident context; the chain is asked again, the proof is verified and
    the apply gate can take it from there."""
    from selenium.webdriver.common.by import By
    from solders.keypair import Keypair

    from tests.test_binding import demo_with_extra_key

    rival = str(Keypair().pubkey())
    demo_engine.chains.set_transport("solana-mainnet", demo_with_extra_key(rival))
    app = create_app(demo_engine)
    with LiveServer(app) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as api:
            opened = []
            for reference, memo in ((DEMO["reference"], DEMO["memo"]), (rival, None)):
                body = {
                    "owner_id": "demo-owner",
                    "rail_id": "solana_usdc",
                    "access_product_id": "pro-monthly",
                    "amount": DEMO["amount"],
                    "reference": reference,
                    **({"memo": memo} if memo else {}),
                }
                r = api.post("/v1/payment-sessions", headers=SVC, json=body)
                assert r.status_code == 201, r.text
                opened.append(r.json()["id"])
            r = api.post(
                "/v1/proofs",
                headers=SVC,
                json={"session_id": opened[0], "proof": DEMO["signature"]},
            )
            assert (r.json()["status"], r.json()["failure_code"]) == (
                "requires_review",
                "ambiguous_transfer",
            ), r.text
            proof_id = r.json()["id"]

        d = browser
        d.get(srv.url + "/console/login")
        fill(d, {"token": "demo-staff-token"})
        submit(d, "form.login button[type=submit]")
        d.get(f"{srv.url}/console/proofs/{proof_id}")
        assert d.find_element(By.ID, "proof-status").text == "requires_review"
        assert "could back several open sessions" in d.find_element(By.ID, "review-why").text
        for sid in opened:  # both candidates are on the page, in the attempt's evidence
            assert sid in d.page_source
        check_page(d, shots, "10-proof-review")

        fill(d, {"credit-incident": "OPS-7", "credit-reason": "payer confirmed order 1001"})
        d.find_element(By.ID, "credit-confirm").click()
        submit(d, "#credit-form button")
        assert "done=credited." in d.current_url
        assert d.find_element(By.ID, "proof-status").text == "verified"
        assert "Credited" in d.find_element(By.CSS_SELECTOR, "[role=status]").text
        assert not d.find_elements(By.ID, "credit-form")
        trail = d.find_element(By.ID, "audit").text
        assert "proof.review_credited" in trail and "OPS-7" in trail
        check_page(d, shots, "11-proof-credited")

    with demo_engine.db.tx() as s:
        (row,) = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "proof.review_credited")
        ).all()
        assert (row.actor, row.incident_id, row.data["candidate_sessions"]) == (
            "demo-operator",
            "OPS-7",
            opened,
        )


def _host_rewriting_proxy(upstream: dict[str, httpx.Client]):
    """A reverse proxy as nginx's bare `proxy_pass http://upstream;` is: every request goes on
    with `Host: <upstream host:port>` (nginx's default `$proxy_host`), not the browser's."""
    from http.server import BaseHTTPRequestHandler

    class Proxy(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            headers = [
                (k, v) for k, v in self.headers.items() if k.lower() not in ("host", "connection")
            ]
            r = upstream["client"].request(self.command, self.path, headers=headers, content=body)
            self.send_response(r.status_code)
            for k, v in r.headers.multi_items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = _relay

        def log_message(self, *args) -> None:
            pass

    return Proxy


def test_the_console_works_behind_a_proxy_that_sends_its_upstreams_host(demo_engine, browser):
    """Behind nginx's default proxy_pass, the browser's Origin (the public name) never equals
    the scheme and Host the console is reached with: every form was refused, the login
    included, with a message blaming an expired form. RAILPROOF_CONSOLE_ORIGIN names the public
    origin; signing in and pausing a rail then work through the proxy."""
    from selenium.webdriver.common.by import By

    from tests.live_server import handler_server

    upstream: dict[str, httpx.Client] = {}
    with handler_server(_host_rewriting_proxy(upstream)) as proxy_url:
        public = proxy_url.replace("127.0.0.1", "localhost")  # the name the browser uses
        demo_engine.settings.console_origin = [public]
        with LiveServer(create_app(demo_engine)) as srv:
            upstream["client"] = httpx.Client(base_url=srv.url, timeout=30)
            try:
                d = browser
                d.get(public + "/console/login")
                fill(d, {"token": "demo-staff-token"})
                submit(d, "form.login button[type=submit]")
                main = d.find_element(By.TAG_NAME, "main").text
                assert "/console/login" not in d.current_url, main
                d.get(public + "/console/rails")
                fill(
                    d, {"pause-solana_usdc-incident": "OPS-3", "pause-solana_usdc-reason": "drill"}
                )
                d.find_element(By.ID, "pause-solana_usdc-confirm").click()
                submit(d, "form[action='/console/rails/solana_usdc/pause'] button")
                assert "done=paused." in d.current_url, d.find_element(By.TAG_NAME, "main").text
            finally:
                upstream["client"].close()
