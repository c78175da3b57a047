"""The web view: a small HTTP server in its own process, beside a running engine.

    python main.py web [--config F] [--host 127.0.0.1] [--port 8765] [--token T]
    python main.py --source mic --web            # the engine starts it too (loopback, scores on)

It reads what the engine already offers, and never talks to it otherwise: the PUB topics
(scores.<stream>, events.<stream>.<label>, stream.<status>.<stream>) through one ZeroMQ SUB
(streamer.web.live), the SQLite event log and clips, the embedding store (streamer.search), and the
config file, whose prompts it edits; the engine hot-reloads that file (streamer.web.prompts).

Pages (plain HTML and a little JavaScript, in static/; no build step):
    /streams   health, level and a live scrolling plot of every prompt's score, events drawn on it
    /events    the event log, filtered by stream, label and time, each clip playable
    /prompts   the config's prompts, editable; an invalid edit shows the loader's one-line error
    /search    a text query over past audio: ranked time ranges per stream, playable with stored audio
JSON under /api/ (the pages use nothing else); /api/live is server-sent events.

Access: bound to a loopback address, no authentication. Bound anywhere else the server refuses to
start without a token (--token, or SLAP_WEB_TOKEN in the environment), and answers 401 to every
request without it: `Authorization: Bearer T`, or open /?token=T once (it becomes an HttpOnly,
SameSite=Strict cookie, so EventSource and <audio> requests carry it too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import soundfile as sf
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from encoder.frontend import SAMPLE_RATE
from streamer.config import ConfigError, EngineConfig, load_config
from streamer.web.live import LiveHub
from streamer.web.prompts import read_prompts, write_prompts

log = logging.getLogger("streamer.web")

STATIC = Path(__file__).resolve().parent / "static"
PAGES = ("streams", "events", "prompts", "search")
DEFAULT_PORT = 8765
TOKEN_ENV = "SLAP_WEB_TOKEN"
COOKIE = "slap_token"
MAX_AUDIO_S = 120.0  # longest stretch of stored audio one request may ask for
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; anything else (0.0.0.0 included) reaches other machines."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Settings:
    config_path: Path
    cfg: EngineConfig  # as loaded at start: endpoints and files (the prompts are re-read per request)
    token: str | None = None


# ------------------------------------------------------------------------------------ auth


class TokenAuth:
    """ASGI middleware: every HTTP request needs the token (header, cookie, or ?token= once)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    def _ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self._ok(query.get("token", [None])[0]):  # a link with the token: keep it as a cookie, drop it from the URL
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        if self._ok(bearer) or self._ok(cookie.value if cookie else None):
            return await self.app(scope, receive, send)
        response = Response("401: this server needs its token (Authorization: Bearer T, or open /?token=T)\n",
                            status_code=401, media_type="text/plain", headers={"WWW-Authenticate": "Bearer"})
        return await response(scope, receive, send)


# ------------------------------------------------------------------------------------ app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status_code=status)


def _float(params, name: str) -> float | None:
    from streamer.cli import _parse_since

    value = params.get(name)
    if value in (None, ""):
        return None
    return _parse_since(value)


class _Search:
    """The text tower for /api/search, opened on the first query (a second or two), then kept."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self._searcher = None
        self._lock = threading.Lock()

    def searcher(self):
        with self._lock:
            if self._searcher is None:
                from encoder.runtime import open_backend
                from streamer.search import Searcher

                m = self.cfg.model
                backend = open_backend(m.backend, m.path, m.cache_dir or "cache", m.threads or None)
                self._searcher = Searcher(backend, m.cache_dir)
            return self._searcher


def build_app(settings: Settings) -> Starlette:
    cfg = settings.cfg
    hub = LiveHub(cfg.outputs.pub_endpoint)
    search = _Search(cfg)
    store = cfg.outputs.embeddings_path
    clips_dir = cfg.outputs.clips_dir

    def page(name: str):
        async def serve(request: Request) -> Response:
            return FileResponse(STATIC / f"{name}.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
        return serve

    async def index(request: Request) -> Response:
        return RedirectResponse("/streams", status_code=307)

    async def info(request: Request) -> Response:
        return JSONResponse({
            "config": str(settings.config_path), "pub_endpoint": cfg.outputs.pub_endpoint,
            "scores_topic": cfg.outputs.scores_topic, "event_log": str(cfg.outputs.event_log or ""),
            "clips": clips_dir is not None, "embeddings": str(store or ""),
            "audio": bool(store is not None and cfg.outputs.embeddings.audio), "messages": hub.messages})

    async def streams(request: Request) -> Response:
        return JSONResponse(hub.snapshot())

    async def live(request: Request) -> Response:
        queue = hub.listen()

        async def stream():
            try:
                yield "retry: 1000\n\n"
                yield f"event: snapshot\ndata: {json.dumps(hub.snapshot())}\n\n"
                last = time.monotonic()
                while True:
                    try:
                        kind, payload = await asyncio.wait_for(queue.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        if time.monotonic() - last > HEARTBEAT_S:
                            last = time.monotonic()
                            yield ": keep-alive\n\n"
                        continue
                    last = time.monotonic()
                    yield f"event: {kind}\ndata: {json.dumps(payload)}\n\n"
            finally:
                hub.forget(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def events(request: Request) -> Response:
        from streamer.publish import query_events

        if cfg.outputs.event_log is None or not Path(cfg.outputs.event_log).exists():
            return JSONResponse({"events": [], "note": "no event log yet"})
        q = request.query_params
        try:
            since, until = _float(q, "since"), _float(q, "until")
            limit = min(int(q.get("limit") or 500), 5000)
        except ValueError as e:
            return _error(400, f"since/until/limit: {e}")
        try:
            rows = await run_in_threadpool(query_events, cfg.outputs.event_log, since, until,
                                           q.get("label") or None, q.get("stream") or None, 100_000)
        except sqlite3.Error as e:
            return _error(503, f"event log {cfg.outputs.event_log}: {e}")
        out = []
        for row in reversed(rows[-limit:]):  # newest first
            d = asdict(row)
            # a clip is written once its post-roll was heard; one of an engine that died never is
            d["clip_url"] = f"/api/clip/{row.id}" if row.clip and Path(row.clip).is_file() else None
            d["clip_pending"] = bool(row.clip) and d["clip_url"] is None and row.reason != "engine_restart"
            out.append(d)
        return JSONResponse({"events": out})

    async def clip(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        if clips_dir is None or cfg.outputs.event_log is None:
            return _error(404, "clips are off in the config (outputs.clips.enabled)")
        try:
            uri = Path(cfg.outputs.event_log).resolve().as_uri() + "?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=2.0)) as conn:
                row = conn.execute("SELECT clip FROM events WHERE id = ?", (event_id,)).fetchone()
        except sqlite3.Error as e:
            return _error(503, f"event log: {e}")
        if row is None or not row[0]:
            return _error(404, f"no clip for event {event_id}")
        path = Path(row[0]).resolve()
        if not path.is_relative_to(Path(clips_dir).resolve()):  # only files in the clips folder are served
            return _error(404, f"clip of {event_id} is outside the clips folder")
        if not path.is_file():
            return _error(404, f"clip of {event_id} is not written yet (it waits for its post-roll)")
        media = "audio/flac" if path.suffix == ".flac" else "audio/wav"
        return FileResponse(path, media_type=media)

    async def prompts_get(request: Request) -> Response:
        try:
            prompts = await run_in_threadpool(read_prompts, settings.config_path)
        except ConfigError as e:
            return JSONResponse({"config": str(settings.config_path), "prompts": [], "error": str(e)})
        return JSONResponse({"config": str(settings.config_path), "prompts": prompts, "error": None})

    async def prompts_put(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "expected a JSON body {\"prompts\": [...]}")
        prompts = body.get("prompts") if isinstance(body, dict) else None
        try:
            new = await run_in_threadpool(write_prompts, settings.config_path, prompts)
        except ConfigError as e:
            return _error(400, f"not saved, the running config is kept: {e}")
        except OSError as e:
            return _error(500, f"not saved: cannot write {settings.config_path} ({e})")
        log.info("prompts written to %s: %s", settings.config_path, ", ".join(p.label for p in new.prompts))
        return JSONResponse({"ok": True, "labels": [p.label for p in new.prompts]})

    async def search_api(request: Request) -> Response:
        from encoder.runtime import BackendError

        q = request.query_params
        query = (q.get("q") or "").strip()
        if not query:
            return _error(400, "q: expected a text query, e.g. q=a dog barking")
        if store is None or not Path(store).exists():
            return _error(404, f"no embedding store at {store} (outputs.embeddings in the config)")
        try:
            since, until = _float(q, "since"), _float(q, "until")
            top = max(1, min(int(q.get("top") or 5), 50))
        except ValueError as e:
            return _error(400, f"since/until/top: {e}")
        try:
            searcher = await run_in_threadpool(search.searcher)
            t0 = time.monotonic()
            results = await run_in_threadpool(searcher.search, store, query, since=since, until=until,
                                              stream=q.get("stream") or None, top=top)
        except BackendError as e:
            return _error(503, f"text tower: {e}")
        except sqlite3.Error as e:
            return _error(503, f"embedding store {store}: {e}")
        audio = cfg.outputs.embeddings.audio
        out = []
        for stream, ranges in results.items():
            items = []
            for r in ranges:
                d = asdict(r)
                lo, hi = max(0.0, r.start_s - 1.0), r.end_s + 1.0  # a second of context each side
                d["audio_url"] = f"/api/audio?{urlencode({'stream': stream, 'run': r.run, 'start': lo, 'end': hi})}" \
                    if audio else None
                items.append(d)
            out.append({"stream": stream, "ranges": items})
        return JSONResponse({"query": query, "model": searcher.model_id, "results": out,
                             "seconds": round(time.monotonic() - t0, 3)})

    async def audio_api(request: Request) -> Response:
        from streamer.embedding_store import read_audio

        q = request.query_params
        try:
            stream, run = q["stream"], int(q["run"])
            start, end = float(q["start"]), float(q["end"])
        except (KeyError, ValueError):
            return _error(400, "expected stream, run, start and end (stream seconds)")
        if not 0 <= start < end or end - start > MAX_AUDIO_S:
            return _error(400, f"expected 0 <= start < end, at most {MAX_AUDIO_S:g} s")
        if store is None or not Path(store).exists():
            return _error(404, "no embedding store")
        try:
            samples = await run_in_threadpool(read_audio, store, stream, run, start, end)
        except sqlite3.Error as e:
            return _error(503, f"embedding store: {e}")
        buf = io.BytesIO()
        sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        return Response(buf.getvalue(), media_type="audio/wav")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(hub.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    routes = [
        Route("/", index),
        *[Route(f"/{name}", page(name)) for name in PAGES],
        Route("/api/info", info),
        Route("/api/streams", streams),
        Route("/api/live", live),
        Route("/api/events", events),
        Route("/api/clip/{event_id:str}", clip),
        Route("/api/prompts", prompts_get, methods=["GET"]),
        Route("/api/prompts", prompts_put, methods=["PUT", "POST"]),
        Route("/api/search", search_api),
        Route("/api/audio", audio_api),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return app


def wrap(app, token: str | None):
    """The app behind the token check when there is a token."""
    return TokenAuth(app, token) if token else app


# ------------------------------------------------------------------------------------ command


def main(argv: list[str]) -> int:
    import uvicorn

    from streamer.cli import DEFAULT_CONFIG

    p = argparse.ArgumentParser(prog="main.py web", description="The web view of a running engine.")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the engine's config (its prompts are edited)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; not loopback: a token is required")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"access token (default: ${TOKEN_ENV})")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback_host(args.host) and not args.token:
        print(f"main.py web: --host {args.host} is reachable from other machines: give --token (or set "
              f"{TOKEN_ENV}), or bind 127.0.0.1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"main.py web: {e}", file=sys.stderr)
        return 2
    app = wrap(build_app(Settings(args.config, cfg, args.token)), args.token)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    log.info("web view on http://%s:%d/ (%s)", args.host, args.port,
             "token required" if args.token else "loopback, no authentication")
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 1 when the port is taken; its reason is logged above
        print(f"main.py web: cannot serve on {args.host}:{args.port}", file=sys.stderr)
        return int(e.code or 2)
    return 0
