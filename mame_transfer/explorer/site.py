"""The explorer's static site: thumbnails, data files loaded on demand, the page (``assets/explorer/``).

All splits of a store form one collection. The page loads item metadata at start and neighbour / embedding chunks
(``data/nbr/*.js``, ``data/emb/*.js``) on demand as ``<script>`` files, so it works from ``file://`` without a
server. The similarity distribution is computed in the browser from embeddings projected on their top principal
directions and quantised to int8 (:mod:`.neighbours`); the build measures how far those approximate cosines are
from the exact ones and records it in the page.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.core.fileio import atomic_path, check_output, locked, write_json
from mame_transfer.datasets.images import to_rgb8
from mame_transfer.explorer.neighbours import PCA_DIM, approx_error, precision_at_k, project, quantize
from mame_transfer.knn import ApproxParams, all_neighbours, normalize, resolve_method
from mame_transfer.knn.exact import BLOCK

ASSETS = ("index.html", "explorer.js", "explorer.css")
CHUNK = 2048  # items per on-demand data file
THUMB_SIZE = 112
THUMBS_PER_DIR = 1000
BUILD_FILE = "build.json"
SITE_KIND = "explorer-site"  # the owner kind of a site folder
HALF_ABOVE = 50_000  # items above which the build keeps float16 unit vectors
DIST_SAMPLE = 100_000  # items above which the page's similarity distributions use a uniform sample of this many
DIST_CHUNK = 16384


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
        method: how the neighbours were found (``exact`` or ``approx``).
        recall: for ``approx``, recall@k against exact search on sampled queries (:func:`mame_transfer.knn.approx.recall_at_k`).
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
    method: str = "exact"
    recall: dict | None = None


def collection(store, dtype=np.float32, *, chunk: int = 65536) -> tuple[np.ndarray, pd.DataFrame]:
    """All splits of a store as one collection of unit rows: ``(unit [N, d] dtype, metadata with 'split')``.

    Rows are read and normalised chunk by chunk, so the memory is the output array (float16 halves it).
    """
    metas, total = [], 0
    for split in store.splits:
        meta = store.metadata(split)
        meta["split"] = split
        metas.append(meta)
        total += len(meta)
    meta = pd.concat(metas, ignore_index=True)
    unit = np.empty((total, store.dim), dtype=dtype)
    bad, row = [], 0
    for split in store.splits:
        n = int(store.manifest["splits"][split]["n"])
        for start in range(0, n, chunk):
            emb = np.asarray(store.embeddings(split)[start:start + chunk], dtype=np.float32)  # a fresh map per chunk
            finite = np.isfinite(emb).all(axis=1)
            bad += list(np.flatnonzero(~finite) + row)
            unit[row:row + len(emb)] = normalize(np.where(finite[:, None], emb, 0.0), dtype)
            row += len(emb)
    if bad:
        rows = meta.loc[bad, "image"].astype(str).tolist()
        raise DataError(f"{store.path}: {len(bad)} embedding row(s) hold NaN/inf, e.g. {rows[:5]}; "
                        "re-export the store.")
    return unit, meta


def _str_col(meta: pd.DataFrame, col: str, default: str = "") -> list[str]:
    if col not in meta.columns:
        return [default] * len(meta)
    return [default if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in meta[col]]


def _codes(values: list[str]) -> tuple[list[int], list[str]]:
    names = sorted(set(values))
    index = {v: i for i, v in enumerate(names)}
    return [index[v] for v in values], names


def thumb_rel(i: int) -> str:
    """Site-relative path of item ``i``'s thumbnail (numeric names: no metadata reaches a path)."""
    return f"thumbs/{i // THUMBS_PER_DIR:03d}/{i}.jpg"


def _thumb(src: str, dst: Path, size: int) -> str | None:
    from PIL import Image


    try:
        with Image.open(src) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster for large files
            img = to_rgb8(img)  # 16-bit TIFF/PNG scaled, not clipped
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
    from mame_transfer.core import __version__

    blob = json.dumps({"store": store.manifest, "other": other.manifest if other is not None else None,
                       "options": options, "version": __version__,
                       "assets": [_asset_text(a) for a in ASSETS]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _asset_text(name: str) -> str:
    return resources.files("mame_transfer").joinpath("assets", "explorer", name).read_text(encoding="utf-8")


def build_site(store, out: str | os.PathLike, *, k: int = 20, compare=None, thumbnails: bool = True,
               thumb_size: int = THUMB_SIZE, pca_dim: int = PCA_DIM, chunk: int = CHUNK, block: int = BLOCK,
               reuse: bool = False, overwrite: bool = False, log=None, neighbours: str = "auto",
               params: ApproxParams = ApproxParams()) -> Site:
    """Build the explorer site of a feature store.

    Args:
        store: a ``FeatureStore`` or its path.
        out: site folder, written whole (atomically). It must be new, empty or an explorer site: any other folder
            is refused (:func:`~mame_transfer.core.fileio.check_output`), and an earlier site is replaced only
            with ``overwrite`` (or kept by ``reuse``).
        k: neighbours per item.
        compare: a second store (or path) whose neighbours are shown beside, matched by ``image``.
        thumbnails: make thumbnails from the metadata ``path`` column (False: placeholders for all).
        thumb_size: longest thumbnail side in pixels.
        pca_dim: dimensions kept for the in-page similarity distribution.
        chunk: items per on-demand data file.
        block: query rows per similarity block.
        reuse: keep an existing site built from the same inputs and options.
        overwrite: replace an earlier explorer site at ``out``.
        log: callable receiving progress lines (default: none).
        neighbours: ``exact``, ``approx`` or ``auto`` (exact up to 50,000 items, see :mod:`mame_transfer.knn`).
        params: settings of the approximate search.

    Returns:
        A :class:`Site`. Missing or unreadable images give placeholders and one :class:`ExplorerWarning`.
    """
    from mame_transfer.store.store import FeatureStore, load_store

    say = log or (lambda msg: None)
    if k < 1:
        raise ConfigError(f"--k must be at least 1. Received: k={k}")
    if pca_dim < 2:
        raise ConfigError(f"--pca-dim must be at least 2. Received: pca_dim={pca_dim}")
    if not isinstance(store, FeatureStore):
        store = load_store(store)
    other = compare
    if other is not None and not isinstance(other, FeatureStore):
        other = load_store(other)
    out = Path(out)
    resolve_method(neighbours, 0)  # a bad value fails before any work
    options = {"k": k, "thumbnails": thumbnails, "thumb_size": thumb_size, "pca_dim": pca_dim, "chunk": chunk,
               "neighbours": neighbours, "params": dataclasses.asdict(params)}
    key = _build_key(store, other, options)
    owned = dict(kind=SITE_KIND, legacy=_is_site, what="explorer site")
    with locked(out, "explore"):
        existed = check_output(out, overwrite=True, **owned)  # refuses any folder that is not a site
        if reuse and existed:
            try:
                old = json.loads((out / BUILD_FILE).read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("key") == key:
                say(f"{out}: up to date (built from the same store and options); reusing it.")
                return Site(out, int(old["n"]), int(old["k"]), list(old.get("missing", [])), reused=True,
                            approx=old.get("approx", {}), timings=old.get("timings", {}))
        check_output(out, overwrite=overwrite, **owned)
        return _build(store, other, out, key, k=k, thumbnails=thumbnails, thumb_size=thumb_size, pca_dim=pca_dim,
                      chunk=chunk, block=block, replace=existed, say=say, neighbours=neighbours, params=params)


def _is_site(path: Path) -> bool:
    """A site written before folders carried an owner file."""
    return (path / BUILD_FILE).is_file() and (path / "index.html").is_file()


def _build(store, other, out: Path, key: str, *, k: int, thumbnails: bool, thumb_size: int, pca_dim: int,
           chunk: int, block: int, replace: bool, say, neighbours: str = "auto",
           params: ApproxParams = ApproxParams()) -> Site:
    """Compute and write the site (``out`` already checked and locked by :func:`build_site`)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n_items = sum(int(v["n"]) for v in store.manifest["splits"].values())
    # Large collections keep float16 unit rows (half the memory; cosines within about 1e-3).
    unit, meta = collection(store, np.float32 if n_items <= HALF_ABOVE else np.float16)
    n = len(unit)
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    basis = project(unit, pca_dim)
    proj = np.concatenate([unit[a:a + 65536].astype(np.float32) @ basis for a in range(0, n, 65536)]) if n else \
        np.zeros((0, basis.shape[1]), np.float32)
    q, qscale = quantize(proj)
    reduced = normalize(proj) if basis.shape[1] == params.dim else None  # the index reuses the page's projection
    del proj
    approx = approx_error(unit, q, qscale)
    approx["dim"] = int(q.shape[1])
    timings["projection"] = time.perf_counter() - t

    nb = all_neighbours(unit, k, method=neighbours, reduced=reduced, params=params, block=block, log=say)
    del reduced
    ids, scores = nb.ids, nb.scores
    k = ids.shape[1]
    timings["neighbours"] = nb.seconds["search"]
    if "recall" in nb.seconds:
        timings["recall"] = nb.seconds["recall"]
    say(f"neighbours: {nb.description}; {n} items x {k}, {timings['neighbours']:.1f} s")

    labels = _str_col(meta, "label")
    classes = [c for c in store.classes if c in set(labels)] + sorted(set(labels) - set(store.classes))
    quality = precision_at_k(labels, ids, _ks(k), classes)

    # --compare: neighbours of the same images in the other store, among the images both stores hold.
    cmp_ids = cmp_scores = None
    quality_cmp = None
    cmp_info = None
    if other is not None:
        t = time.perf_counter()
        o_emb, o_meta = collection(other, unit.dtype)
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
        o_unit = o_emb[pos[mine].astype(int)]
        del o_emb
        o_nb = all_neighbours(o_unit, k, method=neighbours, params=params, block=block, log=say)
        sub_ids, sub_scores = o_nb.ids, o_nb.scores
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
                    "quality_self_matched": _quality_json(quality_mine), "method": o_nb.description}
        timings["compare"] = time.perf_counter() - t
        say(f"compare: {len(mine)} of {n} images matched in {other.path}; mean neighbour overlap {overlap:.3f}")

    names = _str_col(meta, "image")
    paths = _str_col(meta, "path")
    museum_codes, museums = _codes(_str_col(meta, "museum", "unknown"))
    split_names = list(dict.fromkeys(meta["split"]))
    class_idx = {c: i for i, c in enumerate(classes)}

    with atomic_path(out, kind=SITE_KIND, replace=replace) as tmp:
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
        dist = None
        if n > DIST_SAMPLE:  # the page's distributions use a uniform sample (its size bounds the page's memory)
            pick = np.sort(np.random.default_rng(0).choice(n, DIST_SAMPLE, replace=False)).astype(np.int32)
            for c, start in enumerate(range(0, DIST_SAMPLE, DIST_CHUNK)):
                rows = pick[start:start + DIST_CHUNK]
                _write_js(data / "dist" / f"{c:05d}.js", f"dist/{c:05d}",
                          {"start": start, "count": len(rows), "dim": int(q.shape[1]), "ids": _b64(rows, "<i4"),
                           "q": _b64(q[rows], "i1"), "scale": _b64(qscale[rows], "<f4")})
            dist = {"n": DIST_SAMPLE, "chunks": (DIST_SAMPLE + DIST_CHUNK - 1) // DIST_CHUNK}
        meta_js = {
            "title": _store_name(store), "store": _manifest_summary(store), "n": n, "k": k,
            "classes": classes, "museums": museums, "splits": split_names, "chunk": chunk,
            "nbr_chunks": nbr_chunks, "emb_chunks": emb_chunks, "thumbs_per_dir": THUMBS_PER_DIR,
            "thumb_size": thumb_size, "missing_thumbs": len(missing_ids), "approx": approx,
            "quality": _quality_json(quality), "compare": cmp_info,
            "method": nb.description, "neighbours": nb.method, "recall": nb.recall, "dist": dist,
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
                                      "neighbours": nb.method, "recall": nb.recall,
                                      "timings": timings, "store": str(store.path),
                                      "compare": str(other.path) if other is not None else None})
    if missing:
        shown = "; ".join(missing[:10]) + (f"; ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        warnings.warn(f"{len(missing)} of {n} image file(s) of {store.path} are missing or unreadable; "
                      f"placeholders shown instead: {shown}", ExplorerWarning, stacklevel=2)
    say(f"wrote {out} ({n} items, k={k}) in {timings['total']:.1f} s")
    return Site(out, n, k, missing, quality, quality_cmp, approx, timings, method=nb.method, recall=nb.recall)


def _store_name(store) -> str:
    return store.path.resolve().name


def _manifest_summary(store) -> dict:
    keep = ("arch", "alpha", "weights", "run", "layer", "image_size", "created", "package_version")
    man = {key: store.manifest.get(key) for key in keep if key in store.manifest}
    man["path"] = str(store.path)
    man["dim"] = store.dim
    return man

