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
from dualanodiff.app.handlers import AppHandlers, _shrink
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
        TrainFields(max_steps=2, rank=4, batch_size=2, resolution=None, checkpoint_every=0)
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
    # The page's sampler defaults leave sampler, steps and guidance to the adapters' recipe (`--preset adapters`).
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
    # A reload shows the fields the job ran with, by name (the demo base as 'demo', not its folder).
    assert handlers.last_training_fields() == TrainFields(
        max_steps=4, rank=4, batch_size=2, resolution=None, checkpoint_every=2
    )

    # A fresh handler (a page reload, an app restart) reads the same state from disk.
    assert AppHandlers(tmp_path / "work").jobs.status("train").state == "done"

    gen = handlers.generate_config(
        GenerateFields(num_pairs=4, scheduler="ddim", steps=2, max_mask_area=1.0, batch_size=4)
    )
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
    record = handlers.set_verdict(name, keep=False)
    assert record["kept"] is False and record["reject_reason"] == "rejected by hand"
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
    for kind, (_, (restore, page)) in pages.items():
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
        "stopped before the first checkpoint (every 50 steps): starting again begins at step 0"
    )
    (config.output_dir() / "checkpoints" / "step-00000050").mkdir(parents=True)
    assert stopped_message("train", params) == (
        "stopped; start it again to resume from the checkpoint of step 50"
    )
