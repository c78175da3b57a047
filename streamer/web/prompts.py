"""The prompts page's file side: read the config's prompts, and write new ones only if the whole
config still validates (streamer.config.parse_config, the engine's own loader).

Only the `prompts:` section of the file is replaced (from its key to its last item; comments
elsewhere in the file stay), then the new text is validated as a whole and written atomically
(temp file + rename, so the engine's ConfigWatcher never reads half a file). An invalid edit
raises ConfigError with the loader's one-line message and leaves the file as it was: the running
engine keeps its config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from streamer.config import ConfigError, EngineConfig, load_config, parse_config

PROMPT_FIELDS = ("label", "text", "on_threshold", "off_threshold", "min_duration_s")


def read_prompts(path: Path) -> list[dict]:
    """The config's prompts as plain dicts (text always a list). Raises ConfigError."""
    cfg = load_config(path)
    return [p.model_dump(mode="json", exclude_none=True) for p in cfg.prompts]


def _section_lines(text: str) -> tuple[int, int]:
    """[first, end) line numbers (0-based) of the top-level `prompts:` key and its value."""
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(["the config is not a mapping of sections"])
    for key, value in root.value:
        if getattr(key, "value", None) == "prompts":
            end = value.end_mark.line + (1 if value.end_mark.column > 0 else 0)
            lines = text.splitlines()
            while end > key.start_mark.line + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
                end -= 1  # blank lines and comments after the last item belong to what follows
            return key.start_mark.line, end
    raise ConfigError(["the config has no prompts section"])


def _prompt_yaml(prompt: dict) -> str:
    clean = {k: prompt[k] for k in PROMPT_FIELDS if prompt.get(k) not in (None, "", [])}
    unknown = sorted(set(prompt) - set(PROMPT_FIELDS))
    clean.update({k: prompt[k] for k in unknown})  # the loader names them as unknown fields
    return yaml.safe_dump(clean, default_flow_style=True, width=10**6, sort_keys=False, allow_unicode=True).strip()


def replace_prompts(text: str, prompts: list[dict]) -> str:
    """The config text with its prompts section replaced by `prompts` (flow style, one a line)."""
    first, end = _section_lines(text)
    lines = text.splitlines(keepends=True)
    section = "prompts:\n" + "".join(f"  - {_prompt_yaml(p)}\n" for p in prompts) if prompts else "prompts: []\n"
    return "".join(lines[:first]) + section + "".join(lines[end:])


def write_prompts(path: Path, prompts: list[dict]) -> EngineConfig:
    """Validate the config with these prompts, then write it. Raises ConfigError (one line) and
    writes nothing when the result would not load."""
    if not isinstance(prompts, list) or not all(isinstance(p, dict) for p in prompts):
        raise ConfigError([f"{path}: prompts: expected a list of {{label, text, ...}} objects"])
    text = path.read_text(encoding="utf-8")
    try:
        new_text = replace_prompts(text, prompts)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: the config on disk is not valid YAML ({str(e).splitlines()[0]})"]) from None
    cfg = parse_config(new_text, str(path))  # the engine's loader: any error is its one line
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new_text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return cfg
