"""The slice viewer in a real browser (Debian's Chromium via Playwright) against the real stack.

A synthetic 16-slice DICOM study whose HU run from -1000 to +1000 across the
columns is processed by the real worker; the browser opens a shareable slice
URL, scrolls 10 slices with the wheel, changes the window (the canvas pixels
must be the HU windowed exactly as asked), toggles the heat map, and never
requests anything off 127.0.0.1 (the ``seen`` fixture of tests/test_browser.py).
With SCREENSHOTS_DIR set, each state is saved at 1280 px and 390 px wide
(docs/screenshots/ holds the committed ones).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.conftest import Stack, png_bytes
from tests.test_browser import (  # noqa: F401  (fixtures used by name)
    CHROMIUM,
    JOB_TIMEOUT_MS,
    base_url,
    browser_type_launch_args,
    seen,
    server_url,
    use_key,
)
from tests.test_views import gradient_slice

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM}"),
]

SIZE = 160
COLUMNS_HU = np.linspace(-1000, 1000, SIZE).round().astype(int)
CANVAS = """() => {
  const c = document.querySelector("canvas.view");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const row = [];
  for (let x = 0; x < c.width; x += 1) row.push(d[(8 * c.width + x) * 4]);
  let sum = 0;
  for (let i = 0; i < d.length; i += 1) sum = (sum * 31 + d[i]) % 1000000007;
  return { width: c.width, height: c.height, row, sum };
}"""


def windowed(instance: int, center: float, width: float) -> np.ndarray:
    lo = center - width / 2
    return np.clip((COLUMNS_HU + instance - lo) * 255 / width, 0, 255)


def shoot(page: Page, name: str, at: str = ".viewer") -> None:
    """Save the page at 1280 px and 390 px wide when SCREENSHOTS_DIR is set."""
    folder = os.environ.get("SCREENSHOTS_DIR")
    if not folder:
        return
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.locator(at).first.scroll_into_view_if_needed()
        page.screenshot(path=str(Path(folder) / f"{name}-{width}.png"))
    page.set_viewport_size({"width": 1280, "height": 900})


def run_study(stack: Stack, url: str) -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(1, 17):
            zf.writestr(f"study/{i:02}.dcm", gradient_slice(i, SIZE))
    http = stack.http()
    job = http.post(f"{url}/api/v1/jobs", files={"file": ("ct.zip", buf.getvalue())}, timeout=30)
    assert job.status_code == 202, job.text
    done = http.get(f"{url}/api/v1/jobs/{job.json()['id']}?wait=60", timeout=90).json()
    assert done["status"] == "succeeded", done
    return done


def test_open_scroll_window_and_heat_map(
    page: Page,
    seen: list[str],  # noqa: F811
    server_url: str,  # noqa: F811
    stack: Stack,
) -> None:
    job = run_study(stack, server_url)
    rows = stack.http().get(f"{server_url}/api/v1/jobs/{job['id']}/results", timeout=10).json()
    instances = [r["instance_number"] for r in rows["items"]]
    page.set_viewport_size({"width": 1280, "height": 900})
    use_key(page, f"{server_url}/jobs/{job['id']}/series/1/slices/1", stack.key)
    viewer = page.locator(".viewer")
    expect(viewer.get_by_role("heading")).to_contain_text("slice 1 of 16", timeout=JOB_TIMEOUT_MS)
    expect(viewer.get_by_role("button", name="Lung -600/1500")).to_be_visible()
    first = page.evaluate(CANVAS)
    assert (first["width"], first["height"]) == (SIZE, SIZE)  # full resolution, not 128 px
    assert np.abs(np.array(first["row"]) - windowed(instances[0], -600, 1500)).max() <= 1
    shoot(page, "viewer-open")

    page.locator(".stage").hover()
    for _ in range(10):
        page.mouse.wheel(0, 120)
    expect(viewer.get_by_role("heading")).to_contain_text("slice 11 of 16")
    expect(page).to_have_url(f"{server_url}/jobs/{job['id']}/series/1/slices/11")
    expect(viewer.locator("p.said[role=status]")).to_contain_text("Slice 11 of 16")
    page.keyboard.press("ArrowUp")
    expect(viewer.get_by_role("heading")).to_contain_text("slice 10 of 16")
    lung = page.evaluate(CANVAS)
    shoot(page, "viewer-scrolled")

    viewer.get_by_role("button", name="Mediastinum 40/400").click()
    expect(viewer.locator(".window-text")).to_contain_text("center 40 HU, width 400 HU")
    mediastinum = page.evaluate(CANVAS)
    assert mediastinum["sum"] != lung["sum"]  # the displayed pixels follow the window
    assert np.abs(np.array(mediastinum["row"]) - windowed(instances[9], 40, 400)).max() <= 1
    shoot(page, "viewer-mediastinum")

    heat = job["summary"]["heatmaps"]
    assert heat and all(
        t["heatmap"] == (t["slice_index"] in heat) for t in job["summary"]["top_slices"]
    )
    position = [r["slice_index"] for r in rows["items"]].index(heat[0]) + 1
    page.locator(".viewer .slider").fill(str(position))
    expect(viewer.locator("p.said[role=status]")).to_contain_text("heat map available")
    toggle = viewer.get_by_label("Heat map", exact=True)
    expect(toggle).to_be_enabled()
    expect(toggle).to_be_checked()
    with_heat = page.evaluate(CANVAS)
    shoot(page, "viewer-heatmap")
    toggle.uncheck()
    without = page.evaluate(CANVAS)
    png = stack.http().get(f"{server_url}/api/v1/jobs/{job['id']}/slices/{heat[0]}/heatmap").content
    if np.asarray(Image.open(io.BytesIO(png)))[..., 3].max() > 0:  # a map that shows anything
        assert with_heat["sum"] != without["sum"]

    viewer.get_by_role("button", name="Next most suspicious").click()
    expect(viewer.get_by_role("heading")).not_to_contain_text(f"slice {position} of 16")
    viewer.get_by_role("button", name="Close viewer").click()
    expect(page).to_have_url(f"{server_url}/jobs/{job['id']}")
    expect(viewer).to_be_hidden()
    page.locator(".thumb a.open-viewer").nth(4).click()  # a thumbnail opens its slice
    expect(viewer.get_by_role("heading")).to_contain_text("slice 5 of 16")
    expect(page).to_have_url(f"{server_url}/jobs/{job['id']}/series/1/slices/5")
    page.keyboard.press("2")  # the mediastinum preset from the keyboard
    expect(viewer.locator(".window-text")).to_contain_text("center 40 HU, width 400 HU")
    page.go_back()  # back to the job page, viewer closed
    expect(page).to_have_url(f"{server_url}/jobs/{job['id']}")
    expect(viewer).to_be_hidden()
    verdict = page.locator("section.verdict")
    expect(verdict.locator(".label")).to_have_text(job["summary"]["verdict"])
    expect(verdict.locator(".evidence")).to_contain_text(job["summary"]["verdict_text"])
    shoot(page, "job-verdict", "section.verdict")

    page.goto(f"{server_url}/")  # the job list, filtered by this job's verdict
    page.get_by_label("Verdict").select_option(job["summary"]["verdict"])
    page.get_by_role("button", name="Filter").click()
    row = page.locator(f'#job-list tr[data-job-id="{job["id"]}"]')
    expect(row.locator(".verdict-cell")).to_contain_text(job["summary"]["verdict"])
    expect(row.locator("td.num")).to_have_text("16")
    shoot(page, "job-list", "#list-filters")


def test_a_pasted_key_submits_forget_key_clears_and_a_narrow_table_keeps_probabilities(
    page: Page,
    seen: list[str],  # noqa: F811
    server_url: str,  # noqa: F811
    stack: Stack,
    tmp_path: Path,
) -> None:
    """Issue 20, smaller defects: no "Use key" needed before Submit; "Forget key" leaves
    nothing of the owner's on screen; at 390 px the probabilities stay in view."""
    archive = tmp_path / "four.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            zf.writestr(f"s{i}.png", png_bytes(500 + i, 32))
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(server_url + "/")
    page.get_by_label("API key").fill(stack.key)  # pasted, "Use key" not pressed
    page.get_by_label(re.compile("study archive")).set_input_files(archive)
    page.get_by_role("button", name="Submit").click()
    card = page.locator("article.submission", has=page.locator("h3", has_text="four.zip"))
    expect(card.locator(".job-title .badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#submit-error")).to_be_empty()
    probabilities = card.locator("table.results tbody tr").first.locator(".probs")
    probabilities.scroll_into_view_if_needed()
    box = probabilities.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390, box
    expect(page.locator("#job-list tbody tr").first).to_be_visible()

    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#job-list")).to_be_hidden()
    expect(page.locator("#job-list tbody tr")).to_have_count(0)
    expect(page.locator("article.submission")).to_have_count(0)
