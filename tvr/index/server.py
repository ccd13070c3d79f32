"""A small web page and JSON API to search a video index: ``python -m tvr.index serve INDEX``.

:func:`create_app` builds a Flask application around an open
:class:`~tvr.index.search.VideoIndex`; :func:`serve` opens an index folder and runs it on
waitress, a production WSGI server, on ``127.0.0.1`` by default (nothing here authenticates).
Routes:

``/?q=<text>``
    A search form and, for a query, the ``top`` best videos as a grid of cards: the rank, the
    score, the time of the best-matching sampled frame (``m:ss``), the file path, and an HTML5
    player showing the thumbnail of that frame; a click plays the video inline from that time
    (a media fragment ``#t=<seconds>``), and below the search form, which model scored them
    (a GARE checkpoint, or CLIP zero-shot). When the best video does not stand out (below the
    index's "no good match" threshold, tvr/index/search.py) the page says "No good match" above
    the closest videos. The results are rendered on the server, so a plain DOM
    dump shows them, and without JavaScript the path links to the video at that time.
``/api/search?q=<text>&top=<n>``
    The same search as JSON (:func:`answer_json`): the query, the model, ``good``, ``reason``,
    ``unknown`` and the hits, each with its path, score, time, frame and the URLs of its
    thumbnail and video (relative to the server). ``top`` defaults to the page's and is capped
    at :data:`MAX_TOP` (or the page's, if larger). An empty ``q`` or a ``top`` that is not a
    whole number from 1 up is a 400; every error under ``/api/`` is JSON ``{"error": ...}``.
``/thumb/<path>/<k>``
    The JPEG thumbnail of sampled frame ``k`` of video ``path``.
``/video/<path>``
    The video file, with range requests (HTTP 206) so that the player can seek. A request for
    several ranges gets the whole file (200, as RFC 9110 allows: browsers ask for one range).

Only videos listed in the index manifest are served, looked up by their path relative to the
videos folder: any other path (``../``, absolute, not indexed) is a 404. A listed video is
served only while it is the file the build read (:func:`open_indexed`): its path must still
lead to the real path the manifest records, inside the videos folder unless the build followed
a symbolic link, with the recorded size and modification time. A file replaced since the build,
or swapped for a link to elsewhere, is a 404 that says to re-run build. So the server never
reads outside the index and the files it indexed. Every value in the page goes through Jinja's
autoescaping, the query included.
"""
from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Optional

import flask
import waitress
from werkzeug.exceptions import HTTPException
from werkzeug.serving import select_address_family

from tvr.index.config import ServeConfig
from tvr.index.search import Answer, VideoIndex
from tvr.index.store import Manifest
from tvr.index.table import Entry

# The API's cap on ``top`` (unless the page shows more): the stage-1 candidates that search
# re-scores by default (its ``k``), and a bound on the work one request can ask for.
MAX_TOP = 100

# The one page, a Jinja template (autoescaped: Flask escapes every value rendered into it).
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ query ~ " - " if query }}video search</title>
<style>
 body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
 form { display: flex; gap: .5em; margin-bottom: .5em; }
 input[type=search] { flex: 1; max-width: 40em; font-size: 1.1em; padding: .3em; }
 .summary { color: #666; margin-bottom: 1em; }
 .scorer { color: #666; font-size: .85em; margin-top: -.5em; }
 ol { list-style: none; padding: 0; display: grid; gap: 1em;
      grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); }
 li { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5em; }
 video { display: block; width: 100%; background: #000; border-radius: 4px; cursor: pointer; }
 .meta { display: flex; justify-content: space-between; font-size: .9em; margin-top: .3em; }
 .path { font-family: monospace; font-size: .85em; word-break: break-all; }
</style>
</head>
<body>
<form action="{{ url_for('page') }}" method="get" role="search">
 <input type="search" name="q" value="{{ query }}" placeholder="describe a video" autofocus>
 <button type="submit">Search</button>
</form>
<p class="summary">
{%- if query and answer.good is false %} <b id="no-match">No good match</b> for <q>{{ query }}</q>
 among {{ count }} videos ({{ answer.reason }}): the closest {{ hits | length }} are shown
{%- elif query %} {{ hits | length }} best of {{ count }} videos for <q>{{ query }}</q>
{%- else %} {{ count }} videos indexed{% endif %}</p>
<p class="scorer" id="scorer">scored by {{ scorer }}</p>
{% if answer and answer.unknown %}<p id="unknown-words">Words this model never saw in training:
 {{ answer.unknown | join(', ') }}</p>{% endif %}
{% if hits %}
<ol id="results">
{%- for hit in hits %}
  {%- set src = url_for('video', path=hit.path) ~ '#t=%.2f' | format(hit.time) %}
 <li class="hit" data-rank="{{ loop.index }}" data-path="{{ hit.path }}">
  <video preload="none" src="{{ src }}" title="click to play from {{ hit.time | clock }}"
         poster="{{ url_for('thumb', path=hit.path, k=hit.frame) }}"
         onclick="if (!this.controls) { this.controls = true; this.play(); }"></video>
  <div class="meta"><b>#{{ loop.index }}</b><span>score {{ '%.3f' | format(hit.score) }}</span>
   <span title="time of the best-matching frame">at {{ hit.time | clock }}</span></div>
  <a class="path" href="{{ src }}">{{ hit.path }}</a>
 </li>
{%- endfor %}
</ol>
{% endif %}
</body>
</html>
"""


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on) of a time in seconds, rounded down, for the page."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def create_app(index: VideoIndex, top: int = 12, searches: int = 1) -> flask.Flask:
    """The web application for ``index`` (see the module doc), showing ``top`` results a query.

    The page and the API answer through one function, which runs at most ``searches``
    searches at once (a semaphore around :meth:`VideoIndex.search`; the others wait): torch
    already spreads one search over the CPU cores, but a search also has single-threaded
    steps, which others can fill (bench/RESULTS.md §9). Thumbnails and videos never wait.
    """
    app = flask.Flask(__name__)
    app.add_template_filter(clock)
    app.json.sort_keys = False  # the API's fields in the order answer_json writes them
    app.register_error_handler(HTTPException, api_error)
    slots = threading.BoundedSemaphore(searches)
    most = max(top, MAX_TOP)

    def search(query: str, count: int) -> Answer:
        """The ``count`` best videos for ``query``, ``searches`` at once at most."""
        with slots:
            return index.search([query], top=count)[0]

    @app.get("/")
    def page() -> str:
        """The search form, with the results of the query ``q`` when there is one."""
        query = flask.request.values.get("q", "").strip()
        answer = search(query, top) if query else None
        return flask.render_template_string(PAGE, query=query, answer=answer,
                                            hits=answer.hits if answer else [],
                                            count=len(index), scorer=index.scorer)

    @app.get("/api/search")
    def api_search() -> flask.Response:
        """The answer to ``q`` as JSON (:func:`answer_json`), ``top`` hits at most."""
        query = flask.request.args.get("q", "").strip()
        if not query:
            flask.abort(400, "give a query: /api/search?q=<text>")
        count = requested_top(flask.request.args.get("top"), top, most)
        return flask.jsonify(answer_json(query, search(query, count), index.manifest))

    @app.get("/thumb/<path:path>/<int:k>")
    def thumb(path: str, k: int) -> flask.Response:
        """The thumbnail of sampled frame ``k`` of an indexed video (404 past its last frame)."""
        if k >= len(indexed(index, path).times):
            flask.abort(404)
        file = index.thumbnail(path, k)
        return flask.send_from_directory(file.parent, file.name, mimetype="image/jpeg",
                                         conditional=True)

    @app.get("/video/<path:path>")
    def video(path: str) -> flask.Response:
        """An indexed video file while it is the file the build read; conditional, so that a
        range request gets 206 and seeking works."""
        file = open_indexed(index.videos_root, path, indexed(index, path))
        if file is None:
            flask.abort(404, f"{path} changed since the index was built (another file, or a "
                             f"link to elsewhere): re-run build to index it again")
        return send_video(file, PurePosixPath(path).name)

    return app


def indexed(index: VideoIndex, path: str) -> Entry:
    """The manifest entry of ``path``, or a 404 for any path the index does not list."""
    row = index.table.find(path)
    if row is None:
        flask.abort(404)
    return index.table.entry(row)


def api_error(exception: HTTPException) -> tuple[flask.Response, int] | HTTPException:
    """Under ``/api/``, an error as JSON ``{"error": <one line>}`` with its status; elsewhere
    Flask's page."""
    if not flask.request.path.startswith("/api/"):
        return exception
    return flask.jsonify(error=exception.description), exception.code


def requested_top(value: Optional[str], default: int, most: int) -> int:
    """The API's ``top``: ``default`` when not given, at most ``most``; a 400 unless it is a
    whole number of at least 1."""
    if value is None:
        return default
    try:
        count = int(value) if value.isascii() and value.isdigit() else 0
    except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits)
        return most
    if count < 1:
        flask.abort(400, f"top must be a whole number of at least 1, got {value!r}")
    return min(count, most)


def answer_json(query: str, answer: Answer, manifest: Manifest) -> dict[str, Any]:
    """The API's answer to ``query``: the model (its kind, "gare" or "clip-zero-shot", and the
    file name and SHA-256 of its checkpoint or CLIP file), the
    verdict (``good``, ``reason``, ``unknown``: see :class:`~tvr.index.search.Answer`) and the
    hits, best first, with the URLs of their thumbnails and videos."""
    model = {"kind": manifest.checkpoint.get("kind", "gare"),
             "checkpoint": PurePosixPath(manifest.checkpoint["path"]).name,
             "sha256": manifest.checkpoint["sha256"]}
    hits = [{"path": hit.path, "score": hit.score, "time": hit.time, "frame": hit.frame,
             "thumbnail": flask.url_for("thumb", path=hit.path, k=hit.frame),
             "video": flask.url_for("video", path=hit.path)} for hit in answer.hits]
    return {"query": query, "model": model, "good": answer.good, "reason": answer.reason,
            "unknown": list(answer.unknown), "hits": hits}


def open_indexed(root: Path, path: str, entry: Entry) -> Optional[BinaryIO]:
    """Video ``path`` (below ``root``) opened for reading if it is still the file the build
    indexed, else None: the path resolves to the real path ``entry`` records (inside ``root``
    unless the build followed a link), and the file opened there, without following a link
    swapped in meanwhile, is a regular file of the recorded size and modification time."""
    real = os.path.realpath(root / path)
    if real != entry.real_path or not (entry.followed_link or Path(real).is_relative_to(root)):
        return None
    try:
        file = open(real, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW))
    except OSError:
        return None
    found = os.fstat(file.fileno())
    if not stat.S_ISREG(found.st_mode) or \
            (found.st_size, found.st_mtime_ns) != (entry.size, entry.mtime_ns):
        file.close()
        return None
    return file


def send_video(file: BinaryIO, name: str) -> flask.Response:
    """The open video ``file`` as the response to this request: conditional, a single range
    as 206, several ranges as the whole file (werkzeug answers them 416)."""
    found = os.fstat(file.fileno())
    response = flask.send_file(file, download_name=name, conditional=False,
                               last_modified=found.st_mtime)
    response.content_length = found.st_size
    environ = flask.request.environ
    if flask.request.range is not None and len(flask.request.range.ranges) > 1:
        environ = {key: value for key, value in environ.items() if key != "HTTP_RANGE"}
    return response.make_conditional(environ, accept_ranges=True,
                                     complete_length=found.st_size)


class ServeError(OSError):
    """The page cannot be served where asked (the address is taken or cannot be used)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one), or :class:`ServeError` in
    one line when the address is taken or cannot be used."""
    try:
        return socket.create_server((host, port), family=select_address_family(host, port))
    except (OSError, UnicodeError, TypeError) as error:  # the last two: a host name that
        reason = getattr(error, "strerror", None) or error   # cannot be encoded
        raise ServeError(f"cannot listen on {host}:{port}: {reason}; choose another --port "
                         f"(or --host)") from error


def wsgi_server(app: flask.Flask, listener: socket.socket, threads: int) -> Any:
    """A waitress server of ``app`` on ``listener``, answering ``threads`` requests at once
    (its ``run()`` serves until interrupted, ``close()`` stops listening)."""
    return waitress.create_server(app, sockets=[listener], threads=threads)


def serve(folder: str | os.PathLike, config: ServeConfig) -> None:
    """Serve the search page and API of the index in ``folder`` at ``http://host:port/`` on
    waitress with ``config.threads`` threads, ``config.searches`` of them searching at once
    at most, until interrupted. The address is taken first,
    so a busy port fails before the index is loaded, and the address announced is the one
    listened on."""
    with listen(config.host, config.port) as listener:
        app = create_app(VideoIndex.open(folder, device=config.device,
                                         threshold=config.min_score), config.top,
                         config.searches)
        server = wsgi_server(app, listener, config.threads)
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"searching {folder}: open http://{host}:{listener.getsockname()[1]}/ "
              f"(Ctrl+C to stop)", flush=True)
        try:
            server.run()  # waitress stops its threads on Ctrl+C
        finally:
            server.close()
