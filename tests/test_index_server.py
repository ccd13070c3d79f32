"""The search page of a video index (tvr/index/server.py) on a tiny index of toy videos.

The routes are checked through Flask's test client; the page itself in a real headless
Chromium, loading it from a live server (waitress, as ``serve`` runs it), as a user would. The
browser test needs a Chromium binary (Debian's ``chromium`` package, which .ci/run installs
when it can) and is skipped, with the reason, without one. The model is untrained: the tests
compare the page with what :meth:`VideoIndex.search` returns, not with what a trained model
would find.
"""
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlencode, urljoin
from urllib.request import urlopen

import pytest

from tvr.evaluation.calibration import training_vocabulary
from tvr.index.search import VideoIndex
from tvr.index.server import clock, create_app
from tvr.index.store import IndexStoreError
from fixtures_index import NESTED, build, served, tiny_checkpoint, toy_index

QUERY = "a red circle moves to the left"
TOP = 6
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, as root in a container (no sandbox, no GPU), and with no connections of Chromium's
# own (updates, sync, components, QUIC): test machines may reach package registries only.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "ckpt_best.pt")


@pytest.fixture(scope="module")
def index(tmp_path_factory, checkpoint) -> VideoIndex:
    return toy_index(tmp_path_factory.mktemp("index"), checkpoint)


@pytest.fixture
def client(index):
    return create_app(index, top=TOP).test_client()


@pytest.fixture(scope="module")
def live_url(index):
    """The page served by waitress on a free local port, in a thread."""
    with served(create_app(index, top=TOP)) as url:
        yield url


class ResultCards(HTMLParser):
    """The attributes of each result card (``<li class="hit">``) of a page, with the poster and
    source of the card's player, in document order."""

    def __init__(self, html: str):
        super().__init__()
        self.cards: list[dict[str, str]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str]]) -> None:
        attrs = dict(attrs)
        if tag == "li" and attrs.get("class") == "hit":
            self.cards.append(attrs)
        elif tag == "video" and self.cards:
            self.cards[-1].update(poster=attrs["poster"], src=attrs["src"])


def check_cards(html: str, expected) -> None:
    """The page lists the hits ``expected``, ranked 1, 2, ..., each player showing the hit's
    best frame and starting at its time."""
    cards = ResultCards(html).cards
    assert [card["data-rank"] for card in cards] == [str(r) for r in range(1, len(expected) + 1)]
    assert [card["data-path"] for card in cards] == [hit.path for hit in expected]
    for card, hit in zip(cards, expected):
        assert card["poster"].endswith(f"/{hit.frame}")
        assert card["src"].endswith(f"#t={hit.time:.2f}")


def test_clock():
    assert [clock(s) for s in (0, 9.99, 75.5, 3599, 3725)] == \
        ["0:00", "0:09", "1:15", "59:59", "1:02:05"]


def test_page_lists_the_search_results(index, client):
    page = client.get("/", query_string={"q": QUERY})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    check_cards(html, index.search([QUERY], top=TOP)[0].hits)
    assert f"{TOP} best of 10 videos" in html
    empty = client.get("/").get_data(as_text=True)
    assert "10 videos indexed" in empty and not ResultCards(empty).cards


def test_the_page_says_when_nothing_matches_well(index, monkeypatch):
    best = index.search([QUERY], top=1)[0].hits[0].score
    pages = {}
    for threshold in (best + 1e-3, best - 1e-3, None):
        monkeypatch.setattr(index, "threshold", threshold)
        client = create_app(index, top=TOP).test_client()
        pages[threshold] = client.get("/", query_string={"q": QUERY}).get_data(as_text=True)
    below, above, unset = pages.values()
    assert 'id="no-match">No good match</b>' in below and ResultCards(below).cards
    assert "No good match" not in above and "No good match" not in unset
    assert f"{TOP} best of 10 videos" in above


def test_the_page_names_the_words_the_model_never_saw(index, monkeypatch):
    monkeypatch.setattr(index, "known_tokens", training_vocabulary([QUERY], index.tokenizer))
    monkeypatch.setattr(index, "threshold", None)
    client = create_app(index, top=TOP).test_client()
    page = client.get("/", query_string={"q": "zzzz <qqqq> left"}).get_data(as_text=True)
    assert 'id="no-match">No good match</b>' in page
    assert "most of its words were never seen in training" in page
    assert "never saw in training:\n zzzz, qqqq</p>" in page  # "<", ">" are no words
    known = client.get("/", query_string={"q": QUERY}).get_data(as_text=True)
    assert "No good match" not in known and "unknown-words" not in known


@pytest.mark.parametrize("query", ["", " ", " \t\n "])
def test_an_empty_query_gets_the_empty_form(client, query):
    html = client.get("/", query_string={"q": query}).get_data(as_text=True)
    assert "10 videos indexed" in html and not ResultCards(html).cards
    assert 'value=""' in html


def test_query_is_escaped(client):
    html = client.get("/", query_string={"q": '<script>alert("x")</script>'}).get_data(True)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_thumbnails_and_videos_are_served(index, client):
    hit = index.search([QUERY], top=1)[0].hits[0]
    thumb = client.get(f"/thumb/{quote(hit.path)}/{hit.frame}")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert thumb.data == index.thumbnail(hit.path, hit.frame).read_bytes()
    data = (index.videos_root / NESTED).read_bytes()
    whole = client.get("/video/more%20clips/clip%20%231.mp4")
    assert whole.status_code == 200 and whole.mimetype == "video/mp4" and whole.data == data
    part = client.get("/video/more%20clips/clip%20%231.mp4", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"


def test_only_indexed_files_are_served(index, client):
    (index.videos_root / "added later.mp4").write_bytes(b"not indexed")
    entry = next(iter(index.manifest.entries))
    for url in ("/video/added%20later.mp4", "/video/missing.mp4", "/video/../toy_manifest.json",
                "/video/%2E%2E/toy_manifest.json", "/video//etc/passwd", "/thumb/missing.mp4/0",
                f"/thumb/{entry}/{len(index.manifest.entries[entry].times)}",
                f"/thumb/{entry}/-1", "/thumb/../manifest.json"):
        assert client.get(url, follow_redirects=True).status_code == 404, url


@pytest.fixture
def own(checkpoint, index, tmp_path):
    """A client of a fresh index of three videos (video0-2.mp4) that a test may change, with
    its videos folder and a file outside it."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("video0.mp4", "video1.mp4", "video2.mp4"):
        shutil.copy(index.videos_root / name, videos)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the videos folder")
    build(checkpoint, videos, tmp_path / "index")
    own = VideoIndex.open(tmp_path / "index")
    return create_app(own, top=TOP).test_client(), videos, secret, own


def changed(response) -> bool:
    """A 404 that says the file changed since the build and what to do."""
    text = response.get_data(as_text=True)
    return response.status_code == 404 and "changed since the index was built" in text and \
        "re-run build" in text


def test_a_symlink_swapped_in_after_the_build_is_not_served(own):
    client, videos, secret, _ = own
    assert client.get("/video/video0.mp4").status_code == 200
    (videos / "video0.mp4").unlink()
    (videos / "video0.mp4").symlink_to(secret)
    response = client.get("/video/video0.mp4")
    assert changed(response) and b"outside the videos folder" not in response.data
    (videos / "video1.mp4").unlink()
    (videos / "video1.mp4").symlink_to("/etc/passwd")
    assert changed(client.get("/video/video1.mp4"))


def test_a_replaced_file_is_not_served(own):
    client, videos, _, _ = own
    data = (videos / "video0.mp4").read_bytes()
    (videos / "video0.mp4").write_bytes(b"x" * len(data))  # same size, other content
    assert changed(client.get("/video/video0.mp4"))
    (videos / "video1.mp4").write_bytes(b"other")  # other size
    assert changed(client.get("/video/video1.mp4"))
    assert client.get("/video/video2.mp4").status_code == 200


def test_a_symlink_the_build_followed_is_served_while_it_points_there(checkpoint, index,
                                                                      tmp_path):
    videos, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    videos.mkdir()
    elsewhere.mkdir()
    for name in ("video0.mp4", "video1.mp4"):
        shutil.copy(index.videos_root / name, elsewhere)
    (videos / "linked.mp4").symlink_to(elsewhere / "video0.mp4")
    build(checkpoint, videos, tmp_path / "index")
    client = create_app(VideoIndex.open(tmp_path / "index")).test_client()
    response = client.get("/video/linked.mp4")
    assert response.status_code == 200
    assert response.data == (elsewhere / "video0.mp4").read_bytes()
    (videos / "linked.mp4").unlink()
    (videos / "linked.mp4").symlink_to(elsewhere / "video1.mp4")
    assert changed(client.get("/video/linked.mp4"))


def test_a_recorded_path_outside_the_folder_is_not_served_without_a_followed_link(own):
    client, videos, secret, index = own
    entry = index.manifest.entries["video0.mp4"]
    (videos / "video0.mp4").unlink()
    (videos / "video0.mp4").symlink_to(secret)
    info = secret.stat()
    index.manifest.entries["video0.mp4"] = dataclasses.replace(
        entry, real_path=str(secret), size=info.st_size, mtime_ns=info.st_mtime_ns,
        followed_link=False)  # a manifest edited by hand
    assert changed(client.get("/video/video0.mp4"))


@pytest.mark.parametrize("url", [
    "/video/../manifest.json", "/video/%2e%2e/manifest.json", "/video/%2E%2E%2Fmanifest.json",
    "/video/..%5Cmanifest.json", "/video/..\\manifest.json", "/video/%5C..%5Cmanifest.json",
    "/video//etc/passwd", "/video/%2Fetc%2Fpasswd", "/video///etc/passwd",
    "/video/./video0.mp4", "/video/videos/../video0.mp4x", "/thumb/../manifest.json/0",
    "/thumb/%2e%2e/manifest.json/0", "/thumb//etc/passwd/0"])
def test_every_traversal_form_is_a_404(own, url):
    client, _, _, _ = own
    response = client.get(url, follow_redirects=True)
    assert response.status_code == 404 and b"root:" not in response.data, url


def test_a_multi_range_request_gets_the_whole_file(own):
    client, videos, _, _ = own
    data = (videos / "video0.mp4").read_bytes()
    response = client.get("/video/video0.mp4", headers={"Range": "bytes=0-1,4-5"})
    assert response.status_code == 200 and response.data == data
    single = client.get("/video/video0.mp4", headers={"Range": "bytes=4-5"})
    assert single.status_code == 206 and single.data == data[4:6]


def test_an_index_of_the_old_format_asks_for_a_rebuild(own, tmp_path):
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    manifest["format_version"] = 1  # its entries, in the manifest, had no real paths
    (tmp_path / "index" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexStoreError, match="format version 1.*rebuild the index with "
                                              "--rebuild"):
        VideoIndex.open(tmp_path / "index")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH (Debian: "
                                              "apt-get install chromium)")
def test_chromium_shows_the_results(index, live_url, tmp_path):
    url = f"{live_url}?{urlencode({'q': QUERY})}"
    browser = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert browser.returncode == 0, browser.stderr[-2000:]
    check_cards(browser.stdout, index.search([QUERY], top=TOP)[0].hits)


@pytest.fixture
def served_as_the_readme_does(index):
    """``python -m tvr.index serve index`` run from the index's parent folder, the index named
    by its relative path as README.md writes it, on a free local port: the page's URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "tvr.index", "serve", index.folder.name,
                               "--port", str(port), "--top", str(TOP), "--threads", "2"],
                              cwd=index.folder.parent, env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    announced = server.stdout.readline()
    assert "open http://" in announced, announced + server.stdout.read()
    yield f"http://127.0.0.1:{port}/"
    server.terminate()
    server.wait(timeout=30)
    server.stdout.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH (Debian: "
                                              "apt-get install chromium)")
def test_chromium_loads_every_thumbnail_of_an_index_served_by_its_relative_path(
        served_as_the_readme_does, tmp_path):
    url = f"{served_as_the_readme_does}?{urlencode({'q': QUERY})}"
    with urlopen(url, timeout=60) as response:
        assert response.headers["Server"] == "waitress"  # what serve runs the page on
        cards = ResultCards(response.read().decode()).cards
    assert len(cards) == TOP
    images = "".join(f'<img src="{urljoin(url, card["poster"])}">' for card in cards)
    sheet = tmp_path / "thumbnails.html"
    sheet.write_text(f"<!doctype html><body>{images}<script>window.onload = () => "
                     f"document.body.dataset.widths = [...document.images].map("
                     f"image => image.naturalWidth).join(' ');</script></body>")
    browser = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--dump-dom", sheet.as_uri()], capture_output=True, text=True,
                             timeout=120)
    assert browser.returncode == 0, browser.stderr[-2000:]
    widths = browser.stdout.split('data-widths="')[1].split('"')[0].split()
    assert len(widths) == TOP and all(int(width) > 0 for width in widths), widths
