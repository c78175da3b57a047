"""Engine configuration: one YAML file, validated once at load into typed, frozen objects.

    cfg = load_config("configs/example.yaml")      # EngineConfig, or raises ConfigError
    cfg.detector_for("siren")                        # DetectorConfig with the prompt's overrides
    config_json_schema()                             # for `python main.py config schema`
    watcher = ConfigWatcher(path); watcher.poll()    # None | EngineConfig | ConfigError

A `ConfigError` is one line: `FILE:LINE: FIELD.PATH: what was expected (got VALUE)`, e.g.
`configs/x.yaml:41: prompts[2].on_threshold: expected <= 1 (got 1.5)`; every error is in
`.errors`, the message names the first and counts the rest. Unknown keys are errors (a typo
would otherwise silently keep a default), with a suggestion of the nearest known field.
Relative paths are relative to the working directory, as on the command line.

A net source's URL may hold credentials: it is kept as a `SecretUrl`, whose str/repr show only
scheme://host[:port]/… (the capture worker's `redact_url`), and error messages never show it.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from encoder.frontend import FRAMES_PER_SECOND, PATCH_FRAMES, SECONDS_PER_COLUMN
from streamer.capture.net import redact_url
from streamer.context import MAX_CONTEXT_S
from streamer.wire import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MAX_STREAM_ID_LEN,
    MIN_SAMPLE_RATE,
    validate_stream_id,
)

MIN_HOP_S = SECONDS_PER_COLUMN  # 0.16 s: every hop brings at least one new column
SECRET_FIELDS = ("url",)  # never shown in error messages
ZMQ_SCHEMES = ("tcp", "ipc", "inproc")


class ConfigError(ValueError):
    """An invalid config. str(): one line; errors: every problem found, one line each."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)


class _At(ValueError):
    """A model-level check that names the field it is about (loc relative to the model)."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


# ------------------------------------------------------------------------------------ field types


RESERVED_NAMES = (".", "..")  # valid on the wire, but a stream's clips go to <clips dir>/<stream>/


def _name(value: str) -> str:
    try:
        validate_stream_id(value)
    except ValueError:
        raise ValueError(f"expected 1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_.-]") from None
    if value in RESERVED_NAMES:
        raise ValueError(f"expected a name other than {' and '.join(map(repr, RESERVED_NAMES))}")
    return value


# Safe in ZeroMQ topics, metric labels and file names (the wire's stream-id rule).
Name = Annotated[
    str, AfterValidator(_name), Field(description=f"1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_.-]")
]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Threshold = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class SecretUrl(SecretStr):
    """A URL that may hold credentials: str() and repr() show scheme://host[:port]/… only."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


def _zmq_endpoint(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ZMQ_SCHEMES or not rest:
        raise ValueError(f"expected a ZeroMQ endpoint like tcp://127.0.0.1:5556 ({'/'.join(ZMQ_SCHEMES)})")
    return value


Endpoint = Annotated[str, AfterValidator(_zmq_endpoint)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------ sources


class FileSource(_Model):
    kind: Literal["file"]
    name: Name
    path: Path  # any format libsndfile reads (wav, flac, ogg)
    loop: bool = False  # start again at the end, forever
    realtime: bool = True  # pace at the file's rate; false: as fast as the engine takes frames
    start_delay_s: Seconds = 0.0


class MicSource(_Model):
    kind: Literal["mic"]
    name: Name
    device: Annotated[str | None, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)] = Field(
        None, description="device index or part of its name; null: the system default"
    )
    rate: int | None = Field(
        None, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, description="Hz; null: the device's"
    )
    channels: int = Field(1, ge=1, le=MAX_CHANNELS)


class NetSource(_Model):
    kind: Literal["net"]
    name: Name
    url: SecretUrl | None = Field(
        None, description="rtsp://, http(s)://, udp://, srt://...; may hold credentials"
    )
    url_env: str | None = Field(None, description="read the URL from this environment variable instead")
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    stall_timeout_s: float = Field(10.0, gt=0)
    realtime: bool = False  # ffmpeg -re: for file URLs, not live streams

    @field_validator("url")
    @classmethod
    def _url_shape(cls, v: SecretUrl | None) -> SecretUrl | None:
        if v is not None:
            parts = urllib.parse.urlsplit(v.get_secret_value())
            if not parts.scheme or not parts.netloc:
                raise ValueError("expected a URL like rtsp://host:554/path")
        return v

    @model_validator(mode="after")
    def _one_url(self) -> NetSource:
        if (self.url is None) == (self.url_env is None):
            raise _At(("url",), "expected exactly one of url and url_env")
        return self


class SynthSource(_Model):
    kind: Literal["synth"]
    name: Name
    signal: Literal["tone", "white", "pink", "silence"] = "tone"
    freq_hz: float = Field(440.0, gt=0)
    level_db: float = Field(-20.0, le=0)
    events: list[str] = Field(default_factory=list, description="TIME:KIND[:DURATION], e.g. 4.0:beep")
    event_level_db: float = Field(-6.0, le=0)
    seed: int = 0
    realtime: bool = True


Source = Annotated[FileSource | MicSource | NetSource | SynthSource, Field(discriminator="kind")]
SOURCE_KINDS = tuple(get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Source)[0]))


# ------------------------------------------------------------------------------------ sections


def _sentences(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class PromptConfig(_Model):
    label: Name
    text: Annotated[
        list[Annotated[str, Field(min_length=1)]], BeforeValidator(_sentences), Field(min_length=1)
    ] = Field(description="a sentence, or a list of sentences whose embeddings are averaged")
    on_threshold: Threshold | None = None  # overrides detector.on_threshold for this label
    off_threshold: Threshold | None = None
    min_duration_s: Seconds | None = None


class ContextConfig(_Model):
    max_context_s: float = Field(10.0, gt=0, le=MAX_CONTEXT_S, description="audio the encoder sees, seconds")
    hop_s: float = Field(0.5, ge=MIN_HOP_S, description="new audio between two encoder runs, seconds")
    gap_policy: Literal["zero_fill", "reset"] = "zero_fill"
    max_gap_s: Seconds = Field(
        2.0, le=MAX_CONTEXT_S, description="longest gap zero-filled; longer ones reset"
    )
    batch_wait_s: float = Field(
        0.0, ge=0, le=0.5, description="with several streams, a due hop waits up to this long for other streams' "
        "hops, so one encoder call serves several: less encoder time at moderate load, but at 128 streams on 2 "
        "cores it made hops skip (docs/capacity.md); 0: serve at once")
    encoder: Literal["incremental", "window"] = Field(
        "incremental", description="incremental: a hop encodes only its new columns against the stream's cached "
        "keys/values (encoder/incremental.py); window: every hop re-encodes the whole context")

    @field_validator("hop_s")
    @classmethod
    def _hop_fits(cls, v: float, info: ValidationInfo) -> float:
        longest = info.data.get("max_context_s")
        if longest is not None and v > longest:
            raise ValueError(f"expected hop_s <= max_context_s ({longest})")
        return v


class SmoothingConfig(_Model):
    kind: Literal["none", "ema", "median"] = "ema"
    alpha: float = Field(0.5, gt=0, le=1, description="ema: weight of the newest score")
    window: int = Field(3, ge=1, le=64, description="median: columns in the window")


class DetectorConfig(_Model):
    on_threshold: Threshold = 0.5
    off_threshold: Threshold = 0.35
    min_duration_s: Seconds = 0.32
    merge_gap_s: Seconds = 0.32
    lookback_s: Seconds = Field(
        0.0, description="score a column once this much audio follows it in the window (detector docs)"
    )
    smoothing: SmoothingConfig = SmoothingConfig()

    @field_validator("off_threshold")
    @classmethod
    def _below_on(cls, v: float, info: ValidationInfo) -> float:
        on = info.data.get("on_threshold")
        if on is not None and not v < on:
            raise ValueError(f"expected off_threshold < on_threshold ({on})")
        return v


class ModelConfig(_Model):
    path: Path = Path("models/slap-tiny.safetensors")
    backend: Literal["auto", "onnx", "torch", "tensorrt"] = "auto"
    threads: int = Field(0, ge=0, le=256, description="0: ONNX Runtime's choice")
    precision: Literal["fp32", "int8"] = Field(
        "int8", description="the incremental encoder's weights on ONNX Runtime (int8: dynamic quantisation)")
    cache_dir: Path | None = Field(None, description="prompt-embedding cache; null: memory only")


class ClipsConfig(_Model):
    enabled: bool = False
    dir: Path | None = Field(None, description="null: clips/ beside the event log")
    pre_roll_s: Seconds = Field(1.0, le=10)
    post_roll_s: Seconds = Field(1.0, le=10)
    format: Literal["flac", "wav"] = "flac"
    max_age_days: float = Field(7.0, gt=0)
    max_total_mb: float = Field(1024.0, gt=0)


class EmbeddingsConfig(_Model):
    """One global embedding per hop per stream (fp16), for `main.py search` and the web view's search.

    256-d fp16 = 512 B a hop: at the default 0.5 s hop, 86 MB a day per stream. `audio` keeps the
    analysed 16 kHz audio as well (FLAC, roughly 1-2 GB a day per stream), so search results play.
    """

    enabled: bool = True
    path: Path | None = Field(None, description="SQLite file; null: embeddings.db beside the event log")
    max_age_days: float = Field(7.0, gt=0, description="hops (and their audio) older than this are deleted")
    max_total_mb: float = Field(512.0, gt=0, description="embeddings; past it the oldest hops go first")
    audio: bool = Field(False, description="keep the audio too (FLAC), so search results can be played")
    audio_max_total_mb: float = Field(2048.0, gt=0, description="stored audio; past it the oldest goes first")


def _curve_secret_key(path: Path) -> Path:
    from zmq.auth import load_certificate

    try:
        _, secret = load_certificate(path)
    except (OSError, ValueError):
        secret = None
    if secret is None:
        raise ValueError("expected a readable CURVE secret key file (the .key_secret of zmq.auth.create_certificates)")
    return path


def _directory(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError("expected a directory of worker public keys (*.key files)")
    return path


class CurveConfig(_Model):
    """ZeroMQ CURVE on the ingest socket: encrypted audio, and only workers holding a known key."""

    server_secret_key_file: Annotated[Path, AfterValidator(_curve_secret_key)] = Field(
        description="the engine's key pair (workers need its public half: --curve-server-key)"
    )
    authorized_keys_dir: Annotated[Path, AfterValidator(_directory)] = Field(
        description="one public key file (*.key) per admitted worker; re-read at each connection"
    )


class OutputsConfig(_Model):
    pub_endpoint: Endpoint = "tcp://127.0.0.1:5556"
    ingest_endpoint: Endpoint = "tcp://127.0.0.1:5555"
    event_log: Path | None = Field(Path("events/events.db"), description="SQLite file; null: no log")
    scores_topic: bool = False
    clips: ClipsConfig = ClipsConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    curve: CurveConfig | None = Field(None, description="CURVE authentication of capture workers; null: off")

    @model_validator(mode="after")
    def _clips_need_a_place(self) -> OutputsConfig:
        if self.clips.enabled and self.clips.dir is None and self.event_log is None:
            raise _At(("clips", "dir"), "expected a clips dir when there is no event_log to put them beside")
        return self

    @property
    def clips_dir(self) -> Path | None:
        if not self.clips.enabled:
            return None
        return self.clips.dir or self.event_log.parent / "clips"

    @property
    def embeddings_path(self) -> Path | None:
        """The embedding store's file; None when off (or no path and no event log to put it beside)."""
        e = self.embeddings
        if not e.enabled or (e.path is None and self.event_log is None):
            return None
        return e.path or self.event_log.parent / "embeddings.db"


class MetricsConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=1, le=65535)


class EngineConfig(_Model):
    sources: list[Source] = Field(default_factory=list)
    prompts: list[PromptConfig] = Field(min_length=1)
    context: ContextConfig = ContextConfig()
    detector: DetectorConfig = DetectorConfig()
    model: ModelConfig = ModelConfig()
    outputs: OutputsConfig = OutputsConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _consistent(self) -> EngineConfig:
        for what, items, key in (("source", self.sources, "name"), ("prompt", self.prompts, "label")):
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                value = getattr(item, key)
                if value in seen:
                    raise _At(
                        (what + "s", i, key),
                        f"expected a unique {key}; {value!r} is also {what}s[{seen[value]}]",
                    )
                seen[value] = i
        d = self.detector
        for i, p in enumerate(self.prompts):
            on = d.on_threshold if p.on_threshold is None else p.on_threshold
            off = d.off_threshold if p.off_threshold is None else p.off_threshold
            if not off < on:
                field = "off_threshold" if p.off_threshold is not None else "on_threshold"
                raise _At(("prompts", i, field), f"expected off_threshold ({off}) < on_threshold ({on})")
        hop_columns = round(self.context.hop_s * FRAMES_PER_SECOND) // PATCH_FRAMES
        window_columns = round(self.context.max_context_s * FRAMES_PER_SECOND) // PATCH_FRAMES
        if round(d.lookback_s / SECONDS_PER_COLUMN) + hop_columns > window_columns:
            raise _At(("detector", "lookback_s"), "expected lookback_s + hop_s <= context.max_context_s")
        if d.lookback_s and self.context.encoder == "incremental":
            raise _At(("detector", "lookback_s"), "expected 0 with context.encoder incremental (a column is encoded "
                      "once, without the audio after its hop); set context.encoder: window to use lookback")
        return self

    def prompt(self, label: str) -> PromptConfig:
        for p in self.prompts:
            if p.label == label:
                return p
        raise KeyError(f"no prompt labelled {label!r}")

    def detector_for(self, label: str) -> DetectorConfig:
        """The detector settings of one label: the detector section with the prompt's overrides."""
        p = self.prompt(label)
        overrides = {k: getattr(p, k) for k in ("on_threshold", "off_threshold", "min_duration_s")}
        return self.detector.model_copy(update={k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------------ errors


def _all_field_names() -> set[str]:
    return {name for model in _Model.__subclasses__() for name in model.model_fields}


_EXPECTATIONS = (  # pydantic's phrasing -> ours; unlisted messages are kept as they are
    ("Input should be ", "expected "),
    ("Value error, ", ""),
    ("Field required", "required field is missing"),
    ("Value should have ", "expected "),
    ("List should have ", "expected "),
    ("String should have ", "expected "),
    ("Input is not a valid path", "expected a path"),  # ... for <class 'pathlib.Path'>: cut below
)

_COMPARISONS = (
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _locate(root: yaml.Node | None, loc: tuple) -> tuple[tuple, int | None]:
    """Follow loc through the YAML nodes: the loc without pydantic's extra parts (union tags), and
    the line (1-based) of the deepest node found: the key's line in a mapping."""
    node, line, kept = root, (root.start_mark.line + 1 if root is not None else None), []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                if last:
                    kept.append(part)  # a missing field: the line of its mapping
                continue  # a union tag or a model-level part: not in the file
            kept.append(part)
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            kept.append(part)
            node = node.value[part]
            line = node.start_mark.line + 1
        elif last or isinstance(part, int):
            kept.append(part)
    return tuple(kept), line


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _format(err: dict, root: yaml.Node | None, where: str) -> tuple[int, str]:
    """One pydantic error -> (line or 0, the one-line message)."""
    loc = tuple(err["loc"])
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    at = isinstance(ctx.get("error"), _At)
    if at:
        loc, msg = loc + ctx["error"].loc, ctx["error"].message
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc, msg = loc + (ctx["discriminator"].strip("'"),), f"expected one of {', '.join(SOURCE_KINDS)}"
    for theirs, ours in _EXPECTATIONS:
        if msg.startswith(theirs):
            msg = ours + msg[len(theirs) :]
    msg = re.sub(r" or instance of \w+", "", msg.replace(" after validation", ""))
    msg = re.sub(r" for <class '[\w.]+'>", "", msg)
    for words, sign in _COMPARISONS:
        msg = msg.replace(words, sign)
    loc, line = _locate(root, loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _all_field_names(), n=1)
        msg = "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
    secret = any(part in SECRET_FIELDS for part in loc)
    if err["type"] not in ("missing", "extra_forbidden", "union_tag_not_found") and not at and not secret:
        msg += f" (got {_shown(ctx.get('tag', err.get('input')))})"
    prefix = f"{where}:{line}" if line is not None else where
    return line or 0, f"{prefix}: {_path(loc)}: {msg}".replace("\n", " ")


def parse_config(text: str, where: str = "<config>") -> EngineConfig:
    """Validate YAML text; `where` names it in errors. Raises ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        prefix = f"{where}:{mark.line + 1}" if mark is not None else where
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{prefix}: invalid YAML: {problem}".replace("\n", " ")]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{where}:1: (top level): expected a mapping of sections (sources, prompts, ...)"])
    duplicates = _duplicate_keys(root, ())
    if duplicates:
        raise ConfigError([f"{where}:{line}: {_path(loc)}: key given twice" for loc, line in duplicates])
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            [text for _, text in sorted(_format(err, root, where) for err in e.errors())]
        ) from None


def _duplicate_keys(node: yaml.Node, loc: tuple) -> list[tuple[tuple, int]]:
    """YAML keeps the last of two equal keys silently; a config must not."""
    found = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = getattr(k, "value", None)
            if key in seen:
                found.append((loc + (key,), k.start_mark.line + 1))
            seen.add(key)
            found += _duplicate_keys(v, loc + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _duplicate_keys(v, loc + (i,))
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read the config ({e.__class__.__name__}: {e})"]) from None


def load_config(path: str | os.PathLike) -> EngineConfig:
    """Read and validate a config file. Raises ConfigError (one line, names the file)."""
    return parse_config(_read(Path(path)), str(path))


def config_json_schema() -> dict:
    """JSON Schema of the config file (for editors and `python main.py config schema`)."""
    return EngineConfig.model_json_schema()


class ConfigWatcher:
    """Polls a config file; poll() -> None (unchanged), a new EngineConfig, or the ConfigError.

    Cheap enough to call every hop: it stats the file at most every `interval_s`, reads it only
    when its mtime or size moved, and validates only when its sha256 changed (a touch is no change).
    An error is returned once per content; the caller keeps its current config meanwhile.
    """

    def __init__(self, path: str | os.PathLike, interval_s: float = 1.0):
        self.path = Path(path)
        self.interval_s = interval_s
        self._next_poll = 0.0
        self._stat: tuple[int, int] | None = None
        self._digest: str | None = None

    def prime(self) -> EngineConfig:
        """Load the file now and remember this version as the current one. Raises ConfigError."""
        self._stat = self._stat_now()
        text = _read(self.path)
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        return parse_config(text, str(self.path))

    def _stat_now(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def poll(self, force: bool = False) -> EngineConfig | ConfigError | None:
        now = time.monotonic()
        if not force and now < self._next_poll:
            return None
        self._next_poll = now + self.interval_s
        stat = self._stat_now()
        if stat == self._stat:
            return None
        self._stat = stat
        try:
            text = _read(self.path)
        except ConfigError as e:
            text, error = None, e
        digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else "unreadable"
        if digest == self._digest:
            return None
        self._digest = digest
        if text is None:
            return error
        try:
            return parse_config(text, str(self.path))
        except ConfigError as e:
            return e
