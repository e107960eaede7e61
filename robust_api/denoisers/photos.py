"""Natural photos that Debian packages install, split by photo into train / validation / test.

Nothing here is shipped or downloaded: the photos are read from the Debian packages a user
installs (``apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds
plasma-workspace-wallpapers opencv-doc``). :data:`CATALOGUE` names the files that are
photographs (the packages also hold drawings and renders, which are left out) and assigns each
photo to one split, once and for all, so that no photo is in two splits and a denoiser trained
on ``"train"`` is measured on photos it never saw. The licence of each photo is read from its
package's machine-readable ``/usr/share/doc/<package>/copyright`` file at load time.

Evaluation crops (:func:`evaluation_crops`) are 224×224 views of a photo as an ImageNet
classifier would see it: the photo resized so its shorter side is 256 and center-cropped, and
four more views from the photo resized to a shorter side of 512.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InvalidParameterError, MissingDependencyError

__all__ = ["Photo", "CATALOGUE", "SPLITS", "DEBIAN_PACKAGES", "installed_photos", "load_photo_array",
           "load_split", "evaluation_crops", "photo_licence"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

_BACKGROUNDS = "/usr/share/backgrounds"
_PLASMA = "/usr/share/wallpapers"
_OPENCV = "/usr/share/doc/opencv-doc/examples/data"


@dataclass(frozen=True)
class Photo:
    """One catalogued photo: ``name`` (unique), the Debian ``package`` that installs it, the
    installed ``path`` (for Plasma wallpapers the folder, whose largest image is used) and its
    ``split`` (``"train"``, ``"val"`` or ``"test"``); ``source`` is its path in the package's
    source tree, which the package's copyright file names."""

    name: str
    package: str
    path: str
    split: str
    source: str


def _lomiri(file: str, package: str, split: str) -> Photo:
    return Photo(file.rsplit(".", 1)[0].split("_by_")[0].lower(), package, f"{_BACKGROUNDS}/{file}", split,
                 f"{package.rsplit('-', 1)[1]}/{file}")


def _mate(file: str, split: str) -> Photo:
    return Photo(file.rsplit(".", 1)[0].lower(), "mate-backgrounds", f"{_BACKGROUNDS}/mate/nature/{file}", split,
                 f"nature/{file}")


def _plasma(folder: str, split: str) -> Photo:
    return Photo(folder.lower(), "plasma-workspace-wallpapers", f"{_PLASMA}/{folder}", split, folder)


def _opencv(file: str, split: str) -> Photo:
    return Photo("opencv-" + file.rsplit(".", 1)[0].lower(), "opencv-doc", f"{_OPENCV}/{file}", split, f"samples/data/{file}")


_L16, _L20 = "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"

#: Every photograph this reader knows, with its fixed split (13 test, 6 validation, the rest train).
CATALOGUE: Tuple[Photo, ...] = (
    _lomiri("Bridge_by_Sander_Klootwijk.jpg", _L16, "train"),
    _lomiri("Dragonfly_by_Bolly.jpg", _L16, "test"),
    _lomiri("Picture_0B_by_freespace.jpg", _L16, "val"),
    _lomiri("Picture_1A_by_freespace.jpg", _L16, "train"),
    _lomiri("Wine_by_Jakkub_Mede.jpg", _L16, "test"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi.jpg", _L16, "train"),
    _lomiri("analogpattern_by_Peter_Nerlich.jpg", _L16, "train"),
    _lomiri("free_by_Peter_Nerlich.jpg", _L16, "train"),
    _lomiri("friends_by_Aitzol_Berasategi.jpg", _L16, "test"),
    _lomiri("greentock_by_Peter_Nerlich.jpg", _L16, "train"),
    _lomiri("life_by_Aitzol_Berasategi.jpg", _L16, "train"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi.jpg", _L16, "train"),
    _lomiri("seeding_by_Clements_Engelhardt.jpg", _L16, "val"),
    _lomiri("sunset_by_Aitzol_Berasategi.jpg", _L16, "train"),
    _lomiri("Infinite-Sea_by_Aury88.jpg", _L20, "train"),
    _lomiri("Kleiber_by_Lukas_Baubkus.jpg", _L20, "test"),
    _mate("Aqua.jpg", "train"),
    _mate("Blinds.jpg", "train"),
    _mate("Dune.jpg", "train"),
    _mate("FreshFlower.jpg", "train"),
    _mate("Garden.jpg", "val"),
    _mate("GreenMeadow.jpg", "train"),
    _mate("LadyBird.jpg", "test"),
    _mate("RainDrops.jpg", "train"),
    _mate("Storm.jpg", "train"),
    _mate("TwoWings.jpg", "train"),
    _mate("Wood.jpg", "train"),
    _mate("YellowFlower.jpg", "test"),
    _plasma("BytheWater", "val"),
    _plasma("ColdRipple", "train"),
    _plasma("ColorfulCups", "test"),
    _plasma("DarkestHour", "train"),
    _plasma("EveningGlow", "test"),
    _plasma("FallenLeaf", "test"),
    _plasma("Grey", "train"),
    _plasma("Kite", "train"),
    _plasma("OneStandsOut", "train"),
    _plasma("Path", "train"),
    _plasma("summer_1am", "train"),
    _opencv("apple.jpg", "train"),
    _opencv("building.jpg", "train"),
    _opencv("butterfly.jpg", "test"),
    _opencv("fruits.jpg", "test"),
    _opencv("home.jpg", "train"),
    _opencv("orange.jpg", "val"),
    _opencv("squirrel_cls.jpg", "test"),
    _opencv("smarties.png", "test"),
    _opencv("board.jpg", "train"),
    _opencv("graf1.png", "train"),
    _opencv("leuvenA.jpg", "val"),
    _opencv("stuff.jpg", "train"),
)

#: The Debian packages the catalogue reads from (``apt-get install`` them to get the photos).
DEBIAN_PACKAGES: Tuple[str, ...] = tuple(dict.fromkeys(p.package for p in CATALOGUE))


def _image_file(photo: Photo) -> Optional[Path]:
    """The file to read for ``photo``, or None when its package is not installed."""
    path = Path(photo.path)
    if photo.package != "plasma-workspace-wallpapers":
        return path if path.is_file() else None
    images = path / "contents" / "images"
    if not images.is_dir():
        return None
    sizes = []
    for file in images.iterdir():
        width, _, height = file.stem.partition("x")
        if width.isdigit() and height.isdigit():
            sizes.append((int(width) * int(height), file))
    return max(sizes)[1] if sizes else None


@lru_cache(maxsize=None)
def _copyright_paragraphs(package: str) -> Tuple[Tuple[Tuple[str, ...], str], ...]:
    """(file patterns, licence) of each ``Files:`` paragraph of a DEP-5 copyright file."""
    path = Path("/usr/share/doc") / package / "copyright"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    paragraphs = []
    for block in text.split("\n\n"):
        fields: Dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            paragraphs.append((tuple(fields["files"].split()), fields["license"].split("\n")[0].strip()))
    return tuple(paragraphs)


def photo_licence(photo: Photo) -> str:
    """The licence of ``photo`` (e.g. ``"CC-BY-4.0"``) from its package's DEP-5 copyright file.

    The last ``Files:`` paragraph whose pattern matches the photo's source path wins, as DEP-5
    specifies; ``"unknown"`` when the package is not installed.
    """
    found = "unknown"
    for patterns, licence in _copyright_paragraphs(photo.package):
        if any(fnmatch.fnmatchcase(photo.source, pattern) for pattern in patterns):
            found = licence
    return found


def installed_photos(split: Optional[str] = None) -> List[Photo]:
    """The catalogued photos whose package is installed, optionally only those of ``split``."""
    if split is not None and split not in SPLITS:
        raise InvalidParameterError(f"split must be one of {SPLITS}, got {split!r}")
    return [p for p in CATALOGUE if (split is None or p.split == split) and _image_file(p) is not None]


def load_photo_array(photo: Photo, max_side: Optional[int] = None) -> np.ndarray:
    """``photo`` as uint8 RGB [H, W, 3]; with ``max_side``, downscaled (Lanczos) so that its
    longer side is at most that many pixels.

    Raises:
        MissingDependencyError: its Debian package is not installed.
    """
    from PIL import Image

    file = _image_file(photo)
    if file is None:
        raise MissingDependencyError(
            f"photo {photo.name!r} needs the Debian package {photo.package}: apt-get install {photo.package}"
        )
    with Image.open(file) as image:
        if max_side is not None:
            image.draft("RGB", (max_side, max_side))  # fast JPEG downscale by a power of two
        image = image.convert("RGB")
        if max_side is not None and max(image.size) > max_side:
            scale = max_side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()


def _check_split(split: str) -> List[Photo]:
    photos = installed_photos(split)
    if not photos:
        raise MissingDependencyError(
            f"no photos of split {split!r} are installed; apt-get install {' '.join(DEBIAN_PACKAGES)}"
        )
    return photos


def load_split(split: str, shorter_sides: Sequence[int] = (512,)) -> List[torch.Tensor]:
    """Every installed photo of ``split``, at each of ``shorter_sides``, as uint8 [3, H, W] tensors.

    A photo is resized (Lanczos) so that its shorter side has the given length; a photo that is
    already smaller is used at its own size. Denoisers are trained on such downscaled copies: a
    224² view of a photo, as a classifier sees it, is a downscaled photo, not a crop of a
    5-megapixel original.
    """
    from PIL import Image

    tensors = []
    for photo in _check_split(split):
        array = load_photo_array(photo, max_side=4 * max(shorter_sides))
        image = Image.fromarray(array)
        for side in shorter_sides:
            scale = min(1.0, side / min(image.size))
            resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            tensors.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).contiguous())
    return tensors


def _resize_shorter(image, side: int):
    from PIL import Image

    scale = side / min(image.size)
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))), Image.LANCZOS)


def _center_box(width: int, height: int, cx: float, cy: float, size: int) -> Tuple[int, int, int, int]:
    left = int(round(min(max(cx - size / 2, 0), width - size)))
    top = int(round(min(max(cy - size / 2, 0), height - size)))
    return left, top, left + size, top + size


def evaluation_crops(split: str = "test", size: int = 224) -> Tuple[np.ndarray, List[str]]:
    """Five deterministic ``size``² views of every installed photo of ``split``.

    Views: the photo resized to a shorter side of ``size``·8/7 (256 for 224) and center-cropped
    (how ImageNet classifiers are evaluated), then the photo resized to a shorter side of
    ``size``·16/7 (512) and cropped around the four points at a quarter and three quarters of its
    width and height.

    Returns:
        (uint8 array [N, size, size, 3], names ``"<photo>/<view>"`` of length N), N = 5 × photos.
    """
    from PIL import Image

    if int(size) < 16:
        raise InvalidParameterError(f"size must be at least 16 pixels, got {size}")
    size = int(size)
    crops, names = [], []
    for photo in _check_split(split):
        image = Image.fromarray(load_photo_array(photo, max_side=8 * size))
        small = _resize_shorter(image, round(size * 8 / 7))
        crops.append(small.crop(_center_box(small.width, small.height, small.width / 2, small.height / 2, size)))
        names.append(f"{photo.name}/center")
        large = _resize_shorter(image, round(size * 16 / 7))
        for fy in (0.25, 0.75):
            for fx in (0.25, 0.75):
                crops.append(large.crop(_center_box(large.width, large.height, fx * large.width, fy * large.height, size)))
                names.append(f"{photo.name}/{'top' if fy < 0.5 else 'bottom'}-{'left' if fx < 0.5 else 'right'}")
    return np.stack([np.asarray(c.convert("RGB"), dtype=np.uint8) for c in crops]), names
