"""A self-contained HTML report: image grids, mask overlays, loss curves, tables, settings.

One ``.html`` file with every picture embedded as a base64 PNG thumbnail and inline CSS, so it can
be mailed or archived and opens offline; the full-size grids are also written as PNGs beside it.
Drawing uses PIL only (no matplotlib): the report needs a handful of plain figures, not a plotting
library as a dependency.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .io import save_image_atomic, write_text_atomic

ImageLike = Image.Image | np.ndarray


# -- pictures ----------------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def to_pil(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image, a uint8 (H, W[, 3]) array, a bool mask or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> float:
    return draw.textlength(text, font=font)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "...", font) > width:
        text = text[:-1]
    return text + "..."


def image_grid(
    images: Sequence[ImageLike],
    ncols: int,
    labels: Sequence[str] | None = None,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Images in rows of ``ncols`` cells of the largest image's size (smaller ones centred), labels below."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    pils = [to_pil(im) for im in images]
    ncols = max(1, min(ncols, len(pils)))
    nrows = math.ceil(len(pils) / ncols)
    cw, ch = max(p.width for p in pils), max(p.height for p in pils)
    font = _font(max(10, min(16, cw // 12)))
    label_h = (font.size + 6 if hasattr(font, "size") else 16) if labels is not None else 0
    grid = Image.new("RGB", (pad + ncols * (cw + pad), pad + nrows * (ch + label_h + pad)), background)
    draw = ImageDraw.Draw(grid)
    for k, p in enumerate(pils):
        r, c = divmod(k, ncols)
        x0, y0 = pad + c * (cw + pad), pad + r * (ch + label_h + pad)
        grid.paste(p, (x0 + (cw - p.width) // 2, y0 + (ch - p.height) // 2))
        if labels is not None:
            text = _fit_text(draw, str(labels[k]), font, cw)
            tx = x0 + (cw - _text_width(draw, text, font)) / 2
            draw.text((tx, y0 + ch + 2), text, fill=(30, 30, 30), font=font)
    return grid


def overlay_mask(
    image: ImageLike, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.45
) -> ImageLike:
    """The image with the mask filled in ``colour`` at opacity ``alpha`` and outlined in solid ``colour``.

    Returns the same kind it was given (PIL image or uint8 array).
    """
    rgb = np.asarray(to_pil(image)).astype(np.float32)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {rgb.shape[:2]}")
    col = np.asarray(colour, dtype=np.float32)
    out = rgb.copy()
    out[mask] = (1.0 - alpha) * rgb[mask] + alpha * col
    edge = mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)
    out[edge] = col
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(out) if isinstance(image, Image.Image) else out


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi], about ``target`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt_tick(v: float) -> str:
    return "0" if v == 0 else f"{v:.4g}"


def loss_curve_png(
    steps: Sequence[float],
    losses: Sequence[float],
    title: str = "training loss",
    size: tuple[int, int] = (640, 360),
    xlabel: str = "step",
    ylabel: str = "loss",
) -> Image.Image:
    """A small line chart (PIL only): axes with round ticks, light grid, axis labels, title.

    Non-finite losses are skipped; the y range is padded by 5% so the line does not touch the frame.
    """
    steps_a = np.asarray(steps, dtype=np.float64)
    loss_a = np.asarray(losses, dtype=np.float64)
    if steps_a.shape != loss_a.shape:
        raise ValueError(f"{len(steps_a)} steps for {len(loss_a)} losses")
    ok = np.isfinite(steps_a) & np.isfinite(loss_a)
    steps_a, loss_a = steps_a[ok], loss_a[ok]
    W, H = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    left, right, top, bottom = 64, 16, 30, 44
    x0, x1, y0, y1 = left, W - right, top, H - bottom  # plot area in pixels (y0 top)
    draw.text((left, 8), title, fill=(20, 20, 20), font=font)
    if len(steps_a) == 0:
        draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
        draw.text(((x0 + x1) / 2 - 30, (y0 + y1) / 2), "no data", fill=(120, 120, 120), font=font)
        return img
    sx_lo, sx_hi = float(steps_a.min()), float(steps_a.max())
    if sx_hi == sx_lo:
        sx_lo, sx_hi = sx_lo - 1, sx_hi + 1
    ly_lo, ly_hi = float(loss_a.min()), float(loss_a.max())
    span = (ly_hi - ly_lo) or (abs(ly_hi) or 1.0)
    ly_lo, ly_hi = ly_lo - 0.05 * span, ly_hi + 0.05 * span

    def px(s: float) -> float:
        return x0 + (s - sx_lo) / (sx_hi - sx_lo) * (x1 - x0)

    def py(v: float) -> float:
        return y1 - (v - ly_lo) / (ly_hi - ly_lo) * (y1 - y0)

    grid_c, axis_c, text_c = (232, 232, 232), (90, 90, 90), (60, 60, 60)
    for t in nice_ticks(ly_lo, ly_hi):
        if ly_lo <= t <= ly_hi:
            y = py(t)
            draw.line((x0, y, x1, y), fill=grid_c)
            draw.line((x0 - 4, y, x0, y), fill=axis_c)
            label = _fmt_tick(t)
            draw.text((x0 - 7 - draw.textlength(label, font=small), y - 6), label, fill=text_c, font=small)
    for t in nice_ticks(sx_lo, sx_hi):
        if sx_lo <= t <= sx_hi:
            x = px(t)
            draw.line((x, y0, x, y1), fill=grid_c)
            draw.line((x, y1, x, y1 + 4), fill=axis_c)
            label = _fmt_tick(t)
            draw.text((x - draw.textlength(label, font=small) / 2, y1 + 6), label, fill=text_c, font=small)
    draw.line((x0, y0, x0, y1), fill=axis_c)
    draw.line((x0, y1, x1, y1), fill=axis_c)
    points = [(px(s), py(v)) for s, v in zip(steps_a, loss_a)]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2, joint="curve")
    else:
        (x, y) = points[0]
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(31, 119, 180))
    draw.text(((x0 + x1 - draw.textlength(xlabel, font=small)) / 2, H - 18), xlabel, fill=text_c, font=small)
    label_img = Image.new("RGB", (int(draw.textlength(ylabel, font=small)) + 4, 14), (255, 255, 255))
    ImageDraw.Draw(label_img).text((2, 0), ylabel, fill=text_c, font=small)
    label_img = label_img.rotate(90, expand=True)
    img.paste(label_img, (6, int((y0 + y1 - label_img.height) / 2)))
    return img


def png_base64(image: ImageLike, max_side: int | None = None) -> str:
    """The image as base64 PNG text, shrunk (aspect kept) so its longer side is at most ``max_side``."""
    pil = to_pil(image)
    if max_side is not None and max(pil.size) > max_side:
        pil = pil.copy()
        pil.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- the report --------------------------------------------------------------------------------------
_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
  font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 64px; }
header { border-bottom: 1px solid var(--line); margin-bottom: 8px; padding-bottom: 12px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.meta { color: var(--muted); font-size: 13px; }
nav { font-size: 13px; margin: 12px 0 4px; color: var(--muted); display: flex; flex-wrap: wrap; gap: 4px 14px; }
nav a { color: var(--accent); text-decoration: none; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
section { margin-top: 30px; }
h2 { font-size: 19px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p { margin: 0 0 10px; max-width: 80ch; }
.grid { display: grid; gap: 10px; }
figure { margin: 0; background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 6px; }
figure img { display: block; width: 100%; height: auto; border-radius: 3px; }
figure img.natural { width: auto; max-width: 100%; margin: 0 auto; }
figcaption { font-size: 12px; color: var(--muted); text-align: center; margin-top: 4px;
  overflow-wrap: anywhere; }
.full { font-size: 12px; margin-top: 6px; }
.full a { color: var(--accent); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; min-width: 40%; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
th.num { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
table.settings td:first-child { font-family: ui-monospace, "DejaVu Sans Mono", monospace; color: var(--muted);
  white-space: nowrap; }
""".strip()


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _cell(value: Any) -> tuple[str, bool]:
    """(HTML text, is numeric) of a table value; floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return html.escape("" if value is None else str(value)), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return ("nan" if math.isnan(v) else f"{v:.4g}"), True
    return html.escape(str(value)), False


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


@dataclass
class _Section:
    heading: str
    kind: str  # text | images | table | settings
    body: Any
    ncols: int = 4
    slug: str = ""
    thumb: int | None = None  # longer side of the embedded pictures; None = full size


@dataclass
class Report:
    """Collects sections in order and writes them as one self-contained HTML file."""

    title: str
    thumb_side: int = 384  # longer side of the embedded thumbnails, in pixels
    sections: list[_Section] = field(default_factory=list)
    _slugs: set[str] = field(default_factory=set, repr=False)

    def _add(self, section: _Section) -> None:
        section.slug = _slug(section.heading, self._slugs)
        self.sections.append(section)

    def add_text(self, heading: str, text: str) -> None:
        """A paragraph section; blank lines separate paragraphs."""
        self._add(_Section(heading, "text", text))

    def add_images(
        self,
        heading: str,
        images: Sequence[ImageLike],
        captions: Sequence[str] | None = None,
        ncols: int = 4,
    ) -> None:
        """A grid of images with optional captions; the full-size grid is also written beside the HTML."""
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        pils = [to_pil(im) for im in images]
        body = (pils, list(captions) if captions else None)
        self._add(_Section(heading, "images", body, ncols=ncols, thumb=self.thumb_side))

    def add_figure(self, heading: str, image: ImageLike, caption: str | None = None) -> None:
        """One picture at full size (a chart, a large grid): not shrunk to a thumbnail."""
        self._add(_Section(heading, "images", ([to_pil(image)], [caption] if caption else None), ncols=1))

    def add_table(self, heading: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """A table; columns are the keys of all rows in order of first appearance."""
        self._add(_Section(heading, "table", [dict(r) for r in rows]))

    def add_settings(self, settings: Mapping[str, Any], heading: str = "Settings") -> None:
        """The settings of a run as a key/value table (nested mappings flattened to ``a.b``)."""
        self._add(_Section(heading, "settings", _flatten(settings)))

    # -- rendering ---------------------------------------------------------------------------------
    def _render_section(self, s: _Section, grid_files: dict[str, str]) -> str:
        parts = [f'<section id="{s.slug}">', f"<h2>{html.escape(s.heading)}</h2>"]
        if s.kind == "text":
            for para in re.split(r"\n\s*\n", str(s.body).strip()):
                if para.strip():
                    parts.append(f"<p>{html.escape(para.strip())}</p>")
        elif s.kind == "images":
            pils, captions = s.body
            cols = max(1, min(s.ncols, len(pils)))
            # One column: the figure takes the image's own width instead of stretching it blurry.
            track = "minmax(0, max-content)" if cols == 1 else f"repeat({cols}, minmax(0, 1fr))"
            parts.append(f'<div class="grid" style="grid-template-columns: {track}">')
            for k, pil in enumerate(pils):
                cap = html.escape(captions[k]) if captions else ""
                alt = cap or f"{html.escape(s.heading)} {k + 1}"
                data = png_base64(pil, s.thumb)
                # Charts and large pictures keep their pixel size; small thumbnails fill their cell.
                cls = ' class="natural"' if pil.width >= 256 else ""
                parts.append(f'<figure><img{cls} alt="{alt}" src="data:image/png;base64,{data}">')
                if cap:
                    parts.append(f"<figcaption>{cap}</figcaption>")
                parts.append("</figure>")
            parts.append("</div>")
            if s.slug in grid_files:
                name = html.escape(grid_files[s.slug])
                what = "Full-size image" if len(pils) == 1 else "Full-size grid"
                parts.append(f'<div class="full">{what}: <a href="{name}">{name}</a></div>')
        elif s.kind in ("table", "settings"):
            if s.kind == "table":
                columns: list[str] = []
                for row in s.body:
                    columns.extend(k for k in row if k not in columns)
                rows = [[row.get(c) for c in columns] for row in s.body]
                cls = ""
            else:
                columns, rows, cls = ["setting", "value"], [list(kv) for kv in s.body], ' class="settings"'
            parts.append(f'<div class="table-wrap"><table{cls}><thead><tr>')
            numeric = [
                all(_cell(r[j])[1] for r in rows if r[j] is not None) and cls == ""
                for j in range(len(columns))
            ]
            parts.extend(
                f'<th class="num">{html.escape(str(c))}</th>' if n else f"<th>{html.escape(str(c))}</th>"
                for c, n in zip(columns, numeric)
            )
            parts.append("</tr></thead><tbody>")
            for row in rows:
                cells = [(_cell(v)[0], n) for v, n in zip(row, numeric)]
                parts.append(
                    "<tr>"
                    + "".join(f'<td class="num">{t}</td>' if n else f"<td>{t}</td>" for t, n in cells)
                    + "</tr>"
                )
            parts.append("</tbody></table></div>")
        parts.append("</section>")
        return "\n".join(parts)

    def to_html(self, grid_files: dict[str, str] | None = None) -> str:
        """The whole document as a string (``grid_files``: section slug -> file name of its full grid)."""
        grid_files = grid_files or {}
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        nav = "".join(f'<a href="#{s.slug}">{html.escape(s.heading)}</a>' for s in self.sections)
        body = "\n".join(self._render_section(s, grid_files) for s in self.sections)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>\n{_CSS}\n</style></head>\n"
            f"<body><main>\n<header><h1>{html.escape(self.title)}</h1>"
            f'<div class="meta">dualanodiff report, written {stamp}</div>'
            + (f"<nav>{nav}</nav>" if len(self.sections) > 1 else "")
            + f"</header>\n{body}\n</main></body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the HTML (atomically) and, beside it, ``<stem>-<section>.png`` full-size image grids."""
        path = Path(path)
        grid_files: dict[str, str] = {}
        for s in self.sections:
            if s.kind == "images":
                pils, captions = s.body
                name = f"{path.stem}-{s.slug}.png"
                # A figure's caption is a paragraph: it stays in the HTML, where it wraps; a grid cell's label
                # would cut it to one line.
                labels = captions if len(pils) > 1 else None
                save_image_atomic(path.parent / name, image_grid(pils, s.ncols, labels))
                grid_files[s.slug] = name
        write_text_atomic(path, self.to_html(grid_files))
        return path
