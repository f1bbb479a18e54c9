"""The app's working folder: where uploads, adapters, generated pairs, exports and job states live on disk.

::

    WORK/project.json                          the data the pages work on (uploaded, or an MVTec folder)
    WORK/data/<category>/test/<type>/          uploaded defect images   } the MVTec AD layout, so every
    WORK/data/<category>/ground_truth/<type>/  their masks, <stem>_mask.png } command of the CLI reads it
    WORK/data/<category>/train/good/           uploaded normal images (anomalib export, evaluation)
    WORK/data/<category>/test/good/            uploaded normal test images (evaluation)
    WORK/base/demo/                            the built-in demo base as a diffusers folder
    WORK/adapters/<category>/<type>/           `dualanodiff train --out WORK/adapters`
    WORK/generated/<category>/<type>/          `dualanodiff generate --out ...`
    WORK/regions/<category>/<type>/            painted target regions, <normal stem>.png (`generate --where`)
    WORK/exports/anomalib/<category>/          `dualanodiff export anomalib --out ...`
    WORK/evaluation/<category>/<type>/         the localization study and its report.html
    WORK/downloads/                            zip files offered for download
    WORK/jobs/<kind>/                          background jobs (see `jobs`)

Everything a user sends is written under WORK only: file names are reduced to a plain name
(:func:`safe_filename`) and the final path is checked to lie in its folder (:func:`path_inside`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checks import check_name
from ..data.mvtec import GOOD
from ..errors import InputError
from ..io import read_json_object, write_json_atomic

PROJECT_FILE = "project.json"
DEFAULT_CATEGORY = "part"
DEFAULT_ANOMALY = "defect"
_MAX_NAME = 100  # characters of an uploaded file name we keep (file systems allow 255 bytes)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, default: str = "upload") -> str:
    """A plain file name from whatever a browser sent: the last path component (``/`` or ``\\``), accents
    folded to ASCII, every other character but letters, digits, ``.``, ``_``, ``-`` replaced by ``_``, no
    leading dot (no hidden files, no ``..``), at most 100 characters with its extension kept."""
    base = re.split(r"[/\\]", str(name).replace("\0", ""))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = _UNSAFE.sub("_", stem).strip(".").lstrip("_-") or default
    ext = re.sub(r"[^a-z0-9]", "", ext.lower())[:10]
    stem = stem[: _MAX_NAME - len(ext) - 1]
    return f"{stem}.{ext}" if ext else stem


def path_inside(folder: str | os.PathLike, name: str) -> Path:
    """``folder / safe_filename(name)``, refused unless it resolves to a direct child of ``folder``."""
    folder = Path(folder).resolve()
    path = (folder / safe_filename(name)).resolve()
    if path.parent != folder:
        raise InputError(f"{name!r}: not a plain file name")
    return path


@dataclass(frozen=True)
class Project:
    """The data the pages work on: a dataset root in the MVTec AD layout, one category and one anomaly type.

    ``uploaded``: the root is the workspace's own ``data/`` (the app may add and change files there);
    otherwise it is a folder on this machine that the app only reads.
    """

    root: str
    category: str = DEFAULT_CATEGORY
    anomaly: str = DEFAULT_ANOMALY
    uploaded: bool = True

    def __post_init__(self):
        check_name(self.category, "category")
        check_name(self.anomaly, "anomaly type")
        if self.anomaly == GOOD:
            raise InputError("anomaly type: 'good' is the name of the normal images; choose another")

    @property
    def category_dir(self) -> Path:
        return Path(self.root) / self.category

    @property
    def defect_dir(self) -> Path:
        return self.category_dir / "test" / self.anomaly

    @property
    def mask_dir(self) -> Path:
        return self.category_dir / "ground_truth" / self.anomaly

    def mask_path(self, image: Path) -> Path:
        """Where the MVTec layout keeps the mask of a defect image."""
        return self.mask_dir / f"{image.stem}_mask.png"

    @property
    def normal_train_dir(self) -> Path:
        return self.category_dir / "train" / GOOD

    @property
    def normal_test_dir(self) -> Path:
        return self.category_dir / "test" / GOOD


class Workspace:
    """The folders of one app working folder (module docstring); creates nothing until something is written."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).resolve()

    @property
    def data_root(self) -> Path:
        return self.folder / "data"

    @property
    def jobs_dir(self) -> Path:
        return self.folder / "jobs"

    @property
    def downloads_dir(self) -> Path:
        return self.folder / "downloads"

    @property
    def adapters_root(self) -> Path:
        """``--out`` of training: the adapters of a type land in ``adapters_root/<category>/<type>``."""
        return self.folder / "adapters"

    def adapters_dir(self, project: Project) -> Path:
        return self.adapters_root / project.category / project.anomaly

    def generated_dir(self, project: Project) -> Path:
        return self.folder / "generated" / project.category / project.anomaly

    def regions_dir(self, project: Project) -> Path:
        """``--where`` of placed generation: a region painted on a normal image, named by its stem."""
        return self.folder / "regions" / project.category / project.anomaly

    def export_dir(self, project: Project) -> Path:
        return self.folder / "exports" / "anomalib" / project.category

    def evaluation_dir(self, project: Project) -> Path:
        return self.folder / "evaluation" / project.category / project.anomaly

    def demo_base(self) -> Path:
        """The built-in demo base as a diffusers folder (written on first use; no download)."""
        from ..demo.base import demo_base_folder

        return demo_base_folder(self.folder / "base" / "demo")

    # -- the current project ---------------------------------------------------------------------------
    def project(self) -> Project:
        """The project in ``project.json``, or uploaded data named part/defect when there is none."""
        saved = read_json_object(self.folder / PROJECT_FILE)
        if not saved:
            return Project(root=str(self.data_root))
        return Project(**{k: saved[k] for k in ("root", "category", "anomaly", "uploaded") if k in saved})

    def set_project(self, project: Project) -> Project:
        write_json_atomic(self.folder / PROJECT_FILE, asdict(project))
        return project

    def uploaded_project(self, category: str, anomaly: str) -> Project:
        return self.set_project(Project(str(self.data_root), category, anomaly, uploaded=True))
