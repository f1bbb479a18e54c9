"""The web app in a real browser: Debian's headless Chromium driven by Playwright, against `dualanodiff app`
started here on a free loopback port.

One walk through the four pages as a user makes it: upload 4 defect images and 3 masks, paint the 1st mask,
train a few steps on the built-in demo base, generate 4 pairs and see them in the gallery, reject one by
hand, download the dataset zip and the anomalib export and check their layout; reload the page and find
everything where it was; then the quick localization study with its report shown in the page. Tiny sizes.

Skipped when the ``[app]`` extra, Playwright or ``/usr/bin/chromium`` is missing (an error instead when
``DUALANODIFF_REQUIRE_BROWSER`` is set, as CI sets it). With
``DUALANODIFF_SCREENSHOTS=docs/app`` the screenshots of each page are written there (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("DUALANODIFF_CHROMIUM", "/usr/bin/chromium")
_MISSING = None
try:
    import gradio  # noqa: F401
    from playwright import sync_api
except ImportError as err:
    _MISSING = f"{err.name} is not installed (pip install -e '.[test,app]')"
if _MISSING is None and not Path(CHROMIUM).is_file():
    _MISSING = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
if _MISSING is not None:
    if os.environ.get("DUALANODIFF_REQUIRE_BROWSER"):  # CI: these tests must run, not skip
        raise RuntimeError(f"the app's browser tests cannot run: {_MISSING}")
    pytest.skip(_MISSING, allow_module_level=True)

SRC = Path(__file__).resolve().parents[1] / "src"
SCREENSHOTS = os.environ.get("DUALANODIFF_SCREENSHOTS")
# Toy sizes for the test; for the README's screenshots, the app's defaults (None: left as the page has it, the
# demo's sizes: pictures worth a look, minutes on a 2-core CPU).
SIZES = (
    dict.fromkeys(("train_steps", "sampler_steps", "max_area", "epochs", "samples", "width"))
    if SCREENSHOTS
    else {"train_steps": 6, "sampler_steps": 3, "max_area": 1.0, "epochs": 2, "samples": 16, "width": 8}
)
JOB_TIMEOUT_MS = 1_200_000 if SCREENSHOTS else 240_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_server(tmp_path):
    """`dualanodiff app` on a free loopback port; yields (url, workspace). Stops it and its jobs after."""
    port, workspace = _free_port(), tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "dualanodiff.cli", "app", "--workspace", str(workspace), "--port", str(port),
         "--threads", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # importing gradio and torch takes minutes on a busy 2-core machine
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail("the app did not start:\n" + (tmp_path / "server.log").read_text())
            time.sleep(0.5)
    yield url, workspace
    server.send_signal(signal.SIGINT)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    for job in workspace.glob("jobs/*/job.json"):  # a job left running by a failed test
        pid = json.loads(job.read_text()).get("pid")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError, PermissionError):
            pass
    log.close()


def _shot(page, name: str, tmp_path: Path) -> None:
    folder = Path(SCREENSHOTS or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _wait_for(page, selector: str, text: str, timeout: float = 30_000) -> None:
    sync_api.expect(page.locator(selector)).to_contain_text(text, timeout=timeout)


def _fill(page, elem_id: str, value) -> None:
    """Type ``value`` into a field; None leaves the field as the page has it."""
    if value is not None:
        page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(str(value))


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _run_job(page, start_id: str, status_id: str) -> str:
    """Press a job's start button and wait until its status says how this run ended; returns that text."""
    before = page.locator(f"#{status_id} .dad-status, #{status_id} .dad-progress").first.inner_text()
    page.click(f"#{start_id}")
    page.wait_for_function(
        f"""before => {{ const e = document.querySelector('#{status_id} .dad-status');
                        return e && /done|failed|stopped|lost/.test(e.className) && e.innerText !== before; }}""",
        arg=before.strip(),
        timeout=JOB_TIMEOUT_MS,
    )
    return _text(page, f"#{status_id} .dad-status")


def _upload(page, elem_id: str, files: list[Path]) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files([str(f) for f in files])
    for f in files:  # each upload has landed on the server when the component links to its copy there
        sync_api.expect(page.locator(f'#{elem_id} a[href$="/{f.name}"]')).to_have_count(1, timeout=30_000)


def _paint(page) -> None:
    """Drag the brush across the middle of the image in the editor (it is centred on the canvas)."""
    canvas = page.locator("#paint-editor canvas").first
    sync_api.expect(canvas).to_be_visible()
    page.get_by_role("button", name="Brush").first.click()
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy - 10)
    page.mouse.down()
    for k in range(1, 21):
        page.mouse.move(cx - 40 + 4 * k, cy - 10 + k, steps=2)
    page.mouse.up()


@pytest.mark.slow
def test_the_app_in_a_browser(app_server, synthetic_pill_root, tmp_path):
    url, workspace = app_server
    pill = synthetic_pill_root / "pill"
    defects = sorted((pill / "test" / "crack").glob("*.png"))[:4]
    masks = [
        pill / "ground_truth" / "crack" / f"{p.stem}_mask.png" for p in defects[1:]
    ]  # the first is painted
    good = sorted((pill / "train" / "good").glob("*.png"))
    good_test = sorted((pill / "test" / "good").glob("*.png"))
    data = workspace / "data" / "pill"

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(url)
        sync_api.expect(page.locator("body")).to_contain_text(
            "on this machine only (127.0.0.1)", timeout=30_000
        )

        # 1. Data: uploads, the checks beside each image, a painted mask. Once the page has loaded (the summary
        # shows): loading sets the names from the workspace, over whatever was typed before.
        _wait_for(page, "#data-summary", "part / defect")
        _fill(page, "category", "pill")
        _fill(page, "anomaly", "crack")
        _upload(page, "defect-files", defects)
        _upload(page, "mask-files", masks)
        _upload(page, "normal-train-files", good)
        _upload(page, "normal-test-files", good_test)
        page.click("#add-data")
        _wait_for(page, "#data-summary", "4 defect image(s), 3 ready to train")
        _wait_for(page, "#data-summary", f"{defects[0].name}: no mask yet")
        _wait_for(page, "#data-gallery", f"{defects[0].name}: no mask yet")
        assert sorted(p.name for p in (data / "test" / "crack").iterdir()) == [p.name for p in defects]
        sync_api.expect(page.locator("#paint-image input")).to_have_value(defects[0].name)
        # The editor has its image when the note says so (a stroke made before would be wiped by its arrival).
        _wait_for(page, "#paint-note", f"{defects[0].name}: paint the defect white")
        _paint(page)
        page.click("#save-mask")
        _wait_for(page, "#paint-note", f"mask saved: {defects[0].stem}_mask.png", timeout=120_000)
        _wait_for(page, "#data-summary", "4 defect image(s), 4 ready to train")
        painted = np.asarray(Image.open(data / "ground_truth" / "crack" / f"{defects[0].stem}_mask.png")) > 0
        assert painted.shape == (64, 64) and 10 < painted.sum() < 64 * 64 // 2
        # Removing an image asks first; Cancel keeps it.
        page.click("#remove-image")
        _wait_for(page, "#remove-image-question", f"Delete {defects[0].name} and its mask from the dataset?")
        page.click("#remove-image-cancel")
        sync_api.expect(page.locator("#remove-image-confirm")).to_be_hidden(timeout=30_000)
        assert (data / "test" / "crack" / defects[0].name).is_file()
        _shot(page, "data", tmp_path)

        # 2. Train a few steps on the demo base, on the few-shot split (the first image; the rest are for the study).
        _tab(page, "2. Train")
        _wait_for(page, "#train-estimate", "Estimate: ")
        _fill(page, "train-steps", SIZES["train_steps"])
        split = page.get_by_label(
            "few-shot split: the first third trains, the rest is kept for the Evaluate page"
        )
        sync_api.expect(split).to_be_checked()  # the default: what the study needs
        ended = _run_job(page, "train-start", "train-status")
        assert ended.startswith("done"), ended + (workspace / "jobs" / "train" / "log.txt").read_text()
        adapters = workspace / "adapters" / "pill" / "crack"
        _wait_for(page, "#train-adapters", f"--adapters {adapters}")
        assert json.loads((adapters / "train_config.json").read_text())["train_images"] == [
            str(data / "test" / "crack" / defects[0].name)
        ]
        sync_api.expect(page.locator("#train-loss img")).to_be_visible()
        _shot(page, "train", tmp_path)

        # 3. Generate 4 pairs, see them, reject one by hand, download both zips.
        _tab(page, "3. Generate")
        _fill(page, "gen-pairs", 4)
        _fill(page, "gen-steps", SIZES["sampler_steps"])
        _fill(page, "gen-area", SIZES["max_area"])  # a few training steps leave large masks: keep them all
        ended = _run_job(page, "gen-start", "gen-status")
        assert ended.startswith("done"), ended + (workspace / "jobs" / "generate" / "log.txt").read_text()
        gallery = page.locator("#gen-gallery")
        for k in range(4):
            _wait_for(page, "#gen-gallery", f"0000{k}: ")
        gallery.locator("button.thumbnail-item").first.click()
        sync_api.expect(page.locator("#gen-selected textarea").first).to_have_value("00000", timeout=20_000)
        page.click("#gen-reject")
        _wait_for(page, "#gen-verdict", "00000: rejected by hand")
        _wait_for(page, "#gen-gallery", "00000: rejected by hand")
        _wait_for(page, "#gen-status", "(1 by hand)")  # the status line follows the verdict
        page.locator("#gen-gallery").get_by_role("button", name="Close").first.click()  # back to the grid
        generated = workspace / "generated" / "pill" / "crack"
        assert (generated / "rejected" / "image" / "00000.png").is_file()

        page.click("#gen-zip")
        # The download button appears once the zip is written (long on a loaded 2-core machine).
        sync_api.expect(page.locator("#gen-zip-download")).to_be_visible(timeout=180_000)
        with page.expect_download() as download:
            page.click("#gen-zip-download", timeout=60_000)
        dataset_zip = tmp_path / "dataset.zip"
        download.value.save_as(dataset_zip)
        records = {}
        for line in (generated / "manifest.jsonl").read_text().splitlines():
            records[json.loads(line)["name"]] = json.loads(line)
        with zipfile.ZipFile(dataset_zip) as z:
            names = set(z.namelist())
        assert {"crack/manifest.jsonl", "crack/config.json"} <= names
        for name, record in records.items():
            where = "crack/" if record["kept"] else "crack/rejected/"
            assert {f"{where}{kind}/{name}.png" for kind in ("image", "part", "mask")} <= names
        assert len([n for n in names if n.endswith(".png")]) == 3 * 4
        assert records["00000"]["kept"] is False and records["00000"]["reject_reason"] == "rejected by hand"

        page.click("#gen-export")
        with page.expect_download() as download:
            page.click("#gen-export-download")
        export_zip = tmp_path / "export.zip"
        download.value.save_as(export_zip)
        with zipfile.ZipFile(export_zip) as z:
            names = set(z.namelist())
        kept = sorted(n for n, r in records.items() if r["kept"])
        assert len([n for n in names if n.startswith("pill/test/crack/")]) == len(kept)
        assert len([n for n in names if n.startswith("pill/ground_truth/crack/")]) == len(kept)
        assert len([n for n in names if n.startswith("pill/train/good/")]) == len(good)
        assert len([n for n in names if n.startswith("pill/test/good/")]) == len(good_test)
        assert "pill/export.json" in names
        _shot(page, "generate", tmp_path)

        # A reload finds everything where it was: the state is on disk, not in the page; the names typed on the
        # Data page and the Train page's resolution (0: the base's) included.
        page.reload()
        sync_api.expect(page.locator("#category input, #category textarea").first).to_have_value("pill")
        sync_api.expect(page.locator("#anomaly input, #anomaly textarea").first).to_have_value("crack")
        _tab(page, "2. Train")
        sync_api.expect(page.locator("#train-resolution input")).to_have_value("0")
        _tab(page, "3. Generate")
        _wait_for(page, "#gen-status", "done")
        _wait_for(page, "#gen-gallery", "00000: rejected by hand")
        sync_api.expect(page.locator("#gen-pairs input")).to_have_value("4")  # the fields of the last run

        # 4. Evaluate: the study on the three held-out real defect images, its report in the page.
        _tab(page, "4. Evaluate")
        sync_api.expect(page.locator("#eval-resolution input")).to_have_value("64")  # the images' size
        for field, key in (("eval-epochs", "epochs"), ("eval-samples", "samples"), ("eval-width", "width")):
            value = SIZES[key]
            _fill(page, field, value)
        ended = _run_job(page, "eval-start", "eval-status")
        assert ended.startswith("done"), ended + (workspace / "jobs" / "evaluate" / "log.txt").read_text()
        frame = page.frame_locator("#eval-report iframe")
        sync_api.expect(frame.locator("h1")).to_contain_text(
            "Localization study: pill / crack", timeout=30_000
        )
        sync_api.expect(frame.locator("table").first).to_contain_text("normal images + DualAnoDiff pairs")
        sync_api.expect(frame.locator("body")).to_contain_text("What these numbers mean")
        _shot(page, "evaluate", tmp_path)

        # Start over asks what it deletes, then the page is empty again.
        page.click("#eval-start-over")
        _wait_for(page, "#eval-start-over-question", "Delete the study's detectors and report in")
        page.click("#eval-start-over-yes")
        _wait_for(page, "#eval-message", "deleted the study's detectors and report")
        _wait_for(page, "#eval-status", "Not started yet")
        sync_api.expect(page.locator("#eval-download")).to_be_hidden(timeout=30_000)
        browser.close()

    assert not (workspace / "evaluation" / "pill" / "crack" / "report.html").exists()  # started over
    shutil.rmtree(tmp_path / "screenshots", ignore_errors=True)


def _stroke(page, scale: int, row: int, columns: range, editor: str = "paint-editor") -> None:
    """Drag the brush along image row ``row`` over ``columns`` (image pixels of an image enlarged ``scale``
    times), through the pixels' centres, placed from where the editor draws its canvas (`window.editor`: the
    editor last opened; every editor shows the same square canvas, so the geometry is the same for each)."""
    canvas = page.locator(f"#{editor} canvas").first
    sync_api.expect(canvas).to_be_visible()
    page.locator(f"#{editor}").get_by_role("button", name="Brush").first.click()
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x0, y0, zoom = page.evaluate(
        "() => { const c = window.editor.image_container; return [c.position.x, c.position.y, c.scale.x]; }"
    )

    def at(column: int) -> tuple[float, float]:
        return (box["x"] + x0 + (column + 0.5) * scale * zoom, box["y"] + y0 + (row + 0.5) * scale * zoom)

    page.mouse.move(*at(columns[0]))
    page.mouse.down()
    for column in columns[1:]:
        page.mouse.move(*at(column), steps=2)
    page.mouse.up()


def _choose_image(page, name: str) -> None:
    page.locator("#paint-image input").click()
    page.get_by_role("option", name=name).click()
    _wait_for(page, "#paint-note", f"{name}: paint the defect white")


@pytest.mark.slow
def test_an_existing_mask_keeps_its_place_through_the_paint_editor(app_server, tmp_path):
    """An existing mask opens where it is, an unchanged save changes nothing, and a stroke adds its own pixels
    and nothing else, on a square and a non-square image (it once came back moved by +18 px on a 64 px image)."""
    from dualanodiff.app.handlers import AppHandlers, paint_scale

    url, workspace = app_server
    rng = np.random.default_rng(0)
    uploads, originals = [], {}
    for name, (h, w), box in (
        ("square.png", (64, 64), (10, 20, 5, 15)),
        ("wide.png", (48, 80), (30, 40, 60, 70)),
    ):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
        mask = np.zeros((h, w), bool)
        mask[box[0] : box[1], box[2] : box[3]] = True
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{Path(name).stem}_mask.png")
        uploads.append(name)
        originals[name] = mask
    AppHandlers(workspace).add_uploads(
        "pill", "crack", [str(tmp_path / n) for n in uploads],
        [str(tmp_path / f"{Path(n).stem}_mask.png") for n in uploads], None, None,
    )  # fmt: skip
    masks = workspace / "data" / "pill" / "ground_truth" / "crack"

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        for name, mask in originals.items():
            stored = masks / f"{Path(name).stem}_mask.png"
            _choose_image(page, name)
            page.click("#save-mask")  # unchanged: the file stays as it was
            _wait_for(page, "#paint-note", f"mask saved: {stored.name}", timeout=120_000)
            np.testing.assert_array_equal(np.asarray(Image.open(stored)) > 0, mask)
            _choose_image(page, uploads[1 - uploads.index(name)])  # away and back: a fresh editor value
            _choose_image(page, name)
            row, columns = mask.shape[0] - 6, range(2, mask.shape[1] - 2, 1)
            _stroke(page, paint_scale(mask.shape), row, columns)
            page.click("#save-mask")
            _wait_for(page, "#paint-note", f"mask saved: {stored.name}", timeout=120_000)
            saved = np.asarray(Image.open(stored)) > 0
            page.screenshot(path=str(tmp_path / f"paint-{Path(name).stem}.png"))  # to look at when it fails
            # The brush is one image pixel wide (it scales with the image) and the mouse lands on screen pixels,
            # so the stroke may fall on either side of a pixel row: each of its columns gets a pixel in its row or
            # the next, and nothing lands farther than that from the stroke or off the original mask.
            assert (saved & mask).sum() == mask.sum(), f"{name}: original mask pixels lost (moved?)"
            added = saved & ~mask
            band = np.zeros_like(mask)
            band[row - 1 : row + 2, columns[0] - 1 : columns[-1] + 2] = True
            assert not (added & ~band).any(), (
                f"{name}: {(added & ~band).sum()} pixels added away from the stroke; {added.sum()} added"
            )
            covered = added[row - 1 : row + 2, columns[0] : columns[-1] + 1].any(axis=0)
            assert covered.all(), (
                f"{name}: the stroke left {(~covered).sum()} of {len(columns)} columns unpainted"
            )
        browser.close()


@pytest.mark.slow
def test_a_region_painted_in_the_browser_lands_where_it_was_painted(
    app_server, synthetic_pill_root, tmp_path
):
    """The Generate page's region painter: a stroke on a normal image is stored, at the image's own size, on
    the stroke's row and nowhere else, and the page lists the image as painted."""
    from dualanodiff.app.handlers import AppHandlers, paint_scale

    url, workspace = app_server
    good = sorted((synthetic_pill_root / "pill" / "train" / "good").glob("*.png"))[:2]
    handlers = AppHandlers(workspace)
    handlers.add_uploads("pill", "crack", None, None, [str(g) for g in good], None)
    stored = handlers.workspace.regions_dir(handlers.project) / f"{good[1].stem}.png"

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        _tab(page, "3. Generate")
        page.get_by_label("on my normal images, only where I painted").check()
        page.get_by_text("Paint where defects may go").click()
        page.locator("#region-image input").click()
        page.get_by_role("option", name=good[1].name).click()
        _wait_for(page, "#region-note", f"{good[1].name}: paint where a defect may go")
        row, columns = 40, range(10, 30)
        _stroke(page, paint_scale((64, 64)), row, columns, editor="region-editor")
        page.click("#region-save")
        _wait_for(page, "#region-note", f"region saved: {stored.name}", timeout=120_000)
        _wait_for(page, "#region-list", f"Regions painted on 1 image(s): {good[1].name}")
        page.screenshot(path=str(tmp_path / "region.png"))  # to look at when it fails
        browser.close()
    region = np.asarray(Image.open(stored)) > 0
    assert region.shape == (64, 64)
    band = np.zeros_like(region)
    band[row - 1 : row + 2, columns[0] - 1 : columns[-1] + 2] = True
    assert region.any() and not (region & ~band).any(), f"{(region & ~band).sum()} pixels off the stroke"
    assert region[row - 1 : row + 2, columns[0] : columns[-1] + 1].any(axis=0).all()
