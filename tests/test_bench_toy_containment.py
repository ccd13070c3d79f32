"""bench/bench_toy_containment.py on a tiny untrained checkpoint and a gallery of 12 varied toy
videos: two-stage search with K = N candidates is exhaustive search, so its top-10 is the
exhaustive one for every query; smaller K may miss some but never report more than all."""
import json

from bench import bench_toy_containment as bench
from tests.fixtures_index import tiny_checkpoint
from tests.test_benches import table_rows


def test_queries_take_turns_in_kind_follow_the_seed_and_read_back():
    queries = bench.toy_queries(60, seed=3)
    assert [q.kind for q in queries] == list(bench.KINDS) * 20
    assert queries == bench.toy_queries(60, seed=3) != bench.toy_queries(60, seed=4)
    assert all(q.text == " ".join(q.content) for q in queries if q.kind == "plain words")
    assert len({q.text for q in queries}) > 50
    assert all(bench.read_content(q.text) == q.content for q in queries)
    assert len({q.content[2] for q in queries}) == 4


def test_containment_of_k_equal_to_n_is_complete(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt_best.pt")
    bench.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "toy"),
                "--index", str(tmp_path / "index"), "--n", "12", "--queries", "6",
                "--k", "10", "12", "--single", "1", "--workers", "0"])
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["exhaustive", "10", "12"]
    assert rows[2][1:5] == ["100.0% / 100%"] * 4
    assert rows[2][5] == rows[0][5] and 0 <= float(rows[0][5].rstrip("%")) <= 100
    items, complete = rows[1][1].split(" / ")
    assert 0 <= float(items.rstrip("%")) <= 100 and 0 <= float(complete.rstrip("%")) <= 100
    params = json.loads((tmp_path / "toy" / "toy_manifest.json").read_text())["params"]
    assert params["num_train"] + params["num_test"] == 12 and "variation" in params
    assert "12 videos" in out
