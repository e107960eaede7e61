"""A self-contained HTML report of an analysis: one file that opens in any browser.

Inline CSS, thumbnails as base64 PNG data URIs, the certified-accuracy plot as inline SVG
(when matplotlib is installed). No script, no external resource. Everything that comes from
a log or a file name (image names, labels, provider ids, notes) is text from an untrusted
file: it is escaped with :func:`html.escape` before it reaches the page.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from ..errors import InvalidImageError, InvalidParameterError, MissingDependencyError
from ..images import as_image, image_digest

__all__ = ["ImageFile", "find_images", "render_html", "IMAGE_SUFFIXES", "THUMBNAIL_PIXELS"]

logger = logging.getLogger(__name__)

#: Files a folder given as ``images`` contributes (searched recursively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
#: The longest side of a thumbnail as stored (larger images are shrunk; smaller ones are
#: shown enlarged, pixels kept sharp).
THUMBNAIL_PIXELS = 96
_SHOWN_PIXELS = 64

ImagesArg = Union[None, str, os.PathLike, Mapping, Iterable]


@dataclass(frozen=True)
class ImageFile:
    """An image file whose pixels match a logged image digest.

    Attributes:
        path: the file.
        digest: its digest, computed as ``RobustAPI`` does (``image_digest(as_image(path))``).
        thumbnail: the thumbnail as PNG bytes.
        size: (width, height) of the thumbnail.
    """

    path: Path
    digest: str
    thumbnail: bytes
    size: tuple


def _thumbnail(image: np.ndarray) -> tuple[bytes, tuple]:
    from PIL import Image

    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    pil = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    pil.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS), Image.Resampling.BOX)  # only ever shrinks
    out = io.BytesIO()
    pil.save(out, format="PNG", optimize=True)
    return out.getvalue(), pil.size


def _read(path: Path) -> Optional[tuple[str, np.ndarray]]:
    """(digest, canonical image) of an image file, None (logged) when it cannot be read."""
    try:
        image = as_image(path)
    except (InvalidImageError, OSError) as exc:
        logger.info("not an image for the report: %s (%s)", path, exc)
        return None
    return image_digest(image), image


def _header_size(path: Path) -> Optional[tuple[int, int]]:
    """(height, width) from the file header (no pixels decoded), None when unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as pil:
            return pil.size[1], pil.size[0]
    except Exception:  # not an image Pillow reads: as_image would refuse it as well
        return None


def find_images(images: ImagesArg, rows: Iterable[Any]) -> dict[str, ImageFile]:
    """Match image files to the certified images of ``rows`` by digest.

    Args:
        images: None; a folder (searched recursively for image files; only files whose
            pixels give a digest of ``rows`` are used); one image file; a mapping of image
            name or digest → file path; or an iterable of file paths. A file is digested as
            ``RobustAPI`` does, and used only when its digest is one the log holds, so a
            thumbnail always shows the certified image (a name that maps to another picture
            is ignored, with a logged warning).
        rows: the report's rows (``CertifiedImage``: ``image``, ``image_name``, ``image_shape``).

    Returns:
        digest → :class:`ImageFile`.

    Raises:
        InvalidParameterError: ``images`` is of another type, or names a path that does not exist.
    """
    rows = list(rows)
    wanted = {row.image for row in rows}
    found: dict[str, ImageFile] = {}
    if images is None:
        return found

    def use(path: Path, expected: Optional[set] = None) -> None:
        read = _read(path)
        if read is None:
            return
        digest, image = read
        if digest not in wanted or (expected is not None and digest not in expected):
            if expected is not None:
                logger.warning("%s does not hold the logged image it was given for; no thumbnail from it", path)
            return
        if digest not in found:
            thumbnail, size = _thumbnail(image)
            found[digest] = ImageFile(path=path, digest=digest, thumbnail=thumbnail, size=size)

    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            shapes = {tuple(row.image_shape[:2]) for row in rows if row.image_shape}
            candidates = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            for candidate in candidates:
                if len(found) == len(wanted):
                    break
                if shapes and _header_size(candidate) not in shapes:
                    continue  # cannot be a logged image: not decoded (a folder may hold many photos)
                use(candidate)
            return found
        if not path.is_file():
            raise InvalidParameterError(f"images: no file or folder at {os.fspath(path)!r}")
        use(path)
        return found
    if isinstance(images, Mapping):
        by_name: dict[str, set] = {}
        for row in rows:
            by_name.setdefault(row.image, set()).add(row.image)
            if row.image_name:
                by_name.setdefault(row.image_name, set()).add(row.image)
        for key, value in images.items():
            if not isinstance(value, (str, os.PathLike)) or not Path(value).is_file():
                raise InvalidParameterError(f"images[{key!r}]: no image file at {value!r}")
            expected = by_name.get(str(key)) or by_name.get(str(key).lower())
            if expected:
                use(Path(value), expected)
            else:
                logger.info("images: %r names no certified image of the report", key)
        return found
    try:
        paths = [Path(p) for p in images]
    except TypeError:
        raise InvalidParameterError(
            "images must be a folder, an image file, a mapping of image name or digest to file, or a list of "
            f"files; got {type(images).__name__}"
        ) from None
    for path in paths:
        if not path.is_file():
            raise InvalidParameterError(f"images: no file at {os.fspath(path)!r}")
        use(path)
    return found


# ------------------------------------------------------------------------------------ page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; display: block; }
.digest { font-family: ui-monospace, monospace; color: #666; font-size: 0.85em; }
.abstain { color: #888; font-style: italic; }
.correct { color: #1a7f37; } .wrong { color: #b42318; }
figure { margin: 1em 0; } figure svg { width: 100%; max-width: 760px; height: auto; }
ul.notes { font-size: 0.85em; color: #444; }
""".strip()


def _e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _usd(value: Optional[float], invalid: int = 0, digits: int = 2) -> str:
    if invalid or (value is not None and not math.isfinite(value)):
        return "unknown"
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _known_sum(values: Iterable[Optional[float]]) -> Optional[float]:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _thumb_cell(row: Any, files: Mapping) -> str:
    image = files.get(row.image)
    if image is None:
        return f'<td class="digest" title="{_e(row.image)}">{_e(row.image[:12])}</td>'
    width, height = image.size
    factor = max(1, _SHOWN_PIXELS // max(width, height))
    data = base64.b64encode(image.thumbnail).decode("ascii")
    return (f'<td><img class="thumb" src="data:image/png;base64,{data}" width="{width * factor}" '
            f'height="{height * factor}" alt="{_e(_row_name(row, files))}"></td>')


def _row_name(row: Any, files: Mapping) -> str:
    if row.image_name:
        return row.image_name
    image = files.get(row.image)
    return image.path.name if image is not None else row.image[:12]


def _image_rows(report: Any, group: Any, files: Mapping) -> list[str]:
    out = ['<table class="images"><thead><tr><th>image</th><th>name</th><th>certified label</th>'
           '<th>ground truth</th><th class="num">radius</th><th class="num">p_lower</th>'
           '<th class="num">queries</th><th class="num">USD</th></tr></thead><tbody>']
    for row in report.group_rows(group):
        if row.label is None:
            label = '<span class="abstain">abstain</span>'
        else:
            label = _e(row.label)
        if row.truth is None:
            truth = "-"
        else:
            mark = ('<span class="correct" title="certified with the true label">&#10003;</span>' if row.correct
                    else '<span class="wrong" title="not certified with the true label">&#10007;</span>')
            truth = f"{_e(row.truth)} {mark}"
        out.append(
            "<tr>" + _thumb_cell(row, files)
            + f'<td>{_e(_row_name(row, files))}<br><span class="digest" title="{_e(row.image)}">'
            + f"{_e(row.image[:12])}</span></td>"
            + f"<td>{label}</td><td>{truth}</td>"
            + f'<td class="num">{row.radius:.3f}</td>'
            + f'<td class="num">{"-" if row.p_lower is None else f"{row.p_lower:.4f}"}</td>'
            + f'<td class="num">{"-" if row.queries is None else row.queries}</td>'
            + f'<td class="num">{_usd(row.cost_usd, row.invalid_costs, digits=4)}</td></tr>'
        )
    out.append("</tbody></table>")
    return out


def _groups_table(report: Any, names: list) -> list[str]:
    head = "".join(f'<th class="num">r={r:g}</th>' for r in report.radii)
    out = [f'<table class="groups"><thead><tr><th>setting</th><th class="num">images</th>{head}'
           '<th class="num">ACR</th><th class="num">abstain %</th><th class="num">queries/img</th>'
           '<th class="num">USD</th></tr></thead><tbody>']
    for name, group in zip(names, report.groups):
        cells = "".join(f'<td class="num">{_percent(group.certified_accuracy[float(r)])}</td>' for r in report.radii)
        per_image = group.queries_per_image
        out.append(
            f'<tr><td>{_e(name)}</td><td class="num">{group.images}</td>{cells}'
            f'<td class="num">{"-" if math.isnan(group.acr) else f"{group.acr:.3f}"}</td>'
            f'<td class="num">{100 * group.abstention_rate:.1f}</td>'
            f'<td class="num">{"-" if per_image is None else f"{per_image:.1f}"}</td>'
            f'<td class="num">{_usd(group.cost_usd, group.invalid_costs)}</td></tr>'
        )
    out.append("</tbody></table>")
    return out


def render_html(report: Any, files: Mapping, title: Optional[str] = None, plot: bool = True) -> str:
    """The HTML page of ``report`` (an ``AnalysisReport``) with the thumbnails of ``files``
    (digest → :class:`ImageFile`, from :func:`find_images`). See ``AnalysisReport.to_html``."""
    names = report.group_labels()
    rows = report.rows
    judged = [row for row in rows if row.truth is not None]
    queries = _known_sum([row.queries for row in rows] + [report.predict_queries, report.incomplete_queries])
    cost = _known_sum([row.cost_usd for row in rows] + [report.predict_cost_usd, report.incomplete_cost_usd])
    title = title or "Certified predictions"
    # the files the rows came from (a folder source stands for its logs), by file name only
    sources = sorted({os.path.basename(str(row.source).rstrip("/\\")) for row in rows}
                     or {os.path.basename(str(source).rstrip("/\\")) for source in report.sources})
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>",
        '<dl class="summary">',
        f"<dt>images</dt><dd>{len(rows)} certified image(s) in {len(report.groups)} setting(s)</dd>",
        f"<dt>certified</dt><dd>{sum(not row.abstained for row in rows)} (the others abstained)</dd>",
        f"<dt>ground truth</dt><dd>{_e(report.short_truth_description())}"
        + (f" ({len(judged)} of {len(rows)} images have one)" if len(judged) != len(rows) else "") + "</dd>",
        f"<dt>queries paid</dt><dd>{'unknown' if queries is None else f'{queries:,}'}</dd>",
        f"<dt>USD</dt><dd>{_usd(cost, digits=2)} (at the prices recorded in the log)</dd>",
        f"<dt>logs</dt><dd>{_e(', '.join(sources))}</dd>",
        "</dl>",
    ]
    if judged:
        out.append("<h2>Certified accuracy (%) at radius r</h2>")
    else:
        out.append("<h2>Settings</h2>")
    out += _groups_table(report, names)
    if plot and judged:
        try:
            svg = report.plot_svg()
        except MissingDependencyError:
            out.append("<p>(pip install 'robust-api[plot]' to see the certified-accuracy plot here)</p>")
        else:
            out.append(f'<figure>{svg}<figcaption>Certified accuracy against L2 radius, one curve per setting; '
                       "a sequential curve ends (dot) at its target radius.</figcaption></figure>")
    for name, group in zip(names, report.groups):
        out.append(f"<h2>{_e(name)}</h2>")
        out += _image_rows(report, group, files)
    notes = report.notes()
    if notes:
        out.append('<h2>Notes</h2><ul class="notes">')
        out += [f"<li>{_e(line)}</li>" for line in notes]
        out.append("</ul>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)
