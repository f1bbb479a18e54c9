"""What the pages do, without Gradio: each method takes plain values and returns plain values (or raises
`InputError` with the message to show), so the app's logic is tested without a browser.

Every piece of work is a call to the library the CLI uses: `TrainConfig` + `train_adapters`,
`GenerateConfig` + `generate_to_folder`, `read_generated`, `export_anomalib`, `localize_category`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, replace
from dataclasses import fields as dataclass_fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..data.generated import GeneratedPair, read_generated
from ..data.images import load_mask, load_rgb
from ..data.mvtec import list_anomaly_types, list_categories
from ..errors import InputError
from ..export import export_anomalib, export_for_training
from ..generate import SCHEDULERS, GenerateConfig, resolve_for_adapters
from ..io import read_json_object, save_image_atomic
from ..locking import STATE_DIR, output_lock
from ..training import PRESETS, TrainConfig, resolve_config, training_samples
from ..training.config import steps_per_epoch
from ..training.loop import complete_config
from . import dataset, timings
from .evaluation import StudyRequest, check_study, study_resolution
from .fields import (
    ADAPTERS_SAMPLER,
    DEMO_BASE,
    DEMO_SAMPLER_STEPS,
    UNSET_BY_ZERO,
    GenerateFields,
    StudyFields,
    TrainFields,
)
from .jobs import Jobs, JobStatus
from .progress import generation_progress, status_html, training_progress
from .review import set_verdict, zip_folder
from .worker import resume_note
from .workspace import Project, Workspace

# "Where the defects go" on the Generate page: the paper's method, or placed on the project's normal images
# (`generate --on-normal`), anywhere on the object (`--where auto`) or only in painted regions (`--where DIR`).
PLACEMENTS = {
    "noise": "whole new images, as in the paper",
    "auto": "on my normal images, anywhere on the object",
    "painted": "on my normal images, only where I painted",
}
PAINT_SIDE = 512  # small images are enlarged to about this side for painting, then the mask is scaled back
# The editor's initial canvas (`gr.ImageEditor(canvas_size=...)`). Gradio centres a supplied layer in the bounds of
# everything on its canvas, and that canvas keeps children of this initial size: an image smaller than it would
# get its mask layer drawn off-centre (800 px default, 512 px image: +144 px, the +18 px mask shift once seen). An
# image at least this large in both sides makes the bounds the image's own, so layers land at the origin.
PAINT_CANVAS = 64
BRUSH_FRACTION = 64  # the brush is 1/64 of the enlarged image's side (one pixel of a 64 px image)
# What each page's "Start over" deletes, said on the page before it does.
START_OVER = {
    "train": "the adapters, their checkpoints and loss log",
    "generate": "the generated pairs and your keep/reject verdicts",
    "evaluate": "the study's detectors and report",
}
# The study's settings that its detectors' checkpoints hold (another value cannot resume them).
STUDY_SIZES = ("epochs", "samples_per_epoch", "resolution", "base_channels", "batch_size", "seed")
# Library messages that name a command-line way out, and the page's way out said after them.
_CLI_WAY_OUT = ("--no-resume", "delete this one to start over", "choose a new output folder")
PAGE_WAY_OUT = 'On this page: press "Start over" below (it asks first), then start again.'


class AppHandlers:
    """The app's state (a workspace and its jobs) and every action of its pages."""

    def __init__(self, workspace: str | os.PathLike, threads: int | None = None):
        self.workspace = Workspace(workspace)
        self.workspace.folder.mkdir(parents=True, exist_ok=True)
        self.jobs = Jobs(self.workspace.jobs_dir, threads=threads)
        self._counts: tuple[tuple | None, str] = (None, "")  # (manifest signature, `verdict_counts` text)

    @property
    def project(self) -> Project:
        return self.workspace.project()

    # -- data --------------------------------------------------------------------------------------------
    def use_uploads(self, category: str, anomaly: str) -> Project:
        return self.workspace.uploaded_project(category.strip(), anomaly.strip())

    def add_uploads(
        self,
        category: str,
        anomaly: str,
        defects: list[str] | None,
        masks: list[str] | None,
        normal_train: list[str] | None,
        normal_test: list[str] | None,
    ) -> list[str]:
        """Add uploaded files to the uploaded-data project ``category``/``anomaly``; one note per file."""
        self._no_training("change the data")
        project = self.use_uploads(category, anomaly)
        notes = []
        if defects:
            notes += dataset.add_defect_images(project, defects)
        if masks:
            notes += dataset.add_masks(project, masks)
        if normal_train:
            notes += dataset.add_images(project, normal_train, project.normal_train_dir)
        if normal_test:
            notes += dataset.add_images(project, normal_test, project.normal_test_dir)
        return notes

    def mvtec_choices(self, root: str, category: str | None = None) -> tuple[list[str], list[str]]:
        """(categories of ``root``, anomaly types of ``category``) of an MVTec AD folder."""
        root = os.path.expanduser(root.strip())
        categories = list_categories(root)
        types = list_anomaly_types(root, category) if category in categories else []
        return categories, types

    def use_mvtec(self, root: str, category: str, anomaly: str) -> Project:
        root = os.path.abspath(os.path.expanduser(root.strip()))
        categories, types = self.mvtec_choices(root, category)
        if category not in categories or anomaly not in types:
            raise InputError(f"{root}: choose a category and an anomaly type of that folder")
        return self.workspace.set_project(Project(root, category, anomaly, uploaded=False))

    def data_overview(self) -> tuple[list[tuple[Any, str]], list[str], str]:
        """(gallery items: image with its mask in red and the checks' verdict, image names, summary)."""
        from ..report import overlay_mask

        project = self.project
        entries = dataset.defect_entries(project)
        items = []
        for entry in entries:
            try:
                image = load_rgb(entry.image)
                if entry.mask is not None and entry.ok:
                    image = overlay_mask(image, load_mask(entry.mask))
            except InputError:
                image = np.zeros((64, 64, 3), np.uint8)
            caption = (
                f"{entry.name}: ok" if entry.ok else "; ".join(_relative(p, project) for p in entry.problems)
            )
            items.append((image, caption))
        good_train = dataset.list_images(project.normal_train_dir)
        good_test = dataset.list_images(project.normal_test_dir)
        usable = sum(e.ok for e in entries)
        where = "uploaded data" if project.uploaded else f"MVTec AD folder {project.root}"
        summary = (
            f"**{project.category} / {project.anomaly}** ({where}): {len(entries)} defect image(s), {usable} "
            f"ready to train; {len(good_train)} normal training image(s), {len(good_test)} normal test image(s)."
        )
        problems = [_relative(p, project) for e in entries for p in e.problems]
        if problems:
            summary += "\n\nThe command line's checks say:\n" + "\n".join(f"- {p}" for p in problems)
        return items, [e.name for e in entries], summary

    def paint_background(self, image_name: str) -> dict[str, Any]:
        """The editor's value for painting the mask of a defect image, its current mask (if any) in place."""
        image_path = dataset.defect_image(self.project, image_name)
        image = load_rgb(image_path)
        mask_path = self.project.mask_path(image_path)
        mask = load_mask(mask_path, size=(image.shape[1], image.shape[0])) if mask_path.is_file() else None
        return paint_canvas(image, mask)

    def save_painting(self, image_name: str, editor: dict[str, Any] | None) -> Path:
        """Save what was painted over a defect image as its mask (any painted pixel of any layer)."""
        self._no_training("change the data")
        if not image_name:
            raise InputError("choose the image to paint a mask for")
        image = load_rgb(dataset.defect_image(self.project, image_name))
        mask = painted_mask(editor, image.shape[:2], image_name, "paint the defect with the brush first")
        return dataset.save_painted_mask(self.project, image_name, mask)

    def remove_image(self, image_name: str) -> None:
        """Delete a defect image and its mask (the page asks first: `removal_question`)."""
        self._no_training("change the data")
        if not image_name:
            raise InputError("choose the image to remove")
        dataset.remove_defect_image(self.project, image_name)

    def removal_question(self, image_name: str) -> str:
        """What the page asks before "Remove this image" deletes anything."""
        if not image_name:
            raise InputError("choose the image to remove")
        image = dataset.defect_image(self.project, image_name)
        mask = " and its mask" if self.project.mask_path(image).is_file() else ""
        return f"Delete {image_name}{mask} from the dataset? This cannot be undone."

    def _no_training(self, what: str) -> None:
        if self.jobs.status("train").running:
            raise InputError(f"a training job is reading the data: stop it or wait, then {what}")

    # -- train ---------------------------------------------------------------------------------------------
    def train_config(self, fields: TrainFields) -> TrainConfig:
        """The `TrainConfig` of the Train page's fields; ``images``: ``all`` or ``split`` (few-shot split)."""
        project = self.project
        base = (fields.base or "").strip() or DEMO_BASE
        data: dict[str, Any]
        if fields.images == "split":
            data = {"data": project.root, "split": "strict"}
        else:
            data = {"images": str(project.defect_dir), "masks": str(project.mask_dir)}
        config = TrainConfig(
            base=base,
            out=str(self.workspace.adapters_root),
            category=project.category,
            anomaly=project.anomaly,
            preset=fields.preset,
            max_steps=_int_or_none(fields.max_steps, "steps") or None,  # 0: the preset's (UNSET_BY_ZERO)
            learning_rate=_float_or_none(fields.learning_rate) or None,
            rank=_int_or_none(fields.rank, "rank") or 32,
            text_encoder_rank=_int_or_none(fields.rank, "rank") or 32,
            batch_size=_int_or_none(fields.batch_size, "batch size") or None,
            resolution=_int_or_none(fields.resolution, "resolution") or None,
            seed=_int_or_none(fields.seed, "seed") or 0,
            checkpoint_every=_int_or_none(fields.checkpoint_every, "checkpoint every") or 0,
            mixed_precision=fields.mixed_precision,
            **data,
        )
        return config

    def start_training(self, config: TrainConfig) -> JobStatus:
        """Check everything the CLI checks before loading a model, then train in the background."""
        self.jobs.check_idle("train")
        resolved = resolve_config(config)
        samples = training_samples(resolved)  # the data first: no model is touched for a broken file
        if config.base == DEMO_BASE:
            config = replace(config, base=str(self.workspace.demo_base()))
            resolved = replace(resolved, base=config.base)
        complete_config(replace(resolved, anomaly=resolved.anomaly or samples[0].anomaly_type))
        return self.jobs.start("train", {"config": config.to_dict()}, self.workspace.folder)

    def training_view(self) -> tuple[str, list[dict[str, Any]], str]:
        """(status HTML, loss log rows, where the adapters are and how the CLI uses them)."""
        from ..training.checkpoint import read_loss_log

        status = self._train_status()
        run_dir = self._run_dir(status)
        log = read_loss_log(run_dir)
        done, total, loss = training_progress(run_dir)
        detail = f"step {done} of {total or '?'}" + (f", loss {loss:.4g}" if loss is not None else "")
        pace = timings.recent_pace(log)
        if pace is not None and total:
            detail += _left(pace * (total - done))
        html = status_html(status, done, total, detail if status.running else "")
        adapters = ""
        if (run_dir / "adapters.safetensors").is_file():
            base = read_json_object(run_dir / "train_config.json").get("config", {}).get("base", "BASE")
            adapters = (
                f"Adapters: `{run_dir}`\n\nOn the command line:\n\n"
                f"```\ndualanodiff generate --base {base} --adapters {run_dir} --num-pairs 100 --out my-pairs\n```"
            )
        return html, log, adapters

    def _train_status(self) -> JobStatus:
        """The training job's status, its message true to this run: a lost worker resumes only from a
        checkpoint (`resume_note`), and a refusal that names a command-line way out gets the page's."""
        status = _with_page_way_out(self.jobs.status("train"))
        if status.state == "lost" and status.params.get("config"):
            status.message = (
                "the worker process ended without a result (killed, or out of memory; see the log); "
                + resume_note(status.params)
            )
        return status

    def training_steps(self, fields: TrainFields) -> int | None:
        """The steps a run of these fields makes: its steps, else its preset's epochs over the training images
        (the few-shot third, or all); None when the fields do not say (a preset without epochs)."""
        steps = _int_or_none(fields.max_steps, "steps")
        if steps:
            return steps
        preset = PRESETS.get(fields.preset)
        if preset is None or not preset.epochs:
            return preset.max_steps if preset else None
        images = len(dataset.list_images(self.project.defect_dir))
        count = images // 3 if fields.images == "split" else images
        batch = _int_or_none(fields.batch_size, "batch size") or preset.batch_size
        return preset.epochs * steps_per_epoch(max(count, 1), batch)

    def training_estimate(self, fields: TrainFields) -> str:
        """How long these fields train, before it starts: the measured demo-base step (`timings`) times the
        steps; for another base, what will tell (the time left shows once the first steps ran)."""
        try:
            steps = self.training_steps(fields)
            batch = _int_or_none(fields.batch_size, "batch size") or PRESETS[fields.preset].batch_size
            side = _int_or_none(fields.resolution, "resolution") or timings.DEMO_SIDE
        except (InputError, KeyError):
            return ""
        table = timings.read_timings()
        if table is None or not self.is_demo_base((fields.base or "").strip() or DEMO_BASE) or not steps:
            return "No measured time for this base here: the time left shows once the first steps have run."
        seconds = timings.training_seconds(table, steps, batch, side)
        return (
            f"Estimate: {timings.duration_words(seconds)} for {steps} steps of {batch} pair(s) at {side} px "
            f"(measured on {timings.table_conditions(table)}){self._threads_note()}."
        )

    def is_demo_base(self, base: str) -> bool:
        """Whether ``base`` is the built-in demo base (what the timings table measured): 'demo', this
        workspace's copy of it, or any folder that carries the demo's sampling recipe (`dualanodiff demo`'s)."""
        from ..demo.config import sampling_recipe
        from ..model.base import read_sampling_recipe

        if base == DEMO_BASE or Path(base).resolve() == (self.workspace.folder / "base" / "demo").resolve():
            return True
        try:
            return Path(base).is_dir() and read_sampling_recipe(base) == sampling_recipe()
        except InputError:
            return False

    def _threads_note(self) -> str:
        """The table was measured with one thread; jobs given more on a small machine can be many times slower
        (two threads on 2 busy cores stall each other)."""
        if self.jobs.threads == 1:
            return ""
        given = f"{self.jobs.threads} threads" if self.jobs.threads else "torch's own thread count"
        return (
            f"; the jobs here use {given}, and on a small shared CPU `dualanodiff app --threads 1` is faster"
        )

    def last_training_fields(self) -> TrainFields | None:
        """The Train page's fields as the last training job had them (a reload shows what was run)."""
        config = self.jobs.status("train").params.get("config")
        if not config:
            return None
        base = DEMO_BASE if config["base"] == str(self.workspace.folder / "base" / "demo") else config["base"]
        return TrainFields(
            base=base,
            images="split" if config.get("data") else "all",
            preset=config["preset"],
            max_steps=config["max_steps"] or 0,  # the preset's, as the page shows it (UNSET_BY_ZERO)
            learning_rate=config["learning_rate"] or 0,
            rank=config["rank"],
            batch_size=config["batch_size"] or 0,
            resolution=config["resolution"] or 0,  # the field's 0, "the base's", not an empty field
            seed=config["seed"],
            checkpoint_every=config["checkpoint_every"],
            mixed_precision=config["mixed_precision"],
        )

    def _run_dir(self, status: JobStatus) -> Path:
        config = status.params.get("config")
        if config:
            return TrainConfig.from_dict(config).output_dir()
        return self.workspace.adapters_dir(self.project)

    # -- target regions (placement on normal images) ---------------------------------------------------------
    def normal_names(self) -> list[str]:
        """The project's normal training images (what placed pairs start from), by name."""
        return [p.name for p in dataset.list_images(self.project.normal_train_dir)]

    def _normal_image(self, name: str) -> Path:
        if not name:
            raise InputError("choose a normal image to paint a region on")
        return dataset.normal_image(self.project, name)

    def _region_file(self, name: str) -> Path:
        return self.workspace.regions_dir(self.project) / f"{Path(name).stem}.png"

    def region_background(self, name: str) -> dict[str, Any]:
        """The editor's value for painting where defects may go on one normal image (its region, if any)."""
        image = load_rgb(self._normal_image(name))
        region_path = self._region_file(name)
        region = load_mask(region_path) if region_path.is_file() else None
        if region is not None and region.shape != image.shape[:2]:
            region = None  # the image was replaced by one of another size: paint afresh
        return paint_canvas(image, region)

    def save_region(self, name: str, editor: dict[str, Any] | None) -> Path:
        """Save a painted region at the normal image's own size (generation resizes both alike)."""
        image = load_rgb(self._normal_image(name))
        region = painted_mask(editor, image.shape[:2], name, "paint where the defect may go first")
        target = self._region_file(name)
        save_image_atomic(target, region.astype(np.uint8) * 255)
        return target

    def remove_region(self, name: str) -> None:
        self._region_file(self._normal_image(name).name).unlink(missing_ok=True)

    def painted_regions(self) -> list[str]:
        """Names of the normal images that have a painted region (only these are used with "painted")."""
        folder = self.workspace.regions_dir(self.project)
        stems = {p.stem for p in dataset.list_images(folder)}
        return [n for n in self.normal_names() if Path(n).stem in stems]

    def placement_fields(self, placement: str) -> dict[str, Any]:
        """The `GenerateConfig` fields of the page's "Where the defects go" choice (`PLACEMENTS`)."""
        if placement not in PLACEMENTS:
            raise InputError(f"where the defects go: choose one of {', '.join(PLACEMENTS)}")
        if placement == "noise":
            return {}
        if not self.normal_names():
            raise InputError(
                "placing defects needs normal images: add some on the Data page (Normal images for training)"
            )
        where = "auto"
        if placement == "painted":
            if not self.painted_regions():
                raise InputError(
                    "no region painted yet: paint where the defect may go on a normal image first"
                )
            where = str(self.workspace.regions_dir(self.project))
        return {"on_normal": str(self.project.normal_train_dir), "where": where}

    # -- generate ------------------------------------------------------------------------------------------
    def default_adapters(self) -> str:
        return str(self.workspace.adapters_dir(self.project))

    def generate_config(self, fields: GenerateFields) -> GenerateConfig:
        """The `GenerateConfig` of the Generate page; the base defaults to the one the adapters trained on."""
        adapters = (fields.adapters or "").strip() or self.default_adapters()
        base = (fields.base or "").strip()
        if not base:
            trained = read_json_object(Path(adapters) / "train_config.json").get("config", {})
            base = trained.get("base") or ""
            if not base:
                raise InputError(f"{adapters}: no adapters trained there yet; train them, or give their base")
        if fields.scheduler != ADAPTERS_SAMPLER and fields.scheduler not in SCHEDULERS:
            raise InputError(f"sampler: choose {ADAPTERS_SAMPLER!r} or one of {', '.join(SCHEDULERS)}")
        return GenerateConfig(
            base=base,
            adapters=adapters,
            out=str(self.workspace.generated_dir(self.project)),
            num_pairs=_int_or_none(fields.num_pairs, "pairs") or 0,
            seed=_int_or_none(fields.seed, "seed") or 0,
            scheduler=None if fields.scheduler == ADAPTERS_SAMPLER else fields.scheduler,
            # 0 or None: the adapters' recipe, else the paper's (UNSET_BY_ZERO)
            steps=_int_or_none(fields.steps, "steps") or None,
            guidance=_float_or_none(fields.guidance) or None,
            max_mask_area=float(fields.max_mask_area),
            batch_size=_int_or_none(fields.batch_size, "batch size") or 0,
            anomaly_type=self.project.anomaly,
            **self.placement_fields(fields.placement),
        )

    def start_generation(self, config: GenerateConfig, discard: bool) -> JobStatus:
        self.jobs.check_idle("generate")
        if not (Path(config.adapters) / "adapters.safetensors").is_file():
            raise InputError(
                f"{config.adapters}: no adapters.safetensors there (train first, or check the path)"
            )
        return self.jobs.start(
            "generate", {"config": asdict(config), "discard": bool(discard)}, self.workspace.folder
        )

    def last_generation_fields(self) -> GenerateFields | None:
        """The Generate page's fields as the last generation job had them."""
        config = self.jobs.status("generate").params.get("config")
        if not config:
            return None
        adapters = "" if config["adapters"] == self.default_adapters() else config["adapters"]
        names = ("num_pairs", "seed", "scheduler", "steps", "guidance", "max_mask_area", "batch_size")
        where = config.get("where")
        placement = (
            "noise" if not config.get("on_normal") else "auto" if where in (None, "auto") else "painted"
        )
        values = {n: config[n] for n in names}
        if values["scheduler"] is None:
            values["scheduler"] = ADAPTERS_SAMPLER
        for name in UNSET_BY_ZERO["generate"]:  # the recipe's, as the page shows it
            values[name] = values[name] or 0
        return GenerateFields(adapters=adapters, base=config["base"], placement=placement, **values)

    def generated_folder(self) -> Path:
        out = self.jobs.status("generate").params.get("config", {}).get("out")
        return Path(out) if out else self.workspace.generated_dir(self.project)

    def generation_view(self) -> str:
        """The generation job's status; once it has ended, the kept and rejected counts are the folder's now,
        so a keep or reject by hand shows at once (the job's own message is of the moment it ended)."""
        status = _with_page_way_out(self.jobs.status("generate"))
        num_pairs = int(status.params.get("config", {}).get("num_pairs") or 0)
        done = generation_progress(self.generated_folder(), num_pairs) if num_pairs else 0
        if status.running:
            detail = f"{done} of {num_pairs} pairs" + _left(
                timings.remaining_seconds(done, num_pairs, _seconds_since(status.started))
            )
            return status_html(status, done, num_pairs, detail)
        if status.state == "done":
            status.message = self.verdict_counts()
        return status_html(status)

    def verdict_counts(self) -> str:
        """'16 pairs: 9 kept, 7 rejected (2 by hand)', from the generated folder's manifest as it is now (read
        again only when the manifest changed: every open page asks each second)."""
        signature = self.generated_signature()
        if self._counts[0] != signature or signature is None:
            pairs = self.generated_pairs()
            kept = sum(bool(p.record.get("kept")) for p in pairs)
            by_hand = sum(bool(p.record.get("verdict_by_hand")) for p in pairs)
            text = f"{len(pairs)} pairs: {kept} kept, {len(pairs) - kept} rejected"
            self._counts = (signature, text + (f" ({by_hand} by hand)" if by_hand else ""))
        return self._counts[1]

    def generation_estimate(self, fields: GenerateFields) -> str:
        """How long these fields generate, before it starts: the measured demo-base cost of a pair's sampler
        step (`timings`) times pairs and steps; for adapters of another base, what will tell."""
        try:
            config, _, _ = resolve_for_adapters(self.generate_config(fields))
        except (InputError, ValueError, TypeError):
            return ""
        table = timings.read_timings()
        if table is None or not self.is_demo_base(config.base):
            return "No measured time for this base here: the time left shows once the first pairs are made."
        seconds = timings.generation_seconds(table, int(config.num_pairs), int(config.steps))
        return (
            f"Estimate: {timings.duration_words(seconds)} for {config.num_pairs} pairs of {config.steps} "
            f"sampler steps (measured on {timings.table_conditions(table)}){self._threads_note()}."
        )

    def generated_signature(self) -> tuple | None:
        """Changes whenever the generated folder's pairs or verdicts do (its manifest only ever grows or is
        rewritten), without reading the folder."""
        try:
            stat = (self.generated_folder() / "manifest.jsonl").stat()
        except OSError:
            return None
        return str(self.generated_folder()), stat.st_size, stat.st_mtime_ns

    def generated_pairs(self) -> list[GeneratedPair]:
        folder = self.generated_folder()
        if not (folder / "manifest.jsonl").is_file():
            return []
        try:
            return read_generated(folder, include_rejected=True)
        except InputError:
            return []

    def set_verdict(self, name: str, keep: bool) -> dict[str, Any]:
        if not name:
            raise InputError("choose a pair in the gallery first")
        return set_verdict(self.generated_folder(), name, keep)

    def dataset_zip(self) -> Path:
        folder = self.generated_folder()
        return zip_folder(folder, self.workspace.downloads_dir / f"{self.project.category}-{folder.name}.zip")

    def anomalib_export(self) -> tuple[Path, str]:
        """Export the kept pairs with the project's normal images for anomalib; (zip, the Folder call)."""
        project = self.project
        normal = project.normal_train_dir
        if not dataset.list_images(normal):
            raise InputError(
                f"{normal}: no normal images; an anomalib dataset needs defect-free images (add some on the Data page)"
            )
        test = project.normal_test_dir if dataset.list_images(project.normal_test_dir) else None
        out = self.workspace.export_dir(project)
        summary = export_anomalib([self.generated_folder()], normal, out, normal_test=test)
        target = self.workspace.downloads_dir / f"{project.category}-anomalib.zip"
        return zip_folder(out, target), summary["folder_call"]

    def training_export(self, fmt: str) -> tuple[Path, str]:
        """Export the kept pairs (and the project's normal images, if any) as COCO or YOLO; (zip, the training
        call). The zip unpacks anywhere: the YOLO data.yaml names its folders relative to itself."""
        project = self.project
        normal = project.normal_train_dir if dataset.list_images(project.normal_train_dir) else None
        out = self.workspace.folder / "exports" / fmt / project.category
        _, call = export_for_training(fmt, out, [self.generated_folder()], normal, portable=True)
        return zip_folder(out, self.workspace.downloads_dir / f"{project.category}-{fmt}.zip"), call

    # -- evaluate ------------------------------------------------------------------------------------------
    def study_request(self, fields: StudyFields) -> StudyRequest:
        project = self.project
        adapters = self.workspace.adapters_dir(project)
        return StudyRequest(
            root=project.root,
            category=project.category,
            anomaly=project.anomaly,
            generated=str(self.generated_folder()),
            out=str(self.workspace.evaluation_dir(project)),
            adapters=str(adapters) if adapters.is_dir() else None,
            epochs=_int_or_none(fields.epochs, "epochs") or 0,
            samples_per_epoch=_int_or_none(fields.samples_per_epoch, "samples per epoch") or 0,
            resolution=_int_or_none(fields.resolution, "resolution") or 0,
            base_channels=_int_or_none(fields.base_channels, "U-Net width") or 0,
            seed=_int_or_none(fields.seed, "seed") or 0,
        )

    def study_fields(self) -> StudyFields:
        """The Evaluate page's fields as the last study had them, else the defaults for this data."""
        params = self.jobs.status("evaluate").params
        if params:
            return StudyFields(**{f.name: params[f.name] for f in dataclass_fields(StudyFields)})
        return StudyFields(
            resolution=study_resolution([e.image for e in dataset.defect_entries(self.project)])
        )

    def study_estimate(self, fields: StudyFields) -> str:
        """How long the study of these fields takes, before it starts (`timings`: the measured cost of a
        detector's training sample at the nearest measured width and size)."""
        try:
            request = self.study_request(fields)
        except InputError:
            return ""
        table = timings.read_timings()
        if table is None or min(request.epochs, request.samples_per_epoch, request.base_channels) < 1:
            return ""
        seconds = timings.study_seconds(
            table, request.epochs, request.samples_per_epoch, request.resolution, request.base_channels
        )
        return (
            f"Estimate: {timings.duration_words(seconds)} for two detectors of {request.epochs} epochs of "
            f"{request.samples_per_epoch} samples at {request.resolution} px, width {request.base_channels} "
            f"(measured on {timings.table_conditions(table)}){self._threads_note()}."
        )

    def default_duration(self, kind: str) -> str:
        """How long a page's default run takes by the measured table ("about 3 minutes on a 2-core cpu
        (x86_64) with one thread"), for the text beside its controls; "" without a table. Demo base, 64 px."""
        table = timings.read_timings()
        if table is None:
            return ""
        side = timings.DEMO_SIDE
        if kind == "train":
            d = TrainFields()
            seconds = timings.training_seconds(table, int(d.max_steps), int(d.batch_size), side)
        elif kind == "generate":
            steps = int(DEMO_SAMPLER_STEPS)
            seconds = timings.generation_seconds(table, int(GenerateFields().num_pairs), steps)
        else:
            d = StudyFields()
            seconds = timings.study_seconds(
                table, int(d.epochs), int(d.samples_per_epoch), side, int(d.base_channels)
            )
        return f"{timings.duration_words(seconds)} on {timings.table_conditions(table)}"

    def start_study(self, request: StudyRequest) -> JobStatus:
        self.jobs.check_idle("evaluate")
        self._same_study_settings(request)
        check_study(request)
        return self.jobs.start("evaluate", request.to_dict(), self.workspace.folder)

    def _same_study_settings(self, request: StudyRequest) -> None:
        """Refuse, before anything runs, a study whose folder holds one of other sizes: its detectors would
        refuse to continue (a checkpoint of another configuration). Says which settings and the way out."""
        last = self.jobs.status("evaluate").params
        out = Path(request.out)
        if not last or last.get("out") != request.out or not out.is_dir() or not any(out.iterdir()):
            return
        now = request.to_dict()
        changed = [f"{k} {last.get(k)} -> {now[k]}" for k in STUDY_SIZES if last.get(k) != now[k]]
        if changed:
            raise InputError(
                f"{out} holds a study with other settings ({'; '.join(changed)}); a study resumes only with "
                f"its own. {PAGE_WAY_OUT} Or put the settings back to run it as it was."
            )

    def study_view(self) -> tuple[str, Path | None]:
        """(status HTML, the report when there is one)."""
        status = _with_page_way_out(self.jobs.status("evaluate"))
        out = status.params.get("out")
        report = Path(out) / "report.html" if out else None
        detail = ""
        if status.running:
            fraction = timings.study_fraction(status.stage, status.last_line)
            elapsed = _seconds_since(status.started)
            detail = _left(timings.remaining_seconds(fraction or 0.0, 1.0, elapsed)).lstrip(", ")
        html = status_html(status, detail=detail)
        return html, report if report is not None and report.is_file() and status.state == "done" else None

    # -- start over ------------------------------------------------------------------------------------------
    def _page_output(self, kind: str) -> Path:
        """The folder a page's jobs write for the current project (what "Start over" deletes)."""
        project = self.project
        if kind == "train":
            return self.workspace.adapters_dir(project)
        if kind == "generate":
            return self.generated_folder()
        if kind == "evaluate":
            return self.workspace.evaluation_dir(project)
        raise ValueError(f"unknown page {kind!r}")

    def start_over_question(self, kind: str) -> str:
        """What the page asks before "Start over" deletes anything: what, and where."""
        self.jobs.check_idle(kind)
        return (
            f"Delete {START_OVER[kind]} in {self._page_output(kind)}, and this page's last run? The settings "
            "stay as they are. This cannot be undone."
        )

    def start_over(self, kind: str) -> str:
        """Delete a page's output for the current project and its last job's record (the page then starts from
        nothing: the way out of a run whose settings the folder refuses). Refused while its job runs."""
        self.jobs.check_idle(kind)
        folder = self._page_output(kind)
        if folder.is_dir():
            with output_lock(folder, "dualanodiff app (start over)"):
                for child in folder.iterdir():
                    if child.name != STATE_DIR:  # the lock's own folder, held right now
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.jobs.forget(kind)
        return f"deleted {START_OVER[kind]} in {folder}"


def _relative(problem: str, project: Project) -> str:
    """A problem message with the project's folders left out of the file names it gives."""
    for folder in (project.defect_dir, project.mask_dir, Path(project.root)):
        problem = problem.replace(f"{folder}{os.sep}", "")
    return problem


def paint_canvas(image: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """The paint editor's value for ``image`` (uint8 H x W x 3) and its ``mask`` (bool H x W, or None): the
    image enlarged by a whole factor (small images to about `PAINT_SIDE`, never below `PAINT_CANVAS` a side)
    at the top left of one square canvas, grey beyond it, and the mask as a white layer of the canvas's size.

    Every image gets a canvas of the same side: the editor keeps the bounds of the first canvas it showed and
    centres later layers in them, so a canvas of another size would get its layer drawn off the image (seen
    in Chromium: a 480x288 image opened after a 512x512 one lost its mask)."""
    scale = paint_scale(image.shape[:2])
    big = np.kron(image, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else image
    h, w = big.shape[:2]
    side = paint_side(image.shape[:2])
    canvas = np.full((side, side, 3), 128, np.uint8)
    canvas[:h, :w] = big
    layer = np.zeros((side, side, 4), np.uint8)
    if mask is not None:
        mask = np.kron(mask, np.ones((scale, scale), bool)) if scale > 1 else mask
        layer[:h, :w][mask] = (255, 255, 255, 255)
    return {"background": canvas, "layers": [layer], "composite": None}


def painted_mask(editor: dict[str, Any] | None, shape: tuple[int, int], name: str, hint: str) -> np.ndarray:
    """What was painted (any painted pixel of any layer) over an image of ``shape`` (h, w) shown by
    `paint_canvas`, at the image's size; paint beyond the image is dropped.

    A layer whose size is not the canvas's is refused: scaling or cropping it would store a mask moved off
    where it was painted. Nothing painted is refused too (``hint`` says what to paint)."""
    nothing = InputError(f"{name}: nothing painted; {hint}")
    layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or [] if layer is not None]
    if not layers:
        raise nothing
    scale, side = paint_scale(shape), paint_side(shape)
    background = (editor or {}).get("background")
    shapes = [layer.shape[:2] for layer in layers]
    if background is not None:
        shapes.append(np.asarray(background).shape[:2])
    for got in shapes:
        if tuple(got) != (side, side):
            raise InputError(
                f"{name}: the editor sent a {got[1]}x{got[0]} px painting for a {side}x{side} px canvas; "
                "nothing saved (choose the image again and repaint)"
            )
    painted = np.zeros((side, side), bool)
    for layer in layers:
        painted |= (layer[..., 3] > 0) if layer.ndim == 3 and layer.shape[2] == 4 else (layer.max(-1) > 0)
    mask = _shrink(painted[: shape[0] * scale, : shape[1] * scale], shape)
    if not mask.any():  # an empty mask is no mask: keep the saved one rather than break the image
        raise nothing
    return mask


def paint_scale(shape: tuple[int, int]) -> int:
    """The whole factor an image of ``shape`` (h, w) is enlarged by in the paint editor."""
    short, long = min(shape), max(shape)
    return max(1, PAINT_SIDE // long, -(-PAINT_CANVAS // short))


def paint_side(shape: tuple[int, int]) -> int:
    """The side of the square paint canvas for an image of ``shape`` (h, w): `PAINT_SIDE` for every image
    that fits it once enlarged, so the editor's canvas keeps one size from image to image."""
    return max(PAINT_SIDE, paint_scale(shape) * max(shape))


def _shrink(painted: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A painted (possibly enlarged) mask at the image's ``shape``: a pixel is set where at least half of
    the painted pixels that cover it are set."""
    from PIL import Image

    if painted.shape == tuple(shape):
        return painted
    levels = Image.fromarray(painted.astype(np.float32)).resize((shape[1], shape[0]), Image.BOX)
    return np.asarray(levels) >= 0.5


def _with_page_way_out(status: JobStatus) -> JobStatus:
    """A failed job's message, with the page's way out after a command-line one (`--no-resume`, "delete
    this one to start over"): the page has no flags, it has "Start over"."""
    if status.state == "failed" and any(phrase in status.message for phrase in _CLI_WAY_OUT):
        status.message = f"{status.message}. {PAGE_WAY_OUT}"
    return status


def _seconds_since(iso_time: str | None) -> float:
    """Seconds from an ISO time with its zone (`jobs.now`) to now; 0 when unknown."""
    if not iso_time:
        return 0.0
    try:
        return max(0.0, (datetime.now().astimezone() - datetime.fromisoformat(iso_time)).total_seconds())
    except ValueError:
        return 0.0


def _left(seconds: float | None) -> str:
    """', about 3 minutes left' for a progress line; nothing while the pace is unknown."""
    return "" if seconds is None else f", {timings.duration_words(seconds)} left"


def _int_or_none(value: Any, name: str) -> int | None:
    """A whole number from a number field (None when left empty); InputError naming the field otherwise."""
    if value is None or value == "":
        return None
    number = float(value)
    if not number.is_integer():
        raise InputError(f"{name}: expected a whole number, got {value}")
    return int(number)


def _float_or_none(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)
