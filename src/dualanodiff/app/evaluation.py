"""The Evaluate page: the quick localization study on the user's data, and its HTML report.

The study is `dualanodiff evaluate localization` twice on the project's data (the same library calls,
`localize_category` and `write_tables`): DRAEM's U-Net trained on the normal images plus the kept generated
pairs, and on the normal images alone (the floor that shows what the generated pairs add), both tested on
the real defect images the adapters did not train on (the few-shot split's held-out part) and the normal
test images. Sizes default to the demo's detector (20 epochs of 128 samples, U-Net width 16: minutes on a
2-core CPU), so it is a rough look, not the paper's protocol (`fields.paper_study` fills in the paper's sizes).
A study whose test images trained the adapters is refused: it would measure memory, not the data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..benchmark import PROFILES
from ..data.images import image_size, load_mask, load_rgb
from ..data.mvtec import GOOD, normal_train_samples
from ..demo.config import MODES
from ..errors import InputError
from ..evaluate.localization import LocalizationConfig
from ..evaluate.metrics import TABLE_COLUMNS
from ..evaluate.protocol import (
    LOCALIZATION_DIR,
    check_category,
    load_generated_sets,
    localize_category,
    paper_milestones,
    test_set_for,
    write_tables,
)
from ..io import read_json_object, write_text_atomic
from ..report import Report, loss_curve_png, overlay_mask
from ..training.checkpoint import read_loss_log
from .gallery import pair_views

QUICK = PROFILES["quick"]
DEMO = MODES["full"]  # the demo's detector: what the page's defaults are
METHODS = {"dualanodiff": "normal images + DualAnoDiff pairs", "none": "normal images only"}
REPORT_NAME = "report.html"
MAX_RESOLUTION = 256  # the protocol's input side; smaller images are studied at their own size


@dataclass
class StudyRequest:
    """One localization study: the project's data, its generated folder and adapters, the output folder."""

    root: str
    category: str
    anomaly: str
    generated: str
    out: str
    adapters: str | None = None
    epochs: int = DEMO["loc_epochs"]
    samples_per_epoch: int = DEMO["loc_samples_per_epoch"]
    resolution: int = MAX_RESOLUTION
    base_channels: int = DEMO["loc_base_channels"]
    batch_size: int = 16
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyRequest:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def localization_config(self) -> LocalizationConfig:
        return LocalizationConfig(
            epochs=self.epochs,
            samples_per_epoch=self.samples_per_epoch,
            batch_size=self.batch_size,
            lr_milestones=paper_milestones(self.epochs),
            resolution=self.resolution,
            base_channels=self.base_channels,
            runs=QUICK["loc_runs"],
            seed=self.seed,
        )


def study_resolution(images: list[Path]) -> int:
    """The images' longer side rounded up to the U-Net's multiple of 32, at most the protocol's 256."""
    if not images:
        return MAX_RESOLUTION
    side = max(max(image_size(p)) for p in images)
    return int(min(MAX_RESOLUTION, 32 * math.ceil(side / 32)))


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_study(request: StudyRequest) -> dict[str, Any]:
    """Everything the study needs, checked before it starts (InputError saying what to do otherwise)."""
    request.localization_config().validate()
    check_category(request.root, request.category)
    normals = normal_train_samples(request.root, request.category)
    if not normals:
        raise InputError(
            f"{Path(request.root) / request.category / 'train' / GOOD}: no normal images; the detector learns "
            "from defect-free images (add some on the Data page)"
        )
    test = test_set_for(request.root, request.category, "strict", [request.anomaly])
    defects = [s for s in test if s.anomaly_type != GOOD]
    if not any(s.anomaly_type == GOOD for s in test):
        raise InputError(
            f"{Path(request.root) / request.category / 'test' / GOOD}: no normal test images; the detector is "
            "tested on defect and defect-free images (add normal test images on the Data page)"
        )
    if not defects:
        raise InputError(
            f"{Path(request.root) / request.category / 'test' / request.anomaly}: no held-out defect image (the "
            "first third of the defect images train the adapters, the rest test the detector: add images)"
        )
    if request.adapters:
        trained = read_json_object(Path(request.adapters) / "train_config.json").get("train_images", [])
        trained_digests = {_digest(Path(p)) for p in trained if Path(p).is_file()}
        leaked = [s.image.name for s in defects if _digest(s.image) in trained_digests]
        if leaked:
            raise InputError(
                f"{request.adapters} trained on {len(leaked)} of the {len(defects)} held-out test images "
                f"({', '.join(leaked[:3])}{', ...' if len(leaked) > 3 else ''}); the study would measure memory. "
                "Train with 'few-shot split' (the first third trains, the rest stays for testing)"
            )
    generated = load_generated_sets([request.generated], [request.anomaly])
    return {"generated": generated, "normals": len(normals), "test": test}


def run_study(request: StudyRequest, stage: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) both detectors, write the tables and ``report.html`` in ``request.out``."""
    checked = check_study(request)
    out = Path(request.out)
    config = request.localization_config()
    for i, method in enumerate(METHODS, 1):
        stage(f"detector {i}/{len(METHODS)}: {METHODS[method]}")
        generated = checked["generated"] if method == "dualanodiff" else {}
        localize_category(
            request.root,
            request.category,
            generated,
            config,
            out / LOCALIZATION_DIR / method / request.category,
            split="strict",
            anomaly_types=[request.anomaly],
        )
    stage("report")
    markdown, results = write_tables(out, request.root, with_paper=False)
    write_text_atomic(out / "results.md", markdown)
    report = write_study_report(request, results["localization"], checked)
    metrics = {m: results["localization"].get(m, {}).get(request.category) for m in METHODS}
    return {"report": str(report), "metrics": metrics}


def _percent(value: Any) -> float | None:
    return None if value is None else round(100.0 * float(value), 1)


def metric_rows(localization: dict[str, dict[str, Any]], category: str) -> list[dict[str, Any]]:
    """One row per detector: the paper's table columns and AU-PRO, in percent."""
    rows = []
    for method, label in METHODS.items():
        r = localization.get(method, {}).get(category)
        if r is not None:
            row = {"detector trained on": label}
            row.update({name: _percent(r.get(key)) for name, key in TABLE_COLUMNS})
            row["AU-PRO"] = _percent(r.get("pixel_aupro"))
            rows.append(row)
    return rows


# What the table's columns mean, for a reader who does not live in the anomaly detection literature (the
# report prints it under the table, the Evaluate page beside it).
METRIC_MEANINGS = {
    "AUC-P": "pixels: how well the detector's anomaly map ranks defect pixels above normal ones (50 is a coin "
    "toss, 100 perfect). The many normal pixels make it high even for a weak detector.",
    "AP-P": "pixels: average precision of the map on defect pixels; the strictest figure here, low when the map "
    "marks much besides the defect.",
    "F1-P": "pixels: the best balance of missed and false defect pixels over all thresholds.",
    "AUC-I, AP-I, F1-I": "the same for whole images: does an image's highest score tell defect images from "
    "normal ones.",
    "AU-PRO": "each defect region counts the same whatever its size: the share of every region found, up to 30 % "
    "false positive pixels.",
}
SAME_WITHIN = 1.0  # points of percent: closer than this, two detectors are "about the same"


def metric_meanings(defect_images: int | None = None) -> str:
    """The columns' meanings as paragraphs, and how far a few test images let one trust a difference."""
    lines = [f"{name}: {text}" for name, text in METRIC_MEANINGS.items()]
    few = f"{defect_images} real defect images" if defect_images else "a few real defect images"
    lines.append(
        f"All in percent, higher is better. With {few} to test on, one image moves these by several points: "
        "compare the two rows with each other, not with the paper's tables."
    )
    return "\n\n".join(lines)


def pairs_verdict(rows: list[dict[str, Any]]) -> str:
    """One plain sentence on what the generated pairs did to the detector, from the two rows of
    `metric_rows`: on the pixel figures (AUC-P, AP-P), better, worse, mixed or about the same."""
    by_label = {row["detector trained on"]: row for row in rows}
    with_pairs, alone = by_label.get(METHODS["dualanodiff"]), by_label.get(METHODS["none"])
    if with_pairs is None or alone is None:
        return ""
    names = [n for n in ("AUC-P", "AP-P") if with_pairs.get(n) is not None and alone.get(n) is not None]
    if not names:
        return ""
    figures = " and ".join(f"{n} {with_pairs[n]} against {alone[n]}" for n in names)
    gaps = [with_pairs[n] - alone[n] for n in names]
    if all(abs(g) < SAME_WITHIN for g in gaps):
        return f"The generated pairs changed little: {figures} on normal images alone."
    if all(g < 0 for g in gaps):
        return (
            f"The generated pairs made the detector worse than normal images alone ({figures}). They teach it "
            "something other than your defects: look at them on the Generate page and reject those whose mask "
            "misses the defect, train the adapters longer, or place the defects on your normal images."
        )
    if all(g > 0 for g in gaps):
        return f"The generated pairs helped the detector: {figures} on normal images alone."
    return f"Mixed: {figures} on normal images alone; a rerun with another seed tells whether it holds."


def write_study_report(request: StudyRequest, localization: dict, checked: dict[str, Any]) -> Path:
    """The study's HTML report: what was measured, the metrics, generated examples, the adapters' loss."""
    pairs = checked["generated"][request.anomaly]
    test = checked["test"]
    defects = [s for s in test if s.anomaly_type != GOOD]
    report = Report(f"Localization study: {request.category} / {request.anomaly}")
    report.add_text(
        "What was measured",
        f"A defect detector (DRAEM's U-Net, {request.epochs} epochs of {request.samples_per_epoch} samples at "
        f"{request.resolution} px, width {request.base_channels}) was trained twice: on the "
        f"{checked['normals']} normal images plus the {len(pairs)} kept generated pairs, and on the normal images "
        f"alone. Both were tested on {len(defects)} real defect images that the adapters did not train on and "
        f"{len(test) - len(defects)} normal test images. A quick study: a rough look at whether the generated "
        "pairs teach a detector something, not the paper's protocol (`dualanodiff evaluate localization` with "
        "its defaults is).",
    )
    rows = metric_rows(localization, request.category)
    report.add_table("Localization on the real test images (%, higher is better)", rows)
    verdict = pairs_verdict(rows)
    if verdict:
        report.add_text("What the generated pairs did", verdict)
    report.add_text("What these numbers mean", metric_meanings(len(defects)))
    cells, captions = [], []
    for pair in pairs[:8]:
        cells += pair_views(pair)
        captions += [f"{pair.name} image", "anomaly part", "mask"]
    if cells:
        report.add_images("Generated pairs the detector trained on (image, part, mask)", cells, captions, 6)
    shown = defects[:8]
    if shown:
        images = [overlay_mask(load_rgb(s.image), load_mask(s.mask)) for s in shown]
        report.add_images(
            "Held-out real defect images (ground truth in red)", images, [s.image.name for s in shown]
        )
    if request.adapters:
        log = read_loss_log(Path(request.adapters))
        if log:
            report.add_figure(
                "Adapter training loss",
                loss_curve_png(
                    [r["step"] for r in log],
                    [r["loss"] for r in log],
                    title="training loss (lower is better)",
                ),
            )
    report.add_settings(request.to_dict())
    return report.write(Path(request.out) / REPORT_NAME)
