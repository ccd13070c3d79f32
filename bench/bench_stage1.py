"""Which faiss index for stage 1: IVF with flat, 8-bit and float16 vectors, against exact search.

    python -m bench.bench_stage1 --n 100000

On the stage-1 vectors of a synthetic gallery (bench/synthetic_index.py: N videos, 1,000 topics)
and its sentence embeddings as queries (``--queries``, with the modality gap), for each index
type and number of probed lists: the share of the exact top-``--k`` found (recall), the file
size, the build time, and ms per query for one query per call and for a batch. 4·sqrt(N) lists,
trained on 50 vectors per list, as tvr/evaluation/retrieval.py's ``train_ivf`` but for the
training sample.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from bench.synthetic_index import make_gallery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--probes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    import faiss
    torch.set_num_threads(options.threads)
    faiss.omp_set_num_threads(options.threads)
    gallery = make_gallery(options.n, options.queries, 1000, 0, torch.float16)
    vectors = gallery.coarse.numpy()
    queries = torch.nn.functional.normalize(gallery.text.float(), dim=1).numpy()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    start = time.time()
    truth = exact.search(queries, options.k)[1]
    print(f"exact: {(time.time() - start) / len(queries) * 1e3:.2f} ms per query (batch)")
    lists = int(4 * np.sqrt(options.n))
    path = os.path.join(tempfile.mkdtemp(), "stage1.faiss")
    for kind in ("Flat", "SQ8", "SQfp16"):
        index = faiss.index_factory(vectors.shape[1], f"IVF{lists},{kind}",
                                    faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(options.n, min(options.n, 50 * lists),
                                                 replace=False)
        start = time.time()
        index.train(vectors[sample])
        index.add(vectors)
        built = time.time() - start
        faiss.write_index(index, path)
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        for probes in options.probes:
            index.nprobe = probes
            index.search(queries[:5], options.k)
            start = time.time()
            found = index.search(queries[:50], options.k)[1]
            batch = (time.time() - start) / 50 * 1e3
            start = time.time()
            for q in range(50):
                index.search(queries[q:q + 1], options.k)
            single = (time.time() - start) / 50 * 1e3
            recall = np.mean([len(set(a) & set(b)) / options.k
                              for a, b in zip(found, truth[:50])])
            print(f"IVF{lists},{kind}: build {built:.1f} s, {os.path.getsize(path) >> 20} MiB, "
                  f"nprobe {probes}: {batch:.2f} ms per query (batch), {single:.2f} ms (one), "
                  f"recall@{options.k} {recall:.4f}", flush=True)
    os.unlink(path)


if __name__ == "__main__":
    main()
