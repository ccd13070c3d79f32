"""Concurrent clients against ``python -m tvr.index serve``: latency and throughput of the JSON
search API and of the thumbnails, alone and together.

    python -m bench.bench_serve --index /tmp/serve_idx --clients 50 --threads 8 --searches 1 2

For each pair of ``--threads`` and ``--searches`` values the server runs as a user starts it
(``python -m tvr.index serve``, in a child process, on a free local port) and is warmed with
a search per sentence. Then ``--clients`` threads, each with its own keep-alive HTTP
connection, start together and send their requests back to back: "api" (``/api/search`` for sentences of the toy captions, ``--top`` hits),
"thumbnail" (the thumbnails those searches returned), and "mixed" (half the clients search,
the other half fetch thumbnails, at once: do the thumbnails wait behind the searches?). Each
row gives the latency percentiles of one kind of request in one scenario and its rate: its
requests over the time from the common start to its last answer. The clients run in this
process, on the same machine, so their own work is part of the figures.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple, Optional
from urllib.parse import urlencode

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["a red circle moves to the left", "a blue square moves up",
           "a green triangle moves to the right", "a yellow circle moves down",
           "a red square moves to the right", "a blue triangle moves to the left",
           "a green circle moves up", "a yellow square moves to the left"]


class Reply(NamedTuple):
    """One request: its kind ("api" or "thumbnail"), when it ended (s after the common
    start), how long it took (s), and its HTTP status."""

    kind: str
    end: float
    seconds: float
    status: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: str, threads: int, searches: int,
                 top: int) -> tuple[subprocess.Popen, int]:
    """``python -m tvr.index serve`` of ``index`` on a free port, once it says it listens."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvr.index", "serve", index, "--port",
                               str(port), "--threads", str(threads), "--searches",
                               str(searches), "--top", str(top)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    announced = server.stdout.readline()
    if "open http://" not in announced:
        server.kill()
        raise SystemExit(f"the server did not start: {announced!r}")
    return server, port


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def api_path(query: str, top: int) -> str:
    return f"/api/search?{urlencode({'q': query, 'top': top})}"


def thumbnails(port: int, top: int) -> list[str]:
    """The thumbnail URLs of the hits of every query (and a first search, which warms the
    server: the index builds its scoring engine on first use)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    urls = []
    for query in QUERIES:
        status, body = get(connection, api_path(query, top))
        if status != 200:
            raise SystemExit(f"the API answered {status}: {body[:200]!r}")
        urls += [hit["thumbnail"] for hit in json.loads(body)["hits"]]
    connection.close()
    return urls


def run_clients(port: int, plans: list[list[tuple[str, str]]]) -> list[Reply]:
    """Each plan's requests ``(kind, path)`` sent in order by its own client thread, on its
    own connection; the clients start together. Every request's :class:`Reply`."""
    replies: list[Reply] = []
    lock, ready = threading.Lock(), threading.Barrier(len(plans) + 1)
    start = [0.0]

    def client(plan: list[tuple[str, str]]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        ready.wait()
        mine = []
        for kind, path in plan:
            began = time.perf_counter()
            status, _ = get(connection, path)
            ended = time.perf_counter()
            mine.append(Reply(kind, ended - start[0], ended - began, status))
        connection.close()
        with lock:
            replies.extend(mine)

    workers = [threading.Thread(target=client, args=(plan,)) for plan in plans]
    for worker in workers:
        worker.start()
    start[0] = time.perf_counter()
    ready.wait()
    for worker in workers:
        worker.join()
    return replies


def plans(scenario: str, clients: int, options: argparse.Namespace,
          thumbs: list[str]) -> list[list[tuple[str, str]]]:
    """Each client's requests in ``scenario``: API searches, thumbnails, or half of each."""
    searches = [("api", api_path(QUERIES[i % len(QUERIES)], options.top))
                for i in range(options.api_requests * clients)]
    images = [("thumbnail", thumbs[i % len(thumbs)])
              for i in range(options.thumbnail_requests * clients)]
    if scenario == "api":
        return [searches[c::clients] for c in range(clients)]
    if scenario == "thumbnail":
        return [images[c::clients] for c in range(clients)]
    half = clients // 2
    return ([searches[c::clients] for c in range(half)] +
            [images[c::clients] for c in range(half, clients)])


def rows(scenario: str, server: str, clients: int, replies: list[Reply]) -> list[str]:
    """The table's rows for one scenario: per kind of request, the count, the failures
    (not 200), p50 and p99 latency (ms), and the rate."""
    out = []
    for kind in sorted({reply.kind for reply in replies}):
        mine = [reply for reply in replies if reply.kind == kind]
        seconds = np.array([reply.seconds for reply in mine]) * 1000
        failed = sum(reply.status != 200 for reply in mine)
        rate = len(mine) / max(reply.end for reply in mine)
        out.append(f"| {scenario} | {kind} | {server} | {clients} | {len(mine)} | {failed} | "
                   f"{np.percentile(seconds, 50):.1f} | {np.percentile(seconds, 99):.1f} | "
                   f"{rate:.1f} |")
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="an index folder (tvr.index build)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--threads", type=int, nargs="+", default=[8],
                        help="the server's --threads, one run each")
    parser.add_argument("--searches", type=int, nargs="+", default=[2],
                        help="the server's --searches, one run each (per --threads)")
    parser.add_argument("--top", type=int, default=12, help="hits per search")
    parser.add_argument("--api_requests", type=int, default=10, help="searches per client")
    parser.add_argument("--thumbnail_requests", type=int, default=100,
                        help="thumbnails per client")
    parser.add_argument("--scenarios", nargs="+", default=["api", "thumbnail", "mixed"],
                        choices=["api", "thumbnail", "mixed"])
    options = parser.parse_args(argv)
    print("| scenario | request | threads / searches | clients | requests | failed | p50 ms | "
          "p99 ms | requests/s |\n|---|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for threads, searches in itertools.product(options.threads, options.searches):
        server, port = start_server(options.index, threads, searches, options.top)
        try:
            thumbs = thumbnails(port, options.top)
            for scenario in options.scenarios:
                replies = run_clients(port, plans(scenario, options.clients, options, thumbs))
                print("\n".join(rows(scenario, f"{threads} / {searches}", options.clients,
                                      replies)), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
