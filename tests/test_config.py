"""The engine config: the example loads; every invalid field gives one line with file, line, field
path and expectation; net URLs are redacted; the watcher reports errors and the caller keeps the old."""

import json
import os
from pathlib import Path

import pytest

from streamer.config import (
    ConfigError,
    ConfigWatcher,
    EngineConfig,
    NetSource,
    config_json_schema,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "example.yaml"
PROMPTS = "prompts:\n  - {label: dog, text: a dog barking}\n"
SECRET_URL = "rtsp://admin:hunter2@cam.local:554/live?token=s3cret"


def _write(tmp_path: Path, text: str, name: str = "engine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_loads_with_its_prompts_and_overrides():
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, EngineConfig)
    assert [p.label for p in cfg.prompts] == [
        "dog_bark", "glass_break", "smoke_alarm", "speech", "door_slam", "siren", "applause", "footsteps",
    ]  # fmt: skip
    assert {s.kind for s in cfg.sources} == {"mic", "net", "file", "synth"}
    assert cfg.prompt("siren").text == ["a siren wailing", "an ambulance siren", "a police siren"]
    glass = cfg.detector_for("glass_break")
    assert (glass.on_threshold, glass.off_threshold, glass.min_duration_s) == (0.6, 0.35, 0.16)
    assert cfg.detector_for("applause") == cfg.detector
    assert cfg.outputs.clips_dir == Path("events/clips")


def test_defaults_fill_everything_but_the_prompts(tmp_path):
    cfg = load_config(_write(tmp_path, PROMPTS))
    assert cfg.context.max_context_s == 10 and cfg.context.hop_s == 0.5
    assert cfg.outputs.pub_endpoint == "tcp://127.0.0.1:5556"
    assert cfg.outputs.ingest_endpoint == "tcp://127.0.0.1:5555"
    assert cfg.metrics.host == "127.0.0.1" and cfg.sources == []
    assert cfg.prompts[0].text == ["a dog barking"]  # one sentence becomes a list of one


# (yaml, field path, line, what the message must say)
INVALID = [
    (PROMPTS + "  - {label: glass, text: x}\n  - {label: s, text: y, on_threshold: 1.5}\n",
     "prompts[2].on_threshold", 4, "expected <= 1 (got 1.5)"),
    ("prompts:\n  - {label: 'dog bark', text: x}\n", "prompts[0].label", 2, "[A-Za-z0-9_.-]"),
    ("prompts:\n  - label: dog\n    text: x\n    on_treshold: 0.4\n",
     "prompts[0].on_treshold", 4, "unknown field; did you mean 'on_threshold'?"),
    (PROMPTS + "  - {label: dog, text: x}\n", "prompts[1].label", 3, "unique label"),
    ("prompts:\n  - {label: dog, text: x, off_threshold: 0.6}\n",
     "prompts[0].off_threshold", 2, "off_threshold (0.6) < on_threshold (0.5)"),
    (PROMPTS + "detector:\n  on_threshold: 0.4\n  off_threshold: 0.4\n",
     "detector.off_threshold", 5, "off_threshold < on_threshold"),
    ("prompts:\n  - label: dog\n", "prompts[0].text", 2, "required field is missing"),
    ("prompts:\n  - {label: dog, text: []}\n", "prompts[0].text", 2, "at least 1 item"),
    ("prompts: []\n", "prompts", 1, "at least 1 item"),
    ("sources:\n  - {name: a, kind: tape}\n" + PROMPTS, "sources[0].kind", 2,
     "expected one of file, mic, net, synth (got 'tape')"),
    ("sources:\n  - name: a\n    kind: file\n" + PROMPTS, "sources[0].path", 2, "required field is missing"),
    ("sources:\n  - {name: a, kind: net}\n" + PROMPTS, "sources[0].url", 2, "exactly one of url and url_env"),
    ("sources:\n  - {name: a, kind: mic}\n  - {name: a, kind: synth}\n" + PROMPTS, "sources[1].name", 3, "unique"),
    (PROMPTS + "context:\n  max_context_s: 45\n", "context.max_context_s", 4, "expected <= 30 (got 45)"),
    (PROMPTS + "context:\n  max_context_s: 2\n  hop_s: 3\n", "context.hop_s", 5, "hop_s <= max_context_s"),
    (PROMPTS + "context:\n  gap_policy: ignore\n", "context.gap_policy", 4, "'zero_fill' or 'reset'"),
    (PROMPTS + "context:\n  hop_s: fast\n", "context.hop_s", 4, "a valid number"),
    (PROMPTS + "detector:\n  smoothing: {kind: ema, alpha: 0}\n", "detector.smoothing.alpha", 4, "expected > 0"),
    (PROMPTS + "model:\n  backend: cuda\n", "model.backend", 4, "'tensorrt' (got 'cuda')"),
    (PROMPTS + "outputs:\n  pub_endpoint: localhost:5556\n", "outputs.pub_endpoint", 4, "ZeroMQ endpoint"),
    (PROMPTS + "outputs:\n  clips:\n    format: mp3\n", "outputs.clips.format", 5, "'flac' or 'wav'"),
    (PROMPTS + "metrics: {port: 70000}\n", "metrics.port", 3, "expected <= 65535"),
    (PROMPTS + "context: 10\n", "context", 3, "expected a valid dictionary"),
    (PROMPTS + "prompts: []\n", "prompts", 3, "key given twice"),
]  # fmt: skip


@pytest.mark.parametrize("text,field,line,expected", INVALID, ids=[c[1] + f":{c[2]}" for c in INVALID])
def test_each_invalid_field_gives_one_line_with_file_line_path_and_expectation(
    tmp_path, text, field, line, expected
):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: {field}: "), message
    assert expected in message, message


def test_yaml_errors_and_unreadable_files_are_one_line_too(tmp_path):
    with pytest.raises(ConfigError, match=r"engine.yaml:2: invalid YAML: found character '\\t'"):
        load_config(_write(tmp_path, "prompts:\n\t- {label: dog, text: x}\n"))
    with pytest.raises(ConfigError, match=r"engine.yaml:1: \(top level\): expected a mapping"):
        load_config(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read the config"):
        load_config(tmp_path / "missing.yaml")


def test_several_errors_are_all_kept_and_the_message_counts_them(tmp_path):
    path = _write(tmp_path, PROMPTS + "metrics: {port: 0}\nmodel: {threads: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 2 and str(info.value).endswith("(and 1 more)")
    assert [e.split(": ")[1] for e in info.value.errors] == ["metrics.port", "model.threads"]  # in file order


def test_net_urls_are_redacted_everywhere_but_get_secret_value(tmp_path):
    text = f"sources:\n  - {{name: cam, kind: net, url: '{SECRET_URL}'}}\n" + PROMPTS
    cfg = load_config(_write(tmp_path, text))
    source = cfg.sources[0]
    assert isinstance(source, NetSource)
    assert source.url.get_secret_value() == SECRET_URL
    for shown in (
        str(source.url),
        repr(source.url),
        str(source),
        repr(source),
        repr(cfg),
        cfg.model_dump_json(),
    ):
        assert "hunter2" not in shown and "admin" not in shown and "s3cret" not in shown
    assert str(source.url) == "rtsp://cam.local:554/…"
    # a config that fails elsewhere does not echo the URL either
    bad = f"sources:\n  - {{name: cam, kind: net, url: '{SECRET_URL}', rtsp_transport: quic}}\n" + PROMPTS
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, bad))
    assert "hunter2" not in str(info.value) and "sources[0].rtsp_transport" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(
            _write(tmp_path, "sources:\n  - {name: cam, kind: net, url: 'user:pw-no-scheme'}\n" + PROMPTS)
        )
    assert "pw-no-scheme" not in str(info.value) and "sources[0].url: expected a URL" in str(info.value)


def test_json_schema_describes_every_section():
    schema = config_json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == {
        "sources",
        "prompts",
        "context",
        "detector",
        "model",
        "outputs",
        "metrics",
    }
    assert schema["required"] == ["prompts"]


def test_watcher_returns_new_configs_and_errors_and_the_caller_keeps_the_old(tmp_path):
    path = _write(tmp_path, PROMPTS)
    watcher = ConfigWatcher(path, interval_s=0.0)
    current = watcher.prime()
    assert watcher.poll() is None  # unchanged

    def rewrite(text: str, tick: int) -> None:
        path.write_text(text)
        os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a distinct mtime, whatever the clock

    rewrite(PROMPTS, 1)  # touched, same content: no change
    assert watcher.poll() is None
    rewrite(PROMPTS + "  - {label: siren, text: a siren}\n", 2)
    result = watcher.poll()
    assert isinstance(result, EngineConfig) and [p.label for p in result.prompts] == ["dog", "siren"]
    current = result
    rewrite(PROMPTS + "detector: {on_threshold: 2}\n", 3)
    result = watcher.poll()
    assert isinstance(result, ConfigError) and "detector.on_threshold" in str(result)
    assert str(result).startswith(f"{path}:3: ")
    assert watcher.poll() is None  # an error is reported once; the caller keeps `current`
    assert [p.label for p in current.prompts] == ["dog", "siren"]
    path.unlink()
    assert isinstance(watcher.poll(), ConfigError)
    rewrite(PROMPTS, 4)
    assert isinstance(watcher.poll(), EngineConfig)
