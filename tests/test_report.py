"""The HTML report: every section type written, parsed back, images decoded; the PIL drawing helpers."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualanodiff.report import Report, image_grid, loss_curve_png, nice_ticks, overlay_mask


class _Collect(HTMLParser):
    """Text per tag (h1, h2, th, td, figcaption) and every img src / a href / link / script."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.external_tags = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
            return
        if tag == "a":
            self.hrefs.append(a["href"])
        if tag in ("link", "script", "iframe"):
            self.external_tags += 1
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and data.strip():
            self.text.setdefault(self.stack[-1], []).append(data.strip())


def _rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_report_with_every_section_type(tmp_path: Path) -> None:
    r = Report("Baselines <on> bottle", thumb_side=64)
    r.add_text("Summary", "First paragraph & more.\n\nSecond <b>paragraph</b>.")
    images = [_rgb(k, 40, 100) for k in range(3)]
    r.add_images("Pairs", images, ["pair a", "pair b", "pair c"], ncols=2)
    long_caption = "The probe holds the timesteps and noise fixed, " * 6
    r.add_figure("Loss", loss_curve_png(range(10), np.linspace(1, 0.1, 10)), caption=long_caption)
    r.add_table(
        "Scores", [{"type": "crack", "AUROC": 0.98765}, {"type": "hole", "AUROC": 0.5, "note": "few"}]
    )
    r.add_settings({"seed": 3, "data": {"root": "/data/mvtec", "category": "bottle"}})
    out = r.write(tmp_path / "report.html")

    doc = out.read_text(encoding="utf-8")
    p = _Collect()
    p.feed(doc)
    p.close()
    assert p.text["h1"] == ["Baselines <on> bottle"]  # escaped, so it is text and not a tag
    assert p.text["h2"] == ["Summary", "Pairs", "Loss", "Scores", "Settings"]
    assert "Second <b>paragraph</b>." in p.text["p"]
    assert p.text["th"] == ["type", "AUROC", "note", "setting", "value"]
    for cell in [
        "crack",
        "0.9877",
        "hole",
        "0.5",
        "few",
        "seed",
        "3",
        "data.root",
        "/data/mvtec",
        "data.category",
    ]:
        assert cell in p.text["td"]
    assert p.text["figcaption"] == [
        "pair a",
        "pair b",
        "pair c",
        long_caption.strip(),
    ]  # whole, to wrap in the page

    # Self-contained: images are data URIs, no scripts/stylesheets, links only to the grids beside it.
    assert len(p.srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert p.external_tags == 0 and "http://" not in doc and "https://" not in doc
    decoded = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in p.srcs]
    assert [im.size for im in decoded[:3]] == [(64, 26)] * 3  # thumbnails, aspect kept
    assert decoded[3].size == (640, 360)  # a figure keeps its size
    thumb = np.asarray(decoded[0].convert("RGB"), dtype=np.float64)
    want = np.asarray(Image.fromarray(images[0]).resize((64, 26), Image.LANCZOS), dtype=np.float64)
    assert np.abs(thumb - want).mean() < 8  # the thumbnail is of the right picture

    grids = [h for h in p.hrefs if not h.startswith("#")]
    assert grids == ["report-pairs.png", "report-loss.png"]
    grid = Image.open(tmp_path / "report-pairs.png")
    assert grid.size == image_grid(images, 2, ["pair a", "pair b", "pair c"]).size
    # A figure's file is the figure alone: its caption is a paragraph, not a label cut to one line.
    figure = loss_curve_png(range(10), np.linspace(1, 0.1, 10))
    assert Image.open(tmp_path / "report-loss.png").size == image_grid([figure], 1).size  # no label row
    assert [h[1:] for h in p.hrefs if h.startswith("#")] == ["summary", "pairs", "loss", "scores", "settings"]
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]  # atomic writes left nothing


def test_image_grid_places_each_image_in_its_cell() -> None:
    ims = [_rgb(k, 10, 12) for k in range(5)]
    grid = np.asarray(image_grid(ims, ncols=3, pad=2))
    assert grid.shape == (2 + 2 * (10 + 2), 2 + 3 * (12 + 2), 3)
    for k, im in enumerate(ims):
        r, c = divmod(k, 3)
        y, x = 2 + r * 12, 2 + c * 14
        assert np.array_equal(grid[y : y + 10, x : x + 12], im)
    assert (grid[2 + 12 : 2 + 22, 2 + 2 * 14 : 2 + 2 * 14 + 12] == 255).all()  # the empty sixth cell
    labelled = np.asarray(image_grid(ims, ncols=3, labels=[f"#{k}" for k in range(5)], pad=2))
    assert labelled.shape[0] > grid.shape[0] and labelled.shape[1] == grid.shape[1]
    with pytest.raises(ValueError, match="2 labels for 5 images"):
        image_grid(ims, 3, labels=["a", "b"])


def test_overlay_mask_fills_and_outlines() -> None:
    image = _rgb(0, 12, 12)
    mask = np.zeros((12, 12), dtype=bool)
    mask[3:9, 2:10] = True
    out = overlay_mask(image, mask, colour=(0, 255, 0), alpha=0.25)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])  # outside untouched
    edge = mask.copy()
    edge[4:8, 3:9] = False  # the one-pixel border of the rectangle
    assert (out[edge] == (0, 255, 0)).all()
    inner = mask & ~edge
    want = np.rint(0.75 * image[inner].astype(np.float64) + 0.25 * np.array([0, 255, 0]))
    # The blend is float32: within its rounding of a half level, rint may go the other way (one level at most).
    assert np.abs(out[inner].astype(np.float64) - want).max() <= 1
    pil = overlay_mask(Image.fromarray(image), mask)
    assert isinstance(pil, Image.Image) and pil.size == (12, 12)
    with pytest.raises(ValueError, match="mask shape"):
        overlay_mask(image, mask[:5])


def _line_pixels(img: Image.Image) -> np.ndarray:
    a = np.asarray(img).astype(int)
    return (a[..., 2] > 150) & (a[..., 0] < 90)  # the blue line


def test_loss_curve_draws_the_data_the_right_way_up() -> None:
    steps = np.arange(100)
    for losses, falling in [(np.linspace(2.0, 0.1, 100), True), (np.linspace(0.1, 2.0, 100), False)]:
        img = loss_curve_png(steps, losses, size=(400, 240))
        assert img.size == (400, 240)
        ys, xs = np.nonzero(_line_pixels(img))
        assert len(xs) > 200
        left, right = ys[xs < xs.min() + 20].mean(), ys[xs > xs.max() - 20].mean()
        assert (left < right) == falling  # pixel y grows downwards
    with_nan = loss_curve_png([0, 1, 2, 3], [1.0, float("nan"), 0.5, 0.25])
    assert _line_pixels(with_nan).any()
    assert not _line_pixels(loss_curve_png([], [])).any()
    with pytest.raises(ValueError, match="3 steps for 2 losses"):
        loss_curve_png([1, 2, 3], [1, 2])


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 5000) == [0, 1000, 2000, 3000, 4000, 5000]
    # Exact: each tick is round(v, 12), the float nearest its decimal value, as the literals are.
    assert nice_ticks(0.013, 0.231) == [0.05, 0.1, 0.15, 0.2]
    ticks = nice_ticks(-3.7, 12.2, target=6)
    steps = np.diff(ticks)
    assert (steps == steps[0]).all() and steps[0] in (1, 2, 5)  # integer ticks: exact differences
    assert (
        ticks[0] >= -3.7 and ticks[-1] <= 12.2 and ticks[0] - steps[0] < -3.7 and ticks[-1] + steps[0] > 12.2
    )
