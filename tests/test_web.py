"""The web view against a real engine: `main.py web` and `main.py --config` in their own processes,
fed by a file worker (a 30 s recording, looped in real time: a tone-burst alarm at 5-9 s, espeak-ng
speech at 18 s), real ZeroMQ on loopback, the real SQLite log, clips and embedding store.

The endpoint tests read JSON and server-sent events with the standard library; the browser test
walks the four pages in headless Chromium (Debian's chromium + chromium-driver, through selenium)
and skips, saying why, where they are not installed. Set SLAP_WEB_SCREENSHOTS=DIR to keep its
screenshots (the README's come from there).

The shipped model (models/slap-tiny.safetensors) is weak on most real sounds; the alarm prompt
("an alarm beeping") fires on this tone burst and "a person speaking" finds the speech, both
checked by hand first, so that is all the tests rely on.
"""

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.ports import free_port
from tests.test_search import espeak

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "slap-tiny.safetensors"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SR = 16000
LOOP_S = 30.0
ALARM = (5.0, 9.0)
SPEECH_AT = 18.0

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped model is not in models/")]


def loop_recording(path: Path) -> tuple[float, float]:
    """30 s of brown noise with the alarm and the speech; returns the speech's (onset, offset)."""
    rng = np.random.default_rng(1)
    bed = np.cumsum(rng.standard_normal(int(LOOP_S * SR))).astype(np.float32)
    bed -= np.convolve(bed, np.ones(400) / 400, "same")
    x = 0.05 * bed / np.abs(bed).max()
    t = np.arange(int((ALARM[1] - ALARM[0]) * SR)) / SR
    x[int(ALARM[0] * SR):int(ALARM[1] * SR)] += 0.5 * np.sin(2 * np.pi * 3100 * t) * ((t * 4) % 1 < 0.5)
    speech = espeak("Hello, can you hear me? I am talking to you now.", path.with_suffix(".speech.wav"))
    x[int(SPEECH_AT * SR):int(SPEECH_AT * SR) + len(speech)] += 0.5 * speech
    sf.write(path, x, SR)
    return SPEECH_AT, SPEECH_AT + len(speech) / SR


def config(tmp: Path, audio: Path) -> dict:
    return {
        "sources": [{"kind": "file", "name": "yard", "path": str(audio), "loop": True}],
        "prompts": [{"label": "alarm", "text": "an alarm beeping"}, {"label": "dog", "text": "a dog barking"}],
        "context": {"max_context_s": 10, "hop_s": 0.5},
        "model": {"path": str(SHIPPED), "backend": "onnx", "cache_dir": str(ROOT / "cache")},
        "outputs": {"pub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "ingest_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "event_log": str(tmp / "events" / "events.db"), "scores_topic": True,
                    "clips": {"enabled": True}, "embeddings": {"audio": True}},
        "metrics": {"enabled": False},
    }


class Site:
    """A running engine and web view; get/put speak JSON to the web view."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.speech = loop_recording(tmp / "yard.wav")
        self.cfg = config(tmp, tmp / "yard.wav")
        self.config_path = tmp / "engine.yaml"
        self.config_path.write_text("# the web test's engine\n" + yaml.safe_dump(self.cfg, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web = subprocess.Popen([sys.executable, "main.py", "web", "--config", str(self.config_path),
                                     "--port", str(self.port)], cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
        self.engine = self.start_engine()
        self.store_has_speech = False

    def start_engine(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "main.py", "--config", str(self.config_path)], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=(self.tmp / "engine.log").open("a"))

    def get(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def send(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait(self, what: str, cond, timeout: float):
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                last = cond()
            except (OSError, ValueError, KeyError, IndexError, StopIteration):
                last = None
            if last:
                return last
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (engine log: "
                             f"{(self.tmp / 'engine.log').read_text()[-1500:]})")

    def wait_for_speech(self) -> None:
        """Until the first pass of the speech (18-22 s) and the windows after it are in the store."""
        if self.store_has_speech:
            return
        self.wait("the first pass of the speech", lambda: self.stream()["last_column"] * 0.16 > SPEECH_AT + 8, 60)
        time.sleep(1.5)  # the store commits every second
        self.store_has_speech = True

    def clip_ok(self, url: str) -> bool:
        with urllib.request.urlopen(self.url + url, timeout=10) as r:
            return r.status == 200 and r.headers["Content-Type"] == "audio/flac" and r.read(4) == b"fLaC"

    def stream(self) -> dict:
        return next(s for s in self.get("/api/streams")["streams"] if s["stream"] == "yard")

    def close(self) -> None:
        for proc in (self.engine, self.web):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.engine, self.web):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("web"))
    try:
        s.wait("the web view", lambda: s.get("/api/info"), 30)
        yield s
    finally:
        s.close()


def overlaps_speech(site: Site, start_s: float, end_s: float) -> bool:
    """Does [start_s, end_s) of the looped stream overlap the speech in any pass of the file?"""
    on, off = site.speech
    k = np.floor(start_s / LOOP_S)
    return any(start_s < off + n * LOOP_S and end_s > on + n * LOOP_S for n in (k - 1, k, k + 1))


def sse_messages(site: Site, kinds: set[str], count: int, timeout: float = 20.0) -> list[tuple[str, dict]]:
    """The next `count` server-sent events of the given kinds from /api/live."""
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=timeout)
    conn.request("GET", "/api/live")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    got, kind, end = [], None, time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < end:
            line = r.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in kinds:
                got.append((kind, json.loads(line[6:])))
    finally:
        conn.close()
    return got


def test_live_scores_events_with_clips_and_health_reach_the_web_view(site):
    stream = site.wait("live scores of yard", lambda: (s := site.stream())["status"] == "live" and s, 40)
    assert stream["labels"] == ["alarm", "dog"] and -100 <= stream["level_db"] < -20  # quiet noise: dBFS
    scores = sse_messages(site, {"scores"}, 3)
    columns = [p["first_column"] for _, p in scores]
    assert len(scores) == 3 and columns == sorted(columns) and columns[0] < columns[-1]  # it moves
    event = site.wait("an alarm event with its clip written",
                      lambda: next(e for e in site.get("/api/events?label=alarm")["events"]
                                   if e["clip_url"] and e["reason"] and site.clip_ok(e["clip_url"])), 60)
    assert event["stream"] == "yard" and ALARM[0] - 1 <= event["stream_onset"] % LOOP_S <= ALARM[1]


def test_an_invalid_prompt_edit_keeps_the_running_config_and_says_why_in_one_line(site):
    before = site.config_path.read_text()
    status, body = site.send("PUT", "/api/prompts", {"prompts": [{"label": "alarm", "text": "x", "on_threshold": 1.5}]})
    assert status == 400 and "\n" not in body["error"]
    assert body["error"].endswith("prompts[0].on_threshold: expected <= 1 (got 1.5)") and "running config is kept" in body["error"]
    status, body = site.send("PUT", "/api/prompts", {"prompts": [{"label": "bad label!", "text": "x"}]})
    assert status == 400 and "prompts[0].label" in body["error"]
    assert site.config_path.read_text() == before  # nothing was written
    assert [p["label"] for p in site.get("/api/prompts")["prompts"]] == ["alarm", "dog"]


def test_a_prompt_edit_reaches_the_engine_and_keeps_the_rest_of_the_file(site):
    prompts = site.get("/api/prompts")["prompts"] + [{"label": "glass", "text": ["glass breaking"]}]
    status, body = site.send("PUT", "/api/prompts", {"prompts": prompts})
    assert status == 200 and body["labels"] == ["alarm", "dog", "glass"]
    assert site.config_path.read_text().startswith("# the web test's engine\n")  # only the prompts were replaced
    site.wait("the new label's scores", lambda: "glass" in site.stream()["labels"], 20)


def test_search_finds_the_planted_speech_and_its_audio_plays(site):
    site.wait_for_speech()
    result = site.get("/api/search?" + urllib.parse.urlencode({"q": "a person speaking", "top": 3}), timeout=60)
    (yard,) = result["results"]
    best = yard["ranges"][0]
    assert overlaps_speech(site, best["start_s"], best["end_s"]), (site.speech, yard["ranges"])
    with urllib.request.urlopen(site.url + best["audio_url"], timeout=10) as r:
        wav = r.read()
    assert r.headers["Content-Type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(wav))
    assert rate == SR and len(audio) == pytest.approx((best["end_s"] - best["start_s"] + 2) * SR, abs=SR * 0.05)
    assert np.abs(audio).max() > 0.1  # the stored audio, not silence
    with pytest.raises(urllib.error.HTTPError) as refused:
        site.get("/api/search?q=")
    assert refused.value.code == 400


def test_a_non_loopback_bind_needs_a_token_and_refuses_requests_without_it(site, tmp_path):
    port = free_port("0.0.0.0")
    cmd = [sys.executable, "main.py", "web", "--config", str(site.config_path), "--host", "0.0.0.0", "--port", str(port)]
    env = {k: v for k, v in ENV.items() if k != "SLAP_WEB_TOKEN"}
    refused = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--token" in refused.stderr
    web = subprocess.Popen(cmd + ["--token", "s3cret-token"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"  # the test talks to loopback only; the bind is what matters
    try:
        def status(path: str, headers: dict | None = None) -> int:
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        site.wait("the token-protected server", lambda: status("/api/info") == 401, 30)
        for path in ("/streams", "/api/events", "/api/prompts", "/api/live", "/static/common.js"):
            assert status(path) == 401, path
        assert status("/api/info", {"Authorization": "Bearer wrong"}) == 401
        assert status("/api/info", {"Authorization": "Bearer s3cret-token"}) == 200
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(base + "/streams?token=s3cret-token", timeout=5) as r:  # a link with the token: a cookie
            assert r.status == 200 and r.url == base + "/streams"
        with opener.open(base + "/api/prompts", timeout=5) as r:
            assert r.status == 200
    finally:
        web.terminate()
        web.wait(10)


def test_main_with_web_serves_the_view_beside_its_engine_and_stops_it(tmp_path):
    cfg = config(tmp_path, tmp_path / "yard.wav")
    loop_recording(tmp_path / "yard.wav")
    cfg["outputs"]["scores_topic"] = False  # --web turns it on
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    run = subprocess.Popen([sys.executable, "main.py", "--config", str(path), "--web", "--web-port", str(port),
                            "--duration", "25"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end, labels = time.monotonic() + 40, None
        while time.monotonic() < end and labels is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=5) as r:
                    streams = json.loads(r.read())["streams"]
                labels = streams[0]["labels"] if streams else None
            except OSError:
                pass
            time.sleep(0.5)
        assert labels == ["alarm", "dog"]  # scores arrive: --web turned scores_topic on
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0
    with pytest.raises(OSError):  # the web view went with its engine
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=3)


def test_a_message_the_view_cannot_read_is_skipped_and_the_hub_goes_on():
    import asyncio

    import zmq

    from streamer.web.live import LiveHub

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)

    async def scenario() -> LiveHub:
        hub = LiveHub(endpoint)
        task = asyncio.create_task(hub.run())
        good = {"type": "scores", "stream": "cam", "first_column": 0, "columns": [[0.5]], "labels": ["dog"],
                "column_s": 0.16, "level_db": -30.0}
        try:
            for _ in range(100):  # until the SUB has joined
                pub.send_multipart([b"scores.cam", json.dumps(good).encode()])
                await asyncio.sleep(0.05)
                if hub.streams:
                    break
            for body in (b"not json", json.dumps({**good, "first_column": "zz"}).encode(), json.dumps(good | {"first_column": 1}).encode()):
                pub.send_multipart([b"scores.cam", body])
            for _ in range(100):
                await asyncio.sleep(0.02)
                if hub.streams["cam"].last_column == 1:
                    break
        finally:
            task.cancel()
        return hub

    try:
        hub = asyncio.run(scenario())
    finally:
        pub.close(0)
    assert hub.bad_messages == 1 and hub.streams["cam"].last_column == 1  # the good one after the bad still counts


BROWSER = shutil.which("chromium") and shutil.which("chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1100,760")  # the network is closed: without these, chromium stalls


@pytest.mark.skipif(not BROWSER, reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver); CI installs them")
def test_the_four_pages_in_a_headless_browser(site, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    shots = Path(os.environ.get("SLAP_WEB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(driver, 40, poll_frequency=0.2)

    def one(css: str):
        return wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, css))[0]

    try:
        # streams: the live plot moves
        driver.get(site.url + "/streams")
        card = one('.card[data-stream="yard"][data-status="live"]')
        canvas = card.find_element(By.TAG_NAME, "canvas")
        wait.until(lambda d: int(canvas.get_attribute("data-last-column")) > 0)
        before = (int(canvas.get_attribute("data-last-column")), driver.execute_script("return arguments[0].toDataURL()", canvas))
        time.sleep(2.0)
        after = (int(canvas.get_attribute("data-last-column")), driver.execute_script("return arguments[0].toDataURL()", canvas))
        assert after[0] > before[0] and after[1] != before[1]  # new columns, new pixels
        driver.save_screenshot(str(shots / "streams.png"))

        # events: an alarm event whose clip the browser can play
        driver.get(site.url + "/events")
        audio = one('tr[data-label="alarm"] audio')
        duration = driver.execute_async_script("""
            const a = arguments[0], done = arguments[arguments.length - 1];
            if (a.readyState >= 1) return done(a.duration);
            a.addEventListener("loadedmetadata", () => done(a.duration));
            a.addEventListener("error", () => done(-1));
            a.load();""", audio)
        assert duration > 1.0  # pre-roll + event + post-roll, decoded by the browser
        driver.save_screenshot(str(shots / "events.png"))

        # prompts: an invalid edit shows the one-line error and writes nothing; a valid one reaches the engine
        driver.get(site.url + "/prompts")
        one("#rows tr")
        before_text = site.config_path.read_text()
        driver.find_element(By.ID, "add").click()
        row = driver.find_elements(By.CSS_SELECTOR, "#rows tr")[-1]
        row.find_element(By.CSS_SELECTOR, ".label").send_keys("siren")
        row.find_element(By.CSS_SELECTOR, ".text").send_keys("a siren wailing | an ambulance siren")
        row.find_element(By.CSS_SELECTOR, ".on").send_keys("1.5")
        driver.find_element(By.ID, "save").click()
        error = wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert "on_threshold: expected <= 1 (got 1.5)" in error and "running config is kept" in error
        assert site.config_path.read_text() == before_text
        driver.save_screenshot(str(shots / "prompts.png"))
        row.find_element(By.CSS_SELECTOR, ".on").clear()
        driver.find_element(By.ID, "save").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("saved"))
        driver.get(site.url + "/streams")
        one('.card[data-stream="yard"]')
        wait.until(lambda d: "siren" in (d.find_element(By.CSS_SELECTOR, '.card[data-stream="yard"]')
                                         .get_attribute("data-labels") or "").split(","))

        # search: the planted speech's time range, playable
        site.wait_for_speech()
        driver.get(site.url + "/search")
        box = one('input[name="q"]')
        box.send_keys("a person speaking")
        driver.find_element(By.CSS_SELECTOR, "#search button").click()
        first = one('.card[data-stream="yard"] li[data-start]')
        start, end = float(first.get_attribute("data-start")), float(first.get_attribute("data-end"))
        assert overlaps_speech(site, start, end), (start, end, site.speech)
        assert first.find_elements(By.TAG_NAME, "audio")
        driver.save_screenshot(str(shots / "search.png"))
    finally:
        driver.quit()


def test_the_view_survives_an_engine_restart(site):
    site.wait("live scores", lambda: site.stream()["status"] == "live", 30)
    site.engine.kill()  # a crash: no goodbye on any topic
    site.engine.wait(10)
    site.wait("the stream going stale", lambda: site.stream()["status"] == "stale", 15)
    site.engine = site.start_engine()
    stream = site.wait("the stream live again", lambda: (s := site.stream())["status"] == "live" and s, 40)
    assert stream["last_column"] < 200  # a new run: its clock started again, the view followed
