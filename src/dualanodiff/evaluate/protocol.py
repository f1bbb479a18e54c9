"""The evaluation protocol over a category: the step functions `dualanodiff evaluate` and `benchmark` share.

Results live in one folder layout, so the tables can be rebuilt from the files at any time and runs of
several methods (or of `evaluate` and `benchmark`) land side by side::

    OUT/quality/<method>/<category>.json                      IS / IC-LPIPS per anomaly type + averages
    OUT/localization/<method>/<category>/results.json         written by train_and_evaluate_localization
    OUT/classification/<method>/<category>/classification.json

`write_tables` reads that layout back and writes ``localization.csv``, ``quality.csv``,
``classification.csv``, ``results.json`` and returns the markdown tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data.generated import (
    MANIFEST,
    GeneratedPair,
    manifest_records,
    pair_path,
    read_generated,
    read_generated_config,
)
from ..data.mvtec import (
    GOOD,
    DefectSample,
    anomaly_samples,
    category_test_set,
    few_shot_split,
    list_anomaly_types,
    list_categories,
    normal_train_samples,
)
from ..errors import InputError
from ..io import read_json_object, write_json_atomic, write_text_atomic
from .tables import (
    LOCALIZATION_FIELDS,
    classification_table,
    looks_like_mvtec,
    mean_or_none,
    methods_localization_table,
    quality_table,
    to_csv,
)

METHOD_ORDER = ("dualanodiff", "crop-paste", "perlin", "none")
# Which generated images IS and IC-LPIPS score: every one, as the paper (its generator has no mask gate), or
# only the pairs whose mask passed the gate (those the detectors train on).
QUALITY_IMAGES = {
    "all": "every generated image (kept and rejected pairs), as the paper",
    "kept": "kept pairs only",
}
QUALITY_DIR, LOCALIZATION_DIR, CLASSIFICATION_DIR = "quality", "localization", "classification"


# ------------------------------------------------------------------------------------------ inputs


def check_category(root: str | os.PathLike, category: str) -> None:
    """One-line InputError when ``category`` is not a category folder of ``root`` (lists those that are)."""
    cats = list_categories(root)
    if category not in cats:
        raise InputError(
            f"{Path(root) / category}: category {category!r} not found in {root}; categories there: "
            + (", ".join(cats) if cats else "none (no <category>/train or <category>/test folders)")
        )


def infer_anomaly_type(folder: str | os.PathLike, pairs: Sequence[GeneratedPair]) -> str:
    """The anomaly type of a generated folder: its manifest records, its config (or the adapters' training
    config that `generate` records), else the folder's name."""
    folder = Path(folder)
    kinds = {r.record.get("anomaly_type") for r in pairs}
    if len(kinds) == 1 and isinstance(next(iter(kinds)), str):
        return next(iter(kinds))
    config = read_generated_config(folder)
    for key in ("anomaly_type", "anomaly"):
        if isinstance(config.get(key), str):
            return config[key]
    if config.get("adapters"):  # the adapters' training config names the type they learnt
        train = read_json_object(Path(str(config["adapters"])) / "train_config.json")
        if isinstance(train.get("anomaly"), str):
            return train["anomaly"]
    return folder.resolve().name


def infer_method(folders: Sequence[str | os.PathLike]) -> str:
    """A label for generated folders: the baseline's ``method`` in config.json, ``dualanodiff`` for
    folders made from adapters, else ``generated``; ``none`` when there are no folders."""
    if not folders:
        return "none"
    labels = set()
    for folder in folders:
        config = read_generated_config(folder)
        labels.add(config.get("method") or ("dualanodiff" if config.get("adapters") else "generated"))
    return labels.pop() if len(labels) == 1 else "generated"


def load_generated_sets(
    folders: Sequence[str | os.PathLike],
    anomaly_types: Sequence[str] | None = None,
    include_rejected: bool = False,
) -> dict[str, list[GeneratedPair]]:
    """{anomaly type: kept pairs} from generated folders (one per type; two folders of a type are merged);
    with ``include_rejected`` the pairs the mask gate rejected too (their records say ``kept: false``).

    Each pair's record gets its ``anomaly_type`` set, so the U-Net's sampler draws types uniformly.
    Missing masks, empty folders etc. raise :class:`InputError` naming the file (``read_generated``), and so
    does a pair that the manifest lists but whose image is gone: the figures must cover every listed pair.
    """
    if anomaly_types is not None and len(anomaly_types) != len(folders):
        raise InputError(
            f"--anomaly-types: {len(anomaly_types)} names for {len(folders)} --generated folders; give one each"
        )
    out: dict[str, list[GeneratedPair]] = {}
    for i, folder in enumerate(folders):
        pairs = read_generated(folder, include_rejected=include_rejected)
        _refuse_missing_images(folder, pairs, include_rejected)
        kind = anomaly_types[i] if anomaly_types is not None else infer_anomaly_type(folder, pairs)
        out.setdefault(kind, []).extend(replace(p, record={**p.record, "anomaly_type": kind}) for p in pairs)
    return out


def _refuse_missing_images(
    folder: str | os.PathLike, pairs: Sequence[GeneratedPair], include_rejected: bool
) -> None:
    """``read_generated`` skips a record whose image was removed by hand (a reader of a folder being
    written must); an evaluation refuses it instead, as it refuses a missing mask, naming the file."""
    if not (Path(folder) / MANIFEST).is_file():
        return
    found = {p.name for p in pairs}
    for name, record in manifest_records(folder).items():
        kept = bool(record.get("kept", True))
        if name not in found and (kept or include_rejected):
            raise InputError(
                f"{pair_path(folder, 'image', name, kept)}: image of pair {name!r} not found, though "
                f"{Path(folder) / MANIFEST} lists it; restore it or remove its record"
            )


def check_anomaly_types(root: str | os.PathLike, category: str, types: Sequence[str], flag: str) -> None:
    """One-line InputError naming ``flag`` when a type is not an anomaly type of the category."""
    known = set(list_anomaly_types(root, category))
    unknown = sorted(set(types) - known)
    if unknown:
        raise InputError(
            f"{flag}: anomaly type(s) {', '.join(unknown)} not found in category {category!r} "
            f"({Path(root) / category / 'test'}); types there: {', '.join(sorted(known)) or 'none'}"
        )


def check_test_masks(samples: Sequence[DefectSample]) -> None:
    """A defect image of the test set whose mask marks nothing would score as a normal one and move the
    metrics: refuse it, naming the file, as training and the baselines do."""
    from ..data.images import load_mask

    for s in samples:
        if s.anomaly_type == GOOD:
            continue
        if s.mask is None or not s.mask.is_file():
            raise InputError(f"{s.image}: test image of type {s.anomaly_type!r} has no ground-truth mask")
        if not load_mask(s.mask).any():
            raise InputError(
                f"{s.mask}: mask is empty (no pixel reaches half range, and it is not a 0/1 mask); a test image "
                f"of type {s.anomaly_type!r} needs its defect marked"
            )


def few_shot_images(root: str | os.PathLike, category: str, anomaly_type: str, split: str) -> list[Path]:
    """The few-shot real images of a type: the IC-LPIPS cluster centres (the generator's training images)."""
    return [s.image for s in few_shot_split(anomaly_samples(root, category, anomaly_type), split).train]


def test_set_for(
    root: str | os.PathLike, category: str, split: str, anomaly_types: Sequence[str] | None = None
) -> list[DefectSample]:
    """The real test set (remaining 2/3 of each type + test/good), restricted to ``anomaly_types`` if given."""
    if anomaly_types is not None:
        check_anomaly_types(root, category, anomaly_types, str(Path(root) / category / "test"))
    samples = category_test_set(root, category, split)
    if anomaly_types is None:
        return samples
    keep = set(anomaly_types) | {GOOD}
    return [s for s in samples if s.anomaly_type in keep]


def paper_figures_apply(root: str | os.PathLike | None, categories: Sequence[str]) -> bool:
    """The paper's MVTec AD figures belong beside ours only for MVTec AD categories, and not for the
    procedural stand-in of `make-synthetic` (whose categories borrow MVTec names, e.g. ``pill``)."""
    if root is not None:
        meta = Path(root) / "meta.json"
        if meta.is_file():
            try:
                if json.loads(meta.read_text(encoding="utf-8")).get("generator") == "dualanodiff.synthetic":
                    return False
            except (json.JSONDecodeError, AttributeError):
                pass
    return looks_like_mvtec(categories)


def paper_milestones(epochs: int) -> tuple[int, ...]:
    """The U-Net's learning-rate steps at 80 % and 90 % of the epochs (160 and 180 of 200), as the paper.

    A milestone at epoch 0 is dropped: torch's MultiStepLR would apply it before the first epoch.
    """
    return tuple(sorted({m for m in (int(epochs * 0.8), int(epochs * 0.9)) if m > 0}))


# ------------------------------------------------------------------------------------------- steps


def load_quality_models(
    inception_weights: str | os.PathLike | None, lpips_vgg_weights: str | os.PathLike | None, device=None
):
    """(Inception, LPIPS-VGG) loaded once for every type and method; InputError says how to get the weights."""
    from .quality import load_inception, load_lpips_vgg

    return load_inception(inception_weights, device), load_lpips_vgg(lpips_vgg_weights, device)


def quality_of_type(
    images: Sequence[Path],
    centres: Sequence[Path],
    inception_model,
    lpips_model,
    is_splits: int = 10,
    lpips_size: int = 256,
    max_per_cluster: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """IS and IC-LPIPS of one type's generated images; a metric that the image count cannot support is
    ``None`` with the reason in ``notes`` (IS needs one image per split, IC-LPIPS a cluster of two)."""
    from ..data.images import load_rgb
    from .quality import UndefinedMetric, ic_lpips, inception_score

    for centre in centres:  # an unreadable few-shot image stops the evaluation, naming the file
        load_rgb(centre)
    out: dict[str, Any] = {"is": None, "is_std": None, "ic_lpips": None, "n_images": len(images), "notes": []}
    if len(images) >= is_splits:
        r = inception_score(list(images), splits=is_splits, model=inception_model)
        out.update(**{"is": r["is_mean"], "is_std": r["is_std"]})
    else:
        out["notes"].append(f"IS: {len(images)} images for {is_splits} splits")
    try:
        r = ic_lpips(
            list(images),
            list(centres),
            model=lpips_model,
            size=lpips_size,
            seed=seed,
            max_per_cluster=max_per_cluster,
        )
        out.update(ic_lpips=r["ic_lpips"], ic_lpips_clusters_used=r["n_clusters_used"])
    except UndefinedMetric as e:  # too few images per cluster: the metric is undefined, say why
        out["notes"].append(str(e))
    return out


def check_quality_images(images: str) -> str:
    if images not in QUALITY_IMAGES:
        raise InputError(f"--quality-images {images!r}: choose one of {', '.join(QUALITY_IMAGES)}")
    return images


def quality_of_category(
    root: str | os.PathLike,
    category: str,
    generated: Mapping[str, Sequence[GeneratedPair]],
    models: tuple,
    split: str = "strict",
    images: str = "all",
    **kwargs: Any,
) -> dict[str, Any]:
    """Per-type IS / IC-LPIPS and their averages over the types (the paper's per-category figures).

    ``generated`` should hold every pair (`read_generated(..., include_rejected=True)`); ``images="kept"``
    scores only those whose record says kept. The result names the image set it scored.
    """
    check_quality_images(images)
    per_type = {}
    for kind in sorted(generated):
        centres = few_shot_images(root, category, kind, split)
        pairs = [p for p in generated[kind] if images == "all" or p.record.get("kept", True)]
        per_type[kind] = quality_of_type([p.image for p in pairs], centres, *models, **kwargs)
        per_type[kind]["n_rejected"] = sum(not p.record.get("kept", True) for p in pairs)
    return {
        "category": category,
        "images": images,
        "types": per_type,
        "is": mean_or_none(t["is"] for t in per_type.values()),
        "ic_lpips": mean_or_none(t["ic_lpips"] for t in per_type.values()),
    }


def localize_category(
    root: str | os.PathLike,
    category: str,
    generated: Mapping[str, Sequence[GeneratedPair]],
    config,
    out_dir: str | os.PathLike,
    split: str = "strict",
    anomaly_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train the U-Net on ``train/good`` + the generated pairs (none: normal images only), test on the real
    test set of ``anomaly_types`` (default: every type of the category)."""
    from .localization import train_and_evaluate_localization

    normals = [s.image for s in normal_train_samples(root, category)]
    if not normals:
        raise InputError(f"{Path(root) / category / 'train' / GOOD}: no normal training images")
    pairs = [p for kind in sorted(generated) for p in generated[kind]]
    tests = test_set_for(root, category, split, anomaly_types)
    check_test_masks(tests)
    return train_and_evaluate_localization(normals, pairs, tests, config, out_dir)


def classify_category(
    root: str | os.PathLike,
    category: str,
    generated: Mapping[str, Sequence[GeneratedPair]],
    config,
    out_dir: str | os.PathLike,
    split: str = "strict",
    imagenet_weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """ResNet-34 on the generated images of each type, accuracy on the real remaining 2/3 of those types."""
    from .classification import train_and_evaluate_classification

    if len(generated) < 2:
        raise InputError(
            f"classification of {category!r} needs generated images of at least two anomaly types, got "
            f"{', '.join(generated) or 'none'}"
        )
    tests = test_set_for(root, category, split, list(generated))
    return train_and_evaluate_classification(generated, tests, config, imagenet_weights, out_dir)


# ------------------------------------------------------------------------------------------ tables


def _ordered(methods: Mapping[str, Any]) -> dict[str, Any]:
    known = [m for m in METHOD_ORDER if m in methods]
    return {m: methods[m] for m in known + sorted(set(methods) - set(known))}


def collect_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Every result under ``out_dir`` in the layout above: {"quality"|"localization"|"classification":
    {method: {category: result}}}, plus the model-selection modes seen."""
    out_dir = Path(out_dir)
    quality: dict[str, dict] = {}
    for p in sorted(out_dir.glob(f"{QUALITY_DIR}/*/*.json")):
        quality.setdefault(p.parent.name, {})[p.stem] = json.loads(p.read_text(encoding="utf-8"))
    localization: dict[str, dict] = {}
    selections = set()
    for p in sorted(out_dir.glob(f"{LOCALIZATION_DIR}/*/*/results.json")):
        r = json.loads(p.read_text(encoding="utf-8"))
        selections.add(r.get("selection"))
        localization.setdefault(p.parent.parent.name, {})[p.parent.name] = {
            **r["metrics"],
            "best_run": r.get("best_run"),
            "selection": r.get("selection"),
            "runs": [run["test"] for run in r.get("runs", [])],
        }
    classification: dict[str, dict] = {}
    for p in sorted(out_dir.glob(f"{CLASSIFICATION_DIR}/*/*/classification.json")):
        r = json.loads(p.read_text(encoding="utf-8"))
        classification.setdefault(p.parent.parent.name, {})[p.parent.name] = {
            k: v for k, v in r.items() if k != "loss_per_epoch"
        }
    return {
        "quality": _ordered(quality),
        "localization": _ordered(localization),
        "classification": _ordered(classification),
        "selection": sorted(s for s in selections if s),
    }


def write_tables(
    out_dir: str | os.PathLike, data_root: str | os.PathLike | None = None, with_paper: bool | None = None
) -> tuple[str, dict[str, Any]]:
    """Write the CSV files and ``results.json`` of everything under ``out_dir``; return (markdown, results).

    ``with_paper`` None: the paper's figures are shown when :func:`paper_figures_apply` says so.
    """
    from .metrics import summary_table

    out_dir = Path(out_dir)
    res = collect_results(out_dir)
    cats = {
        c for kind in ("quality", "localization", "classification") for m in res[kind].values() for c in m
    }
    paper = paper_figures_apply(data_root, sorted(cats)) if with_paper is None else with_paper
    parts: list[str] = []
    loc = res["localization"]
    if loc:
        rows = [{"method": m, "category": c, **r} for m, per in loc.items() for c, r in sorted(per.items())]
        cols = ["method", "category", *LOCALIZATION_FIELDS, "best_run", "selection", "n_images"]
        write_text_atomic(out_dir / "localization.csv", to_csv(rows, cols))
        parts.append("## Downstream localization: U-Net trained on normal + generated data (percent)\n")
        if any(s.startswith("test") for s in res["selection"]):
            parts.append(
                "Model selection on the **test set** (the authors' choice): these figures are optimistic.\n"
            )
        parts.append(methods_localization_table(loc, with_paper=paper))
        for method, per in loc.items():
            parts.append(f"\n### {method}, per category\n")
            parts.append(summary_table(per, with_paper=False))
    qual = res["quality"]
    if qual:
        rows = [
            {
                "method": m,
                "category": c,
                "anomaly_type": t,
                "images": r.get("images", "kept"),
                **{k: v for k, v in q.items() if k != "notes"},
                "notes": "; ".join(q.get("notes", [])),
            }
            for m, per in qual.items()
            for c, r in sorted(per.items())
            for t, q in sorted(r["types"].items())
        ]
        cols = ["method", "category", "anomaly_type", "images", "is", "is_std", "ic_lpips", "n_images"]
        write_text_atomic(out_dir / "quality.csv", to_csv(rows, [*cols, "n_rejected", "notes"]))
        parts.append("\n## Generation quality: Inception Score / IC-LPIPS (higher is better)\n")
        scored = sorted({r.get("images", "kept") for per in qual.values() for r in per.values()})
        parts.append("Images scored: " + "; ".join(QUALITY_IMAGES[s] for s in scored) + ".\n")
        parts.append(quality_table(qual, with_paper=paper))
    cls = res["classification"]
    if cls:
        rows = [{"method": m, "category": c, **r} for m, per in cls.items() for c, r in sorted(per.items())]
        cols = ["method", "category", "accuracy", "n_train", "n_test", "imagenet_init"]
        write_text_atomic(out_dir / "classification.csv", to_csv(rows, cols))
        parts.append("\n## Anomaly-type classification: ResNet-34 on generated images, accuracy (percent)\n")
        parts.append(classification_table(cls))
    if not parts:
        raise InputError(f"{out_dir}: no results to tabulate yet")
    write_json_atomic(out_dir / "results.json", res)
    return "\n".join(parts), res
