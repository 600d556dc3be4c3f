"""Similarity explorer: a static web page over a feature store; ``python -m mame_transfer.explore``.

What the page offers (after J. Martinez's "do deep features retrieve X?" tool): browse the collection (paged
thumbnail grid, filters by class / museum / split, file-name search), the k nearest neighbours of any image
(cosine, with scores and label agreement), the similarity distribution of the whole collection to a query, two
queries' distributions overlaid, per-class precision@k, and, with ``--compare``, a second store's neighbours of
the same image side by side.

Examples::

    python -m mame_transfer.explore features/vgg16-ft --out explorer/vgg16-ft --k 20
    python -m mame_transfer.explore features/vgg16-ft --compare features/vgg16-imagenet --out explorer/cmp
    python -m mame_transfer.explore features/vgg16-ft --serve --port 8765     # http://127.0.0.1:8765/

How it scales: all splits of the store form one collection. Neighbours are exact cosine (L2-normalised
embeddings, float32 matmul in blocks of query rows, top-k by ``argpartition``), computed once at build time.
The page loads item metadata at start and neighbour / embedding chunks (``data/nbr/*.js``, ``data/emb/*.js``)
on demand as ``<script>`` files, so it works from ``file://`` without a server. The similarity distribution
is computed in the browser from embeddings projected on their top principal directions (uncentred, i.e. a
truncated SVD, which preserves dot products best) and quantised to int8 with one scale per item; the build
measures and records how far those approximate cosines are from the exact ones.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .fileio import atomic_path, write_json

ASSETS = ("index.html", "explorer.js", "explorer.css")
CHUNK = 2048  # items per on-demand data file
BLOCK = 1024  # query rows per similarity block (BLOCK x N float32 scores in memory at once)
PCA_DIM = 64
THUMB_SIZE = 112
THUMBS_PER_DIR = 1000
BUILD_FILE = "build.json"


class ExplorerWarning(UserWarning):
    """The site was built, but some input was not usable (e.g. image files missing)."""


@dataclass
class Site:
    """What :func:`build_site` wrote.

    Attributes:
        path: the site folder (open ``index.html``).
        n: items in the collection.
        k: neighbours per item.
        missing: image files that could not be turned into thumbnails (placeholders shown instead).
        quality: per-class precision@k table (index: class).
        quality_compare: the same for the ``--compare`` store (on the matched items), or None.
        approx: error of the in-page approximate cosines against the exact ones.
        timings: seconds spent per build stage.
    """

    path: Path
    n: int
    k: int
    missing: list[str] = field(default_factory=list)
    quality: pd.DataFrame | None = None
    quality_compare: pd.DataFrame | None = None
    approx: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    reused: bool = False


# ------------------------------------------------------------------------------------------------- numerics


def normalize(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def knn(unit: np.ndarray, k: int, *, block: int = BLOCK, sample: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k nearest neighbours of every row among the other rows.

    Args:
        unit: ``[n, d]`` unit-norm rows.
        k: neighbours per row (capped at ``n - 1``).
        block: query rows per matmul block (memory: ``block * n`` float32).
        sample: columns used to find a safe per-row threshold before the exact top-k (see :func:`_top_k`).

    Returns:
        ``(ids [n, k] int32, scores [n, k] float32)``, most similar first; a row is never its own neighbour.
    """
    n = unit.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise DataError(f"nearest neighbours need at least 2 items; the collection has {n}.")
    ids = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        ids[start:stop], scores[start:stop] = _top_k(sims, k, sample)
    return ids, scores


def _top_k(sims: np.ndarray, k: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row, sorted. For wide rows, the k-th largest value of every ``stride``-th column is a
    lower bound of the row's k-th largest, so only values above it are sorted (about ``k * stride`` per row
    instead of a full ``argpartition`` of ``n``), which is several times faster and gives the same result."""
    b, n = sims.shape
    stride = n // sample if sample > 2 * k else 1
    if stride < 2:
        part = np.argpartition(sims, n - k, axis=1)[:, n - k:]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -top), axis=1) if b else np.empty((0, k), int)
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
    sub = sims[:, ::stride]
    m = sub.shape[1]
    threshold = np.partition(sub, m - k, axis=1)[:, m - k]  # >= k finite values in sub: at most one -inf (self)
    rows, cols = np.nonzero(sims >= threshold[:, None])
    vals = sims[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    take = np.searchsorted(rows, np.arange(b))[:, None] + np.arange(k)
    return cols[take], vals[take]


def precision_at_k(labels: Sequence, ids: np.ndarray, ks: Sequence[int], classes: Sequence[str],
                   valid: np.ndarray | None = None) -> pd.DataFrame:
    """Per-class mean share of an item's first k neighbours that carry its label.

    Args:
        labels: label of each item (neighbour ids index it).
        ids: ``[n, K]`` neighbour ids (``-1`` = no neighbour).
        ks: cut-offs, each ``<= K``.
        classes: class order of the table.
        valid: boolean mask of the items to score (default all).

    Returns:
        Columns ``n`` and ``P@k`` per cut-off, one row per class with items, plus a final ``all`` row
        (mean over items, not over classes).
    """
    labels = np.asarray(labels, dtype=object)
    valid = np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)
    same = (labels[np.clip(ids, 0, None)] == labels[:, None]) & (ids >= 0)
    rows = {}
    for name in list(classes) + ["all"]:
        mask = valid & (labels == name) if name != "all" else valid
        if not mask.any():
            continue
        row = {"n": int(mask.sum())}
        for kk in ks:
            row[f"P@{kk}"] = float(same[mask, :kk].mean())
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "class"
    return table


def project(unit: np.ndarray, dim: int = PCA_DIM, *, sample: int = 20000, seed: int = 0) -> np.ndarray:
    """Uncentred principal directions ``[d, dim]`` of unit rows (truncated SVD: keeps dot products best)."""
    d = unit.shape[1]
    if dim >= d:
        return np.eye(d, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = unit if len(unit) <= sample else unit[rng.choice(len(unit), sample, replace=False)]
    gram = rows.T.astype(np.float64) @ rows
    vals, vecs = np.linalg.eigh(gram)
    return vecs[:, np.argsort(vals)[::-1][:dim]].astype(np.float32)


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows with one float32 scale each: ``x ~= q * scale[:, None]``."""
    peak = np.abs(x).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def approx_error(unit: np.ndarray, q: np.ndarray, scale: np.ndarray, *, queries: int = 200,
                 seed: int = 0) -> dict:
    """How far the page's approximate cosines are from the exact ones, over sampled queries x all items."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(unit), min(queries, len(unit)), replace=False)
    deq = q.astype(np.float32) * scale[:, None]
    exact = unit[pick] @ unit.T
    approx = deq[pick] @ deq.T
    keep = np.ones(exact.shape, bool)
    keep[np.arange(len(pick)), pick] = False  # the page leaves the query out of its own distribution
    exact, approx = exact[keep].reshape(len(pick), -1), approx[keep].reshape(len(pick), -1)
    diff = np.abs(exact - approx)
    corr = float(np.mean([np.corrcoef(e, a)[0, 1] for e, a in zip(exact, approx)])) if unit.shape[0] > 2 else 1.0
    return {"queries": int(len(pick)), "mean_abs_error": float(diff.mean()), "p99_abs_error":
            float(np.quantile(diff, 0.99)), "max_abs_error": float(diff.max()), "mean_pearson_r": corr}


# ------------------------------------------------------------------------------------------------- collection


def collection(store) -> tuple[np.ndarray, pd.DataFrame]:
    """All splits of a store as one collection: ``(embeddings [N, d] float32, metadata with 'split')``."""
    embs, metas = [], []
    for split in store.splits:
        emb = np.asarray(store.embeddings(split), dtype=np.float32)
        meta = store.metadata(split)
        meta["split"] = split
        embs.append(emb)
        metas.append(meta)
    meta = pd.concat(metas, ignore_index=True)
    emb = np.concatenate(embs, axis=0)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        rows = meta.loc[bad, "image"].astype(str).tolist()
        raise DataError(f"{store.path}: {int(bad.sum())} embedding row(s) hold NaN/inf, e.g. {rows[:5]}; "
                        "re-export the store.")
    return emb, meta


def _str_col(meta: pd.DataFrame, col: str, default: str = "") -> list[str]:
    if col not in meta.columns:
        return [default] * len(meta)
    return [default if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in meta[col]]


def _codes(values: list[str]) -> tuple[list[int], list[str]]:
    names = sorted(set(values))
    index = {v: i for i, v in enumerate(names)}
    return [index[v] for v in values], names


# ------------------------------------------------------------------------------------------------- thumbnails


def thumb_rel(i: int) -> str:
    """Site-relative path of item ``i``'s thumbnail (numeric names: no metadata reaches a path)."""
    return f"thumbs/{i // THUMBS_PER_DIR:03d}/{i}.jpg"


def _thumb(src: str, dst: Path, size: int) -> str | None:
    from PIL import Image

    try:
        with Image.open(src) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster for large files
            img = img.convert("RGB")
            img.thumbnail((size, size))
            img.save(dst, "JPEG", quality=80)
        return None
    except (OSError, ValueError) as exc:
        return f"{src} ({type(exc).__name__}: {exc})" if not isinstance(exc, FileNotFoundError) else src


def make_thumbnails(paths: Sequence[str], out: Path, size: int = THUMB_SIZE, workers: int = 4) -> list[int]:
    """Write ``out/thumbs/...`` for every readable image; returns the ids of items with no thumbnail."""
    for d in range((len(paths) + THUMBS_PER_DIR - 1) // THUMBS_PER_DIR):
        (out / "thumbs" / f"{d:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(i, p) for i, p in enumerate(paths) if p]
    missing = [i for i, p in enumerate(paths) if not p]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda job: _thumb(job[1], out / thumb_rel(job[0]), size), jobs)
        missing += [i for (i, _), err in zip(jobs, results) if err is not None]
    return sorted(missing)


# ------------------------------------------------------------------------------------------------- writing


def _js(key: str, value) -> str:
    """A data file: ``MAMEX.put(key, value)``; ``<``, ``>``, ``&`` escaped so no text can close a tag."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"MAMEX.put({json.dumps(key)},{text});\n"


def _b64(arr: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode("ascii")


def _write_js(path: Path, key: str, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_js(key, value), encoding="ascii")


def _write_neighbours(data: Path, prefix: str, ids: np.ndarray, scores: np.ndarray, chunk: int) -> int:
    n = len(ids)
    for c, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        sc = np.nan_to_num(scores[start:stop], nan=-2.0)  # -2 = no neighbour (never a cosine)
        _write_js(data / prefix / f"{c:05d}.js", f"{prefix}/{c:05d}",
                  {"start": start, "count": stop - start, "k": int(ids.shape[1]),
                   "ids": _b64(ids[start:stop], "<i4"), "scores": _b64(sc, "<f4")})
    return (n + chunk - 1) // chunk


def _quality_json(table: pd.DataFrame | None) -> dict | None:
    if table is None:
        return None
    ks = [c for c in table.columns if c.startswith("P@")]
    return {"ks": [int(c[2:]) for c in ks],
            "rows": [{"class": str(name), "n": int(row["n"]), "p": [round(float(row[c]), 4) for c in ks]}
                     for name, row in table.iterrows()]}


def _ks(k: int) -> list[int]:
    return sorted({kk for kk in (1, 5, 10) if kk < k} | {k})


def _build_key(store, other, options: dict) -> str:
    from . import __version__

    blob = json.dumps({"store": store.manifest, "other": other.manifest if other is not None else None,
                       "options": options, "version": __version__,
                       "assets": [_asset_text(a) for a in ASSETS]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _asset_text(name: str) -> str:
    return resources.files("mame_transfer").joinpath("assets", "explorer", name).read_text(encoding="utf-8")


def build_site(store, out: str | os.PathLike, *, k: int = 20, compare=None, thumbnails: bool = True,
               thumb_size: int = THUMB_SIZE, pca_dim: int = PCA_DIM, chunk: int = CHUNK, block: int = BLOCK,
               reuse: bool = False, log=None) -> Site:
    """Build the explorer site of a feature store.

    Args:
        store: a ``FeatureStore`` or its path.
        out: site folder (replaced whole, atomically).
        k: neighbours per item.
        compare: a second store (or path) whose neighbours are shown beside, matched by ``image``.
        thumbnails: make thumbnails from the metadata ``path`` column (False: placeholders for all).
        thumb_size: longest thumbnail side in pixels.
        pca_dim: dimensions kept for the in-page similarity distribution.
        chunk: items per on-demand data file.
        block: query rows per similarity block.
        reuse: keep an existing site built from the same inputs and options.
        log: callable receiving progress lines (default: none).

    Returns:
        A :class:`Site`. Missing or unreadable images give placeholders and one :class:`ExplorerWarning`.
    """
    from . import features

    say = log or (lambda msg: None)
    if k < 1:
        raise ConfigError(f"--k must be at least 1. Received: k={k}")
    if pca_dim < 2:
        raise ConfigError(f"--pca-dim must be at least 2. Received: pca_dim={pca_dim}")
    if not isinstance(store, features.FeatureStore):
        store = features.load_store(store)
    other = compare
    if other is not None and not isinstance(other, features.FeatureStore):
        other = features.load_store(other)
    out = Path(out)
    options = {"k": k, "thumbnails": thumbnails, "thumb_size": thumb_size, "pca_dim": pca_dim, "chunk": chunk}
    key = _build_key(store, other, options)
    if reuse and (out / BUILD_FILE).is_file():
        try:
            old = json.loads((out / BUILD_FILE).read_text())
        except ValueError:
            old = {}
        if old.get("key") == key:
            say(f"{out}: up to date (built from the same store and options); reusing it.")
            return Site(out, int(old["n"]), int(old["k"]), list(old.get("missing", [])), reused=True,
                        approx=old.get("approx", {}), timings=old.get("timings", {}))

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    emb, meta = collection(store)
    unit = normalize(emb)
    del emb
    n = len(unit)
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    ids, scores = knn(unit, k, block=block)
    k = ids.shape[1]
    timings["neighbours"] = time.perf_counter() - t
    say(f"neighbours: exact cosine, {n} items x {k}, {timings['neighbours']:.1f} s")

    labels = _str_col(meta, "label")
    classes = [c for c in store.classes if c in set(labels)] + sorted(set(labels) - set(store.classes))
    quality = precision_at_k(labels, ids, _ks(k), classes)

    t = time.perf_counter()
    basis = project(unit, pca_dim)
    q, qscale = quantize(unit @ basis)
    approx = approx_error(unit, q, qscale)
    approx["dim"] = int(q.shape[1])
    timings["projection"] = time.perf_counter() - t

    # --compare: neighbours of the same images in the other store, among the images both stores hold.
    cmp_ids = cmp_scores = None
    quality_cmp = None
    cmp_info = None
    if other is not None:
        t = time.perf_counter()
        o_emb, o_meta = collection(other)
        o_names = o_meta["image"].astype(str)
        dup = o_names[o_names.duplicated()].tolist()
        if dup:
            warnings.warn(f"{other.path}: {len(dup)} image name(s) appear more than once (e.g. {dup[:3]}); "
                          "the first occurrence is compared.", ExplorerWarning, stacklevel=2)
        o_index = pd.Series(np.arange(len(o_names)), index=o_names)
        o_index = o_index[~o_index.index.duplicated()]
        names = meta["image"].astype(str)
        first = ~names.duplicated().to_numpy()
        pos = o_index.reindex(names).to_numpy()
        matched = first & ~np.isnan(pos)
        mine = np.flatnonzero(matched)
        if len(mine) < 2:
            raise DataError(f"--compare {other.path}: only {len(mine)} of {n} images of {store.path} are in it "
                            "(matched by the metadata 'image' column); nothing to compare.")
        o_unit = normalize(o_emb[pos[mine].astype(int)])
        del o_emb
        sub_ids, sub_scores = knn(o_unit, k, block=block)
        kk = sub_ids.shape[1]
        cmp_ids = np.full((n, k), -1, dtype=np.int32)
        cmp_scores = np.full((n, k), np.nan, dtype=np.float32)
        cmp_ids[mine, :kk] = mine[sub_ids]
        cmp_scores[mine, :kk] = sub_scores
        quality_cmp = precision_at_k(labels, cmp_ids, _ks(k), classes, valid=matched)
        quality_mine = precision_at_k(labels, ids, _ks(k), classes, valid=matched)
        a_sets, b_sets = ids[mine], cmp_ids[mine]
        overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(a_sets, b_sets)]))
        cmp_info = {"name": _store_name(other), "manifest": _manifest_summary(other), "matched": int(len(mine)),
                    "overlap": round(overlap, 4), "quality": _quality_json(quality_cmp),
                    "quality_self_matched": _quality_json(quality_mine)}
        timings["compare"] = time.perf_counter() - t
        say(f"compare: {len(mine)} of {n} images matched in {other.path}; mean neighbour overlap {overlap:.3f}")

    names = _str_col(meta, "image")
    paths = _str_col(meta, "path")
    museum_codes, museums = _codes(_str_col(meta, "museum", "unknown"))
    split_names = list(dict.fromkeys(meta["split"]))
    class_idx = {c: i for i, c in enumerate(classes)}

    with atomic_path(out) as tmp:
        tmp.mkdir()
        t = time.perf_counter()
        if thumbnails:
            missing_ids = make_thumbnails(paths, tmp, thumb_size)
        else:
            missing_ids = list(range(n))
        timings["thumbnails"] = time.perf_counter() - t

        t = time.perf_counter()
        data = tmp / "data"
        has_thumb = np.ones(n, dtype=np.int8)
        has_thumb[missing_ids] = 0
        items = {
            "name": names,
            "label": [class_idx[lab] for lab in labels],
            "museum": museum_codes,
            "split": [split_names.index(s) for s in meta["split"]],
            "thumb": _b64(has_thumb, "i1"),
            "width": [int(v) if np.isfinite(v) else None for v in pd.to_numeric(meta.get("width"), errors="coerce")]
            if "width" in meta.columns else None,
            "height": [int(v) if np.isfinite(v) else None for v in pd.to_numeric(meta.get("height"), errors="coerce")]
            if "height" in meta.columns else None,
        }
        if cmp_ids is not None:
            items["matched"] = _b64(matched.astype(np.int8), "i1")
        _write_js(data / "items.js", "items", items)
        nbr_chunks = _write_neighbours(data, "nbr", ids, scores, chunk)
        if cmp_ids is not None:
            _write_neighbours(data, "nbrb", cmp_ids, cmp_scores, chunk)
        emb_chunks = 0
        for c, start in enumerate(range(0, n, chunk)):
            stop = min(start + chunk, n)
            _write_js(data / "emb" / f"{c:05d}.js", f"emb/{c:05d}",
                      {"start": start, "count": stop - start, "dim": int(q.shape[1]),
                       "q": _b64(q[start:stop], "i1"), "scale": _b64(qscale[start:stop], "<f4")})
            emb_chunks += 1
        meta_js = {
            "title": _store_name(store), "store": _manifest_summary(store), "n": n, "k": k,
            "classes": classes, "museums": museums, "splits": split_names, "chunk": chunk,
            "nbr_chunks": nbr_chunks, "emb_chunks": emb_chunks, "thumbs_per_dir": THUMBS_PER_DIR,
            "thumb_size": thumb_size, "missing_thumbs": len(missing_ids), "approx": approx,
            "quality": _quality_json(quality), "compare": cmp_info,
            "method": "exact cosine (float32 matmul in blocks of %d query rows)" % block,
        }
        _write_js(data / "meta.js", "meta", meta_js)
        for name in ASSETS:
            (tmp / name).write_text(_asset_text(name), encoding="utf-8")
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        missing = [paths[i] or names[i] for i in missing_ids] if thumbnails else []
        quality.to_csv(tmp / "precision_at_k.csv", float_format="%.4f")
        if quality_cmp is not None:
            quality_cmp.to_csv(tmp / "precision_at_k_compare.csv", float_format="%.4f")
        write_json(tmp / BUILD_FILE, {"key": key, "n": n, "k": k, "missing": missing, "approx": approx,
                                      "timings": timings, "store": str(store.path),
                                      "compare": str(other.path) if other is not None else None})
    if missing:
        shown = "; ".join(missing[:10]) + (f"; ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        warnings.warn(f"{len(missing)} of {n} image file(s) of {store.path} are missing or unreadable; "
                      f"placeholders shown instead: {shown}", ExplorerWarning, stacklevel=2)
    say(f"wrote {out} ({n} items, k={k}) in {timings['total']:.1f} s")
    return Site(out, n, k, missing, quality, quality_cmp, approx, timings)


def _store_name(store) -> str:
    return store.path.resolve().name


def _manifest_summary(store) -> dict:
    keep = ("arch", "alpha", "weights", "run", "layer", "image_size", "created", "package_version")
    man = {key: store.manifest.get(key) for key in keep if key in store.manifest}
    man["path"] = str(store.path)
    man["dim"] = store.dim
    return man


# ------------------------------------------------------------------------------------------------- serving


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


def serve(site: str | os.PathLike, port: int = 8765) -> http.server.ThreadingHTTPServer:
    """An HTTP server for a built site, bound to 127.0.0.1 (call ``serve_forever`` or run it in a thread)."""
    site = Path(site)
    if not (site / "index.html").is_file():
        raise DataError(f"{site}/index.html does not exist: build the site first.")
    handler = functools.partial(_QuietHandler, directory=str(site))
    return http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)


@contextlib.contextmanager
def serving(site: str | os.PathLike, port: int = 0):
    """Serve a site in a background thread; yields its base URL."""
    server = serve(site, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.explore", description=__doc__.split("\n")[0])
    parser.add_argument("store", help="feature store folder (python -m mame_transfer.features)")
    parser.add_argument("--out", help="site folder (default: explorer/<store name>)")
    parser.add_argument("--k", type=int, default=20, help="neighbours per image (default 20)")
    parser.add_argument("--compare", metavar="OTHER_STORE", help="second store: its neighbours shown beside")
    parser.add_argument("--no-thumbs", action="store_true", help="skip thumbnails (placeholders)")
    parser.add_argument("--thumb-size", type=int, default=THUMB_SIZE)
    parser.add_argument("--pca-dim", type=int, default=PCA_DIM, help="dims of the in-page distribution (64)")
    parser.add_argument("--serve", action="store_true", help="serve the site on http://127.0.0.1:PORT/")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path("explorer") / Path(args.store).resolve().name
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ExplorerWarning)
            site = build_site(args.store, out, k=args.k, compare=args.compare, thumbnails=not args.no_thumbs,
                              thumb_size=args.thumb_size, pca_dim=args.pca_dim, reuse=args.serve,
                              log=lambda m: print(m, file=sys.stderr))
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if site.quality is not None:
        print(f"precision@k, {Path(args.store).name}:")
        print(site.quality.to_string(float_format=lambda v: f"{v:.3f}"))
    if site.quality_compare is not None:
        print(f"precision@k, {Path(args.compare).name} (matched images):")
        print(site.quality_compare.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"open {site.path.resolve() / 'index.html'}")
    if args.serve:
        try:
            server = serve(site.path, args.port)
        except OSError as exc:
            print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
            return 2
        print(f"serving {site.path} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
