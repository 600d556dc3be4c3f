"""Image files: is each one readable and complete (header read, JPEGs decoded at 1/8 scale), and how large is it.

:func:`check_images` runs before training, so a corrupt JPEG is reported with every other bad file at once instead
of killing an epoch hours in; :func:`looks_complete` is the same check inside the ``tf.data`` graph.
"""

from __future__ import annotations

import contextlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

from mame_transfer.core.errors import DataError, shorten_list

_TAIL_BYTES = 32  # JPEG EOI / PNG IEND must lie within the last bytes (a little padding is tolerated)
_DECODABLE = {"JPEG", "MPO", "PNG", "GIF", "BMP"}  # what tf.io.decode_image reads (MPO is a camera JPEG)


def check_images(paths: Sequence[str | os.PathLike], *, workers: int = 8) -> list[tuple[str, str]]:
    """Find unreadable image files without decoding them.

    Each file's header is read with PIL (format and size only). A JPEG is decoded at 1/8 scale by libjpeg-turbo
    (``simplejpeg``: the whole entropy-coded data is read, the inverse DCT mostly skipped), which catches a copy
    cut short even when someone appended an end marker ``FF D9``; data after the end marker (phones append
    trailers) is accepted. A PNG must end with an ``IEND`` chunk (a few bytes of padding are tolerated).

    Returns:
        ``(path, reason)`` for every bad file, in input order.
    """
    paths = [str(p) for p in paths]
    return [(p, reason) for p, (_, reason) in zip(paths, probe_all(paths, workers=workers)) if reason]


def probe_all(paths: Sequence[str], workers: int = 8) -> list[tuple[tuple[int, int] | None, str | None]]:
    if len(paths) < 16:
        return [_probe(p) for p in paths]
    # Header reads are I/O bound and PIL releases the GIL while reading, so threads help.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(_probe, paths, chunksize=64))


def _probe(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) and ``None``, or ``None``/size and the reason the file is bad."""
    from PIL import Image, UnidentifiedImageError

    try:
        nbytes = os.path.getsize(path)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror})"
    if nbytes == 0:
        return None, "empty file (0 bytes)"
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
    except UnidentifiedImageError:
        return None, "not an image (unknown format)"
    except Exception as exc:  # PIL raises many types on damaged headers
        if "truncated" in str(exc).lower():
            return None, "truncated image header"
        return None, f"unreadable image header ({type(exc).__name__}: {exc})"
    if fmt not in _DECODABLE:
        return size, f"unsupported image format {fmt} (expected JPEG or PNG)"
    if size[0] <= 0 or size[1] <= 0:
        return size, f"image has no pixels ({size[0]}x{size[1]})"
    if fmt == "PNG":
        try:
            with open(path, "rb") as fh:
                fh.seek(max(nbytes - _TAIL_BYTES, 0))
                tail = fh.read()
        except OSError as exc:
            return size, f"cannot read file ({exc.strerror})"
        if b"IEND" not in tail:
            return size, "truncated PNG (no IEND chunk at the end)"
    elif fmt in ("JPEG", "MPO"):
        return size, _jpeg_problem(path)
    return size, None


def _jpeg_problem(path: str) -> str | None:
    """Why a JPEG cannot be decoded whole, or None: its entropy-coded data is read to the end (1/8 scale)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return f"cannot read file ({exc.strerror})"
    if b"\xff\xd9" not in data:
        return "truncated JPEG (no end-of-image marker FF D9)"
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover  (a platform without its wheel: the end-marker check above only)
        return None
    try:
        space = simplejpeg.decode_jpeg_header(data)[2]
        colorspace = {"CMYK": "CMYK", "Gray": "GRAY"}.get(space, "RGB")
        simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=8, strict=True)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            return f"truncated JPEG ({exc}): the image data stops before the picture is complete"
        try:  # other libjpeg warnings (e.g. extraneous bytes) leave a complete picture: accepted
            simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=8, strict=False)
        except ValueError as exc2:
            return f"undecodable JPEG ({exc2})"
    return None


def to_rgb(im):
    """A PIL image as 8-bit RGB, 16-bit and 32-bit grey levels scaled down (PIL's own convert clips them to white)."""
    import numpy as np
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        # 16-bit files (PNG, TIFF) come as I;16 or I; a float image is taken as 0..1 when it fits there
        top = 1.0 if im.mode == "F" and values.max(initial=0) <= 1.0 else 255.0 if values.max(initial=0) <= 255 \
            else 65535.0
        im = Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def looks_complete(data):
    """In-graph twin of :func:`_probe`: magic bytes plus, for JPEG/PNG, the end marker."""
    import tensorflow as tf

    n = tf.strings.length(data)
    head = tf.strings.substr(data, 0, 8)
    tail = tf.io.decode_raw(tf.strings.substr(data, tf.maximum(n - _TAIL_BYTES, 0), _TAIL_BYTES), tf.uint8)
    tail = tf.cast(tail, tf.int32)
    whole = tf.io.decode_raw(data, tf.uint8)  # a JPEG's end marker may be followed by a trailer (phones)
    eoi = tf.reduce_any((whole[:-1] == 0xFF) & (whole[1:] == 0xD9))
    iend = tf.reduce_any((tail[:-3] == 73) & (tail[1:-2] == 69) & (tail[2:-1] == 78) & (tail[3:] == 68))
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(head, b"\x89PNG\r\n\x1a\n")
    is_other = tf.equal(tf.strings.substr(head, 0, 3), b"GIF") | tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    return (is_jpeg & eoi) | (is_png & iend) | is_other


DECODE_FAILED = "Cannot decode image file (empty, truncated or not JPEG/PNG)"  # the in-graph assert's message


@contextlib.contextmanager
def named_image_errors() -> Iterator[None]:
    """Turn the in-graph image check's failure (a TensorFlow error deep in ``fit``) into a DataError naming the file.

    Reached only when the check before training was skipped (``--no-check-images``) or a file changed since.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (tf.errors.InvalidArgumentError, without importing TensorFlow here)
        text = str(exc)
        if DECODE_FAILED not in text:
            raise
        match = re.search(r"data check`:\]\s*\[(.*?)\]", text)
        name = match.group(1) if match else "an image file"
        raise DataError(f"{name} cannot be decoded (empty, truncated or not an image). Replace or remove it; "
                        f"`python -m mame_transfer.data check DATA` lists every bad file (or train with the default "
                        f"--check-images).") from None


def bad_files_message(where: Path, bad: list[tuple[str, str]]) -> str:
    items = [f"{os.path.relpath(p, where)} ({reason})" for p, reason in bad]
    return f"{where}: {len(bad)} image file(s) unreadable or corrupt: {shorten_list(items)}."

