"""Benchmark of nearest neighbours at scale and of the explorer page at a million items (a script, not a test).

Every measurement runs in a fresh subprocess (peak RSS = its ``VmHWM``), on synthetic CNN-like vectors with cluster
structure (``common.clustered_vectors``, 1280-d) written once as feature stores under ``--work``.

    .venv/bin/python benchmarks/bench_neighbours.py --sections libs --libs-n 37407,200000 --rounds 3
    .venv/bin/python benchmarks/bench_neighbours.py --sections scale --sizes 37407,200000,1000000 --rounds 3
    .venv/bin/python benchmarks/bench_neighbours.py --sections page --page-n 1000000 --rounds 3

Sections:
  libs   the libraries compared for the neighbours of every item, all on the same 64 principal components with
         the same 64 candidates re-ranked by exact cosine: faiss inverted file (what the package uses), faiss HNSW,
         hnswlib HNSW, pynndescent; seconds, peak RSS, recall@20 against exact search on 1,000 sampled queries.
  scale  the package (``knn.all_neighbours``, as ``explore`` calls it, reading the store as ``explore`` does) at each
         size: approximate on the explorer's 64 principal components and on all 1280 dims, and exact (timed on
         the first --exact-rows rows and extrapolated above that).
  page   ``explore --no-thumbs`` of the largest store, then the page in headless Chromium (a fresh browser each
         round): time from navigation to ready, and from the click on an image (the page's handler) to its
         neighbours shown and to its similarity distribution drawn.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import med, write_vector_store  # noqa: E402

K = 20
CANDIDATES = 64


def _hwm_mib() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load(store_path: str):
    from mame_transfer.explorer.site import HALF_ABOVE, collection
    from mame_transfer.store.store import load_store

    store = load_store(store_path)
    n = sum(int(v["n"]) for v in store.manifest["splits"].values())
    return collection(store, np.float32 if n <= HALF_ABOVE else np.float16)[0]


# --------------------------------------------------------------------------------------------- children


def child_lib(store_path: str, lib: str) -> dict:
    """One library's neighbours of every item on 64 principal components, candidates re-ranked exactly."""
    from mame_transfer.knn import ApproxParams
    from mame_transfer.knn.approx import approx_knn, principal_directions, recall_at_k, reduce

    unit = _load(store_path)
    n = len(unit)
    t0 = time.perf_counter()
    reduced = reduce(unit, principal_directions(unit, 64))
    if lib == "faiss-ivf":
        ids, _ = approx_knn(unit, K, reduced=reduced, params=ApproxParams(candidates=CANDIDATES))
    else:
        if lib == "faiss-hnsw":
            import faiss

            index = faiss.IndexHNSWFlat(64, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(reduced)
            index.hnsw.efSearch = 96
            found = np.concatenate([index.search(reduced[a:a + 4096], CANDIDATES + 1)[1] for a in range(0, n, 4096)])
        elif lib == "hnswlib":
            import hnswlib

            index = hnswlib.Index(space="ip", dim=64)
            index.init_index(max_elements=n, ef_construction=80, M=32, random_seed=0)
            index.set_num_threads(os.cpu_count() or 1)
            index.add_items(reduced, np.arange(n))
            index.set_ef(96)
            found = index.knn_query(reduced, k=CANDIDATES + 1)[0].astype(np.int64)
        elif lib == "pynndescent":
            import pynndescent

            nnd = pynndescent.NNDescent(reduced, metric="dot", n_neighbors=CANDIDATES + 1, random_state=0,
                                        n_jobs=os.cpu_count(), low_memory=True)
            found = nnd.neighbor_graph[0].astype(np.int64)
        else:
            raise SystemExit(f"unknown library {lib}")
        ids = _rerank(unit, found)
    seconds = time.perf_counter() - t0
    recall = recall_at_k(unit, ids, queries=1000)
    return {"lib": lib, "n": n, "seconds": seconds, "rss_mib": _hwm_mib(), "recall": recall["recall"],
            "recall_min": recall["min"]}


def _rerank(unit, found):
    ids = np.empty((len(unit), K), np.int64)
    for a in range(0, len(unit), 512):
        f = found[a:a + 512].copy()
        f[f == np.arange(a, a + len(f))[:, None]] = -1
        sims = np.einsum("bcd,bd->bc", unit[np.clip(f, 0, None)].astype(np.float32), unit[a:a + 512].astype(np.float32))
        sims[f < 0] = -np.inf
        ids[a:a + 512] = np.take_along_axis(f, np.argsort(-sims, axis=1)[:, :K], axis=1)
    return ids


def child_scale(store_path: str, method: str, dim: int, exact_rows: int) -> dict:
    """The package's neighbours of every item of a store, as ``explore`` computes them."""
    from mame_transfer.knn import ApproxParams, all_neighbours
    from mame_transfer.knn.exact import knn

    t0 = time.perf_counter()
    unit = _load(store_path)
    load = time.perf_counter() - t0
    n = len(unit)
    t0 = time.perf_counter()
    if method == "exact":
        rows = min(n, exact_rows)
        knn(unit, K, rows=rows)
        seconds = (time.perf_counter() - t0) * n / rows
        return {"method": "exact", "n": n, "dim": int(unit.shape[1]), "seconds": seconds, "measured_rows": rows,
                "rss_mib": _hwm_mib(), "load_s": load, "recall": 1.0}
    nb = all_neighbours(unit, K, method="approx", params=ApproxParams(dim=dim), recall_queries=1000)
    return {"method": "approx", "n": n, "dim": dim, "seconds": nb.seconds["search"],
            "recall_s": nb.seconds["recall"], "rss_mib": _hwm_mib(), "load_s": load, "recall": nb.recall["recall"],
            "recall_min": nb.recall["min"], "dtype": str(unit.dtype)}


def child_build(store_path: str, out: str) -> dict:
    """The whole ``explore --no-thumbs`` build of a store."""
    from mame_transfer.explorer.site import build_site

    t0 = time.perf_counter()
    site = build_site(store_path, out, k=K, thumbnails=False)
    return {"seconds": time.perf_counter() - t0, "rss_mib": _hwm_mib(), "timings": site.timings,
            "recall": site.recall, "method": site.method, "n": site.n,
            "data_mib": sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20}


# --------------------------------------------------------------------------------------------- sections


def bench_libs(work: Path, sizes: list[int], rounds: int, libs: list[str]) -> list[dict]:
    results = []
    for n in sizes:
        store = write_vector_store(work / f"vectors-{n}", n)
        runs = {lib: [] for lib in libs}
        for r in range(rounds):
            for lib in (libs if r % 2 == 0 else libs[::-1]):
                res = _child(["lib", str(store), lib])
                print(json.dumps(res), flush=True)
                runs[lib].append(res)
        results.append({"n": n, "rounds": rounds, "runs": runs})
    return results


def bench_scale(work: Path, sizes: list[int], rounds: int, exact_rows: int, dims: list[int]) -> list[dict]:
    results = []
    for n in sizes:
        store = write_vector_store(work / f"vectors-{n}", n)
        variants = [("exact", 0)] + [("approx", d) for d in dims if not (d >= 1280 and n > 200_000)]
        runs = {f"{m}-{d}": [] for m, d in variants}
        for r in range(rounds):
            for m, d in (variants if r % 2 == 0 else variants[::-1]):
                res = _child(["scale", str(store), m, str(d), str(exact_rows)])
                print(json.dumps(res), flush=True)
                runs[f"{m}-{d}"].append(res)
        results.append({"n": n, "rounds": rounds, "runs": runs})
    return results


def bench_page(work: Path, n: int, rounds: int) -> dict:
    from mame_transfer.explorer.serve import serving

    store = write_vector_store(work / f"vectors-{n}", n)
    site = work / f"site-{n}"
    build = _child(["build", str(store), str(site)])
    print(json.dumps(build), flush=True)
    sys.path.insert(0, str(REPO / "tests"))
    from browser import open_page

    ready, neighbours, histogram = [], [], []
    with serving(site) as url:
        for r in range(rounds):
            with open_page(url, timeout_ms=120000) as view:
                page = view.page
                page.wait_for_selector("body[data-ready='1']")
                ready.append(page.evaluate("MAMEX.timing.sinceNavigation"))
                page.click(f"#grid figure.thumb >> nth={7 * r}")
                item = int(page.get_attribute(f"#grid figure.thumb >> nth={7 * r}", "data-id"))
                page.wait_for_selector(f"#neighbours[data-count='{K}']")
                neighbours.append(page.evaluate("MAMEX.timing.neighbours"))
                page.wait_for_selector(f"#hist[data-rendered='{item}']")
                histogram.append(page.evaluate("MAMEX.timing.histogram"))
                view.assert_clean()
            print(json.dumps({"round": r, "ready_ms": ready[-1], "neighbours_ms": neighbours[-1],
                              "histogram_ms": histogram[-1]}), flush=True)
    return {"n": n, "rounds": rounds, "build": build, "ready_ms": ready, "neighbours_ms": neighbours,
            "histogram_ms": histogram}


# --------------------------------------------------------------------------------------------- report


def report(res: dict, argv: list[str]) -> str:
    lines = [f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_neighbours.py'] + argv)}`", ""]
    for block in res.get("libs", []):
        lines += [f"#### Libraries, {block['n']:,} items, 64 principal components, {CANDIDATES} candidates re-ranked, "
                  f"k = {K} ({block['rounds']} rounds)", "",
                  "| library | seconds (median, min-max) | x faiss IVF (worst round) | peak RSS MiB | recall@20 |",
                  "|---|---|---|---|---|"]
        base = block["runs"].get("faiss-ivf")
        for lib, runs in block["runs"].items():
            secs = [x["seconds"] for x in runs]
            ratio = ""
            if base:
                ratios = [x["seconds"] / b["seconds"] for x, b in zip(runs, base)]
                ratio = f"{med(ratios):.2f} ({min(ratios):.2f})"
            lines.append(f"| {lib} | {med(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) | {ratio} | "
                         f"{max(x['rss_mib'] for x in runs):.0f} | {med([x['recall'] for x in runs]):.4f} |")
        lines.append("")
    for block in res.get("scale", []):
        lines += [f"#### {block['n']:,} items x 1280 dims ({block['rounds']} rounds)", "",
                  "| method | seconds (median, min-max) | exact / this (worst round) | peak RSS MiB (max) | "
                  "recall@20 (median, worst round) |", "|---|---|---|---|---|"]
        exact = block["runs"]["exact-0"]
        for name, runs in block["runs"].items():
            secs = [x["seconds"] for x in runs]
            ratios = [e["seconds"] / x["seconds"] for e, x in zip(exact, runs)]
            rec = [x["recall"] for x in runs]
            label = (f"exact (timed on {runs[0]['measured_rows']:,} rows, extrapolated)" if name == "exact-0"
                     and runs[0]["measured_rows"] < block["n"] else "exact" if name == "exact-0" else
                     f"approx on {runs[0]['dim']} dims")
            lines.append(f"| {label} | {med(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) | {med(ratios):.1f} "
                         f"({min(ratios):.1f}) | {max(x['rss_mib'] for x in runs):.0f} | {med(rec):.4f} "
                         f"({min(rec):.4f}) |")
        lines.append("")
    if "page" in res:
        p = res["page"]
        b = p["build"]
        lines += [f"#### Explorer page, {p['n']:,} items ({p['rounds']} rounds, headless Chromium over HTTP)", "",
                  f"Build (`explore --no-thumbs`, {b['method']} neighbours, recall@20 "
                  f"{(b['recall'] or {}).get('recall', 1.0):.4f}): {b['seconds']:.0f} s, peak RSS "
                  f"{b['rss_mib']:.0f} MiB, {b['data_mib']:.0f} MiB of data files; stages: " +
                  ", ".join(f"{k} {v:.0f} s" for k, v in b["timings"].items()), "",
                  "| | median ms | worst round ms |", "|---|---|---|",
                  f"| navigation -> page ready | {med(p['ready_ms']):.0f} | {max(p['ready_ms']):.0f} |",
                  f"| click -> neighbours shown | {med(p['neighbours_ms']):.0f} | {max(p['neighbours_ms']):.0f} |",
                  f"| click -> similarity distribution drawn | {med(p['histogram_ms']):.0f} | "
                  f"{max(p['histogram_ms']):.0f} |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        kind, rest = argv[1], argv[2:]
        res = {"lib": lambda: child_lib(*rest), "build": lambda: child_build(*rest),
               "scale": lambda: child_scale(rest[0], rest[1], int(rest[2]), int(rest[3]))}[kind]()
        print(json.dumps(res, default=float))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="libs,scale,page")
    ap.add_argument("--libs-n", default="37407,200000")
    ap.add_argument("--libs", default="faiss-ivf,faiss-hnsw,hnswlib,pynndescent")
    ap.add_argument("--sizes", default="37407,200000,1000000")
    ap.add_argument("--dims", default="64,1280", help="principal components of the approximate index")
    ap.add_argument("--exact-rows", type=int, default=4096, help="rows the exact search is timed on (large sets)")
    ap.add_argument("--page-n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/bench_neighbours", help="synthetic stores (kept between runs)")
    ap.add_argument("--keep", action="store_true", help="keep the stores and sites in --work")
    ap.add_argument("--out", default=None, help="write the Markdown report here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    res: dict = {"nproc": os.cpu_count()}
    try:
        if "libs" in sections:
            res["libs"] = bench_libs(work, ints(args.libs_n), args.rounds, args.libs.split(","))
        if "scale" in sections:
            res["scale"] = bench_scale(work, ints(args.sizes), args.rounds, args.exact_rows, ints(args.dims))
        if "page" in sections:
            res["page"] = bench_page(work, args.page_n, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(res, argv)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
