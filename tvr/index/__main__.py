"""``python -m tvr.index {build,search,serve}``: index a folder of videos with a checkpoint,
search it with sentences, or browse it in a local web page."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvr.index.store import IndexStoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tvr.index", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="create or update an index (incremental)")
    build.add_argument("--checkpoint", required=True, help="a ckpt_best.pt of this project")
    build.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    build.add_argument("--out", required=True, help="the index folder")
    build.add_argument("--workers", type=int, default=2, help="decoding processes")
    build.add_argument("--batch_size", type=int, default=16, help="videos encoded at once")
    build.add_argument("--shard_size", type=int, default=256,
                       help="videos per shard file (an interrupted build keeps whole shards)")
    build.add_argument("--rebuild", action="store_true", help="delete the index and start over")
    build.add_argument("--device", default="cpu", help="cpu or cuda")

    search = commands.add_parser("search", help="rank the indexed videos for sentences")
    search.add_argument("index", help="the index folder")
    search.add_argument("queries", nargs="*", help="sentences to search for")
    search.add_argument("--queries_file", help="a text file of sentences, one per line")
    search.add_argument("--top", type=int, default=10, help="results per sentence")
    search.add_argument("--k", type=int, default=100,
                        help="stage-1 candidates re-scored with GARE per sentence")
    search.add_argument("--exhaustive", action="store_true",
                        help="score every video with GARE (no stage 1)")
    search.add_argument("--stage1", default="auto", choices=["auto", "faiss", "torch"],
                        help="stage-1 search: faiss when installed (auto), or torch matmuls")
    search.add_argument("--checkpoint", help="the checkpoint, if it moved since the build")

    serve = commands.add_parser("serve", help="a local web page to search the index")
    serve.add_argument("index", help="the index folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--top", type=int, default=12, help="results per search")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            from tvr.index.build import build_index
            report = build_index(args.checkpoint, args.videos, args.out, workers=args.workers,
                                 batch_size=args.batch_size, shard_size=args.shard_size,
                                 rebuild=args.rebuild, device=args.device)
            print(report.format())
        elif args.command == "search":
            search(parser, args)
        else:
            from tvr.index.server import serve
            serve(args.index, host=args.host, port=args.port, top=args.top)
    except IndexStoreError as error:
        print(f"python -m tvr.index: error: {error}", file=sys.stderr)
        return 2
    return 0


def search(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from tvr.index.search import VideoIndex
    queries = list(args.queries)
    if args.queries_file:
        queries += [line.strip() for line in Path(args.queries_file).read_text().splitlines()
                    if line.strip()]
    if not queries:
        parser.error("give sentences to search for, or --queries_file")
    index = VideoIndex.open(args.index, args.checkpoint, args.stage1)
    results = index.search(queries, top=args.top, k=args.k, exhaustive=args.exhaustive)
    for query, hits in zip(queries, results):
        print(f"{query}")
        for rank, hit in enumerate(hits, 1):
            minutes, seconds = divmod(hit.time, 60)
            print(f"  {rank:3d}  {hit.score:.4f}  {int(minutes)}:{seconds:04.1f}  "
                  f"{shown(index.videos_root / hit.path)}")


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
