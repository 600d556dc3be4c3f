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
import sys
import warnings
from pathlib import Path
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.core.errors import ConfigError
from mame_transfer.explorer.neighbours import PCA_DIM
from mame_transfer.explorer.site import THUMB_SIZE
from mame_transfer.knn import AUTO_EXACT_MAX, METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("explore", __doc__.split("\n")[0])
    parser.add_argument("store", help="feature store folder (written by mame-features)")
    parser.add_argument("--out", help="site folder (default: explorer/<store name>)")
    parser.add_argument("--k", type=cli.positive_int, default=20, help="neighbours per image")
    parser.add_argument("--compare", metavar="OTHER_STORE", help="second store: its neighbours shown beside")
    parser.add_argument("--no-thumbs", action="store_true", help="skip thumbnails (placeholders)")
    parser.add_argument("--thumb-size", type=cli.positive_int, default=THUMB_SIZE, help="thumbnail side in pixels")
    parser.add_argument("--pca-dim", type=cli.positive_int, default=PCA_DIM, help="dims of the in-page similarity distribution")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier explorer site at --out")
    parser.add_argument("--neighbours", choices=METHODS, default="auto",
                        help=f"exact: every pair; approx: inverted-file index (faiss) re-ranked exactly, recall@k "
                             f"measured; auto: exact up to {AUTO_EXACT_MAX:,} items")
    parser.add_argument("--serve", action="store_true", help="serve the site on http://127.0.0.1:PORT/")
    parser.add_argument("--port", type=int, default=8765, help="port of --serve")
    cli.add_jobs(parser, help="CPU threads of the neighbour search (default: all)")
    cli.add_verbose(parser)
    return parser


def _explore(args) -> None:
    from mame_transfer.explorer.serve import serve
    from mame_transfer.explorer.site import ExplorerWarning, build_site

    out = Path(args.out) if args.out else Path("explorer") / Path(args.store).resolve().name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExplorerWarning)
        site = build_site(args.store, out, k=args.k, compare=args.compare, thumbnails=not args.no_thumbs,
                          thumb_size=args.thumb_size, pca_dim=args.pca_dim, reuse=args.serve, overwrite=args.overwrite,
                          neighbours=args.neighbours, log=(lambda m: print(m, file=sys.stderr)) if args.verbose else None)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if site.recall:
        print(f"approximate neighbours: recall@{site.recall['k']} {site.recall['recall']:.4f} against exact search on "
              f"{site.recall['queries']} sampled queries")
    if site.quality is not None:
        print(f"precision@k, {Path(args.store).name}:")
        print(site.quality.to_string(float_format=lambda v: f"{v:.3f}"))
    if site.quality_compare is not None:
        print(f"precision@k, {Path(args.compare).name} (matched images):")
        print(site.quality_compare.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"open {site.path.resolve() / 'index.html'}")
    if not args.serve:
        return
    try:
        server = serve(site.path, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{args.port}: {exc}") from exc
    print(f"serving {site.path} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _explore, argv)


if __name__ == "__main__":
    sys.exit(main())
