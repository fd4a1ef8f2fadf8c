"""Built-in guest images (built from guestos/ by the install step) and image lookup."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from denali.errors import ImageError
from denali.loader import Image, load_image

IMAGE_DIR = Path(__file__).resolve().parent / "images"
"""Where the install step puts the images built from guestos/."""

_cache: dict[tuple[str, int, int], Image] = {}

log = logging.getLogger(__name__)


def builtin_images() -> dict[str, Path]:
    """Name -> path of every built-in image, sorted by name."""
    if not IMAGE_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(IMAGE_DIR.glob("*.elf"))}


def resolve(name_or_path: str | os.PathLike[str]) -> Image:
    """Load a built-in image by name, or an image file by path (cached by mtime/size)."""
    text = os.fspath(name_or_path)
    path: Path | None = None
    if os.sep in text or text.endswith(".elf") or os.path.exists(text):
        path = Path(text)
        if not path.exists():
            raise ImageError(f"{text}: no such image file")
    else:
        path = IMAGE_DIR / f"{text}.elf"
        if not path.is_file():
            names = ", ".join(builtin_images()) or "none (the guest images are not built)"
            raise ImageError(f"unknown image {text!r}; built-in images: {names}")
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    img = _cache.get(key)
    if img is None:
        img = load_image(str(path), path.stem)
        _cache[key] = img
        log.debug("image %s: loaded from %s", text, path)
    return img
