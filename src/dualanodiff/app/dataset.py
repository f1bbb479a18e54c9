"""The Data page's work on disk: add uploaded images and masks to a project, paint masks, list the
defect images with what the command line's checks say about each.

Uploads go into the MVTec AD layout of the workspace (``workspace`` module), so ``dualanodiff train
--images .../test/<type> --masks .../ground_truth/<type>`` and ``--data WORK/data --category C`` read
exactly what the app shows. Writes hold the category folder's output lock: two browser tabs adding files
to one project take turns, and a refused one is told who holds it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import IMAGE_EXTENSIONS, is_image_file, load_mask, load_rgb
from ..data.mvtec import DefectSample
from ..data.validate import sample_problems
from ..errors import InputError
from ..io import atomic_path, save_image_atomic
from ..locking import output_lock
from .workspace import Project, path_inside, safe_filename


@dataclass(frozen=True)
class DefectEntry:
    """A defect image of the project, its mask (None: none yet) and the problems the CLI would report."""

    image: Path
    mask: Path | None
    problems: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def ok(self) -> bool:
        return not self.problems


def _editable(project: Project) -> None:
    if not project.uploaded:
        raise InputError(
            f"{project.root}: the app only reads an MVTec AD folder; switch to uploaded data to add or change files"
        )


def _writing(project: Project):
    _editable(project)
    return output_lock(project.category_dir, "dualanodiff app (data)")


def _image_suffix(upload: Path) -> str:
    suffix = Path(safe_filename(upload.name)).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise InputError(f"{upload.name}: not an image file name (expected {', '.join(IMAGE_EXTENSIONS)})")
    return suffix


def _copy_in(upload: Path, folder: Path) -> Path:
    """Copy an uploaded file into ``folder`` under its sanitised name, atomically; a file that does not decode
    as an image (a text file renamed .png) is refused now, naming it, rather than flagged later."""
    _image_suffix(upload)
    try:
        load_rgb(upload)  # the readers' own decoder: what it cannot read, training could not either
    except InputError as err:
        raise InputError(f"{upload.name}: not added, " + str(err).replace(f"{upload}: ", "", 1)) from None
    target = path_inside(folder, upload.name)
    with atomic_path(target) as tmp:
        shutil.copyfile(upload, tmp)
    return target


def add_images(project: Project, uploads: Iterable[str | os.PathLike], folder: Path) -> list[str]:
    """Copy uploaded image files into ``folder`` (one of the project's); returns one note per file, naming
    where it went (``test/crack/000.png``, ``train/good/000.png``: the folders' file names may repeat)."""
    notes = []
    with _writing(project):
        for upload in map(Path, uploads):
            try:
                target = _copy_in(upload, folder)
                notes.append(f"added {target.relative_to(project.category_dir).as_posix()}")
            except InputError as err:
                notes.append(str(err))
    return notes


def add_defect_images(project: Project, uploads: Iterable[str | os.PathLike]) -> list[str]:
    return add_images(project, uploads, project.defect_dir)


def mask_stem(name: str) -> str:
    """The image stem a mask file belongs to: ``<stem>_mask.png`` or ``<stem>.png`` (the CLI's rule)."""
    stem = Path(safe_filename(name)).stem
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def add_masks(project: Project, uploads: Iterable[str | os.PathLike]) -> list[str]:
    """Store uploaded masks as ``ground_truth/<type>/<stem>_mask.png`` (0/255), matched to the defect images
    by stem. A mask is decoded by the one mask policy of every reader (`data.images.load_mask`)."""
    notes = []
    with _writing(project):
        images = {p.stem: p for p in list_images(project.defect_dir)}
        for upload in map(Path, uploads):
            stem = mask_stem(upload.name)
            if stem not in images:
                notes.append(
                    f"{upload.name}: no defect image named {stem}.* to match it; add the image first"
                )
                continue
            try:
                _image_suffix(upload)
                mask = load_mask(upload)
            except InputError as err:
                notes.append(str(err).replace(str(upload), upload.name))
                continue
            save_image_atomic(project.mask_path(images[stem]), mask.astype(np.uint8) * 255)
            notes.append(f"mask of {images[stem].name} saved")
    return notes


def save_painted_mask(project: Project, image_name: str, mask: np.ndarray) -> Path:
    """Store a mask painted in the browser for one defect image (``mask``: bool or 0/255, the image's size)."""
    with _writing(project):
        image = defect_image(project, image_name)
        target = project.mask_path(image)
        save_image_atomic(target, (np.asarray(mask) > 0).astype(np.uint8) * 255)
    return target


def remove_defect_image(project: Project, image_name: str) -> None:
    """Delete a defect image and its mask from the project."""
    with _writing(project):
        image = defect_image(project, image_name)
        project.mask_path(image).unlink(missing_ok=True)
        image.unlink()


def _image_in(folder: Path, image_name: str, missing: str) -> Path:
    """The image of that name, refused (``missing``) unless it is an image file of ``folder``."""
    path = path_inside(folder, image_name)
    if not is_image_file(path):
        raise InputError(f"{image_name}: {missing}")
    return path


def defect_image(project: Project, image_name: str) -> Path:
    """The defect image of that name, refused unless it is a file of the project's defect folder."""
    return _image_in(project.defect_dir, image_name, f"no such defect image in {project.defect_dir}")


def normal_image(project: Project, image_name: str) -> Path:
    """The normal training image of that name (what a placed pair starts from), refused unless it is one."""
    return _image_in(project.normal_train_dir, image_name, "no such normal image in this project")


def defect_entries(project: Project) -> list[DefectEntry]:
    """Every defect image of the project, by name, with its mask and the training data checks' verdict."""
    entries = []
    for image in list_images(project.defect_dir):
        mask = project.mask_path(image)
        found = mask if mask.is_file() else None
        problems = sample_problems(DefectSample(image, found, project.anomaly))
        if found is None:  # the CLI's "missing mask", said with what to do in the app
            problems = [p for p in problems if p != f"{image}: missing mask"]
            problems.append(f"{image.name}: no mask yet (upload {mask.name} or paint one)")
        entries.append(DefectEntry(image, found, tuple(problems)))
    return entries


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder (none when it does not exist), by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []
