"""The web app's logic without a browser: safe upload names, the data page's checks, background jobs with
their state on disk (stop, resume, a second start refused), keep/reject by hand, the zips, the study's
refusals. The browser tests (test_app_browser.py) drive the same through the page."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualanodiff.app.dataset import add_masks, defect_entries
from dualanodiff.app.fields import GenerateFields, StudyFields, TrainFields
from dualanodiff.app.handlers import PAGE_WAY_OUT, START_OVER, AppHandlers, _shrink
from dualanodiff.app.workspace import Project, path_inside, safe_filename
from dualanodiff.data.generated import manifest_records, read_generated
from dualanodiff.errors import InputError


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("/abs/path/img.PNG", "img.png"),
        (".hidden.png", "hidden.png"),
        ("..", "upload"),
        ("....png", "upload.png"),
        ("a\0b.png", "ab.png"),
        ("défaut été.png", "defaut_ete.png"),
        ("x" * 300 + ".png", "x" * 96 + ".png"),
        ("rm -rf *;.jpg", "rm_-rf_.jpg"),
    ],
)
def test_uploaded_names_are_plain_names(name, expected, tmp_path):
    assert safe_filename(name) == expected
    inside = path_inside(tmp_path, name)
    assert inside.parent == tmp_path.resolve()


def test_an_upload_with_a_hostile_name_lands_inside_the_project(tmp_path):
    project = Project(str(tmp_path / "data"), "part", "defect")
    upload_dir = tmp_path / "uploads" / "a" / "b"
    upload_dir.mkdir(parents=True)
    evil = upload_dir / "..png"  # the browser's name, as Gradio stores it
    Image.new("RGB", (8, 8)).save(evil, format="PNG")
    handlers = AppHandlers(tmp_path / "work")
    handlers.workspace.set_project(project)
    notes = handlers.add_uploads("part", "defect", [str(evil)], None, None, None)
    assert notes == ["added test/defect/upload.png"]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png") if "uploads" not in p.parts)
    assert written == [Path("work/data/part/test/defect/upload.png")]


def _defects(root: Path, n: int = 4) -> list[tuple[Path, Path]]:
    """n synthetic pill/crack images and their masks (64 px)."""
    pairs = []
    for image in sorted((root / "pill" / "test" / "crack").glob("*.png"))[:n]:
        pairs.append((image, root / "pill" / "ground_truth" / "crack" / f"{image.stem}_mask.png"))
    return pairs


def test_data_checks_show_beside_each_image(synthetic_pill_root, tmp_path):
    handlers = AppHandlers(tmp_path / "work")
    (a, a_mask), (b, _), (c, c_mask) = _defects(synthetic_pill_root, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    small = tmp_path / f"{c.stem}_mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(small)
    notes = handlers.add_uploads(
        "pill", "crack", [str(a), str(b), str(c), str(broken)], [str(a_mask), str(small)], None, None
    )
    # A file that does not decode is refused at upload, naming it; it never reaches the dataset.
    assert [n for n in notes if n.startswith("broken.png")] == [
        "broken.png: not added, cannot read image (UnidentifiedImageError: cannot identify image file "
        f"'{broken}')"
    ]
    entries = {e.name: e for e in defect_entries(handlers.project)}
    assert entries[a.name].ok and entries[a.name].mask is not None
    assert entries[b.name].problems == (f"{b.name}: no mask yet (upload {b.stem}_mask.png or paint one)",)
    assert "mask size 32x32 differs from image" in entries[c.name].problems[0]
    assert "broken.png" not in entries
    items, names, summary = handlers.data_overview()
    assert names == sorted(entries) and len(items) == 3
    assert "3 defect image(s), 1 ready to train" in summary
    # The same checks as the command line: training refuses these files before loading anything.
    config = handlers.train_config(
        TrainFields(images="all", max_steps=2, rank=4, batch_size=2, resolution=None, checkpoint_every=0)
    )
    with pytest.raises(InputError, match=r"1 image\(s\) without a mask"):
        handlers.start_training(config)
    # A mask for no image is refused with a reason; one whose stem matches is stored as <stem>_mask.png.
    stray = tmp_path / "nothing_mask.png"
    shutil.copy(a_mask, stray)
    assert add_masks(handlers.project, [str(stray)]) == [
        "nothing_mask.png: no defect image named nothing.* to match it; add the image first"
    ]


def test_painted_mask_is_scaled_back_to_the_image(synthetic_pill_root, tmp_path):
    handlers = AppHandlers(tmp_path / "work")
    ((image, _),) = _defects(synthetic_pill_root, 1)
    handlers.add_uploads("pill", "crack", [str(image)], None, None, None)
    value = handlers.paint_background(image.name)
    big = value["background"]
    assert big.shape[:2] == (512, 512)  # 64 px enlarged 8x for the brush
    layer = np.zeros((512, 512, 4), np.uint8)
    layer[80:160, 240:400] = (255, 255, 255, 255)  # image pixels rows 10-19, columns 30-49
    path = handlers.save_painting(image.name, {"background": big, "layers": [layer], "composite": None})
    saved = np.asarray(Image.open(path)) > 0
    expected = np.zeros((64, 64), bool)
    expected[10:20, 30:50] = True
    np.testing.assert_array_equal(saved, expected)
    with pytest.raises(InputError, match="nothing painted"):
        handlers.save_painting(image.name, {"layers": []})
    with pytest.raises(InputError, match="nothing painted"):  # a cleared layer keeps the saved mask
        handlers.save_painting(image.name, {"layers": [np.zeros_like(layer)]})
    np.testing.assert_array_equal(np.asarray(Image.open(path)) > 0, expected)
    # Reopened, the editor shows the saved mask as the painted layer.
    again = handlers.paint_background(image.name)["layers"][0][..., 3] > 0
    np.testing.assert_array_equal(_shrink(again, (64, 64)), expected)


def test_the_paint_round_trip_is_exact_for_a_non_square_image_and_refuses_a_resized_layer(tmp_path):
    """An existing mask reopens as a layer of exactly the enlarged image's size at its place; saving that
    layer unchanged stores the same mask; a layer of another size (what a canvas of another size sends) is
    refused in one line and the stored mask is left alone."""
    from dualanodiff.app.handlers import PAINT_SIDE, paint_scale, paint_side

    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    mask = np.zeros((48, 80), bool)
    mask[30:40, 60:70] = True
    Image.fromarray(image).save(tmp_path / "wide.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "wide_mask.png")
    handlers = AppHandlers(tmp_path / "work")
    handlers.add_uploads(
        "pill", "crack", [str(tmp_path / "wide.png")], [str(tmp_path / "wide_mask.png")], None, None
    )
    value = handlers.paint_background("wide.png")
    scale = paint_scale((48, 80))
    # One square canvas for every image (the editor keeps its first canvas's bounds), the image at its top left.
    assert scale == 6 and value["background"].shape[:2] == (512, 512) == value["layers"][0].shape[:2]
    assert paint_side((64, 64)) == paint_side((48, 80)) == PAINT_SIDE
    np.testing.assert_array_equal(
        value["background"][:288, :480], np.kron(image, np.ones((6, 6, 1), np.uint8))
    )
    layer = value["layers"][0][..., 3] > 0
    np.testing.assert_array_equal(layer[:288, :480], np.kron(mask, np.ones((6, 6), bool)))
    assert not layer[288:].any() and not layer[:, 480:].any()
    path = handlers.save_painting("wide.png", value)
    np.testing.assert_array_equal(np.asarray(Image.open(path)) > 0, mask)
    stray = {**value, "layers": [value["layers"][0].copy()]}
    stray["layers"][0][400:420, 10:30] = 255  # paint on the grey beyond the image: dropped
    path = handlers.save_painting("wide.png", stray)
    np.testing.assert_array_equal(np.asarray(Image.open(path)) > 0, mask)
    shifted = np.zeros((800, 800, 4), np.uint8)
    shifted[144 : 144 + 512, 144 : 144 + 512] = value["layers"][0]
    with pytest.raises(
        InputError, match=r"^wide.png: the editor sent a 800x800 px painting for a 512x512 px canvas"
    ):
        handlers.save_painting("wide.png", {"background": value["background"], "layers": [shifted]})
    np.testing.assert_array_equal(np.asarray(Image.open(path)) > 0, mask)
    assert paint_scale((700, 1000)) == 1 and paint_scale((20, 600)) == 4


def test_a_painted_region_round_trips_and_chooses_where_placed_pairs_go(synthetic_pill_root, tmp_path):
    """The region painter stores a region at the normal image's own size and reopens it in place; the page's
    "Where the defects go" choice becomes `generate --on-normal/--where`, and each way it cannot work is one
    line naming what to do."""
    handlers = AppHandlers(tmp_path / "work")
    ((image, mask),) = _defects(synthetic_pill_root, 1)
    handlers.add_uploads("pill", "crack", [str(image)], [str(mask)], None, None)
    with pytest.raises(InputError, match="placing defects needs normal images: add some on the Data page"):
        handlers.placement_fields("auto")
    good = sorted((synthetic_pill_root / "pill" / "train" / "good").glob("*.png"))[:2]
    handlers.add_uploads("pill", "crack", None, None, [str(g) for g in good], None)
    assert handlers.normal_names() == [g.name for g in good]
    assert handlers.placement_fields("noise") == {}
    assert handlers.placement_fields("auto") == {
        "on_normal": str(handlers.project.normal_train_dir),
        "where": "auto",
    }
    with pytest.raises(InputError, match="no region painted yet"):
        handlers.placement_fields("painted")
    with pytest.raises(InputError, match="where the defects go: choose one of noise, auto, painted"):
        handlers.placement_fields("anywhere")

    name = good[1].name
    value = handlers.region_background(name)
    assert not (value["layers"][0][..., 3] > 0).any()  # nothing painted yet
    layer = np.zeros_like(value["layers"][0])
    layer[160:240, 80:200] = (255, 255, 255, 255)  # image rows 20-29, columns 10-24 (8x enlarged)
    path = handlers.save_region(name, {"background": value["background"], "layers": [layer]})
    expected = np.zeros((64, 64), bool)
    expected[20:30, 10:25] = True
    np.testing.assert_array_equal(np.asarray(Image.open(path)) > 0, expected)
    assert path == handlers.workspace.regions_dir(handlers.project) / f"{good[1].stem}.png"
    reopened = handlers.region_background(name)["layers"][0]
    np.testing.assert_array_equal(reopened, layer)  # in place, exactly
    assert handlers.painted_regions() == [name]
    fields = handlers.placement_fields("painted")
    assert fields["where"] == str(handlers.workspace.regions_dir(handlers.project))
    config = handlers.generate_config(
        GenerateFields(
            base="demo",
            num_pairs=4,
            scheduler="ddim",
            steps=2,
            max_mask_area=1.0,
            batch_size=4,
            placement="painted",
        )
    )
    assert (config.on_normal, config.where) == (fields["on_normal"], fields["where"])
    # The page's sampler defaults leave sampler, steps and guidance to the adapters' recipe (`--preset adapters`):
    # steps and guidance 0, what the page shows and sends for a number field without a value (Gradio 6).
    assert (GenerateFields().steps, GenerateFields().guidance) == (0, 0)
    plain = handlers.generate_config(GenerateFields(base="demo"))
    assert (plain.scheduler, plain.steps, plain.guidance, plain.preset) == (None, None, None, "adapters")
    with pytest.raises(InputError, match='sampler: choose "the adapters\' own" or one of'):
        handlers.generate_config(GenerateFields(base="demo", scheduler="fast"))
    with pytest.raises(InputError, match="nothing painted; paint where the defect may go first"):
        handlers.save_region(name, {"layers": [np.zeros_like(layer)]})
    with pytest.raises(InputError, match="choose a normal image"):
        handlers.region_background("")
    with pytest.raises(InputError, match="elsewhere.png: no such normal image"):
        handlers.region_background("elsewhere.png")
    handlers.remove_region(name)
    assert handlers.painted_regions() == [] and not path.exists()


@pytest.mark.slow
def test_train_generate_review_download_in_background_jobs(synthetic_pill_root, tmp_path):
    handlers = AppHandlers(tmp_path / "work", threads=1)
    defects = _defects(synthetic_pill_root, 4)
    good = sorted((synthetic_pill_root / "pill" / "train" / "good").glob("*.png"))
    handlers.add_uploads(
        "pill",
        "crack",
        [str(i) for i, _ in defects],
        [str(m) for _, m in defects],
        [str(g) for g in good],
        None,
    )
    config = handlers.train_config(
        TrainFields(max_steps=4, rank=4, batch_size=2, resolution=None, checkpoint_every=2)
    )
    status = handlers.start_training(config)
    assert status.running
    with pytest.raises(InputError, match="a train job is already running"):
        handlers.jobs.start("train", {"config": config.to_dict()}, handlers.workspace.folder)
    status = handlers.jobs.wait("train", timeout=300)
    assert status.state == "done", handlers.jobs.log("train")
    run_dir = Path(status.result["adapters"])
    assert run_dir == handlers.workspace.adapters_dir(handlers.project)
    assert (run_dir / "adapters.safetensors").is_file()
    html, log, where = handlers.training_view()
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "done" in html
    assert f"--adapters {run_dir}" in where
    # A reload shows the fields the job ran with, by name (the demo base as 'demo', not its folder; the
    # resolution as the field's 0, "the base's", not an empty field).
    assert handlers.last_training_fields() == TrainFields(
        max_steps=4, rank=4, batch_size=2, resolution=0, checkpoint_every=2
    )

    # A fresh handler (a page reload, an app restart) reads the same state from disk.
    assert AppHandlers(tmp_path / "work").jobs.status("train").state == "done"

    gen_fields = GenerateFields(num_pairs=4, scheduler="ddim", steps=2, max_mask_area=1.0, batch_size=4)
    gen = handlers.generate_config(gen_fields)
    # The adapters trained on the demo base: the page estimates from the shipped table.
    assert handlers.generation_estimate(gen_fields).startswith("Estimate: under a minute for 4 pairs of 2")
    handlers.start_generation(gen, discard=False)
    # Another tab, or another app on the same folder, sees it running and is refused.
    with pytest.raises(InputError, match="a generate job is already running .* maybe from another tab"):
        AppHandlers(tmp_path / "work").start_generation(gen, discard=False)
    status = handlers.jobs.wait("generate", timeout=300)
    assert status.state == "done", handlers.jobs.log("generate")
    assert status.result["complete"] == 4
    pairs = handlers.generated_pairs()
    assert [p.name for p in pairs] == ["00000", "00001", "00002", "00003"]

    name = next(p.name for p in pairs if p.kept)
    before = handlers.generation_view()
    record = handlers.set_verdict(name, keep=False)
    assert record["kept"] is False and record["reject_reason"] == "rejected by hand"
    # The status line follows a verdict by hand (it once kept the counts of the moment the job ended).
    after = handlers.generation_view()
    assert after != before and "rejected (1 by hand)" in after and handlers.verdict_counts() in after
    folder = handlers.generated_folder()
    assert (folder / "rejected" / "image" / f"{name}.png").is_file()
    assert not (folder / "image" / f"{name}.png").exists()
    assert name not in {p.name for p in read_generated(folder, include_rejected=False)} or not any(
        p.kept for p in handlers.generated_pairs()
    )
    assert manifest_records(folder)[name]["verdict_by_hand"] == "rejected"

    archive = handlers.dataset_zip()
    with zipfile.ZipFile(archive) as z:
        entries = set(z.namelist())
    top = folder.name
    assert f"{top}/manifest.jsonl" in entries and f"{top}/config.json" in entries
    assert f"{top}/rejected/image/{name}.png" in entries and f"{top}/rejected/mask/{name}.png" in entries
    assert not any("/.dualanodiff/" in e for e in entries)
    for pair in handlers.generated_pairs():
        where_ = "" if pair.kept else "rejected/"
        assert {f"{top}/{where_}{k}/{pair.name}.png" for k in ("image", "part", "mask")} <= entries

    # Keeping it again puts it back; the export holds exactly the kept pairs.
    handlers.set_verdict(name, keep=True)
    kept = [p for p in handlers.generated_pairs() if p.kept]
    assert name in {p.name for p in kept}
    zip_path, call = handlers.anomalib_export()
    assert "Folder(" in call and "abnormal_dir=['test/crack']" in call
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    assert len([n for n in names if n.startswith("pill/test/crack/")]) == len(kept)
    assert len([n for n in names if n.startswith("pill/ground_truth/crack/")]) == len(kept)
    assert "pill/export.json" in names and any(n.startswith("pill/train/good/") for n in names)

    # Placed on a normal image, only where painted: outside the allowed area (region plus seam band) each
    # pair is the normal image bit for bit, and the page's fields come back with the choice after a reload.
    normal = handlers.normal_names()[0]
    value = handlers.region_background(normal)
    layer = np.zeros_like(value["layers"][0])
    layer[160:320, 160:320] = (255, 255, 255, 255)  # image rows and columns 20-39
    handlers.save_region(normal, {"background": value["background"], "layers": [layer]})
    placed_fields = GenerateFields(
        num_pairs=2, scheduler="ddim", steps=2, max_mask_area=1.0, batch_size=2, placement="painted"
    )
    placed = handlers.generate_config(placed_fields)
    handlers.start_generation(placed, discard=True)
    status = handlers.jobs.wait("generate", timeout=300)
    assert status.state == "done", handlers.jobs.log("generate")
    assert AppHandlers(tmp_path / "work").last_generation_fields() == replace(placed_fields, base=placed.base)
    pairs = handlers.generated_pairs()
    assert len(pairs) == 2
    source = np.asarray(Image.open(handlers.project.normal_train_dir / normal).convert("RGB"))
    for pair in pairs:
        assert Path(pair.record["normal"]).name == normal
        allowed = np.asarray(Image.open(folder / "region" / f"{pair.name}.png")) > 0
        assert allowed[20:40, 20:40].all() and not allowed[:10].any()
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        np.testing.assert_array_equal(image[~allowed], source[~allowed])


@pytest.mark.slow
def test_stop_keeps_the_work_and_start_resumes(synthetic_pill_root, tmp_path):
    handlers = AppHandlers(tmp_path / "work", threads=1)
    defects = _defects(synthetic_pill_root, 4)
    handlers.add_uploads(
        "pill", "crack", [str(i) for i, _ in defects], [str(m) for _, m in defects], None, None
    )
    config = handlers.train_config(
        TrainFields(max_steps=400, rank=4, batch_size=2, resolution=None, checkpoint_every=5)
    )
    import signal
    import time

    # Started as from a background job (`nohup dualanodiff app &`), which leaves SIGINT ignored in the children:
    # Stop must still stop (it once ran on to the end there).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handlers.start_training(config)
    finally:
        signal.signal(signal.SIGINT, previous)
    run_dir = handlers.workspace.adapters_dir(handlers.project)

    deadline = time.time() + 240
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("step-*")):
        time.sleep(0.5)
    assert list((run_dir / "checkpoints").glob("step-*")), handlers.jobs.log("train")
    handlers.jobs.stop("train")
    status = handlers.jobs.wait("train", timeout=60)
    assert status.state == "stopped" and "start it again to resume" in status.message
    steps = json.loads((run_dir / "train_config.json").read_text())["total_steps"]
    assert steps == 400 and not (run_dir / "adapters.safetensors").exists()
    # Resumed with fewer steps than the checkpoint holds: the library's own refusal, in one line.
    short = handlers.train_config(
        TrainFields(max_steps=2, rank=4, batch_size=2, resolution=None, checkpoint_every=5)
    )
    handlers.start_training(short)
    status = handlers.jobs.wait("train", timeout=120)
    assert status.state == "failed" and "beyond this run's 2 steps" in status.message


def test_each_page_has_one_widget_per_field_of_its_handler(tmp_path):
    """The Train, Generate and Evaluate pages bind their widgets to the handlers' dataclasses by name: a field
    without a widget (it would silently keep its default) or a widget without a field fails here. Each widget
    starts at its field's default, and what an event reads and a reload restores go to the same fields."""
    gr = pytest.importorskip("gradio")
    from dualanodiff.app import ui

    handlers = AppHandlers(tmp_path / "work")
    with gr.Blocks():
        pages = {
            TrainFields: ui._train_tab(handlers),
            GenerateFields: ui._generate_tab(handlers),
            StudyFields: ui._evaluate_tab(handlers),
        }
    for kind, (_, (restore, page), _) in pages.items():
        assert page.kind is kind
        assert sorted(page.widgets) == sorted(f.name for f in fields(kind)), kind.__name__
        assert {n: w.value for n, w in page.widgets.items()} == {
            f.name: getattr(kind(), f.name) for f in fields(kind)
        }
        # Before any job: Train and Generate are left as they are; Evaluate shows the defaults for the data.
        assert restore() == (StudyFields() if kind is StudyFields else None)
        assert page.show(None) == [gr.update()] * len(page.widgets)
        changed = replace(kind(), seed=7)
        assert page.read(page.show(changed)) == changed
    with pytest.raises(ValueError, match="the page's widgets .* are not the fields"):
        ui.PageFields(StudyFields, {"epochs": gr.Number(1)})


def test_the_study_refuses_test_images_the_adapters_trained_on(synthetic_pill_root, tmp_path):
    from dualanodiff.app.evaluation import StudyRequest, check_study

    run = tmp_path / "adapters"
    run.mkdir()
    images = sorted((synthetic_pill_root / "pill" / "test" / "crack").glob("*.png"))
    (run / "train_config.json").write_text(json.dumps({"train_images": [str(p) for p in images]}))
    request = StudyRequest(
        root=str(synthetic_pill_root), category="pill", anomaly="crack", generated=str(tmp_path / "gen"),
        out=str(tmp_path / "eval"), adapters=str(run), epochs=1, samples_per_epoch=4, resolution=64,
    )  # fmt: skip
    with pytest.raises(InputError, match=r"trained on 4 of the 4 held-out test images .*few-shot split"):
        check_study(request)


def test_the_app_says_where_it_listens():
    from dualanodiff.app import serving_note

    assert serving_note("127.0.0.1", 7860) == (
        "Serving on http://127.0.0.1:7860, on this machine only (127.0.0.1); `--host 0.0.0.0` serves other machines."
    )
    note = serving_note("0.0.0.0", 8080)
    assert note.startswith(
        "Serving on 0.0.0.0:8080 (http://127.0.0.1:8080 here): every machine that can reach"
    )
    assert "no login" in note


def test_without_the_extra_the_command_says_what_to_install(monkeypatch, tmp_path, capsys):
    import sys

    from dualanodiff.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    assert main(["app", "--workspace", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err == (
        'dualanodiff app: error: the app needs the [app] extra (gradio): pip install "dualanodiff[app]"\n'
    )


def test_a_stopped_training_promises_a_resume_only_from_a_checkpoint(tmp_path):
    from dualanodiff.app.worker import stopped_message
    from dualanodiff.training import TrainConfig

    config = TrainConfig(
        base="demo", out=str(tmp_path), category="pill", anomaly="crack", checkpoint_every=50
    )
    params = {"config": config.to_dict()}
    assert stopped_message("train", params) == (
        "stopped; no checkpoint was written yet (every 50 steps): starting again begins at step 0"
    )
    (config.output_dir() / "checkpoints" / "step-00000050").mkdir(parents=True)
    assert stopped_message("train", params) == (
        "stopped; start it again to resume from the checkpoint of step 50"
    )


# -- estimates, defaults, start over, messages -------------------------------------------------------------

TABLE = {
    "meta": {"machine": "2-core cpu (x86_64)", "threads": 1},
    "train": {"s_per_step": {"1": 0.15, "2": 0.2, "4": 0.3}, "startup_s": 6.0},
    "generate": {"s_per_pair_step": 0.01, "startup_s": 4.0},
    "detector": {
        "s_per_sample": [
            {"width": 16, "side": 64, "seconds": 0.002},
            {"width": 64, "side": 64, "seconds": 0.02},
            {"width": 16, "side": 128, "seconds": 0.008},
        ],
        "startup_s": 3.0,
    },
}


def test_the_estimates_are_the_measured_costs_times_the_sizes():
    from dualanodiff.app import timings

    # A batch between or beyond the measured ones: the line through the two nearest measurements.
    assert timings.per_size(TABLE["train"]["s_per_step"], 2) == 0.2
    assert timings.per_size(TABLE["train"]["s_per_step"], 3) == pytest.approx(0.25)
    assert timings.per_size(TABLE["train"]["s_per_step"], 8) == pytest.approx(0.5)
    assert timings.per_size({"4": 0.4}, 2) == pytest.approx(0.2)  # one measurement: proportional
    assert timings.training_seconds(TABLE, 750, 2) == pytest.approx(6 + 750 * 0.2)
    assert timings.training_seconds(TABLE, 100, 2, side=128) == pytest.approx(6 + 100 * 0.8)
    assert timings.generation_seconds(TABLE, 16, 20) == pytest.approx(4 + 16 * 20 * 0.01)
    # The nearest measured width and side, scaled by width squared and pixels.
    assert timings.sample_seconds(TABLE, 16, 64) == 0.002
    assert timings.sample_seconds(TABLE, 32, 64) == pytest.approx(
        0.008
    )  # as far from 16 as from 64: the first
    assert timings.sample_seconds(TABLE, 64, 256) == pytest.approx(0.02 * 16)
    assert timings.study_seconds(TABLE, 20, 128, 64, 16) == pytest.approx(3 + 2 * 20 * 128 * 0.002)
    # While running: the job's own pace.
    assert timings.remaining_seconds(25, 100, 50.0) == pytest.approx(150.0)
    assert timings.remaining_seconds(0, 100, 50.0) is None and timings.remaining_seconds(5, None, 9) is None
    log = [{"step": s, "elapsed_s": 10 + 0.5 * s} for s in range(1, 41)]
    assert timings.recent_pace(log) == pytest.approx(0.5) and timings.recent_pace(log[:1]) is None
    line = "U-Net run 1/1:  50%|#####     | 10/20 [00:30<00:30, 3.0s/it]"
    assert timings.study_fraction("detector 2/2: normal images only", line) == pytest.approx(0.75)
    assert timings.study_fraction("detector 1/2: x", "loading") == 0.0
    assert timings.study_fraction("report", "") == 1.0 and timings.study_fraction("starting", "") is None
    words = [timings.duration_words(s) for s in (20, 60, 170, 89 * 60, 2 * 3600, 100 * 3600)]
    assert words == [
        "under a minute", "about 1 minute", "about 3 minutes", "about 89 minutes", "about 2.0 hours",
        "about 4 days",
    ]  # fmt: skip
    assert timings.table_conditions(TABLE) == "a 2-core cpu (x86_64) with one thread"
    busy = {"meta": {**TABLE["meta"], "cores": 2, "load_before": 5.1}}
    assert (
        timings.table_conditions(busy)
        == "a busy 2-core cpu (x86_64) with one thread (load 5.1; idle is faster)"
    )


def test_the_shipped_table_covers_what_the_pages_estimate():
    from dualanodiff.app import timings

    table = timings.read_timings()
    assert table is not None, f"{timings.TIMINGS_FILE}: run python benchmarks/app_timings.py"
    assert set(table["train"]["s_per_step"]) == {"1", "2", "4"}
    assert all(v > 0 for v in table["train"]["s_per_step"].values())
    assert table["generate"]["s_per_pair_step"] > 0
    assert {(r["width"], r["side"]) for r in table["detector"]["s_per_sample"]} >= {(16, 64), (64, 64)}
    assert table["meta"]["threads"] == 1


def test_each_page_says_how_long_its_settings_take_before_it_starts(monkeypatch, tmp_path):
    from dualanodiff.app import timings

    monkeypatch.setattr(timings, "read_timings", lambda path=None: TABLE)
    handlers = AppHandlers(tmp_path / "work", threads=1)
    assert handlers.training_estimate(TrainFields()) == (
        "Estimate: about 3 minutes for 750 steps of 2 pair(s) at 64 px (measured on a 2-core cpu (x86_64) "
        "with one thread)."
    )
    assert handlers.training_estimate(TrainFields(base="runwayml/stable-diffusion-v1-5")).startswith(
        "No measured time for this base here: the time left shows once the first steps have run"
    )
    assert handlers.study_estimate(StudyFields(resolution=64)) == (
        "Estimate: under a minute for two detectors of 20 epochs of 128 samples at 64 px, width 16 (measured "
        "on a 2-core cpu (x86_64) with one thread)."
    )
    assert handlers.default_duration("train") == "about 3 minutes on a 2-core cpu (x86_64) with one thread"
    assert handlers.generation_estimate(GenerateFields()) == ""  # no adapters yet: nothing to estimate
    # Jobs with more threads than the table's one are said to be slower on a small shared CPU.
    assert "`dualanodiff app --threads 1` is faster" in AppHandlers(tmp_path / "w2").training_estimate(
        TrainFields()
    )
    # The table is of the demo base: 'demo', or a folder that carries its sampling recipe (`dualanodiff demo`'s).
    from dualanodiff.demo.config import sampling_recipe

    elsewhere = tmp_path / "demo-run" / "base"
    elsewhere.mkdir(parents=True)
    (elsewhere / "dualanodiff_sampling.json").write_text(json.dumps(sampling_recipe()))
    assert handlers.is_demo_base(str(elsewhere)) and handlers.is_demo_base("demo")
    (elsewhere / "dualanodiff_sampling.json").write_text(json.dumps({**sampling_recipe(), "steps": 50}))
    assert not handlers.is_demo_base(str(elsewhere)) and not handlers.is_demo_base("runwayml/sd15")
    monkeypatch.setattr(timings, "read_timings", lambda path=None: None)
    assert handlers.default_duration("evaluate") == "" and handlers.study_estimate(StudyFields()) == ""


def test_steps_left_empty_come_from_the_recipe_over_the_training_images(synthetic_pill_root, tmp_path):
    from dualanodiff.training import PRESETS

    handlers = AppHandlers(tmp_path / "work")
    defects = _defects(synthetic_pill_root, 6)
    handlers.add_uploads("pill", "crack", [str(i) for i, _ in defects], None, None, None)
    paper = PRESETS["paper"]
    split = TrainFields(max_steps=None, batch_size=None)  # the few-shot third: 2 images, one batch an epoch
    assert handlers.training_steps(split) == paper.epochs
    everything = TrainFields(images="all", max_steps=None, batch_size=4)  # 6 images: 2 batches an epoch
    assert handlers.training_steps(everything) == paper.epochs * 2
    assert handlers.training_steps(TrainFields(max_steps=12)) == 12


def test_the_defaults_are_the_demos_and_the_papers_are_one_click_away(tmp_path):
    from dualanodiff.app.evaluation import StudyRequest
    from dualanodiff.app.fields import paper_study, paper_training, quick_study, quick_training
    from dualanodiff.demo.config import MODES, DemoConfig
    from dualanodiff.evaluate.localization import LocalizationConfig

    demo, full = DemoConfig(), MODES["full"]
    d = TrainFields()
    assert (d.max_steps, d.batch_size, d.learning_rate, d.rank) == (
        full["train_steps"], demo.train_batch_size, demo.train_lr, demo.train_rank
    )  # fmt: skip
    assert d.images == "split"  # what the Evaluate page's study needs
    s = StudyFields()
    assert (s.epochs, s.samples_per_epoch, s.base_channels) == (
        full["loc_epochs"], full["loc_samples_per_epoch"], full["loc_base_channels"]
    )  # fmt: skip
    assert (StudyRequest.epochs, StudyRequest.samples_per_epoch, StudyRequest.base_channels) == (
        s.epochs, s.samples_per_epoch, s.base_channels
    )  # fmt: skip
    mine = TrainFields(base="/models/sd15", images="all", seed=3, max_steps=10)
    paper = paper_training(mine)
    assert (paper.base, paper.images, paper.seed) == ("/models/sd15", "all", 3)
    assert (paper.max_steps, paper.learning_rate, paper.batch_size, paper.rank) == (0, 0, 0, 32)
    # 0 is what the page shows and sends for "the recipe's" (Gradio 6 sends an untouched empty number as 0).
    config = AppHandlers(tmp_path / "work").train_config(paper)
    assert (config.max_steps, config.learning_rate, config.batch_size) == (None, None, None)
    assert quick_training(paper) == replace(TrainFields(), base="/models/sd15", images="all", seed=3)
    study = paper_study(StudyFields(resolution=64, seed=2))
    paper_loc = LocalizationConfig()
    assert (study.epochs, study.samples_per_epoch, study.resolution, study.base_channels, study.seed) == (
        paper_loc.epochs, paper_loc.samples_per_epoch, paper_loc.resolution, paper_loc.base_channels, 2
    )  # fmt: skip
    assert quick_study(replace(study, resolution=64)) == StudyFields(resolution=64, seed=2)


def _fake_job(handlers: AppHandlers, kind: str, params: dict, status: dict | None = None) -> Path:
    """A job's files as a finished (or vanished) worker leaves them, without running one."""
    folder = handlers.jobs.folder(kind)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(
        json.dumps({"kind": kind, "params": params, "started": "2026-01-01T00:00:00+00:00"})
    )
    if status is not None:
        (folder / "status.json").write_text(json.dumps(status))
    return folder


def test_start_over_asks_then_deletes_a_pages_output_and_its_last_run(tmp_path):
    import subprocess
    import sys
    import time

    handlers = AppHandlers(tmp_path / "work")
    project = handlers.project
    outputs = {
        "train": handlers.workspace.adapters_dir(project),
        "generate": handlers.workspace.generated_dir(project),
        "evaluate": handlers.workspace.evaluation_dir(project),
    }
    for kind, folder in outputs.items():
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "file.txt").write_text("x")
        _fake_job(handlers, kind, {}, {"state": "failed", "message": "whatever"})
        question = handlers.start_over_question(kind)
        assert question.startswith(f"Delete {START_OVER[kind]} in {folder}, and this page's last run?")
        assert folder.is_dir()  # asking deletes nothing
        assert handlers.start_over(kind) == f"deleted {START_OVER[kind]} in {folder}"
        assert folder.is_dir() and not any(p.name != ".dualanodiff" for p in folder.iterdir())
        assert handlers.jobs.status(kind).state == "none"
    assert "Not started yet" in handlers.study_view()[0] and "Not started yet" in handlers.generation_view()
    # Refused while the page's job runs (here a process that looks like its worker).
    folder = handlers.jobs.folder("evaluate")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folder)])
    try:
        _fake_job(handlers, "evaluate", {})
        job = json.loads((folder / "job.json").read_text())
        (folder / "job.json").write_text(json.dumps({**job, "pid": sleeper.pid}))
        deadline = time.time() + 10  # until the new process shows its arguments (a busy machine is slow)
        while handlers.jobs.status("evaluate").state != "running" and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(InputError, match="a evaluate job is already running"):
            handlers.start_over_question("evaluate")
        with pytest.raises(InputError, match="a evaluate job is already running"):
            handlers.start_over("evaluate")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_refusal_that_names_a_command_line_way_out_gets_the_pages(tmp_path):
    handlers = AppHandlers(tmp_path / "work")
    message = "last.pt: checkpoint of a different configuration or data set; use another output folder or delete this one to start over"
    _fake_job(handlers, "evaluate", {"out": str(tmp_path / "eval")}, {"state": "failed", "message": message})
    html, report = handlers.study_view()
    assert PAGE_WAY_OUT.replace('"', "&quot;") in html and report is None
    _fake_job(
        handlers,
        "generate",
        {},
        {
            "state": "failed",
            "message": "x: this folder was made with other settings (seed: 0 -> 1); resume with the same settings or choose a new output folder",
        },
    )
    assert PAGE_WAY_OUT.replace('"', "&quot;") in handlers.generation_view()


def test_a_study_of_other_sizes_is_refused_before_it_starts_with_the_way_out(synthetic_pill_root, tmp_path):
    handlers = AppHandlers(tmp_path / "work")
    request = handlers.study_request(StudyFields(epochs=10, resolution=64))
    out = Path(request.out)
    out.mkdir(parents=True)
    (out / "results.md").write_text("an earlier study")
    _fake_job(handlers, "evaluate", replace(request, epochs=20).to_dict(), {"state": "done"})
    with pytest.raises(InputError) as refused:
        handlers.start_study(request)
    assert str(refused.value) == (
        f"{out} holds a study with other settings (epochs 20 -> 10); a study resumes only with its own. "
        f"{PAGE_WAY_OUT} Or put the settings back to run it as it was."
    )


def test_a_lost_training_promises_a_resume_only_from_a_checkpoint(tmp_path):
    from dualanodiff.training import TrainConfig

    handlers = AppHandlers(tmp_path / "work")
    config = TrainConfig(base="demo", out=str(handlers.workspace.adapters_root), category="part",
                         anomaly="defect", checkpoint_every=50)  # fmt: skip
    _fake_job(handlers, "train", {"config": config.to_dict()})  # no status, no process: lost
    html = handlers.training_view()[0]
    assert (
        "lost" in html
        and "no checkpoint was written yet (every 50 steps): starting again begins at step 0" in html
    )
    assert "Everything written so far is kept" not in html
    # The fields come back whole: 0 ("the base's") for a resolution left to the base.
    assert handlers.last_training_fields().resolution == 0


def test_removing_an_image_asks_first_and_names_it(synthetic_pill_root, tmp_path):
    handlers = AppHandlers(tmp_path / "work")
    (image, mask), (other, _) = _defects(synthetic_pill_root, 2)
    handlers.add_uploads("pill", "crack", [str(image), str(other)], [str(mask)], None, None)
    assert handlers.removal_question(image.name) == (
        f"Delete {image.name} and its mask from the dataset? This cannot be undone."
    )
    assert handlers.removal_question(other.name) == (
        f"Delete {other.name} from the dataset? This cannot be undone."
    )
    with pytest.raises(InputError, match="choose the image to remove"):
        handlers.removal_question("")
    assert (handlers.project.defect_dir / image.name).is_file()  # asking removed nothing
    handlers.remove_image(image.name)
    assert not (handlers.project.defect_dir / image.name).exists()
    assert not handlers.project.mask_path(image).exists()


def test_a_reload_shows_the_projects_names_not_those_the_app_started_with(synthetic_pill_root, tmp_path):
    gr = pytest.importorskip("gradio")
    from dualanodiff.app import ui

    handlers = AppHandlers(tmp_path / "work")
    with gr.Blocks():
        on_load, _, outputs = ui._data_tab(handlers)  # built while the project is still part/defect
    handlers.use_uploads("pill", "crack")  # then chosen, in another tab
    category, anomaly, root, *_ = on_load()
    assert (category, anomaly, root) == ("pill", "crack", "")
    assert [o.elem_id for o in outputs[:2]] == ["category", "anomaly"]


def test_the_report_says_what_the_numbers_mean_and_what_the_pairs_did():
    from dualanodiff.app.evaluation import METHODS, metric_meanings, pairs_verdict

    def rows(with_pairs, alone):
        return [
            {"detector trained on": METHODS["dualanodiff"], "AUC-P": with_pairs[0], "AP-P": with_pairs[1]},
            {"detector trained on": METHODS["none"], "AUC-P": alone[0], "AP-P": alone[1]},
        ]

    worse = pairs_verdict(rows((56.8, 3.1), (90.3, 12.0)))
    assert worse.startswith(
        "The generated pairs made the detector worse than normal images alone (AUC-P 56.8 against 90.3 and "
        "AP-P 3.1 against 12.0)."
    )
    assert pairs_verdict(rows((95.0, 20.0), (90.3, 12.0))).startswith(
        "The generated pairs helped the detector"
    )
    assert pairs_verdict(rows((90.5, 12.4), (90.3, 12.0))).startswith("The generated pairs changed little")
    assert pairs_verdict(rows((95.0, 10.0), (90.3, 12.0))).startswith("Mixed: AUC-P 95.0 against 90.3")
    assert pairs_verdict(rows((95.0, 10.0), (90.3, 12.0))[:1]) == ""
    meanings = metric_meanings(4)
    for name in ("AUC-P", "AP-P", "F1-P", "AUC-I, AP-I, F1-I", "AU-PRO", "With 4 real defect images"):
        assert name in meanings
