"""The web UI in a real browser (Debian's Chromium driven by Playwright) against the real stack.

The stack's API is served over real HTTP on a loopback port; the browser
enters a key, uploads studies, follows jobs to their results (with the slice
images and heatmaps the worker stored), reloads a job's page, downloads the
CSV, cancels a running job and deletes a job. Every request the page makes is
recorded: none may leave 127.0.0.1 (no CDN, no fonts, no analytics).
Skipped when /usr/bin/chromium is missing (``apt-get install chromium``);
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Locator, Page, Response, expect

from client.export import BASE_COLUMNS, TAIL_COLUMNS
from tests.conftest import Stack, png_bytes, served

CHROMIUM = Path("/usr/bin/chromium")
JOB_TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM}: apt-get install chromium"
    ),
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch Debian's Chromium instead of a browser Playwright would download."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM)}


@pytest.fixture(scope="session")
def base_url() -> None:
    """No base URL: tests use server_url. (Replaces pytest-playwright's own fixture, which
    pytest 9 deprecates as a session fixture on an instance, an error under our filterwarnings.)"""
    return None


@pytest.fixture(scope="module")
def server_url(stack: Stack) -> Iterator[str]:
    """The stack's app (API + UI) served over real HTTP on a loopback port."""
    if stack.env["DATABASE_URL"].startswith("postgresql"):
        pytest.skip("the UI does not depend on the database; it runs once, on SQLite")
    with served(stack.app()) as url:
        yield url


@pytest.fixture
def seen(page: Page) -> Iterator[list[str]]:
    """Every URL the page requests; afterwards, all of them must be on 127.0.0.1."""
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    yield urls
    hosts = {urlsplit(u).hostname for u in urls if not u.startswith(("blob:", "data:"))}
    assert hosts == {"127.0.0.1"}, [u for u in urls if "127.0.0.1" not in u]


def study(tmp_path: Path, name: str, slices: int, seed: int, size: int = 64) -> Path:
    """A zip of random PNG 'slices' (random pixels do not compress: about size² bytes each)."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(slices):
            zf.writestr(f"slice{i:03d}.png", png_bytes(seed + i, size))
    return path


def throttle_uploads(page: Page, bytes_per_s: int) -> None:
    """Slow the page's uploads (Chromium network emulation); -1 lifts the limit."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": bytes_per_s})


def use_key(page: Page, url: str, key: str) -> None:
    page.goto(url)
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard submits the key form
    expect(page.locator("#key-status")).to_contain_text("accepted")


def submit(page: Page, archive: Path) -> None:
    page.get_by_label(re.compile("study archive")).set_input_files(archive)
    button = page.get_by_role("button", name="Submit")
    button.click()
    expect(button).to_be_enabled()  # disabled while the upload runs


def finished_card(page: Page, upload_name: str) -> Locator:
    """The submission card of upload_name once its job has succeeded."""
    card = page.locator("article.submission", has=page.locator("h3", has_text=upload_name))
    expect(card.locator(".job-title .badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    return card


IMAGE_ROUTE = re.compile(r"/api/v1/jobs/[^/]+/slices/\d+/(image|heatmap)$")


def image_answers(page: Page) -> list[tuple[str, int, str | None]]:
    """(kind, status, Authorization header) of every slice image or heatmap the page fetched.

    These are the real routes of the stack: the worker stored each slice's
    image and the heatmaps of the top slices while it ran the job.
    """
    answers: list[tuple[str, int, str | None]] = []

    def record(response: Response) -> None:
        if match := IMAGE_ROUTE.search(response.url):
            auth = response.request.headers.get("authorization")
            answers.append((match.group(1), response.status, auth))

    page.on("response", record)
    return answers


def api_results(stack: Stack, url: str, job_id: str) -> list[dict[str, Any]]:
    page = stack.http().get(f"{url}/api/v1/jobs/{job_id}/results?limit=1000", timeout=10).json()
    return page["items"]


def test_upload_progress_results_reload_csv_and_delete(
    page: Page, seen: list[str], server_url: str, stack: Stack, tmp_path: Path
) -> None:
    images = image_answers(page)
    use_key(page, server_url + "/", stack.key)
    submit(page, study(tmp_path, "twelve.zip", 12, seed=100))

    card = finished_card(page, "twelve.zip")
    upload_bar = card.get_by_role("progressbar", name="upload of twelve.zip")
    expect(upload_bar).to_have_attribute("aria-valuenow", "100")
    job_id = card.locator(".job").get_attribute("data-job-id")
    assert job_id
    expect(card.get_by_role("progressbar", name=f"progress of job {job_id}")).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(card.locator("table.results tbody tr")).to_have_count(12)
    expect(card.get_by_text("Study verdict")).to_be_visible()
    top = card.locator("figure.large").first
    top.scroll_into_view_if_needed()  # images load as they come into view
    expect(top.locator("img.ct")).to_have_attribute("src", re.compile("^blob:"))
    expect(top.locator("img.heat")).to_be_visible()
    card.get_by_label("Show heatmap overlay").uncheck()
    expect(top.locator("img.heat")).to_be_hidden()
    card.locator(".thumb").first.scroll_into_view_if_needed()
    expect(card.locator(".thumb img").first).to_be_visible()
    assert {status for kind, status, _ in images if kind == "image"} == {200}
    # heatmaps exist for the top HEATMAP_SLICES_PER_SERIES slices; others answer 404
    assert 200 in {status for kind, status, _ in images if kind == "heatmap"}
    assert {auth for _, _, auth in images} == {f"Bearer {stack.key}"}  # fetched with the key

    card.get_by_role("link", name=job_id).click()
    expect(page).to_have_url(f"{server_url}/jobs/{job_id}")
    page.reload()  # the job page stands alone: the ID comes from the URL, the key from the tab
    view = page.locator("#job-view")
    expect(view.locator(".job-title .badge")).to_have_text("succeeded")
    expect(view.locator("table.results tbody tr")).to_have_count(12)
    expect(view.get_by_role("status").filter(has_text="rows 1–12 of 12")).to_be_visible()

    with page.expect_download() as download:
        view.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    expected = api_results(stack, server_url, job_id)
    job = stack.http().get(f"{server_url}/api/v1/jobs/{job_id}", timeout=10).json()
    assert [int(r["slice_index"]) for r in rows] == [i["slice_index"] for i in expected]
    assert [r["label"] for r in rows] == [i["label"] for i in expected]
    assert {r["job_id"] for r in rows} == {job_id}
    classes = sorted(expected[0]["probabilities"])
    # issue 20: the CLI's columns, and the name this tab uploaded (the server keeps none)
    assert list(rows[0]) == [*BASE_COLUMNS, *(f"p_{c}" for c in classes), *TAIL_COLUMNS]
    assert {r["input"] for r in rows} == {"twelve.zip"}
    assert {r["study_verdict"] for r in rows} == {job["summary"]["verdict"]}
    assert abs(float(rows[0][f"p_{classes[0]}"]) - expected[0]["probabilities"][classes[0]]) < 1e-9

    page.once("dialog", lambda d: d.accept())
    view.get_by_role("button", name="Delete job").click()
    expect(view.get_by_role("status").filter(has_text="was deleted")).to_be_visible()
    assert stack.http().get(f"{server_url}/api/v1/jobs/{job_id}", timeout=10).status_code == 404


def test_two_quick_submissions_stay_separate(
    page: Page, seen: list[str], server_url: str, stack: Stack, tmp_path: Path
) -> None:
    use_key(page, server_url + "/", stack.key)
    throttle_uploads(page, 100_000)  # three 256² slices: about 2 s to upload
    page.get_by_label(re.compile("study archive")).set_input_files(
        study(tmp_path, "three.zip", 3, seed=200, size=256)
    )
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("button", name="Submit")).to_be_disabled()
    upload = page.get_by_role("progressbar", name="upload of three.zip")
    expect(upload).to_have_attribute("aria-valuenow", re.compile(r"^[1-9][0-9]?$"))  # 1-99 %
    expect(page.locator("article.submission .live").first).to_contain_text("uploading")
    expect(page.get_by_role("button", name="Submit")).to_be_enabled(timeout=JOB_TIMEOUT_MS)
    throttle_uploads(page, -1)
    submit(page, study(tmp_path, "five.zip", 5, seed=300))  # right after the first upload

    cards = {name: finished_card(page, name) for name in ("three.zip", "five.zip")}
    expect(page.locator("article.submission")).to_have_count(2)
    ids = {name: card.locator(".job").get_attribute("data-job-id") for name, card in cards.items()}
    assert ids["three.zip"] and ids["five.zip"] and ids["three.zip"] != ids["five.zip"]
    for name, slices in (("three.zip", 3), ("five.zip", 5)):
        card = cards[name]
        # the slice image route answers with the image or 404: either way a thumbnail shows
        card.locator(".strip").scroll_into_view_if_needed()
        thumbs = card.locator(".thumb .img-holder.loaded, .thumb .img-holder.missing")
        expect(thumbs).to_have_count(slices)
        expect(card.locator(".job-title code")).to_have_text(ids[name] or "")
        expect(card.locator("table.results tbody tr")).to_have_count(slices)
        labels = card.locator("table.results tbody tr td:nth-child(5)").all_inner_texts()
        assert labels == [i["label"] for i in api_results(stack, server_url, ids[name] or "")]

    job_list = page.locator("#job-list")
    for job_id in ids.values():
        expect(job_list.locator(f'tr[data-job-id="{job_id}"] .badge')).to_have_text("succeeded")


def test_refused_key_and_unknown_job(
    page: Page, seen: list[str], server_url: str, stack: Stack
) -> None:
    page.goto(server_url + "/jobs/no-such-job")
    expect(page.locator("#key-status")).to_contain_text("Enter your API key")
    page.get_by_label("API key").fill("lct_wrong")
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_role("alert").filter(has_text="API key was refused")).to_be_visible()
    page.get_by_label("API key").fill(stack.key)
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_role("alert").filter(has_text="No job no-such-job")).to_be_visible()
    expect(page.get_by_role("alert").filter(has_text="refused")).to_have_count(0)


def test_a_running_job_is_cancelled_from_its_page(
    page: Page, seen: list[str], server_url: str, stack: Stack, tmp_path: Path
) -> None:
    archive = tmp_path / "long.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # many tiny slices: long enough to catch running
        for i in range(1500):
            zf.writestr(f"s{i:04}.png", png_bytes(i, size=8))
    use_key(page, server_url + "/", stack.key)
    submit(page, archive)
    card = page.locator("article.submission", has=page.locator("h3", has_text="long.zip"))
    expect(card.locator(".job-title .badge")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    page.once("dialog", lambda d: d.accept())
    card.get_by_role("button", name="Cancel job").click()
    expect(card.locator(".job-title .badge")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    job_id = card.locator(".job").get_attribute("data-job-id")
    job = stack.http().get(f"{server_url}/api/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "cancelled" and 0 < job["progress"]["done"] < 1500
