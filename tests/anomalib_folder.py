"""How anomalib's Folder datamodule reads a tree, restated for tests that must run without anomalib.

From anomalib 2.7.0, ``data/datasets/image/folder.py::make_folder_dataset`` and
``data/utils/path.py::_prepare_files_labels``: each directory is listed recursively (``glob("**/*")``),
keeping files whose lower-case suffix is one of torchvision's IMG_EXTENSIONS (hidden files included);
all rows are sorted by full path; the k-th mask (in that order) is given to the k-th abnormal image, and
the image's stem must be contained in its mask's stem. Normal images go to the train split, abnormal and
normal-test images to the test split. A mask count that differs from the abnormal count is an error there.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS


def _files(root: Path, dirs: str | list[str] | None) -> list[Path]:
    if dirs is None:
        return []
    out = []
    for d in [dirs] if isinstance(dirs, str) else dirs:
        path = root / d
        found = [f for f in path.glob("**/*") if f.suffix.lower() in IMG_EXTENSIONS and not f.is_dir()]
        if not found:
            raise RuntimeError(f"Found 0 images in {path}")  # as anomalib does
        out += found
    return out


def folder_samples(
    root: str | Path,
    normal_dir: str | list[str],
    abnormal_dir: str | list[str] | None = None,
    normal_test_dir: str | list[str] | None = None,
    mask_dir: str | list[str] | None = None,
) -> dict[str, list[tuple[str, str | None]]]:
    """{"train": [(image, None)], "test": [(image, mask or None)]} as anomalib's Folder would build them."""
    root = Path(root)
    rows = [(str(f), "normal") for f in _files(root, normal_dir)]
    rows += [(str(f), "abnormal") for f in _files(root, abnormal_dir)]
    rows += [(str(f), "normal_test") for f in _files(root, normal_test_dir)]
    rows += [(str(f), "mask") for f in _files(root, mask_dir)]
    rows.sort(key=lambda r: r[0])
    abnormal = [r[0] for r in rows if r[1] == "abnormal"]
    masks = [r[0] for r in rows if r[1] == "mask"]
    paired: dict[str, str | None] = {}
    if masks and abnormal:
        if len(masks) != len(abnormal):
            raise ValueError(f"{len(masks)} masks for {len(abnormal)} abnormal images")
        for image, mask in zip(abnormal, masks):
            if Path(image).stem not in Path(mask).stem:
                raise ValueError(f"mismatch between {image} and {mask}")
            paired[image] = mask
    return {
        "train": [(p, None) for p, kind in rows if kind == "normal"],
        "test": [(p, paired.get(p)) for p, kind in rows if kind in ("abnormal", "normal_test")],
    }
