"""Image files: is each one readable and complete (header read, JPEGs decoded at 1/8 scale, end markers and
container sizes of the others), how large is it, decoding.

:func:`check_images` runs before training, so a corrupt JPEG is reported with every other bad file at once instead
of killing an epoch hours in; :func:`looks_complete` is the same check inside the ``tf.data`` graph.

Formats: JPEG, PNG, TIFF and WebP (plus GIF and BMP). TensorFlow decodes JPEG, PNG, WebP, GIF and BMP itself;
TIFF (museum masters, often 16 bits per sample) is decoded with Pillow (:func:`decode_rgb` calls it through
``tf.numpy_function`` for those files only). :func:`to_rgb8` is the one place 16-bit and float images become 8-bit
RGB, so the pipelines, thumbnails and ``prepare`` all see the same pixels.
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
# What the pipelines decode: tf.io.decode_image (MPO is a camera JPEG) and Pillow for TIFF.
_DECODABLE = {"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def check_images(paths: Sequence[str | os.PathLike], *, workers: int = 8) -> list[tuple[str, str]]:
    """Find unreadable image files without decoding them.

    Each file's header is read with PIL (format and size only). A JPEG is decoded at 1/8 scale by libjpeg-turbo
    (``simplejpeg``: the whole entropy-coded data is read, the inverse DCT mostly skipped), which catches a copy
    cut short even when someone appended an end marker ``FF D9``; data after the end marker (phones append
    trailers) is accepted. A PNG must end with an ``IEND`` chunk (a few bytes of padding are tolerated), a WebP must
    be as long as its RIFF header says and a TIFF's strips or tiles must lie inside the file.

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
        return size, f"unsupported image format {fmt} (expected JPEG, PNG, TIFF or WebP)"
    if size[0] <= 0 or size[1] <= 0:
        return size, f"image has no pixels ({size[0]}x{size[1]})"
    if fmt in ("TIFF", "WEBP"):
        return size, _container_problem(path, fmt, nbytes)
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


def _container_problem(path: str, fmt: str, nbytes: int) -> str | None:
    """A truncated WebP (RIFF size larger than the file), a truncated TIFF (image data past the end of the file) or
    a TIFF Pillow cannot decode (it is decoded: slow for very large masters, which ``prepare`` shrinks once)."""
    from PIL import Image

    try:
        if fmt == "WEBP":
            with open(path, "rb") as fh:
                head = fh.read(12)
            riff = int.from_bytes(head[4:8], "little") + 8
            return f"truncated WebP ({nbytes} of {riff} bytes)" if nbytes < riff else None
        with Image.open(path) as im:
            tags = im.tag_v2
            offsets = tags.get(273) or tags.get(324) or ()  # StripOffsets or TileOffsets
            counts = tags.get(279) or tags.get(325) or ()  # StripByteCounts or TileByteCounts
            end = max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)
            if end > nbytes:
                return f"truncated TIFF (image data ends at byte {end}, the file has {nbytes})"
            # A TIFF's header says too little (compression schemes, bit depths): only decoding shows that Pillow
            # can read it, so TIFFs are decoded here, once, rather than failing in the middle of an epoch.
            to_rgb8(im)
    except Exception as exc:  # noqa: BLE001  (Pillow and libtiff raise many types)
        return f"TIFF cannot be decoded ({type(exc).__name__}: {exc})"
    return None


def to_rgb8(im):
    """A Pillow image as 8-bit RGB; 16-bit samples are scaled (65535 -> 255), not clipped.

    Pillow's own ``convert("RGB")`` clips 16-bit grey (``I;16``) at 255, which turns a museum master white. 16-bit
    RGB TIFFs already open as 8-bit ``RGB`` (Pillow keeps the high byte); float images (``F``) are read as 0..1.
    """
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit int: how Pillow may open 16-bit grey)
        grey = np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "F":
        grey = np.clip(np.round(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def read_rgb(source) -> "np.ndarray":  # noqa: F821
    """Decode an image file (path, bytes or file object) with Pillow into an 8-bit RGB array ``(H, W, 3)``."""
    import io

    import numpy as np
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as im:
        return np.asarray(to_rgb8(im), dtype=np.uint8)


def _pil_decode(data, path):
    """``tf.numpy_function`` body: ``(uint8 (H, W, 3), True)``, or a 1x1 black image and False."""
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():  # a damaged file is reported as not ok, not by Pillow's warnings
            warnings.simplefilter("ignore")
            return read_rgb(np.asarray(data).item()), np.bool_(True)  # a 0-d object array holding the bytes
    except Exception:  # noqa: BLE001  (any decoder failure: the caller reports the file by name)
        return np.zeros((1, 1, 3), np.uint8), np.bool_(False)


def is_tiff(data):
    """In-graph: do these encoded bytes start like a TIFF (classic or BigTIFF)?"""
    import tensorflow as tf

    head = tf.strings.substr(data, 0, 4)
    return tf.reduce_any(tf.equal(head, tf.constant(TIFF_MAGIC)))


def decode_rgb(data, path=""):
    """In-graph decode of any supported image into ``(uint8 (H, W, 3), ok)``; never raises for a bad file.

    JPEG, PNG, WebP, GIF and BMP go through ``tf.io.decode_image``; TIFF through Pillow (:func:`to_rgb8`, in
    ``tf.numpy_function``, so only those files hold the GIL). ``ok`` is False for files that fail
    :func:`looks_complete` or that Pillow cannot read; their image is a 1x1 black placeholder. A file that looks
    complete but is damaged inside can still make ``decode_image`` raise.
    """
    import tensorflow as tf

    def pillow():
        image, ok = tf.numpy_function(_pil_decode, [data, path], (tf.uint8, tf.bool), stateful=False)
        return tf.ensure_shape(image, (None, None, 3)), tf.ensure_shape(ok, ())

    def native():
        def good():
            return tf.io.decode_image(data, channels=3, expand_animations=False), tf.constant(True)

        def bad():
            return tf.zeros((1, 1, 3), tf.uint8), tf.constant(False)

        return tf.cond(looks_complete(data), good, bad)

    image, ok = tf.cond(is_tiff(data), pillow, native)
    image.set_shape((None, None, 3))
    return image, ok


def looks_complete(data):
    """In-graph twin of :func:`_probe`: magic bytes plus, for JPEG/PNG, the end marker, for WebP the RIFF size."""
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
    head12 = tf.strings.join([tf.strings.substr(data, 0, 12), b"\x00" * 12])  # substr past the end would raise
    is_webp = tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(head12, 8, 4), b"WEBP")
    size_bytes = tf.cast(tf.io.decode_raw(tf.strings.substr(head12, 4, 4), tf.uint8), tf.int64)
    riff = tf.reduce_sum(size_bytes * tf.constant([1, 1 << 8, 1 << 16, 1 << 24], tf.int64))
    webp_whole = tf.cast(n, tf.int64) >= riff + 8
    return (is_jpeg & eoi) | (is_png & iend) | (is_webp & webp_whole) | is_tiff(data) | is_other


DECODE_FAILED = "Cannot decode image file (empty, truncated or not JPEG/PNG/TIFF/WebP)"  # the in-graph assert's message


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

