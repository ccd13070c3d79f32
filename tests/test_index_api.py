"""The JSON search API of a video index (``/api/search``, tvr/index/server.py) on a tiny index
of toy videos: its fields, its errors, and the API served by waitress over HTTP, with the
thumbnails served while a search runs. The model is untrained: the tests compare the API with
what :meth:`VideoIndex.search` returns, not with what a trained model would find."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError
from urllib.parse import quote, urlencode, urljoin
from urllib.request import Request, urlopen

import pytest

from bench import bench_serve
from tvr.evaluation.calibration import training_vocabulary
from tvr.index import server
from tvr.index.search import VideoIndex
from tvr.index.server import create_app
from fixtures_index import NESTED, served, tiny_checkpoint, toy_index

QUERY = "a red circle moves to the left"
TOP = 6
FIELDS = ["query", "model", "good", "reason", "unknown", "hits"]
HIT_FIELDS = ["path", "score", "time", "frame", "thumbnail", "video"]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> VideoIndex:
    root = tmp_path_factory.mktemp("api")
    return toy_index(root, tiny_checkpoint(root / "ckpt_best.pt"))


@pytest.fixture
def client(index):
    return create_app(index, top=TOP).test_client()


def api(client, **arguments):
    """The response of ``/api/search`` with these query arguments."""
    return client.get("/api/search", query_string=arguments)


def same_hits(found: list[dict], expected) -> bool:
    """The API's hits are ``expected`` (:class:`~tvr.index.search.Hit`), in order."""
    return [(hit["path"], hit["score"], hit["time"], hit["frame"]) for hit in found] == \
        [(hit.path, hit.score, hit.time, hit.frame) for hit in expected]


def test_the_api_answers_what_search_finds(index, client):
    response = api(client, q=f"  {QUERY} ")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == FIELDS and all(list(hit) == HIT_FIELDS for hit in body["hits"])
    expected = index.search([QUERY], top=TOP)[0]
    assert body["query"] == QUERY and same_hits(body["hits"], expected.hits)
    assert (body["good"], body["reason"], body["unknown"]) == (None, "", [])
    assert body["model"] == {"kind": "gare", "checkpoint": "ckpt_best.pt",
                             "sha256": index.manifest.checkpoint["sha256"]}
    assert same_hits(api(client, q=QUERY, top=3).get_json()["hits"],
                     index.search([QUERY], top=3)[0].hits)


def test_the_urls_of_every_hit_resolve(index, client):
    hits = api(client, q=QUERY, top=10).get_json()["hits"]
    assert {hit["path"] for hit in hits} == set(index.manifest.entries)
    for hit in hits:
        assert hit["video"] == f"/video/{quote(hit['path'])}"
        thumb = client.get(hit["thumbnail"])
        assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
        assert thumb.data == index.thumbnail(hit["path"], hit["frame"]).read_bytes()
        video = client.get(hit["video"])
        assert video.status_code == 200
        assert video.data == (index.videos_root / hit["path"]).read_bytes()
    assert any(hit["path"] == NESTED for hit in hits)


def test_the_api_says_when_nothing_matches_well(index, monkeypatch):
    best = index.search([QUERY], top=1)[0].hits[0].score
    monkeypatch.setattr(index, "threshold", best + 1e-3)
    below = api(create_app(index, top=TOP).test_client(), q=QUERY).get_json()
    assert below["good"] is False and "below" in below["reason"] and len(below["hits"]) == TOP
    monkeypatch.setattr(index, "threshold", best - 1e-3)
    assert api(create_app(index).test_client(), q=QUERY).get_json()["good"] is True
    monkeypatch.setattr(index, "known_tokens", training_vocabulary([QUERY], index.tokenizer))
    unknown = api(create_app(index).test_client(), q="zzzz <qqqq> left").get_json()
    assert unknown["unknown"] == ["zzzz", "qqqq"] and unknown["good"] is False
    assert unknown["reason"] == "most of its words were never seen in training"


@pytest.mark.parametrize("arguments, message", [
    ({}, "give a query"), ({"q": ""}, "give a query"), ({"q": " \t\n "}, "give a query"),
    ({"q": QUERY, "top": "0"}, "top must be a whole number of at least 1, got '0'"),
    ({"q": QUERY, "top": "-3"}, "got '-3'"), ({"q": QUERY, "top": "2.5"}, "got '2.5'"),
    ({"q": QUERY, "top": "ten"}, "got 'ten'"), ({"q": QUERY, "top": ""}, "got ''"),
    ({"q": QUERY, "top": "\u0663"}, "got '\u0663'")])  # an Arabic-Indic 3: int() reads it
def test_a_bad_request_is_a_400_in_one_json_line(client, arguments, message):
    response = api(client, **arguments)
    assert response.status_code == 400 and response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert message in error and "\n" not in error and list(response.get_json()) == ["error"]


def test_every_error_under_api_is_json_and_the_page_keeps_html(client):
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and "error" in missing.get_json()
    post = client.post("/api/search", data={"q": QUERY})
    assert post.status_code == 405 and "error" in post.get_json()
    page = client.get("/video/missing.mp4")
    assert page.status_code == 404 and page.mimetype == "text/html"


def test_top_is_capped(index, monkeypatch):
    monkeypatch.setattr(server, "MAX_TOP", 3)
    capped = create_app(index, top=2).test_client()
    assert len(api(capped, q=QUERY).get_json()["hits"]) == 2
    for top in ("4", "10", "9" * 5000):  # the last: more digits than int() reads
        assert len(api(capped, q=QUERY, top=top).get_json()["hits"]) == 3, top
    page_shows_more = create_app(index, top=5).test_client()
    assert len(api(page_shows_more, q=QUERY, top=9).get_json()["hits"]) == 5


def fetch(url: str) -> tuple[int, bytes]:
    """The status and body of a GET of ``url``, errors included."""
    try:
        with urlopen(Request(url), timeout=60) as response:
            return response.status, response.read()
    except HTTPError as error:
        return error.code, error.read()


def test_the_api_over_http_under_waitress(index, client):
    with served(create_app(index, top=TOP), threads=2) as url:
        status, body = fetch(urljoin(url, f"api/search?{urlencode({'q': QUERY})}"))
        assert status == 200 and json.loads(body) == api(client, q=QUERY).get_json()
        for hit in json.loads(body)["hits"]:
            status, image = fetch(urljoin(url, hit["thumbnail"]))
            thumbnail = index.thumbnail(hit["path"], hit["frame"])
            assert status == 200 and image == thumbnail.read_bytes()
        status, body = fetch(urljoin(url, "api/search?q=%20&top=3"))
        assert status == 400 and "give a query" in json.loads(body)["error"]


def test_thumbnails_are_served_while_a_search_runs(index, monkeypatch):
    """A search holds its slot until the test lets it go; meanwhile a thumbnail comes back."""
    searching, finish = threading.Event(), threading.Event()
    search = index.search
    hit = search([QUERY], top=1)[0].hits[0]

    def held(*args, **kwargs):
        searching.set()
        assert finish.wait(timeout=60), "the test never let the search finish"
        return search(*args, **kwargs)

    monkeypatch.setattr(index, "search", held)
    with served(create_app(index, top=TOP), threads=2) as url, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(fetch, urljoin(url, f"api/search?{urlencode({'q': QUERY})}"))
        assert searching.wait(timeout=60)
        status, image = fetch(urljoin(url, f"thumb/{quote(hit.path)}/{hit.frame}"))
        assert not answer.done()
        finish.set()
        assert status == 200 and image == index.thumbnail(hit.path, hit.frame).read_bytes()
        status, body = answer.result(timeout=60)
        assert status == 200 and json.loads(body)["hits"][0]["path"] == hit.path


def test_searches_run_at_once_up_to_the_limit(index, monkeypatch):
    """With ``searches=2`` two searches are inside :meth:`VideoIndex.search` together: each
    waits there for the other (a barrier that times out if they ran one after the other)."""
    both = threading.Barrier(2, timeout=60)
    search = index.search

    def together(*args, **kwargs):
        both.wait()
        return search(*args, **kwargs)

    monkeypatch.setattr(index, "search", together)
    client = create_app(index, top=TOP, searches=2).test_client()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda query: api(client, q=query).get_json(), [QUERY, "up"]))
    assert [answer["query"] for answer in answers] == [QUERY, "up"]
    assert all(len(answer["hits"]) == TOP for answer in answers)


def test_the_serve_bench_runs_every_scenario(index, capsys):
    bench_serve.main(["--index", str(index.folder), "--clients", "2", "--threads", "2",
                      "--api_requests", "1", "--thumbnail_requests", "2"])
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [(row[0].strip(), row[1].strip()) for row in rows] == [
        ("api", "api"), ("thumbnail", "thumbnail"), ("mixed", "api"), ("mixed", "thumbnail")]
    assert [int(row[4]) for row in rows] == [2, 4, 1, 2]  # requests of each row
    assert all(int(row[5]) == 0 and float(row[8]) > 0 for row in rows)  # none failed
