"""The web app in a real browser (Debian's Chromium driven by Playwright) against `htl serve` with its
local worker: sign in, upload, submit (a refused spec first), watch the job finish, look at the
gallery, filter it, read the plots, and meet another owner's job as not found.

Skips with a reason where Chromium or Playwright is missing; HTL_TEST_CHROMIUM (set by .ci/run)
names the browser and makes a missing one a failure. HTL_SCREENSHOTS=DIR keeps a screenshot of
each page (the README's come from such a run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from ml.synthetic import make_dataset
from tests.app.archives import make_zip
from tests.app.test_service_under_load import Server

JOB_TIMEOUT_MS = 240_000

# a real `htl serve` with its worker trains the jobs these tests drive
pytestmark = pytest.mark.torch


def _chromium() -> str:
    named = os.environ.get("HTL_TEST_CHROMIUM")
    if named:
        assert Path(named).is_file(), f"HTL_TEST_CHROMIUM={named} is not a file"
        return named
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("browser tests need Chromium (apt-get install chromium) or HTL_TEST_CHROMIUM; .ci/run installs it")
    return found


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("HTL_TEST_CHROMIUM"):
            raise
        pytest.skip("browser tests need Playwright for Python (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    server = Server(tmp, no_worker=False, progress_interval_s=0.2)
    bob = subprocess.run(
        [*server.cli, "keys", "create", "--owner", "bob", "--data-dir", str(server.data)],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    server.start()
    yield server, bob, tmp
    server.stop()


def _shot(page, name: str) -> None:
    folder = os.environ.get("HTL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _sign_in(page, base: str, key: str) -> None:
    page.goto(f"{base}/jobs")
    page.fill("#api-key", key)
    page.click("[data-testid=sign-in] button[type=submit]")
    page.wait_for_selector("#sign-out:visible")


def test_the_web_app_end_to_end(browser, service):
    server, bob_key, tmp = service
    base = server.base
    archive = tmp / "syn.zip"
    root = make_dataset(tmp / "syn", n=60, size=32, seed=3)
    archive.write_bytes(
        make_zip({str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    )

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # sign in: a wrong key is refused on the form, the right one is kept in the tab's session only
    page.goto(f"{base}/jobs")
    _shot(page, "sign-in")
    page.fill("#api-key", "not-a-key")
    page.click("[data-testid=sign-in] button[type=submit]")
    page.wait_for_selector("text=That API key is not valid.")
    _sign_in(page, base, server.key)
    assert page.evaluate("sessionStorage.getItem('htl.apiKey')") == server.key
    assert server.key not in page.url

    # upload a folder's archive: counts, attributes
    page.goto(f"{base}/datasets")
    page.set_input_files("#archive", str(archive))
    page.fill("#dataset-name", "synthetic")
    page.click("form button[type=submit]")
    summary = page.wait_for_selector("[data-testid=dataset-summary]")
    assert "60 images, 60 masks" in summary.inner_text() and "site" in summary.inner_text()
    assert "images/ + masks/ layout" in summary.inner_text()
    page.wait_for_selector("[data-testid=dataset-list] >> text=synthetic")
    _shot(page, "datasets")

    # a spec the API refuses: its message appears next to the field; then a good one is queued
    page.click("text=Run a job on it")
    page.wait_for_selector("form.spec-form")
    for field, value in {
        "image_size": "32",
        "model.width": "4",
        "train.epochs": "1",
        "train.batch_size": "8",
        "prune.sparsities": "0.5, 1.5",
        "split.test_fraction": "0.25",
        "attention.control": None,
    }.items():
        selector = f"[name='{field}']"
        if value is None:
            page.select_option(selector, "random")
        else:
            page.fill(selector, value)
    _shot(page, "new-job")
    page.click("form.spec-form button[type=submit]")
    problem = page.wait_for_selector(".field[data-path='prune.sparsities'] .field-error:visible")
    assert "1" in problem.inner_text() or "sparsit" in problem.inner_text().lower(), problem.inner_text()
    page.fill("[name='prune.sparsities']", "0.5, 0.9")
    page.click("form.spec-form button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rstrip("/").split("/")[-1]

    # live status until it succeeds
    page.wait_for_selector("[data-testid=job-status]")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=job-status]').textContent === 'succeeded'", timeout=JOB_TIMEOUT_MS
    )

    # the gallery: hardest first, every thumbnail loaded (an overlay of the named layers)
    page.wait_for_selector("[data-testid=htl-gallery] [data-testid=htl-item]")
    answer = httpx.get(
        f"{base}/v1/jobs/{job_id}/scores", params={"htl_only": "true", "limit": 1000}, headers=server.headers
    )
    assert answer.status_code == 200, answer.text
    scores = answer.json()["items"]
    items = page.locator("[data-testid=htl-item]")
    assert items.count() == len(scores) > 0
    assert [items.nth(i).get_attribute("data-image") for i in range(items.count())] == [s["image_id"] for s in scores]
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=htl-item] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "gt, dense, pruned@0.5, pruned@0.9" in items.first.locator("img").get_attribute("alt")
    legend = page.locator("p.legend").inner_text()
    assert "ground truth" in legend and "pruned@0.9" in legend
    page.wait_for_selector("[data-testid=enrichment-plot]")
    _shot(page, "job")

    # a subgroup filter narrows the gallery to exactly that subgroup's HTL images
    options = page.locator("#gallery-filter option")
    values = [options.nth(i).get_attribute("value") for i in range(options.count())]
    narrowing = next(
        v
        for v in values[1:]
        if 0 < sum(s["subgroups"][v.split("=", 1)[0]] == v.split("=", 1)[1] for s in scores) < len(scores)
    )
    attribute, value = narrowing.split("=", 1)
    page.select_option("#gallery-filter", narrowing)
    expected = [s["image_id"] for s in scores if s["subgroups"][attribute] == value]
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=htl-item]').length === {len(expected)}")
    assert [items.nth(i).get_attribute("data-image") for i in range(items.count())] == expected

    # the detail view: the full image with its layers to toggle
    items.first.click()
    detail = page.wait_for_selector("[data-testid=image-detail] img.full")
    page.wait_for_function("() => document.querySelector('[data-testid=image-detail] img.full').naturalWidth > 0")
    before = detail.get_attribute("src")
    assert page.locator("[data-testid=image-detail] input[name=oos]").count() == 1  # the label check's prediction
    assert "label quality" in page.locator("[data-testid=image-detail]").inner_text()
    page.uncheck("[data-testid=image-detail] input[name=dense]")
    page.wait_for_function(
        f"() => document.querySelector('[data-testid=image-detail] img.full').getAttribute('src') !== '{before}'"
    )
    _shot(page, "image-detail")
    page.click("[data-testid=image-detail] .close button")

    # the label check says what it checked and flagged, and how
    check = page.locator("[data-testid=label-check-summary]").inner_text()
    assert "Masks flagged as probably wrong:" in check and "3-fold cross-fitting" in check and "train" in check

    # the verdict is the pre-registered endpoint's, on the test split (validation's is for choosing variants)
    verdict = page.locator("[data-testid=verdict]").inner_text()
    assert "test image" in verdict and "random control" in verdict, verdict
    # which model to use, chosen on validation, with the checkpoint to download
    recommended = page.locator("[data-testid=recommended-model]").inner_text()
    assert recommended.startswith("Use the ") and "(download " in recommended, recommended

    # the plots name the groups
    enrichment = page.locator("[data-testid=enrichment-plot]").text_content()
    assert "site = rare" in enrichment and "site = common" in enrichment
    gap = page.locator("[data-testid=gap-plot]").first.text_content()
    assert "overall" in gap and "site = common" in gap and "attended − control" in gap
    assert page.locator("[data-testid=metrics-table]").inner_text().count("pruned@") >= 2
    assert "hd95" in page.locator("[data-testid=metrics-table]").inner_text()

    # the jobs list shows it finished
    page.goto(f"{base}/jobs")
    page.wait_for_selector(f"[data-testid=job-list] a[href='/jobs/{job_id}']")
    _shot(page, "jobs")
    assert not errors, errors

    # another owner meets this job as not found
    page.click("#sign-out")
    _sign_in(page, base, bob_key)
    page.goto(f"{base}/jobs/{job_id}")
    assert "There is no job" in page.wait_for_selector("[data-testid=not-found]").inner_text()
    assert page.locator("[data-testid=htl-gallery]").count() == 0
    context.close()


def test_a_semi_supervised_job_shows_its_annotation_queue_and_exports_it(browser, service, tmp_path):
    from client import HtlClient

    server, _, _ = service
    folder = make_dataset(tmp_path / "semi", n=40, size=32, seed=5)
    for mask in sorted((folder / "masks").iterdir())[:12]:  # twelve images without a mask
        mask.unlink()
    spec = {
        "image_size": 32,
        "model": {"width": 4},
        "train": {"epochs": 1, "batch_size": 8},
        "prune": {"sparsities": [0.5]},
        "setting": "semi_supervised",
        "scorers": ["pruning", "mc_dropout"],
    }
    with HtlClient(server.base, server.key) as api:
        job = api.wait(api.submit_job(api.upload_dataset(folder)["id"], spec)["id"], timeout=JOB_TIMEOUT_MS / 1000)
        assert job["status"] == "succeeded", job
        by = {
            s: [i["image_id"] for i in api.annotation_queue(job["id"], strategy=s)]
            for s in ("htl", "mc_dropout", "random")
        }
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _sign_in(page, server.base, server.key)
    page.goto(f"{server.base}/jobs/{job['id']}")

    def shown() -> list[str]:
        return page.locator("[data-testid=annotation-queue] tbody tr td:nth-child(2)").all_inner_texts()

    page.wait_for_selector("[data-testid=annotation-queue] tbody tr")
    assert shown() == by["random"][:25] and len(by["random"]) == 12  # the default: it beat the others on HAM10000
    assert "random images" in page.locator("[data-testid=queue-finding]").inner_text()
    for strategy in ("htl", "mc_dropout", "random"):
        page.select_option("[data-testid=queue-strategy]", strategy)
        cells = "[data-testid=annotation-queue] tbody td:nth-child(2)"
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{cells}')].map(td => td.textContent).join(',') === '{','.join(by[strategy])}'"
        )
    with page.expect_download() as download:
        page.click("[data-testid=queue-export]")
    exported = Path(download.value.path()).read_text().splitlines()
    assert (
        exported[0].startswith("position,image_id,strategy")
        and [line.split(",")[1] for line in exported[1:]] == by["random"]
    )
    _shot(page, "annotation-queue")
    assert not errors, errors
    context.close()


def test_a_sweep_compares_its_variants_side_by_side(browser, service, tmp_path):
    """A 2-variant sweep through the client: the second variant waits for the first's dense units,
    then re-uses them; its page shows one row per job with the varied field, both differences with
    intervals, the worst decile, what it re-used, and the verdicts."""
    from client import HtlClient

    server, _, _ = service
    folder = make_dataset(tmp_path / "sweep", n=40, size=32, seed=6)
    spec = {
        "image_size": 32,
        "model": {"width": 4},
        "train": {"epochs": 1, "batch_size": 8},
        "prune": {"sparsities": [0.5]},
        "split": {"test_fraction": 0.25},
        "attention": {"control": "random"},
    }
    with HtlClient(server.base, server.key) as api:
        dataset = api.upload_dataset(folder)["id"]
        sweep = api.create_sweep(dataset, {"attention.factor": [2, 6]}, spec, name="factors", select_on="focus")
        assert [v["state"] for v in sweep["variants"]] == ["submitted", "pending"]
        done = api.wait_sweep(sweep["id"])
    rows = done["comparison"]["rows"]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"], done
    lead, follower = (v["job_id"] for v in done["variants"])
    assert rows[1]["reused_from"] == lead

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _sign_in(page, server.base, server.key)
    page.goto(f"{server.base}/sweeps")
    page.click(f"[data-testid=sweep-list] a[href='/sweeps/{sweep['id']}']")
    page.wait_for_selector("[data-testid=comparison] tbody tr")
    headers = page.locator("[data-testid=comparison] thead th").all_inner_texts()
    assert headers[:3] == ["Job", "Status", "attention.factor"] and "attended − control" in headers
    cells = [r.locator("td").all_inner_texts() for r in page.locator("[data-testid=comparison] tbody tr").all()]
    assert [c[0] for c in cells] == [lead[:8], follower[:8]] and [c[2] for c in cells] == ["2", "6"]
    for c, row in zip(cells, rows):
        d = row["headline"]["attended_vs_control"]
        # one seed: the overall difference has no interval over seeds; the focus set's spans its images
        assert c[5] == f"{d['overall']:+.4f}" and d["overall_ci95"] is None
        assert c[6] == f"{d['focus']:+.4f} [{d['focus_ci95'][0]:+.4f}, {d['focus_ci95'][1]:+.4f}]"
        assert re.fullmatch(r"\d\.\d{3} / \d\.\d{3}", c[7]), c[7]
    assert cells[0][8] == "–" and cells[1][8] == lead[:8]
    assert page.locator("[data-testid=verdicts] li").count() == 2
    chosen = done["selection"]
    assert chosen["job_id"] in (lead, follower) and chosen["compared"] == 2
    box = page.locator("[data-testid=selection]").inner_text()
    assert chosen["job_id"][:8] in box and chosen["sentence"] in box
    _shot(page, "sweep")
    page.click(f"[data-testid=comparison] a[href='/jobs/{follower}']")
    page.wait_for_selector("[data-testid=job-status]")

    page.goto(f"{server.base}/datasets/{dataset}/compare")
    page.wait_for_selector("[data-testid=comparison] tbody tr")
    assert page.locator("[data-testid=comparison] tbody tr").count() == 2
    assert not errors, errors
    context.close()
