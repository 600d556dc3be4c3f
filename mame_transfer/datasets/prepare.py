"""A resized copy of a MAMe dataset, written once (``python -m mame_transfer.prepare``).

Decoding a full-resolution MAMe JPEG (median about 2667x2900 px) costs far more than classifying it at 224 px;
this step pays that cost once. Output: the same MAMe layout (metadata CSVs copied unchanged), images in
``<out>/data_256/`` for ``size=256`` and ``<out>/data/`` otherwise, square (the fixed-shape baseline) or with the
shorter side at ``size`` (``keep_aspect``). JPEGs are decoded with DCT-domain downscaling (``PIL.Image.draft``)
before the antialiased resize; each output is written to a temporary file and renamed, so an interrupted run
resumes where it stopped. The output folder records the settings it was prepared with: a rerun with another
``size``, ``keep_aspect``, ``draft`` or source is refused (or, with ``overwrite``, redone from scratch), never
mixed. Worker processes exit by themselves when the command is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mame_transfer.core.errors import DataError, OutputError
from mame_transfer.core.fileio import check_output, locked, mark, owner, write_json
from mame_transfer.datasets.images import to_rgb8

MARKER = ".prepare.json"
QUALITY = 95
KIND = "prepared-dataset"  # the owner kind of a prepare output folder
OUTPUT_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}  # else JPEG
SAVE_OPTIONS = {"PNG": {}, "TIFF": {"compression": "tiff_deflate"}, "WEBP": {"quality": QUALITY}}


def target_size(width: int, height: int, size: int, keep_aspect: bool) -> tuple[int, int]:
    """Output ``(width, height)``: square ``size``, or the shorter side to ``size`` with the aspect kept."""
    if not keep_aspect:
        return size, size
    if width <= height:
        return size, max(1, round(height * size / width))
    return max(1, round(width * size / height)), size


def resize_file(src: str, dst: str, size: int, *, keep_aspect: bool = False, draft: bool = True,
                quality: int = QUALITY) -> tuple[int, int]:
    """Decode ``src``, resize it and write ``dst`` atomically; returns the source ``(width, height)``."""
    from PIL import Image


    with Image.open(src) as im:
        w0, h0 = im.size
        tw, th = target_size(w0, h0, size, keep_aspect)
        if draft and im.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain, keeping both sides >= the requested size.
            im.draft("RGB", (tw, th))
        im = to_rgb8(im)  # 16-bit TIFF/PNG masters scaled, not clipped
        if im.size != (tw, th):
            im = im.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
        dst_path = Path(dst)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst_path.with_name(f".{dst_path.name}.{os.getpid()}.tmp")
        try:
            # The copy keeps each file's name (the CSV is copied unchanged), so also its format.
            fmt = OUTPUT_FORMATS.get(dst_path.suffix.lower(), "JPEG")
            im.save(tmp, format=fmt, **SAVE_OPTIONS.get(fmt, {"quality": quality}))
            os.replace(tmp, dst_path)
        finally:
            tmp.unlink(missing_ok=True)
    return w0, h0


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the command that started the pool is gone (``kill -9``).

    A killed parent never shuts its pool down, and workers forked from it wait on their task queue forever.
    """
    own_parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except OSError:
                pass
            if os.getppid() != own_parent:  # re-parented: the process that forked this worker died
                os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _work(job):
    src, dst, size, keep_aspect, draft = job
    try:
        resize_file(src, dst, size, keep_aspect=keep_aspect, draft=draft)
        return src, None
    except Exception as exc:  # report every bad file at the end instead of stopping at the first
        return src, f"{type(exc).__name__}: {exc}"


def image_dir_name(size: int) -> str:
    return "data_256" if size == 256 else "data"


def prepare(data: str | os.PathLike, out: str | os.PathLike, size: int = 256, *, keep_aspect: bool = False,
            draft: bool = True, workers: int | None = None, images: str | os.PathLike | None = None,
            progress: bool = True, overwrite: bool = False) -> dict:
    """Resize every image of a MAMe layout into ``out`` (see the module docstring).

    Returns:
        ``{"written", "skipped", "failed", "seconds"}``; ``failed`` lists ``(file, error)``.

    Raises:
        DataError: the source is not a MAMe layout, ``out`` is the source, or some images could not be converted
            (after converting all the others; rerun to retry).
        OutputError: ``out`` holds anything but an earlier prepare, or one with other settings (without
            ``overwrite``), or another process is writing it.
    """
    from mame_transfer.datasets.layouts import detect_layout
    from mame_transfer.datasets.mame import read_mame

    if size < 8:
        raise DataError(f"--size must be at least 8 pixels. Received: size={size}")
    layout = detect_layout(data)
    if layout != "mame":
        what, how = ("flat class folders", "split") if layout == "flat" else ("a class-per-folder set", "import")
        raise DataError(f"{data} is {what}; convert it first with `mame-data {how} {data} "
                        f"--out DIR`, then prepare DIR.")
    dataset = read_mame(data, images=images, check_files=False)
    out = Path(os.path.abspath(out))
    src_root = Path(dataset.image_root)
    if out == Path(dataset.root) or out == src_root:
        raise DataError(f"--out {out} is the source dataset; choose a new folder.")
    settings = {"source": str(dataset.source), "images": str(src_root), "size": int(size),
                "keep_aspect": bool(keep_aspect), "draft": bool(draft)}
    with locked(out, "prepare"):
        if check_output(out, KIND, additive=True, legacy=lambda p: (p / MARKER).is_file(), what="prepared copy"):
            changes = _changes(out, settings)
            if changes and not overwrite:
                raise OutputError(f"--out {out} was prepared with other settings ({'; '.join(changes)}); finishing it "
                                  f"would mix two sizes. Pass --overwrite to redo it, or choose another --out.")
            if changes:
                shutil.rmtree(out)  # our own earlier copy (checked above), redone from scratch
        out.mkdir(parents=True, exist_ok=True)
        mark(out, KIND, settings=settings, complete=False)
        result = _resize_all(dataset, src_root, out, size, keep_aspect, draft, workers, progress)
        _copy_metadata(dataset.source, out)
        write_json(out / MARKER, {"source": str(data), "size": size, "keep_aspect": keep_aspect, "draft": draft,
                                  "images": result.pop("images")})
        mark(out, KIND, settings=settings, complete=True)
    return result


def _changes(out: Path, settings: dict) -> list[str]:
    """Settings of the earlier prepare at ``out`` that differ from ``settings``."""
    saved = (owner(out) or {}).get("settings")
    if saved is None:  # prepared before owner files: its .prepare.json (written when it completed)
        try:
            legacy = json.loads((out / MARKER).read_text())
        except (OSError, ValueError):
            legacy = {}
        saved = {k: legacy.get(k) for k in ("size", "keep_aspect", "draft")}
        settings = {k: settings[k] for k in saved}
    return [f"{k} {saved.get(k)!r} (now {settings[k]!r})" for k in settings if saved.get(k) != settings[k]]


def _resize_all(dataset, src_root: Path, out: Path, size: int, keep_aspect: bool, draft: bool, workers, progress):
    from mame_transfer.core.errors import shorten_list

    image_out = out / image_dir_name(size)
    names = sorted(set(dataset.table["image"].astype(str)))
    jobs, skipped = [], 0
    for name in names:
        dst = image_out / name
        if dst.is_file():
            skipped += 1
            continue
        jobs.append((str(src_root / name), str(dst), int(size), bool(keep_aspect), bool(draft)))
    failed = []
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names), initial=skipped, unit="img", desc=f"prepare {size}px", file=sys.stderr)
    try:
        if workers == 1 or len(jobs) <= 1:
            results = map(_work, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_watch_parent, initargs=(os.getpid(),))
            results = pool.map(_work, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 8) or 1)))
        for src, err in results:
            if err:
                failed.append((os.path.relpath(src, src_root), err))
            if bar is not None:
                bar.update(1)
        if pool is not None:
            pool.shutdown()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if failed:
        raise DataError(f"{len(failed)} of {len(names)} image(s) under {src_root} could not be converted: "
                        f"{shorten_list([f'{n} ({e})' for n, e in failed])}. The others are written; fix or "
                        f"remove these files and rerun the same command.")
    return {"written": len(jobs), "skipped": skipped, "failed": failed, "seconds": seconds, "images": len(names)}


def _copy_metadata(csv_path: Path, out: Path) -> None:
    """Copy the release's CSVs unchanged (same rows): dataset, toy and labels files next to the dataset CSV."""
    from mame_transfer.datasets.tables import DATASET_CSV, LABELS_CSV, TOY_CSV

    meta = out / "MAMe_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    folder = Path(csv_path).parent
    for name in (DATASET_CSV, TOY_CSV, LABELS_CSV):
        if (folder / name).is_file():
            tmp = meta / f".{name}.tmp"
            shutil.copyfile(folder / name, tmp)
            os.replace(tmp, meta / name)

