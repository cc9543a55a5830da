"""Cue pictures: the site's folder (``drug/``, ``food/``, ``neutral/``) and the placeholders.

A site provides its own validated picture set (PNG or JPEG files in one subfolder per cue
category). The project cannot ship real drug or food pictures, so it ships placeholder
pictures it draws itself with numpy -- abstract, low-contrast shapes, one family per
category -- so the demo and the tests run. ``python -m feedback_display.pictures`` rewrites
them; the same code gives the same bytes every time.

:func:`find_pictures` checks a folder before any window opens; the display then loads every
picture into a texture before the run starts, so no block touches the disk.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path, PurePath

import numpy as np

from rtserver.errors import ConfigError

#: Cue categories that have pictures.
CUE_CATEGORIES = ("drug", "food", "neutral")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The placeholder pictures shipped with the package (package data).
SHIPPED_PICTURES: Traversable = resources.files("feedback_display") / "images"
PLACEHOLDER_SIZE = (320, 240)  # width, height
N_PLACEHOLDERS = 3

# Muted background and shape colours per category (rgb255).
_PALETTES = {
    "drug": ((92, 70, 74), (168, 132, 120)),
    "food": ((70, 88, 70), (176, 160, 104)),
    "neutral": ((70, 78, 94), (140, 150, 168)),
}


def find_pictures(folder: str | os.PathLike | Traversable, categories: tuple[str, ...] | list[str]
                  ) -> dict[str, list[Traversable]]:
    """List the cue pictures of each category a run needs, sorted by file name.

    Parameters
    ----------
    folder : str, Path or Traversable
        Folder with one subfolder per category (``drug/``, ``food/``, ``neutral/``), on
        disk or package data (:data:`SHIPPED_PICTURES`).
    categories : sequence of str
        Categories the run shows (from the paradigm's blocks).

    Returns
    -------
    dict of str to list of Traversable
        The PNG and JPEG files of each category (paths when ``folder`` is on disk).

    Raises
    ------
    ConfigError
        If the folder, a needed subfolder, or any picture in it is missing.
    """
    folder = picture_folder(folder)
    if not folder.is_dir():
        raise ConfigError(f"Picture folder {folder} does not exist (expected subfolders "
                          f"{', '.join(c + '/' for c in CUE_CATEGORIES)}).")
    found = {}
    for category in categories:
        sub = folder / category
        files = sorted((p for p in sub.iterdir() if is_picture_name(p.name) and p.is_file()),
                       key=lambda p: p.name) if sub.is_dir() else []
        if not files:
            raise ConfigError(f"Picture folder {folder} has no PNG or JPEG pictures in "
                              f"{category}/, and the paradigm shows {category} cues.")
        found[category] = files
    return found


def picture_folder(folder: str | os.PathLike | Traversable) -> Traversable:
    """A picture folder given by name (a :class:`~pathlib.Path`), or package data as is."""
    return Path(folder) if isinstance(folder, str | os.PathLike) else folder


def is_picture_name(name: str) -> bool:
    """True for a file name with a PNG or JPEG suffix (any case)."""
    return PurePath(name).suffix.lower() in PICTURE_SUFFIXES


def stim_file(category: str, picture: Traversable) -> str:
    """A cue picture's name relative to its picture folder: ``drug/001.jpg``."""
    return f"{category}/{picture.name}"


def placeholder_image(category: str, index: int) -> np.ndarray:
    """Draw placeholder picture ``index`` of a category: an RGB uint8 array (240x320).

    Drug placeholders are diagonal stripes, food placeholders concentric rings, neutral
    placeholders a checkerboard; ``index`` shifts and scales the pattern. No randomness.

    Raises
    ------
    ConfigError
        If ``category`` is not one of :data:`CUE_CATEGORIES`.
    """
    if category not in _PALETTES:
        raise ConfigError(f"'category' should be one of {CUE_CATEGORIES}. Got {category!r}.")
    width, height = PLACEHOLDER_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    period = 40.0 + 12.0 * index
    if category == "drug":
        pattern = ((x + y + 9.0 * index) % period) < period / 2
    elif category == "food":
        radius = np.hypot(x - width * (0.35 + 0.15 * index), y - height / 2)
        pattern = (radius % period) < period / 2
    else:
        pattern = ((x // period + y // period + index) % 2) == 0
    background, shape = (np.array(c, dtype=np.float64) for c in _PALETTES[category])
    image = np.where(pattern[..., None], shape, background)
    # A frame one shade lighter, so the picture's edges are visible on the grey background.
    image[:4], image[-4:], image[:, :4], image[:, -4:] = (shape * 0.8,) * 4
    return image.round().astype(np.uint8)


def placeholder_path(folder: str | os.PathLike | Traversable, category: str,
                     index: int) -> Traversable:
    """File name of a placeholder: ``<folder>/<category>/placeholder-<n>.png``."""
    return picture_folder(folder) / category / f"placeholder-{index + 1}.png"


def write_placeholders(folder: str | os.PathLike | Traversable = SHIPPED_PICTURES,
                       n_per_category: int = N_PLACEHOLDERS) -> list[Path]:
    """Write the placeholder pictures (PNG) under ``folder``; return their paths.

    Raises
    ------
    ConfigError
        If ``folder`` is not on disk (package data inside an archive cannot be written).
    """
    from PIL import Image

    if not isinstance(folder, str | os.PathLike):
        raise ConfigError(f"Placeholders can only be written to a folder on disk. Got {folder!r}.")
    paths = []
    for category in CUE_CATEGORIES:
        for index in range(n_per_category):
            path = Path(placeholder_path(folder, category, index))
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(placeholder_image(category, index)).save(path, format="PNG",
                                                                     optimize=True)
            paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_placeholders():
        print(written)  # noqa: T201 - the module's command-line use
