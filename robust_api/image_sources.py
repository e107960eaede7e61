"""Where the images of a many-image run come from, one at a time.

``RobustAPI.certify_many`` / ``certify_iter`` and ``robust-api certify`` take a collection of
images in any of these forms, and :func:`iter_image_sources` turns each into a stream of
:class:`ImageSource` items (index, image, name), drawn one at a time:

- a list, tuple or other ``Sequence`` of images (anything
  :func:`robust_api.images.as_image` reads: a path, a PIL image, a NumPy array or torch
  tensor, the bytes of an image file): in its order;
- any other iterable or generator of images: drawn lazily, one image at a time, in the order
  it yields them (it is iterated once; nothing is drawn ahead of what the caller asks for,
  except that the first image is drawn at once to refuse an empty stream);
- a folder (``str`` or ``os.PathLike`` naming a directory): its image files, by extension
  (:data:`IMAGE_EXTENSIONS`, case-insensitive), in all its sub-folders, sorted by their path
  relative to the folder as a string with "/" between folders (code point order, as Python
  compares strings: ``B.png`` before ``a-b.png`` before ``a.png`` before ``a/z.png``), which
  is the order a pattern such as ``folder/**/*.png`` gives the same files. Hidden files and
  folders (a name starting with ".") are skipped; symbolic links to files are followed,
  links to folders are not;
- a glob pattern (a ``str`` with ``*``, ``?`` or ``[`` that is not the path of an existing
  file or folder): ``glob.glob(pattern, recursive=True)`` (so ``**`` spans sub-folders),
  keeping only files, sorted by path (code point order). Any extension is taken: the pattern
  chooses the files.

A single image (one path to a file, one array or tensor, a NumPy stack of images, a PIL
image, bytes) is refused with InvalidParameterError: pass a list (for a stack,
``list(stack)``). An empty sequence, folder, glob or iterable is refused too, naming what
matched nothing. A folder or pattern is listed once, when :func:`iter_image_sources` is
called; the files themselves are read only when each image is used.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .errors import InvalidParameterError
from .validation import MAX_TEXT_CHARS

__all__ = ["ImageSource", "IMAGE_EXTENSIONS", "iter_image_sources", "count_if_known", "image_paths",
           "is_image_collection"]

#: The file extensions (lower case) a folder's image files have; compared case-insensitively.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_GLOB_CHARACTERS = ("*", "?", "[")

_USAGE = ("images must be a non-empty list of images, an iterable or generator of images, a folder, or a glob "
          "pattern such as 'images/**/*.png'")


@dataclass(frozen=True)
class ImageSource:
    """One image of a run, before it is read.

    Attributes:
        index: its position in the input, from 0 (the order in which it was drawn).
        image: what :func:`robust_api.images.as_image` reads: a path, a PIL image, a NumPy
            array or torch tensor, or the bytes of an image file (not decoded yet).
        name: the name its call records by default: a path's file name (or a PIL image's
            ``filename``), else None.
    """

    index: int
    image: Any
    name: Optional[str] = None


def _default_name(image: Any) -> Optional[str]:
    """The name a call records for an image given without ``name=``: a path's file name, or a
    PIL image's ``filename``; None for anything else. Unprintable characters become "?"."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(image))
    else:
        path = getattr(image, "filename", None)  # PIL images opened from a file
        if not isinstance(path, str):
            return None
    base = os.path.basename(path)[-MAX_TEXT_CHARS:]
    base = "".join(char if char.isprintable() else "?" for char in base)
    return base or None


def _collection_kind(images: Any) -> Optional[str]:
    """"folder" for a path to a directory, "glob" for a pattern string that names no existing
    file or folder, else None."""
    if not isinstance(images, (str, os.PathLike)):
        return None
    try:
        path = os.fsdecode(os.fspath(images))
    except (TypeError, ValueError):
        return None
    if "\x00" in path:
        return None
    if os.path.isdir(path):
        return "folder"
    if isinstance(images, str) and any(char in path for char in _GLOB_CHARACTERS) and not os.path.exists(path):
        return "glob"
    return None


def is_image_collection(images: Any) -> bool:
    """True when ``images`` is a folder (str or PathLike naming a directory) or a glob pattern
    (a str with ``*``, ``?`` or ``[`` that is not an existing path): what :func:`image_paths` lists."""
    return _collection_kind(images) is not None


def _folder_files(folder: str) -> list[str]:
    found: list[tuple[str, str]] = []

    def fail(error: OSError) -> None:
        raise error  # an unreadable sub-folder is an error, not a silent gap

    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        relative = os.path.relpath(root, folder)
        prefix = "" if relative == os.curdir else relative.replace(os.sep, "/") + "/"
        for file in files:
            if file.startswith(".") or os.path.splitext(file)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(root, file)
            if os.path.isfile(path):
                found.append((prefix + file, path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def image_paths(images: Any) -> list[str]:
    """The image files a folder or a glob pattern names, in run order (see the module's rules).

    Args:
        images: a folder (str or ``os.PathLike``) or a glob pattern (str).

    Returns:
        The file paths (str; under the folder as given, or as ``glob.glob`` returns them):
        a folder's image files by extension, recursively, sorted by relative path; a
        pattern's matching files, sorted.

    Raises:
        InvalidParameterError: ``images`` is neither a folder nor a pattern, or nothing matched.
        OSError: a folder (or one of its sub-folders) cannot be read.
    """
    kind = _collection_kind(images)
    if kind == "folder":
        folder = os.fsdecode(os.fspath(images))
        paths = _folder_files(folder)
        if not paths:
            raise InvalidParameterError(
                f"the folder {folder!r} has no image files (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} in it and "
                "its sub-folders, case-insensitive; hidden files skipped)"
            )
        return paths
    if kind == "glob":
        paths = sorted(path for path in glob.glob(images, recursive=True) if os.path.isfile(path))
        if not paths:
            raise InvalidParameterError(f"the glob pattern {images!r} matched no file")
        return paths
    raise InvalidParameterError(f"{images!r} is neither a folder nor a glob pattern")


def _single_image(images: Any) -> Optional[str]:
    """What ``images`` is when it is one image rather than a collection of them, else None."""
    import numpy as np

    if isinstance(images, np.ndarray):
        return "a NumPy array (for a stack of images pass list(stack))"
    if isinstance(images, (str, os.PathLike)):
        return f"one path, {images!r}, that is neither a folder nor a glob pattern (for one file pass [path])"
    if isinstance(images, (bytes, bytearray, memoryview)):
        return "bytes (one image file's contents: pass [data])"
    if hasattr(images, "shape") and hasattr(images, "dtype"):
        return f"a {type(images).__name__} (an array or tensor: for a batch pass list(batch))"
    if type(images).__module__.startswith("PIL.") or hasattr(images, "read"):
        return f"a single {type(images).__name__} (pass [image])"
    if not isinstance(images, Iterable):
        return f"a {type(images).__name__}, which is not iterable"
    return None


def _refuse_single(images: Any) -> None:
    what = _single_image(images)
    if what is not None:
        raise InvalidParameterError(f"{_USAGE}; got {what}")


def count_if_known(images: Any) -> Optional[int]:
    """How many images ``images`` holds, when that is known without drawing them: ``len`` of a
    sequence, the number of files of a folder or glob pattern (listed now); None for any other
    iterable (a generator's length is known only once it is exhausted).

    Raises:
        InvalidParameterError: a single image, or an empty folder or pattern (as
            :func:`iter_image_sources`).
    """
    if is_image_collection(images):
        return len(image_paths(images))
    _refuse_single(images)
    if isinstance(images, Sequence):
        return len(images)
    return None


def iter_image_sources(images: Any) -> Iterator[ImageSource]:
    """The images of a run, one :class:`ImageSource` at a time, in run order.

    Args:
        images: a sequence of images (in its order); any iterable or generator of images
            (drawn lazily, one at a time, in the order it yields them; its first image is
            drawn at once, to refuse an empty one); a folder (its image files by extension,
            recursively, sorted by relative path as a string; hidden files skipped); or a glob pattern
            (matching files, sorted). See the module's docstring for the exact rules.

    Returns:
        An iterator of ImageSource(index, image, name), index 0, 1, 2, ... in that order;
        ``name`` is the file name of a path (or a PIL image's ``filename``), else None. The
        images are not read here: each is what :func:`robust_api.images.as_image` takes.

    Raises:
        InvalidParameterError: a single image rather than a collection (a path to one file,
            an array or tensor, a NumPy stack, a PIL image, bytes), something not iterable,
            or an empty sequence, folder, pattern or iterable (saying which). Raised by this
            call, before any image is read.
        OSError: a folder that cannot be read.
    """
    if is_image_collection(images):
        return _numbered(iter(image_paths(images)))
    _refuse_single(images)
    if isinstance(images, Sequence):
        if len(images) == 0:
            raise InvalidParameterError(f"{_USAGE}; got an empty {type(images).__name__}")
        return _numbered(iter(images))
    iterator = iter(images)
    missing = object()
    first = next(iterator, missing)
    if first is missing:
        raise InvalidParameterError(f"{_USAGE}; the {type(images).__name__} yielded no image")
    return _numbered(iterator, first)


def _numbered(iterator: Iterator[Any], *first: Any) -> Iterator[ImageSource]:
    index = 0
    for image in first:
        yield ImageSource(index, image, _default_name(image))
        index += 1
    del first
    for image in iterator:
        yield ImageSource(index, image, _default_name(image))
        index += 1
