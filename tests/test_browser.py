"""The admin and the overview as a person uses them, in Debian's headless Chromium.

Selenium drives /usr/bin/chromium through /usr/bin/chromedriver, both from Debian's
packages (``.ci/setup-browser.sh`` installs them): the two come from one Chromium build, so
they always match, and nothing is downloaded. Without them the tests are skipped on a
laptop and fail on CI (``CI`` set), where a skip would hide that nothing was tested.

``MULTIDS_SCREENSHOT=docs/admin-orders.png pytest tests/test_browser.py`` also saves the
order list as the README's screenshot, and ``MULTIDS_SCREENSHOT_IMPORT=docs/admin-import.png``
the preview of an import (docs/admin.md).
"""

import os
from pathlib import Path

import pytest
from crossdb import registry
from crossdb.admin.referencing import ReferencingAdmin
from crossdb.loading import load
from crossdb.runs import record
from django.contrib import admin
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import WebDriverWait

from core.sources import demo_source
from tests.conftest import ALL_DATABASES
from tests.reviews.models import Review

pytestmark = [
    pytest.mark.browser,
    # The live server answers from its own thread and connections: the data must be committed.
    pytest.mark.django_db(databases=ALL_DATABASES, transaction=True),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,760",
)
USERNAME, PASSWORD = "admin", "a-browser-test-password"
WAIT_SECONDS = 15


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; skipped (or failed on CI) if it is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = (
            f"{' and '.join(missing)} not installed; install Debian's chromium and "
            "chromium-driver with: bash .ci/setup-browser.sh"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP refusals
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Hash the test password cheaply: PBKDF2's million rounds cost 0.4 s per login."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def site(browser, live_server, django_user_model, settings, tmp_path):
    """The demo data loaded and recorded, a superuser, and the browser logged in as them."""
    # the full check's once-per-30-s limit starts afresh
    settings.CROSSDB = {**settings.CROSSDB, "STATE_DIR": tmp_path}
    record(load.load(demo_source()))
    django_user_model.objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)
    browser.delete_all_cookies()  # the previous test's session was flushed with its data
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(USERNAME)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD, Keys.ENTER)
    wait_for(browser, "#user-tools")
    return live_server.url


def wait_for(browser, css):
    """Return the element matching css once the page shows it."""
    return WebDriverWait(browser, WAIT_SECONDS).until(
        seen.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_the_order_list_shows_each_users_email_and_products_name(browser, site):
    browser.get(f"{site}/admin/core/order/")
    table = wait_for(browser, "#result_list").text
    assert "#1 Alice <alice@example.com>" in table and "#1 Laptop (1000.00)" in table
    assert "charlie@example.com" in table and "Headphones" in table
    screenshot = os.environ.get("MULTIDS_SCREENSHOT")
    if screenshot:
        # The README shows the project as a user has it: without the test settings' reviews.
        admin.site.unregister(Review)
        try:
            browser.get(f"{site}/admin/core/order/")
            wait_for(browser, "#result_list")
            browser.save_screenshot(screenshot)
        finally:
            admin.site.register(Review, ReferencingAdmin)


def test_searching_users_by_email(browser, site):
    browser.get(f"{site}/admin/core/user/")
    wait_for(browser, "#searchbar").send_keys("bob@", Keys.ENTER)
    WebDriverWait(browser, WAIT_SECONDS).until(seen.url_contains("q=bob"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert [r.text.split()[:3] for r in rows] == [["2", "Bob", "bob@example.com"]]


def test_deleting_a_user_with_orders_offers_to_keep_it_or_delete_it_with_them(browser, site):
    browser.get(f"{site}/admin/core/user/1/change/")
    wait_for(browser, "a.deletelink").click()
    choice = wait_for(browser, "#parent-children").text
    assert "1 order in orders_db: they keep it from being deleted alone" in choice
    assert "Are you sure" not in browser.page_source
    browser.find_element(By.ID, "keep-it").click()
    WebDriverWait(browser, WAIT_SECONDS).until(seen.url_contains("/user/1/change/"))
    assert wait_for(browser, "#id_email").get_attribute("value") == "alice@example.com"
    wait_for(browser, "a.deletelink").click()
    wait_for(browser, "#orders-link").click()  # the order list, filtered to user 1
    rows = WebDriverWait(browser, WAIT_SECONDS).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    )
    assert len(rows) == 1 and "alice@example.com" in rows[0].text
    browser.back()
    wait_for(browser, "#delete-with-children").click()
    WebDriverWait(browser, WAIT_SECONDS).until(seen.url_to_be(f"{site}/admin/core/user/"))
    wait_for(browser, ".messagelist .success")
    notes = [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".messagelist .success")]
    assert notes[0] == "Its 1 order was deleted first."
    assert "deleted successfully" in notes[1]
    assert "alice@example.com" not in wait_for(browser, "#result_list").text


def test_the_order_list_links_each_order_to_its_user(browser, site):
    browser.get(f"{site}/admin/core/order/")
    wait_for(browser, "#result_list a[href='/admin/core/user/1/change/']").click()
    assert wait_for(browser, "#id_email").get_attribute("value") == "alice@example.com"


def test_no_page_breaks_the_content_security_policy(browser, site):
    """The admin's pages and the overview load nothing the policy refuses (console log)."""
    browser.get_log("browser")  # drop what earlier tests logged
    for path in (
        "/admin/",
        "/admin/core/order/",
        "/admin/core/user/?q=a",
        "/admin/core/user/1/change/",
        "/admin/core/user/1/delete/",
        "/admin/core/product/add/",
        "/admin/reviews/review/",
        "/admin/reviews/review/add/",
        "/admin/core/user/import/",
        "/imports/new/",
        "/overview/",
    ):
        browser.get(f"{site}{path}")
        wait_for(browser, "#footer")
    refused = [
        e["message"] for e in browser.get_log("browser") if "Content Security" in e["message"]
    ]
    assert refused == []
    policy = browser.execute_script(
        "return fetch(location.href).then(r => r.headers.get('content-security-policy'))"
    )
    assert "script-src 'self'" in policy


@pytest.mark.sqlite_files
def test_the_overview_shows_every_database_and_the_last_load(browser, site):
    browser.get(f"{site}/admin/")
    wait_for(browser, "#user-tools a[href='/overview/']").click()  # "View site"
    databases = wait_for(browser, "#databases").text
    for alias in ALL_DATABASES:
        assert alias in databases
    assert "users: 8" in databases and "orders: 7" in databases
    assert databases.count("not checked yet") == len(ALL_DATABASES)  # files: on request
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert len(bars) == len(registry.tables())  # one run, one bar per registered table
    check = "input[value='Check every file and reference now']"
    browser.find_element(By.CSS_SELECTOR, check).click()
    result = wait_for(browser, "#integrity-result").text
    assert result == (
        "7 orders, 0 reviews and 0 items checked: every customer or product or shelf they name "
        "exists."
    )
    statuses = browser.find_elements(By.CSS_SELECTOR, "#databases .status-ok")
    assert len(statuses) == len(ALL_DATABASES)


IMPORTED_USERS = """\
id,name,email
11,Grace,grace.h@example.net
12,Heidi,heidi.k@example.net
1,Alice,alice@example.com
13,,nobody@example.com
14,Ivan,ALICE@example.com
"""


def test_importing_a_file_from_the_customer_list(browser, site, tmp_path):
    """Import button -> upload -> the dry run's preview -> Confirm -> the run's summary."""
    upload = tmp_path / "new customers.csv"
    upload.write_text(IMPORTED_USERS, encoding="utf-8")
    browser.get(f"{site}/admin/core/user/")
    wait_for(browser, "#import-link").click()
    wait_for(browser, "#id_file").send_keys(str(upload))
    browser.find_element(By.ID, "upload").click()
    counts = wait_for(browser, "#counts-users").text
    assert counts.split() == ["users", "2", "1", "2"]  # would store, present, rejected
    rows = browser.find_element(By.ID, "rows-users").text
    assert "name is required" in rows
    assert "email 'ALICE@example.com' is already used by customer 1" in rows
    assert "would store" in rows and "already present" in rows
    screenshot = os.environ.get("MULTIDS_SCREENSHOT_IMPORT")
    if screenshot:
        admin.site.unregister(Review)  # the project as a user has it, as for the README's
        try:
            browser.refresh()
            wait_for(browser, "#confirm")
            browser.save_screenshot(screenshot)
        finally:
            admin.site.register(Review, ReferencingAdmin)
    wait_for(browser, "#confirm").click()
    summary = (
        WebDriverWait(browser, 90)
        .until(
            lambda b: (
                b.find_elements(By.ID, "run-summary") or b.find_elements(By.ID, "import-error")
            )
        )[0]
        .text
    )
    assert summary == "2 stored, 1 already present, 2 rejected."
    wait_for(browser, "#rejects-link")
    browser.get(f"{site}/admin/core/user/?q=heidi")
    assert "heidi.k@example.net" in wait_for(browser, "#result_list").text
