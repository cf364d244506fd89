"""The operator console in a real browser: Chromium (Debian's) driven by Selenium.

Run by the integration test `browser_…` in integration/tests/all/console.rs, which starts
an isolated suite and passes it here through the environment:

  CONSOLE_URL     the api, e.g. http://127.0.0.1:41234 (loopback only)
  ADMIN_TOKEN     what the sign-in form takes
  MERCHANT_KEY    to send the next payment through the merchant API
  COMPLETED_ID    a German payment that completed through simsoap, its webhooks delivered

It signs in, finds a completed payment through the list and opens its timeline,
disables simsoap and sees the next German payment routed to its fallback simjson,
replays a webhook and sees the new attempt, and signs out. Any Content-Security-Policy
violation the browser reports fails the run. With `--screenshots DIR` it also saves each
page as a PNG (1280x800), which is how the book's picture of the console is made.
"""

import json
import os
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
]


def loopback(url):
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"refusing to browse {url}: not loopback")
    return url.rstrip("/")


def browser(profile):
    options = Options()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is Debian's, named explicitly, so Selenium never fetches one.
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    # The page itself 1280x800 (the window's size would include its frame).
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


class Console:
    def __init__(self, driver, url, shots=None):
        self.d = driver
        self.url = url
        self.shots = shots
        # htmx swaps the page under the driver: a vanished element means "not yet".
        self.wait = WebDriverWait(
            driver, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        )

    def shot(self, name):
        if self.shots:
            self.d.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def heading(self):
        return self.d.find_element(By.TAG_NAME, "h1").text

    def wait_heading(self, text):
        self.wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text.startswith(text))

    def sign_in(self, token):
        self.d.get(self.url + "/console")
        self.wait.until(EC.presence_of_element_located((By.NAME, "token")))
        assert self.d.current_url.endswith("/console/login"), self.d.current_url
        self.shot("sign-in")
        self.d.find_element(By.NAME, "token").send_keys(token)
        self.d.find_element(By.CSS_SELECTOR, "form.signin button").click()
        self.wait_heading("Overview")

    def nav(self, label, heading):
        self.d.find_element(By.LINK_TEXT, label).click()
        self.wait_heading(heading)

    def open_transaction(self, txn):
        self.d.get(f"{self.url}/console/transactions/{txn}")
        self.wait.until(EC.presence_of_element_located((By.ID, "timeline")))

    def csp_violations(self):
        return [
            entry["message"]
            for entry in self.d.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
        ]


def deposit(url, key, amount):
    body = json.dumps(
        {"user_id": "browser-user", "amount": amount, "currency": "EUR", "country": "DE"}
    ).encode()
    request = urllib.request.Request(
        url + "/v1/deposits",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202, response.status
        return json.load(response)["id"]


def attempts_table(console):
    return console.d.find_element(By.XPATH, "//h2[@id='attempts']/following-sibling::table[1]").text


def run_flow(console, env):
    d = console.d
    console.sign_in(env["ADMIN_TOKEN"])
    console.shot("overview")

    # Find a completed payment through the list's filter, and open its timeline.
    console.nav("Transactions", "Transactions")
    Select(d.find_element(By.NAME, "status")).select_by_value("completed")
    d.find_element(By.XPATH, "//button[text()='Filter']").click()
    console.wait.until(lambda d: "status=completed" in d.current_url)
    console.shot("transactions")
    rows = d.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert rows, "no completed payment listed"
    link = d.find_element(By.CSS_SELECTOR, f"table.list a[href='/console/transactions/{env['COMPLETED_ID']}']")
    link.click()
    console.wait.until(EC.presence_of_element_located((By.ID, "timeline")))
    timeline = d.find_element(By.CSS_SELECTOR, "table.timeline").text
    for event in ("transaction.created", "gateway.attempted", "transaction.processing", "transaction.completed"):
        assert event in timeline, f"{event} not in the timeline:\n{timeline}"
    assert "simsoap" in attempts_table(console) and "accepted" in attempts_table(console)
    console.shot("transaction")

    # Disable simsoap; the next German payment goes to its fallback.
    console.nav("Gateways and routes", "Gateways and routes")
    row = d.find_element(By.ID, "gateway-simsoap")
    row.find_element(By.XPATH, ".//button[text()='Disable']").click()
    console.wait.until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#gateway-simsoap td.enabled").text == "disabled"
    )
    console.shot("gateways")
    # The payment-processor reloads its routes on the table's NOTIFY; give it a moment
    # to arrive before the payment does (the test fails, rather than hangs, if not).
    time.sleep(0.5)
    txn = deposit(console.url, env["MERCHANT_KEY"], "21.00")
    deadline = time.time() + 30
    while True:
        console.open_transaction(txn)
        status = d.find_element(By.CSS_SELECTOR, "h1 .tag").text
        if status == "completed" or time.time() > deadline:
            break
        time.sleep(0.5)
    assert status == "completed", f"the next payment is {status}"
    attempts = attempts_table(console)
    assert "simjson" in attempts and "simsoap" not in attempts, attempts

    # Replay the completed payment's last webhook and see the new attempt.
    console.open_transaction(env["COMPLETED_ID"])

    def last_delivery_attempts():
        return len(d.find_elements(By.CSS_SELECTOR, "section.delivery:last-of-type tr.attempt"))

    before = last_delivery_attempts()
    assert before >= 1
    d.find_element(By.CSS_SELECTOR, "section.delivery:last-of-type button.replay").click()
    deadline = time.time() + 30
    while last_delivery_attempts() <= before and time.time() < deadline:
        time.sleep(0.5)
        console.open_transaction(env["COMPLETED_ID"])
    assert last_delivery_attempts() == before + 1, "no new webhook attempt after the replay"
    console.shot("transaction-replayed")

    console.nav("Needs a human", "Needs a human")
    console.shot("attention")

    d.find_element(By.CSS_SELECTOR, "form.signout button").click()
    console.wait.until(EC.presence_of_element_located((By.NAME, "token")))
    d.get(console.url + "/console/gateways")
    console.wait.until(EC.presence_of_element_located((By.NAME, "token")))

    violations = console.csp_violations()
    assert not violations, "\n".join(violations)


def screenshots(console, env):
    """Each page of a running stack, for people to look at."""
    console.sign_in(env["ADMIN_TOKEN"])
    console.shot("overview")
    for label, heading, name in (
        ("Transactions", "Transactions", "transactions"),
        ("Gateways and routes", "Gateways and routes", "gateways"),
        ("Needs a human", "Needs a human", "attention"),
    ):
        console.nav(label, heading)
        console.shot(name)
    if env.get("TRANSACTION_ID"):
        console.open_transaction(env["TRANSACTION_ID"])
        console.shot("transaction")
    violations = console.csp_violations()
    assert not violations, "\n".join(violations)


def main():
    env = os.environ
    url = loopback(env["CONSOLE_URL"])
    shots = None
    if "--screenshots" in sys.argv:
        shots = sys.argv[sys.argv.index("--screenshots") + 1]
        os.makedirs(shots, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="paygate-chromium-") as profile:
        driver = browser(profile)
        try:
            console = Console(driver, url, shots)
            if "--only-screenshots" in sys.argv:
                screenshots(console, env)
            else:
                run_flow(console, env)
        except Exception:
            if shots:
                driver.save_screenshot(os.path.join(shots, "failure.png"))
            print(driver.current_url, file=sys.stderr)
            raise
        finally:
            driver.quit()
    print("console browser test: passed")


if __name__ == "__main__":
    main()
