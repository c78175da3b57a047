"""Per-file licences and Freesound ids from the credit files that ship with the GitHub sources.

Two formats are read:

- AntumMT/mod-sounds `sources.md`: Markdown tables, one row per file or file pattern,
  `| [bumble_bee_0[1-2]][ref] | author | CC BY 3.0 | notes |`, under a heading that names the file
  prefix (`Filename (sounds_)`, `Filename (sounds_node_)`); `[ref]: URL` lines give the links.
- Fris0uman/CDDA-Soundpacks `credits.md` per folder (`| file.ogg | author | **CC0** | URL |`) and
  the older `credits.txt` beside some of them (`"a" and "b" by X (URL) licensed under CC-BY-NC`).

Debian packages' machine-readable copyright files (DEP-5) are read too (`read_dep5`): one
`Files:` stanza per group of source-tree paths, its `License:` and a `Comment:` with the links.

A file counts as non-commercial when any credit line that names it says NC: the two CDDA files
whose credits.md and credits.txt disagree are dropped on the stricter of the two.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

_TAKE = re.compile(r"^(.*?)(?:[_.]\d+)?$")  # as encoder.clipset: "toucan_02" -> "toucan"
_NC = re.compile(r"\bNC\b|non-?commercial", re.IGNORECASE)
_FREESOUND = re.compile(r"freesound\.org/(?:(?:s|sounds|people/[^/\s]+/sounds)/|samplesViewSingle\.php\?id=)(\d+)")
# `[pattern][ref]`, the pattern itself may hold one bracket group: `[ar_burst_0[1-2]][ar_fire]`
_MD_NAME = re.compile(r"^\[(?P<pat>(?:[^\[\]]|\[[^\]]*\])+)\]\[(?P<ref>[^\]]*)\]")
_MD_LINK = re.compile(r"^\[(?P<ref>[^\]]+)\]:\s*(?P<url>\S+)", re.MULTILINE)
_TXT_LINE = re.compile(r'^(?P<names>(?:"[^"]+"(?:\s*(?:,|and)\s*)?)+)\s+by\s+.*?(?:\((?P<url>[^)]*)\))?\s*'
                       r"licensed under\s+(?P<licence>\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Credit:
    licence: str  # as written, "" when the credits are silent
    freesound_ids: tuple[int, ...] = ()
    non_commercial: bool = False


@dataclass
class CreditTable:
    """Credits by file stem; `lookup` also tries the patterns of sources.md."""

    exact: dict[str, list[Credit]] = field(default_factory=dict)
    patterns: list[tuple[str, Credit]] = field(default_factory=list)

    def add(self, name: str, credit: Credit) -> None:
        if any(ch in name for ch in "*?["):
            self.patterns.append((name, credit))
        else:
            self.exact.setdefault(name, []).append(credit)

    def lookup(self, stem: str) -> Credit | None:
        """All credit lines for one file stem merged (NC if any says NC); None when none names it.
        Tried in order: the stem, the stem without its take number (a row `[toucan][]` covers
        toucan_01..03), the glob patterns, then the text before a pattern's bracket (sources.md
        writes "loon_[02-03]", which no glob reads as intended); the longest pattern wins."""
        found = self.exact.get(stem) or self.exact.get(_TAKE.match(stem)[1]) or []
        for matches in (fnmatch.fnmatchcase, _bracket_prefix):
            if found:
                break
            hits = [(len(p), c) for p, c in self.patterns if matches(stem, p)]
            if hits:
                found = [max(hits, key=lambda h: h[0])[1]]
        if not found:
            return None
        return Credit(" / ".join(dict.fromkeys(c.licence for c in found if c.licence)),
                      tuple(sorted({i for c in found for i in c.freesound_ids})),
                      any(c.non_commercial for c in found))


def _bracket_prefix(stem: str, pattern: str) -> bool:
    return "[" in pattern and stem.startswith(pattern.split("[")[0])


def _credit(licence: str, urls: str) -> Credit:
    licence = licence.strip().strip("*").strip()
    return Credit(licence, tuple(int(i) for i in _FREESOUND.findall(urls)), bool(_NC.search(licence)))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_mod_sounds(path: Path) -> dict[str, CreditTable]:
    """sources.md -> {file prefix ("sounds_", "sounds_node_"): table by the name after the prefix}."""
    text = path.read_text(encoding="utf-8", errors="replace")
    links = {m["ref"]: m["url"] for m in _MD_LINK.finditer(text)}
    tables: dict[str, CreditTable] = {}
    prefix = None
    for line in text.splitlines():
        head = re.search(r"Filename \((\w+)\)", line)
        if head:
            prefix = head[1]
            tables.setdefault(prefix, CreditTable())
            continue
        if prefix is None or not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = _cells(line)
        if len(cells) < 3:
            continue
        m = _MD_NAME.match(cells[0])
        if m:
            name, ref = m["pat"], m["ref"] or m["pat"]
        else:
            name, ref = cells[0].rstrip("*").strip(), ""
        if not name:
            continue
        credit = _credit(cells[2], links.get(ref, ""))
        tables[prefix].add(name, credit)
        if m and cells[0][m.end():].startswith("*"):  # `[ghost][]*`: the row covers ghost_damage too
            tables[prefix].add(name + "*", credit)
    return tables


def read_cdda_folder(folder: Path) -> CreditTable:
    """credits.md and credits.txt of one CDDA sound folder, by file stem."""
    table = CreditTable()
    md = folder / "credits.md"
    if md.is_file():
        for line in md.read_text(encoding="utf-8", errors="replace").splitlines():
            cells = _cells(line)
            if len(cells) < 3 or not cells[0].lower().endswith((".ogg", ".wav", ".flac")):
                continue
            table.add(Path(cells[0]).stem, _credit(cells[2], " ".join(cells[3:])))
    txt = folder / "credits.txt"
    if txt.is_file():
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _TXT_LINE.search(line.strip())
            if m:
                credit = _credit(m["licence"], m["url"] or "")
                for name in re.findall(r'"([^"]+)"', m["names"]):
                    table.add(Path(name).stem, credit)
    return table


def non_commercial_names(pack: Path) -> set[str]:
    """Stems that any credit file of the pack calls NC. CDDA's credits.txt in open_door/window also
    covers close_door/window/close_curtain.ogg, so a per-folder reading alone would miss it."""
    names: set[str] = set()
    for folder in {p.parent for p in pack.rglob("credits.*")}:
        table = read_cdda_folder(folder)
        names.update(stem for stem, credits in table.exact.items() if any(c.non_commercial for c in credits))
    return names


@dataclass(frozen=True)
class Dep5Stanza:
    patterns: tuple[str, ...]  # the `Files:` globs, relative to the source tree ("src/*/resource/*.ogg")
    credit: Credit


def read_dep5(text: str) -> list[Dep5Stanza]:
    """The `Files:` stanzas of a DEP-5 copyright file, in order. A stanza is NC when its licence name
    or its comment says so (GCompris's drum_kit.ogg: "the webpage now indicates CC-BY-NC-3.0");
    licence texts (continuation lines of `License:`) are not read for it."""
    stanzas = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" not in fields:
            continue
        licence = fields.get("license", "").split("\n")[0].strip()
        comment = fields.get("comment", "")
        credit = Credit(licence, tuple(int(i) for i in _FREESOUND.findall(comment + " " + fields.get("source", ""))),
                        bool(_NC.search(licence) or _NC.search(comment)))
        stanzas.append(Dep5Stanza(tuple(fields["files"].split()), credit))
    return stanzas


def dep5_credit(stanzas: list[Dep5Stanza], path: str) -> Credit | None:
    """The credit of one source-tree path: the last stanza whose pattern matches (DEP-5's rule;
    `*` also crosses '/'), None when none does."""
    found = None
    for st in stanzas:
        if any(fnmatch.fnmatchcase(path, p) for p in st.patterns):
            found = st.credit
    return found
