"""The Gradio page: four tabs (Data, Train, Generate, Evaluate) over `AppHandlers`.

Nothing here computes anything: each event calls a handler and shows its result, or the one-line
`InputError` it raised, next to the control that caused it. A timer reads the jobs' state from disk every
second, so a reload or a second tab shows the same progress.
"""

from __future__ import annotations

import dataclasses
import functools
import html
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import gradio as gr

from ..errors import InputError
from ..generate import SCHEDULERS
from ..report import loss_curve_png
from ..training import PRESETS
from .evaluation import metric_meanings
from .fields import (
    ADAPTERS_SAMPLER,
    GenerateFields,
    StudyFields,
    TrainFields,
    paper_study,
    paper_training,
    quick_study,
    quick_training,
)
from .gallery import triple_image, verdict
from .handlers import BRUSH_FRACTION, PAINT_CANVAS, PAINT_SIDE, PLACEMENTS, AppHandlers

POLL_SECONDS = 1.0
# The Generate page's sampler choices, in words (the command line's names in the field's small print).
SAMPLER_NAMES = {
    ADAPTERS_SAMPLER: "the adapters' own (recommended)",
    "pndm": "PNDM (the paper's)",
    "ddim": "DDIM",
    "dpm++": "DPM-Solver++ (few steps)",
    "unipc": "UniPC (few steps)",
    "euler": "Euler",
}
CSS = """
.dad-status, .dad-progress { min-height: 1.6em; }
.dad-progress progress { width: 100%; height: 1.1em; }
.dad-error { color: #c62828; }
.dad-estimate { color: #555; font-size: .9em; }
#gen-gallery .thumbnail-item { aspect-ratio: 5 / 2; }  /* a triple is 3:1 (Gradio's tiles are square) */
"""


def _error(err: Exception) -> str:
    return f'<div class="dad-error">{html.escape(str(err))}</div>'


def _note(text: str) -> str:
    return f'<div class="dad-note">{html.escape(text)}</div>'


def _guard(fn: Callable[..., str]) -> Callable[..., str]:
    """Run an action; an InputError becomes its message in red instead of a Gradio error popup."""

    def run(*args):
        try:
            return fn(*args)
        except InputError as err:
            return _error(err)

    return run


def _estimate(text: str) -> str:
    return f'<div class="dad-estimate">{html.escape(text)}</div>' if text else ""


def _confirmation(elem_id: str, yes: str) -> tuple[gr.Row, gr.HTML, gr.Button, gr.Button]:
    """A hidden row that asks before something is deleted: (row, question, yes button, cancel button)."""
    with gr.Row(visible=False, elem_id=f"{elem_id}-confirm") as row:
        question = gr.HTML(elem_id=f"{elem_id}-question")
        agree = gr.Button(yes, variant="stop", scale=0, elem_id=f"{elem_id}-yes")
        cancel = gr.Button("Cancel", scale=0, elem_id=f"{elem_id}-cancel")
    cancel.click(lambda: gr.update(visible=False), None, row)
    return row, question, agree, cancel


def _ask(question: Callable[[], str]) -> tuple[Any, str, str]:
    """(the confirmation row's visibility, its question, the page's note): the row shown with ``question()``,
    or kept hidden and the note saying why it cannot be asked (a running job, no image chosen)."""
    try:
        return gr.update(visible=True), _note(question()), ""
    except InputError as err:
        return gr.update(visible=False), "", _error(err)


def _start_over(h: AppHandlers, kind: str, button: gr.Button, message: gr.HTML) -> None:
    """Wire a page's "Start over" button: ask what it deletes, then delete it on "Yes" (`start_over`); the
    page's poll then shows it empty."""
    row, question, agree, _ = _confirmation(str(button.elem_id), "Yes, delete it")
    button.click(lambda: _ask(lambda: h.start_over_question(kind)), None, [row, question, message])

    def confirmed():
        try:
            return gr.update(visible=False), _note(h.start_over(kind))
        except InputError as err:
            return gr.update(visible=False), _error(err)

    agree.click(confirmed, None, [row, message])


def _send(seen: dict[str, Any], name: str, key: Any, make: Callable[[], Any]) -> Any:
    """What a poll sends to one output: ``make()`` when ``key`` changed since this page's last poll (``seen``
    is the page's state in this browser tab), else nothing, so an idle page costs neither side any work."""
    if name in seen and seen[name] == key:
        return gr.update()
    seen[name] = key
    return make()


F = TypeVar("F")


class PageFields(Generic[F]):
    """A page's settings: each field of the dataclass ``kind`` (`TrainFields`, ...) bound to the widget of the
    same name. An event takes `components` as its inputs and `read` makes the dataclass of their values, and
    `show` gives a dataclass's values to those widgets, so neither can be out of order with the handler. A
    field without its widget, or a widget without its field, is refused when the page is built."""

    def __init__(self, kind: type[F], widgets: dict[str, gr.components.Component]):
        names = [f.name for f in dataclasses.fields(kind)]  # type: ignore[arg-type]
        if sorted(widgets) != sorted(names):
            raise ValueError(
                f"{kind.__name__}: the page's widgets {sorted(widgets)} are not the fields {sorted(names)}"
            )
        self.kind = kind
        self.widgets = widgets

    @property
    def components(self) -> list[gr.components.Component]:
        return list(self.widgets.values())

    def read(self, values: Sequence[Any]) -> F:
        """The dataclass of the values of `components` (an event's inputs, in that order)."""
        return self.kind(**dict(zip(self.widgets, values, strict=True)))

    def show(self, fields: F | None) -> list[Any]:
        """What an event with `components` as its outputs sends: ``fields``' values, or nothing when None."""
        if fields is None:
            return [gr.update()] * len(self.widgets)
        return [getattr(fields, name) for name in self.widgets]


def _restore(last_fields: Callable[[], Any], fields: PageFields) -> list[Any]:
    """A page's fields as its last job had them, or left as they are when there was none."""
    return fields.show(last_fields())


def build_app(handlers: AppHandlers, banner: str = "") -> gr.Blocks:
    h = handlers
    with gr.Blocks(title="dualanodiff") as app:
        gr.Markdown(
            "# dualanodiff: few defect images in, a checked synthetic dataset out\n"
            f"Working folder `{h.workspace.folder}`. {banner}"
        )
        with gr.Tabs():
            with gr.Tab("1. Data", id="data"):
                data_view = _data_tab(h)
            pages = []
            with gr.Tab("2. Train", id="train"):
                pages.append(_train_tab(h))
            with gr.Tab("3. Generate", id="generate"):
                pages.append(_generate_tab(h))
            with gr.Tab("4. Evaluate", id="evaluate"):
                pages.append(_evaluate_tab(h))
        timer = gr.Timer(POLL_SECONDS)
        app.load(*data_view)
        for poll, (last_fields, fields), estimate in pages:
            timer.tick(*poll, show_progress="hidden")
            app.load(*poll)
            # After a reload the fields show what the last job ran with, not the defaults, and the estimate
            # what those fields would take.
            restored = app.load(functools.partial(_restore, last_fields, fields), None, fields.components)
            restored.then(*estimate)
    return app


# -- data ----------------------------------------------------------------------------------------------------


def _paint_editor(label: str, elem_id: str) -> gr.ImageEditor:
    """A white brush over an image shown by `paint_canvas` (a mask, or a target region)."""
    return gr.ImageEditor(
        label=label,
        type="numpy",
        image_mode="RGBA",
        # Images are enlarged to about PAINT_SIDE, so a fixed brush scales with the image: 1/64 of its side,
        # one pixel of a 64 px image. (Changing the brush per image with gr.update left the editor unable to
        # paint in Gradio 6.)
        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=PAINT_SIDE // BRUSH_FRACTION),
        eraser=gr.Eraser(default_size=PAINT_SIDE // BRUSH_FRACTION),
        layers=False,
        canvas_size=(PAINT_CANVAS, PAINT_CANVAS),  # see PAINT_CANVAS: the layer lands at the origin
        transforms=(),
        sources=(),
        elem_id=elem_id,
    )


def _data_tab(h: AppHandlers):
    project = h.project
    gr.Markdown(
        "Give a few images of one defect type, each with a mask (white where the defect is). Upload the masks, "
        "or paint them below. Every image is checked as `dualanodiff train` checks it; problems show beside it."
    )
    with gr.Row():
        category = gr.Textbox(
            project.category, label="Category (the part, e.g. hazelnut)", elem_id="category"
        )
        anomaly = gr.Textbox(project.anomaly, label="Defect type (e.g. crack)", elem_id="anomaly")
    with gr.Row():
        defects = gr.File(file_count="multiple", label="Defect images", elem_id="defect-files")
        masks = gr.File(
            file_count="multiple", label="Masks: <name>.png or <name>_mask.png", elem_id="mask-files"
        )
    with gr.Row():
        normal_train = gr.File(
            file_count="multiple",
            label="Normal images (defect-free; to place defects on, for the anomalib export and the study)",
            elem_id="normal-train-files",
        )
        normal_test = gr.File(
            file_count="multiple", label="Normal test images (for the study)", elem_id="normal-test-files"
        )
    add = gr.Button("Add to the dataset", variant="primary", elem_id="add-data")
    notes = gr.HTML(elem_id="data-notes")
    with gr.Accordion("Or use an MVTec AD folder on this machine", open=not project.uploaded):
        with gr.Row():
            root = gr.Textbox(project.root if not project.uploaded else "", label="MVTec AD root folder")
            look = gr.Button("Look", scale=0)
        with gr.Row():
            mv_category = gr.Dropdown([], label="Category")
            mv_anomaly = gr.Dropdown([], label="Defect type")
            use = gr.Button("Use this data", scale=0)
    summary = gr.Markdown(elem_id="data-summary")
    gallery = gr.Gallery(
        label="Defect images (mask in red)", columns=6, height="auto", format="png", elem_id="data-gallery"
    )
    with gr.Accordion("Paint a mask", open=True):
        with gr.Row():
            chosen = gr.Dropdown([], label="Image", elem_id="paint-image")
        editor = _paint_editor("Paint the defect white; the eraser removes paint", "paint-editor")
        with gr.Row():
            save = gr.Button("Save mask", variant="primary", elem_id="save-mask")
            remove = gr.Button("Remove this image…", variant="stop", elem_id="remove-image")
        remove_row, remove_question, remove_yes, _ = _confirmation("remove-image", "Yes, remove it")
        paint_note = gr.HTML(elem_id="paint-note")

    def overview():
        items, names, text = h.data_overview()
        return items, text, gr.update(choices=names, value=names[0] if names else None)

    def on_load():
        """The whole page from disk: the project's names (the boxes were filled when the app started, maybe
        before another tab chose other data), the MVTec folder, and the images."""
        p = h.project
        return (p.category, p.anomaly, "" if p.uploaded else p.root, *overview())

    def add_files(cat, kind, d, m, nt, nte):
        try:
            lines = h.add_uploads(cat, kind, d, m, nt, nte)
            message = "".join(_note(line) for line in lines) or _note("nothing to add: choose files first")
        except InputError as err:
            message = _error(err)
        return (message, None, None, None, None, *overview())

    views = [gallery, summary, chosen]
    add.click(
        add_files,
        [category, anomaly, defects, masks, normal_train, normal_test],
        [notes, defects, masks, normal_train, normal_test, *views],
    )

    def look_up(folder, cat):
        try:
            cats, types = h.mvtec_choices(folder, cat)
            return gr.update(choices=cats, value=cat if cat in cats else None), gr.update(choices=types), ""
        except InputError as err:
            return gr.update(choices=[]), gr.update(choices=[]), _error(err)

    look.click(look_up, [root, mv_category], [mv_category, mv_anomaly, notes])
    mv_category.change(look_up, [root, mv_category], [mv_category, mv_anomaly, notes])

    def use_folder(folder, cat, kind):
        try:
            p = h.use_mvtec(folder, cat, kind)
            return (_note(f"using {p.root}: {p.category} / {p.anomaly} (read only)"), *overview())
        except InputError as err:
            return (_error(err), *overview())

    use.click(use_folder, [root, mv_category, mv_anomaly], [notes, *views])

    def open_editor(name):
        if not name:
            return None, ""
        try:
            return h.paint_background(name), _note(f"{name}: paint the defect white, then save the mask")
        except InputError as err:
            return None, _error(err)

    chosen.change(open_editor, chosen, [editor, paint_note])

    def save_mask(name, value):
        try:
            path = h.save_painting(name, value)
            return (_note(f"mask saved: {path.name}"), *overview()[:2])
        except InputError as err:
            return (_error(err), *overview()[:2])

    save.click(save_mask, [chosen, editor], [paint_note, gallery, summary])

    ask_removal = [remove_row, remove_question, paint_note]
    remove.click(lambda name: _ask(lambda: h.removal_question(name)), chosen, ask_removal)

    def remove_image(name):
        try:
            h.remove_image(name)
            return (gr.update(visible=False), _note(f"removed {name}"), *overview())
        except InputError as err:
            return (gr.update(visible=False), _error(err), *overview())

    remove_yes.click(remove_image, chosen, [remove_row, paint_note, *views])
    # Another image chosen: a question about the previous one must not stay open.
    chosen.change(lambda: gr.update(visible=False), None, remove_row)
    return on_load, None, [category, anomaly, root, *views]


# -- train ---------------------------------------------------------------------------------------------------


def _estimated(estimate: Callable[[Any], str], fields: PageFields, output: gr.HTML):
    """The event that shows a page's estimate for its fields (on any field's change, and after a reload)."""

    def show(*values):
        try:
            return _estimate(estimate(fields.read(values)))
        except (InputError, TypeError, ValueError):
            return ""

    return show, fields.components, output


def _presets(fields: PageFields, quick: Callable[[Any], Any], paper: Callable[[Any], Any], page: str) -> None:
    """Two buttons that fill a page's sizes: the defaults (a CPU's minutes) or the paper's (a GPU's hours),
    keeping what is not a size (`fields.quick_training` and friends)."""
    with gr.Row():
        to_quick = gr.Button("Quick settings (CPU, minutes)", size="sm", scale=0, elem_id=f"{page}-quick")
        to_paper = gr.Button("Paper's settings (GPU, hours)", size="sm", scale=0, elem_id=f"{page}-paper")
    to_quick.click(lambda *v: fields.show(quick(fields.read(v))), fields.components, fields.components)
    to_paper.click(lambda *v: fields.show(paper(fields.read(v))), fields.components, fields.components)


def _train_tab(h: AppHandlers):
    stated = h.default_duration("train")
    gr.Markdown(
        "Teach the model your defect: small add-on weights (*adapters*) learn to draw a whole image and the "
        "defect alone side by side, so every generated defect comes with its mask. The built-in demo base runs "
        "offline on a CPU" + (f" (the defaults: {stated})" if stated else "") + "; for real photos give a "
        "Stable Diffusion 1.5 folder or hub id, on a GPU machine. The adapters land where `dualanodiff "
        "generate --adapters` reads them."
    )
    d = TrainFields()  # the page's defaults
    w: dict[str, gr.components.Component] = {}  # the widget of each field, by the field's name
    with gr.Row():
        w["base"] = gr.Textbox(
            d.base,
            label="Base model",
            info="--base: 'demo', the built-in small model (CPU, offline), or a Stable Diffusion 1.5 folder or "
            "hub id (GPU)",
            elem_id="train-base",
        )
        w["images"] = gr.Radio(
            [
                ("few-shot split: the first third trains, the rest is kept for the Evaluate page", "split"),
                ("all defect images (the Evaluate page then has no unseen defect to test on)", "all"),
            ],
            value=d.images,
            label="Training images",
            info="--split; the study on the Evaluate page needs the split: it tests on defects training never saw",
            elem_id="train-images",
        )
    with gr.Row():
        w["preset"] = gr.Dropdown(
            list(PRESETS),
            value=d.preset,
            label="Recipe",
            info="--preset: fills the fields left at 0 (the paper's, or the authors' code's)",
        )
        w["max_steps"] = gr.Number(
            d.max_steps,
            label="Training steps",
            info="--max-steps; 0: the recipe's length"
            + (f". {int(d.max_steps)} steps: {stated}" if stated else ""),
            elem_id="train-steps",
        )
        w["learning_rate"] = gr.Number(d.learning_rate, label="Learning rate", info="--lr; 0: the recipe's")
        w["rank"] = gr.Number(
            d.rank,
            label="Adapter size",
            info="--rank (LoRA rank): larger learns finer detail, trains slower",
            precision=0,
        )
    with gr.Row():
        w["batch_size"] = gr.Number(
            d.batch_size, label="Image pairs per step", info="--batch-size; 0: the recipe's", precision=0
        )
        w["resolution"] = gr.Number(
            d.resolution,
            label="Image size (px)",
            info="--resolution; 0: the base's own (64 for the demo base, 512 for SD 1.5)",
            precision=0,
            elem_id="train-resolution",
        )
        w["seed"] = gr.Number(d.seed, label="Random seed", info="--seed", precision=0)
        w["checkpoint_every"] = gr.Number(
            d.checkpoint_every,
            label="Save progress every (steps)",
            info="--checkpoint-every: a stopped run resumes from the last save",
            precision=0,
        )
        w["mixed_precision"] = gr.Dropdown(
            [("full (CPU)", "no"), ("bf16 (GPU)", "bf16"), ("fp16 (older GPU)", "fp16")],
            value=d.mixed_precision,
            label="Number precision",
            info="--mixed-precision",
        )
    fields = PageFields(TrainFields, w)
    _presets(fields, quick_training, paper_training, "train")
    with gr.Row():
        start = gr.Button("Start / resume training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        restart = gr.Button("Start over…", elem_id="train-start-over")
    estimate = gr.HTML(_estimate(h.training_estimate(d)), elem_id="train-estimate")
    message = gr.HTML(elem_id="train-message")
    _start_over(h, "train", restart, message)
    status = gr.HTML(elem_id="train-status")
    with gr.Row():
        plot = gr.Image(
            label="Training loss", show_label=False, type="pil", interactive=False, elem_id="train-loss"
        )
        where = gr.Markdown(elem_id="train-adapters")
    show_estimate = _estimated(h.training_estimate, fields, estimate)
    gr.on([c.change for c in fields.components], *show_estimate, show_progress="hidden")

    @_guard
    def start_training(*values):
        config = h.train_config(fields.read(values))
        h.start_training(config)
        return _note("training started")

    start.click(start_training, fields.components, message)

    def stop_training():
        h.jobs.stop("train")
        return _note("stop sent: the run ends after the current step (press again to kill it)")

    stop.click(stop_training, None, message)

    seen = gr.State({})

    def refresh(last):
        html_status, log, adapters = h.training_view()

        def curve():
            steps_, losses = [r["step"] for r in log], [r["loss"] for r in log]
            title = "training loss per step (lower is better)"
            return loss_curve_png(steps_, losses, title=title) if len(log) >= 2 else None

        return (
            _send(last, "status", html_status, lambda: html_status),
            _send(last, "plot", (len(log), log[-1]["loss"] if log else None), curve),
            _send(last, "where", adapters, lambda: adapters),
            last,
        )

    poll = (refresh, seen, [status, plot, where, seen])
    return poll, (h.last_training_fields, fields), show_estimate


# -- generate ------------------------------------------------------------------------------------------------


def _generate_tab(h: AppHandlers):
    stated = h.default_duration("generate")
    gr.Markdown(
        "Generate pairs with the trained adapters: each a whole image, the defect alone, and its mask"
        + (f" ({int(GenerateFields().num_pairs)} pairs with the demo base: {stated})" if stated else "")
        + ". Pairs whose mask is empty or too large are rejected automatically; click a pair to keep or reject "
        "it by hand. Download the dataset in the generated-data layout (`image/`, `part/`, `mask/`, "
        "`rejected/`, `manifest.jsonl`), or exported for anomalib, COCO or YOLO."
    )
    d = GenerateFields()  # the page's defaults
    w: dict[str, gr.components.Component] = {}  # the widget of each field, by the field's name
    with gr.Row():
        w["adapters"] = gr.Textbox(
            d.adapters,
            label="Adapters folder",
            info="--adapters; empty: this project's",
            elem_id="gen-adapters",
        )
        w["base"] = gr.Textbox(
            d.base,
            label="Base model",
            info="--base; empty: the one the adapters trained on",
            elem_id="gen-base",
        )
    with gr.Row():
        w["num_pairs"] = gr.Number(
            d.num_pairs, label="Pairs to generate", info="--num-pairs", precision=0, elem_id="gen-pairs"
        )
        w["seed"] = gr.Number(d.seed, label="Random seed", info="--seed; pair i uses seed + i", precision=0)
        w["scheduler"] = gr.Dropdown(
            [(SAMPLER_NAMES.get(key, key), key) for key in (ADAPTERS_SAMPLER, *SCHEDULERS)],
            value=d.scheduler,
            label="Sampler",
            info="--scheduler: how a picture is drawn out of noise",
        )
        w["steps"] = gr.Number(
            d.steps,
            label="Sampler steps",
            info="--steps; 0: the adapters' own (the demo base's 20), else the paper's 50",
            precision=0,
            elem_id="gen-steps",
        )
        w["guidance"] = gr.Number(
            d.guidance, label="Prompt strength", info="--guidance; 0: the adapters' own"
        )
        w["max_mask_area"] = gr.Number(
            d.max_mask_area,
            label="Largest defect kept (share of the image)",
            info="--max-area: a pair whose mask covers more is rejected",
            elem_id="gen-area",
        )
        w["batch_size"] = gr.Number(
            d.batch_size,
            label="Pairs drawn at once",
            info="--batch-size: more is faster, takes more memory",
            precision=0,
        )
    w["placement"] = gr.Radio(
        [(label, key) for key, label in PLACEMENTS.items()],
        value=d.placement,
        label="Where the defects go",
        info="--on-normal, --where. On your normal images the background stays the real image, pixel for "
        "pixel, outside the region and a narrow seam; the mask lies inside the region.",
        elem_id="gen-placement",
    )
    fields = PageFields(GenerateFields, w)
    with gr.Accordion('Paint where defects may go (for "only where I painted")', open=False):
        with gr.Row():
            region_image = gr.Dropdown(
                h.normal_names(), value=None, label="Normal image", elem_id="region-image"
            )
            region_list = gr.Markdown(elem_id="region-list")
        region_editor = _paint_editor("Paint the area a defect may take, white", "region-editor")
        with gr.Row():
            save_region = gr.Button("Save region", variant="primary", elem_id="region-save")
            clear_region = gr.Button("Remove this region", elem_id="region-remove")
        region_note = gr.HTML(elem_id="region-note")
    with gr.Row():
        start = gr.Button("Generate", variant="primary", elem_id="gen-start")
        stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
        restart = gr.Button("Start over…", elem_id="gen-start-over")
    estimate = gr.HTML(elem_id="gen-estimate")
    message = gr.HTML(elem_id="gen-message")
    _start_over(h, "generate", restart, message)
    show_estimate = _estimated(h.generation_estimate, fields, estimate)
    gr.on([c.change for c in fields.components], *show_estimate, show_progress="hidden")
    status = gr.HTML(elem_id="gen-status")
    gallery = gr.Gallery(
        label="Pairs: whole image | anomaly part | mask overlay",
        columns=2,
        height="auto",
        object_fit="contain",  # with the CSS's 5:2 tiles, the whole triple, a little room for its caption
        format="png",
        elem_id="gen-gallery",
    )
    names = gr.State([])
    seen = gr.State({})
    with gr.Row():
        selected = gr.Textbox("", label="Selected pair", interactive=False, elem_id="gen-selected")
        keep = gr.Button("Keep", elem_id="gen-keep")
        reject = gr.Button("Reject", elem_id="gen-reject")
    verdict_note = gr.HTML(elem_id="gen-verdict")
    with gr.Row():
        make_zip = gr.Button("Prepare the dataset zip", elem_id="gen-zip")
        zip_file = gr.DownloadButton("Download the dataset zip", visible=False, elem_id="gen-zip-download")
        make_export = gr.Button("Export for anomalib", elem_id="gen-export")
        export_file = gr.DownloadButton(
            "Download the anomalib export", visible=False, elem_id="gen-export-download"
        )
    with gr.Row():  # supervised detectors: COCO (torchvision, Detectron2, MMDetection), Ultralytics YOLO
        make_coco = gr.Button("Export for COCO", elem_id="gen-export-coco")
        make_yolo = gr.Button("Export for YOLO", elem_id="gen-export-yolo")
        training_file = gr.DownloadButton(
            "Download the export", visible=False, elem_id="gen-training-download"
        )
    download_note = gr.HTML(elem_id="gen-download-note")
    folder_call = gr.Code(language="python", label="Load the export with anomalib", visible=False)
    training_call = gr.Code(label="Train on the export (run beside the unzipped folder)", visible=False)

    @_guard
    def start_generation(*values):
        h.start_generation(h.generate_config(fields.read(values)), discard=False)
        return _note("generation started")

    start.click(start_generation, fields.components, message)

    def regions_listed() -> str:
        painted = h.painted_regions()
        if not painted:
            return "No region painted yet."
        return f"Regions painted on {len(painted)} image(s): " + ", ".join(painted)

    def normals_listed(current):
        names = h.normal_names()
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=value), regions_listed()

    region_image.focus(normals_listed, region_image, [region_image, region_list])

    def open_region(name):
        if not name:
            return None, ""
        try:
            return h.region_background(name), _note(f"{name}: paint where a defect may go, then save")
        except InputError as err:
            return None, _error(err)

    region_image.change(open_region, region_image, [region_editor, region_note])

    def store_region(name, value):
        try:
            path = h.save_region(name, value)
            return _note(f"region saved: {path.name}"), regions_listed()
        except InputError as err:
            return _error(err), regions_listed()

    save_region.click(store_region, [region_image, region_editor], [region_note, region_list])

    def drop_region(name):
        try:
            h.remove_region(name)
            return None, _note(f"{name}: region removed"), regions_listed()
        except InputError as err:
            return gr.update(), _error(err), regions_listed()

    clear_region.click(drop_region, region_image, [region_editor, region_note, region_list])

    def stop_generation():
        h.jobs.stop("generate")
        return _note("stop sent (press again to kill it)")

    stop.click(stop_generation, None, message)

    def gallery_items(last: dict[str, Any]):
        """(gallery, pair names): rebuilt only when the folder's manifest changed."""

        def build():
            found = h.generated_pairs()
            return [(triple_image(p), f"{p.name}: {verdict(p)}") for p in found], [p.name for p in found]

        update = _send(last, "gallery", h.generated_signature(), build)
        return (*update, last) if isinstance(update, tuple) else (update, gr.update(), last)

    def refresh(last):
        html_status = h.generation_view()
        return (_send(last, "status", html_status, lambda: html_status), *gallery_items(last))

    def select(evt: gr.SelectData, listed):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        return listed[index] if 0 <= index < len(listed) else ""

    gallery.select(select, names, selected)

    def judge(name, keep_it, last):
        try:
            record = h.set_verdict(name, keep_it)
            note = _note(f"{name}: {'kept' if record['kept'] else 'rejected'} by hand")
        except InputError as err:
            note = _error(err)
        return (note, *gallery_items(last))

    keep.click(lambda n, s: judge(n, True, s), [selected, seen], [verdict_note, gallery, names, seen])
    reject.click(lambda n, s: judge(n, False, s), [selected, seen], [verdict_note, gallery, names, seen])

    def prepare_zip():
        try:
            path = h.dataset_zip()
            return gr.update(value=str(path), visible=True), _note(f"ready: {path.name}")
        except InputError as err:
            return gr.update(visible=False), _error(err)

    make_zip.click(prepare_zip, None, [zip_file, download_note])

    def prepare_export():
        try:
            path, call = h.anomalib_export()
            return (
                gr.update(value=str(path), visible=True),
                gr.update(value=call, visible=True),
                _note(f"ready: {path.name}"),
            )
        except InputError as err:
            return gr.update(visible=False), gr.update(visible=False), _error(err)

    make_export.click(prepare_export, None, [export_file, folder_call, download_note])

    def prepare_training_export(fmt: str):
        try:
            path, call = h.training_export(fmt)
            shown = gr.update(value=call, visible=True)
            return gr.update(value=str(path), visible=True), shown, _note(f"ready: {path.name}")
        except InputError as err:
            return gr.update(visible=False), gr.update(visible=False), _error(err)

    training_outputs = [training_file, training_call, download_note]
    make_coco.click(lambda: prepare_training_export("coco"), None, training_outputs)
    make_yolo.click(lambda: prepare_training_export("yolo"), None, training_outputs)
    poll = (refresh, seen, [status, gallery, names, seen])
    return poll, (h.last_generation_fields, fields), show_estimate


# -- evaluate ------------------------------------------------------------------------------------------------


def _evaluate_tab(h: AppHandlers):
    stated = h.default_duration("evaluate")
    gr.Markdown(
        "The quick localization study: a defect detector (DRAEM's U-Net) trained on your normal images plus the "
        "kept generated pairs, and one on the normal images alone, both tested on the real defect images the "
        "adapters did not see (train with the few-shot split) and on normal test images. A rough look"
        + (f" ({stated} at the defaults, on 64 px images)" if stated else "")
        + "; `dualanodiff evaluate localization` runs the paper's full protocol."
    )
    d = StudyFields()  # the page's defaults
    w: dict[str, gr.components.Component] = {}  # the widget of each field, by the field's name
    with gr.Row():
        w["epochs"] = gr.Number(
            d.epochs, label="Training rounds", info="--epochs", precision=0, elem_id="eval-epochs"
        )
        w["samples_per_epoch"] = gr.Number(
            d.samples_per_epoch,
            label="Images per round",
            info="--samples-per-epoch",
            precision=0,
            elem_id="eval-samples",
        )
        w["resolution"] = gr.Number(
            d.resolution,
            label="Image size (px)",
            info="--resolution, a multiple of 32",
            precision=0,
            elem_id="eval-resolution",
        )
        w["base_channels"] = gr.Number(
            d.base_channels,
            label="Detector size",
            info="--base-channels (U-Net width): 16 for a look on a CPU; the paper's 64 takes 15x as long",
            precision=0,
            elem_id="eval-width",
        )
        w["seed"] = gr.Number(d.seed, label="Random seed", info="--seed", precision=0)
    fields = PageFields(StudyFields, w)
    _presets(fields, quick_study, paper_study, "eval")
    with gr.Row():
        start = gr.Button("Run the study", variant="primary", elem_id="eval-start")
        stop = gr.Button("Stop", variant="stop", elem_id="eval-stop")
        restart = gr.Button("Start over…", elem_id="eval-start-over")
    estimate = gr.HTML(_estimate(h.study_estimate(d)), elem_id="eval-estimate")
    message = gr.HTML(elem_id="eval-message")
    _start_over(h, "evaluate", restart, message)
    show_estimate = _estimated(h.study_estimate, fields, estimate)
    gr.on([c.change for c in fields.components], *show_estimate, show_progress="hidden")
    status = gr.HTML(elem_id="eval-status")
    with gr.Accordion("What these numbers mean", open=False, elem_id="eval-meanings"):
        gr.Markdown(metric_meanings())
    download = gr.DownloadButton("Download report.html", visible=False, elem_id="eval-download")
    report = gr.HTML(elem_id="eval-report")
    seen = gr.State({})

    @_guard
    def start_study(*values):
        h.start_study(h.study_request(fields.read(values)))
        return _note("study started")

    start.click(start_study, fields.components, message)

    def stop_study():
        h.jobs.stop("evaluate")
        return _note("stop sent (press again to kill it)")

    stop.click(stop_study, None, message)

    def refresh(last):
        html_status, path = h.study_view()

        def show_report():
            if path is None:
                return gr.update(visible=False), ""
            page = html.escape(path.read_text(encoding="utf-8"), quote=True)
            frame = f'<iframe title="report" srcdoc="{page}" style="width:100%;height:900px;border:1px solid #ccc"></iframe>'
            return gr.update(value=str(path), visible=True), frame

        shown = _send(last, "report", path and (str(path), path.stat().st_mtime_ns), show_report)
        shown = shown if isinstance(shown, tuple) else (shown, gr.update())
        return (_send(last, "status", html_status, lambda: html_status), *shown, last)

    poll = (refresh, seen, [status, download, report, seen])
    return poll, (h.study_fields, fields), show_estimate
