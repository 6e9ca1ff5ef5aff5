"""Documentation corpus -> articles, sentences and lanes (SPEC §12, issue 7 item 1).

`load_folder(root)` reads any folder of documentation: reST (`.rst`, `.txt`), Markdown (`.md`),
HTML (`.html`, `.htm`) and man pages (`.1` ... `.9`), each optionally gzipped (`.rst.gz`,
`ls.1.gz`; a bare `NAME.gz` is sniffed: roff when it starts with a roff request, else text).
One article per file, id = the path relative to the root (without `.gz`), sentences in document
order after markup is stripped; an article whose sentences mostly repeat a larger article is
dropped (`drop_contained`: content leakage across splits otherwise). The lane of an article is its top-level section (first path
component; files at the root are in lane `root`); when there are more than `max_lanes`
sections the `max_lanes - 1` largest (by sentences) keep their lane and the rest are pooled
into `other`.

`load_pydoc_topics()` is the fallback corpus that ships with the interpreter
(`pydoc_data.topics.topics`): one article per topic, lanes from a fixed rule table (below).

Errors: a missing, unreadable or empty folder (no readable supported file, or no sentence)
raises `CorpusError` naming the folder.

Why this is one module: the corpus reader handles each source format (kernel RST, pydoc topics) with the sentence splitter and article split they share.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import html.parser
import keyword
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

OTHER_LANE = "other"
ROOT_LANE = "root"
PYDOC_SOURCE = "pydoc_data.topics"


class CorpusError(ValueError):
    """A corpus that cannot be used (missing, unreadable or empty folder)."""


@dataclass(frozen=True)
class Article:
    id: str
    lane: str
    sentences: tuple[str, ...]
    fmt: str = "text"


@dataclass
class Corpus:
    source: str  # folder path or PYDOC_SOURCE
    articles: list[Article]
    lanes: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    capped: bool = False

    @property
    def n_sentences(self) -> int:
        return sum(len(a.sentences) for a in self.articles)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for a in self.articles:
            h.update(f"{a.id}\0{a.lane}\0".encode())
            for s in a.sentences:
                h.update(s.encode())
                h.update(b"\n")
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------------------------
_ABBREV = (
    "e.g.",
    "i.e.",
    "etc.",
    "vs.",
    "cf.",
    "approx.",
    "Fig.",
    "fig.",
    "No.",
    "Mr.",
    "Dr.",
    "et al.",
    "resp.",
    "incl.",
    "esp.",
)
_ABBREV_RE = re.compile("|".join(re.escape(a) for a in sorted(_ABBREV, key=len, reverse=True)))
_SPLIT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WS_RE = re.compile(r"\s+")
_ALPHA_RE = re.compile(r"[A-Za-z]")


def split_sentences(text: str, min_words: int = 4, min_chars: int = 20, max_chars: int = 400) -> list[str]:
    """Split plain text into sentences: paragraphs on blank lines, then on `. ! ?` before a
    capital or digit (common abbreviations protected). Fragments that are too short, mostly
    non-letters (code, tables) or too long are dropped."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = _WS_RE.sub(" ", para).strip()
        if not para:
            continue
        protected = _ABBREV_RE.sub(lambda m: m.group(0).replace(".", "\x00"), para)
        for piece in _SPLIT_RE.split(protected):
            s = piece.replace("\x00", ".").strip()
            if len(s) < min_chars or len(s.split()) < min_words:
                continue
            if len(s) > max_chars:
                continue
            letters = len(_ALPHA_RE.findall(s))
            if letters < 0.5 * len(s.replace(" ", "")):
                continue
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# Markup stripping, one function per format; each returns plain text with blank-line paragraphs
# ---------------------------------------------------------------------------------------------
_RST_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+_:.<>])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(?:\|[^|]+\|\s+)?([\w:.-]+)::(.*)$")
_RST_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
_RST_KEEP_DIRECTIVES = {
    "note",
    "warning",
    "important",
    "tip",
    "attention",
    "caution",
    "hint",
    "danger",
    "error",
    "seealso",
    "admonition",
    "topic",
    "sidebar",
    "rubric",
    "versionadded",
    "versionchanged",
    "deprecated",
    "hlist",
    "container",
}
_RST_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_{1,2}")
_RST_REF = re.compile(r"`([^`]+)`_{1,2}")
_RST_LITERAL = re.compile(r"``([^`]*)``")
_RST_INTERP = re.compile(r"`([^`]*)`")
_RST_EMPH = re.compile(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
_RST_SUBST = re.compile(r"\|([^|\s][^|]*)\|")
_RST_FOOTREF = re.compile(r"\s*\[(?:#\w*|\*|\d+)\]_")
_RST_FIELD = re.compile(r"^\s*:[^:]+:\s*")
_BULLET = re.compile(r"^\s*(?:[-*+•]|#\.|\d+[.)]|[a-zA-Z][.)])\s+")
_TABLE_LINE = re.compile(r"^\s*(?:[+|]|=+\s+=+)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _rst_inline(line: str) -> str:
    line = _RST_LINK.sub(r"\1", line)
    line = _RST_ROLE.sub(lambda m: re.sub(r"\s*<[^>]*>$", "", m.group(1)).lstrip("~!"), line)
    line = _RST_LITERAL.sub(r"\1", line)
    line = _RST_REF.sub(r"\1", line)
    line = _RST_INTERP.sub(r"\1", line)
    line = _RST_EMPH.sub(lambda m: m.group(1) or m.group(2), line)
    line = _RST_SUBST.sub(r"\1", line)
    line = _RST_FOOTREF.sub("", line)
    return line


def strip_rst(text: str) -> str:
    """reST (and plain kernel .txt) -> plain text. Drops directives that carry code or layout
    (code-block, kernel-doc, toctree, ...) with their indented body, comments, literal blocks
    (after `::`), section adornments and table lines; keeps admonition bodies; strips roles,
    links, literals and emphasis."""
    lines = text.replace("\r\n", "\n").replace("\t", "    ").split("\n")
    out: list[str] = []
    skip_indent: int | None = None  # skipping an indented block deeper than this
    pending_literal = False  # previous paragraph ended with '::'
    for raw in lines:
        if skip_indent is not None:
            if skip_indent < 0:  # doctest: until a blank line
                if raw.strip():
                    continue
            elif not raw.strip() or _indent(raw) > skip_indent:
                continue
            skip_indent = None
            out.append("")
        if pending_literal:
            if not raw.strip():
                continue
            pending_literal = False
            if _indent(raw) > (_indent(out[-1]) if out and out[-1].strip() else 0) or _indent(raw) > 0:
                skip_indent = _indent(raw) - 1
                continue
        m = _RST_DIRECTIVE.match(raw)
        if m:
            name = m.group(2).split(":")[-1].lower()
            if name in _RST_KEEP_DIRECTIVES:
                out.append("")
                rest = m.group(3).strip()
                if rest:
                    out.append(_rst_inline(rest))
            else:
                skip_indent = len(m.group(1))
                out.append("")
            continue
        if _RST_COMMENT.match(raw):
            skip_indent = _indent(raw)
            out.append("")
            continue
        if _RST_UNDERLINE.match(raw):
            # An adornment: the previous line (if any) was a title -> its own paragraph.
            if out and out[-1].strip():
                out.insert(len(out) - 1, "")
            out.append("")
            continue
        if _TABLE_LINE.match(raw):
            out.append("")
            continue
        if raw.lstrip().startswith(">>>"):
            # A doctest: the example and its output run to the next blank line.
            skip_indent = -1
            out.append("")
            continue
        line = raw
        if _BULLET.match(line):
            out.append("")
            line = _BULLET.sub("", line)
        line = _RST_FIELD.sub("", line) if line.lstrip().startswith(":") else line
        stripped = line.rstrip()
        if stripped.endswith("::"):
            pending_literal = True
            stripped = stripped[:-2].rstrip()
            if stripped and not stripped.endswith((".", ":")):
                stripped += ":"
        out.append(_rst_inline(stripped))
    return "\n".join(out)


_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_REFLINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_MD_LINKDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+")
_MD_CODE = re.compile(r"`+([^`]*)`+")
_MD_EMPH = re.compile(r"(\*\*|__)(.+?)\1|(?<![\w*])[*_]([^*_\s][^*_]*?)[*_](?![\w*])")
_MD_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_MD_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_TAG = re.compile(r"<[^>]+>")


def strip_markdown(text: str) -> str:
    """Markdown -> plain text: fenced and indented code dropped, headings their own paragraph,
    links/images -> their text, inline code and emphasis unwrapped, tables and rules dropped."""
    out: list[str] = []
    in_fence = False
    prev_blank = True
    for raw in text.replace("\r\n", "\n").replace("\t", "    ").split("\n"):
        if _MD_FENCE.match(raw):
            in_fence = not in_fence
            out.append("")
            continue
        if in_fence:
            continue
        if not raw.strip():
            out.append("")
            prev_blank = True
            continue
        if prev_blank and _indent(raw) >= 4 and not _BULLET.match(raw):
            continue  # indented code block
        prev_blank = False
        if _MD_LINKDEF.match(raw) or _MD_RULE.match(raw) or _MD_SETEXT.match(raw) or raw.lstrip().startswith("|"):
            out.append("")
            continue
        line = raw
        m = _MD_HEADING.match(line)
        if m:
            out.extend(["", m.group(1), ""])
            continue
        line = re.sub(r"^\s*(>\s*)+", "", line)
        if _BULLET.match(line):
            out.append("")
            line = _BULLET.sub("", line)
        line = _MD_IMAGE.sub(r"\1", line)
        line = _MD_LINK.sub(r"\1", line)
        line = _MD_REFLINK.sub(r"\1", line)
        line = _MD_CODE.sub(r"\1", line)
        line = _MD_EMPH.sub(lambda mm: mm.group(2) or mm.group(3) or "", line)
        line = _TAG.sub("", line)
        out.append(html.unescape(line))
    return "\n".join(out)


class _HTMLText(html.parser.HTMLParser):
    SKIP = {
        "script",
        "style",
        "pre",
        "nav",
        "head",
        "noscript",
        "svg",
        "math",
        "footer",
        "header",
        "form",
        "button",
        "select",
    }
    BLOCK = {
        "p",
        "div",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "br",
        "tr",
        "td",
        "th",
        "table",
        "section",
        "article",
        "blockquote",
        "hr",
        "aside",
        "main",
        "body",
        "caption",
        "figcaption",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag, attrs):
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data.replace("\n", " "))


def strip_html(text: str) -> str:
    """HTML -> plain text with the stdlib parser: script/style/pre/nav/head dropped, block
    elements become paragraph breaks, entities decoded."""
    p = _HTMLText()
    p.feed(text)
    p.close()
    return "".join(p.parts)


_ROFF_ESC = [
    (re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d+"), ""),  # size changes
    (re.compile(r"\\\*(?:\[[^\]]*\]|\(..|.)"), ""),  # strings
    (re.compile(r"\\\((em|en)"), " - "),
    (re.compile(r"\\\((aq|cq|oq)"), "'"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\(bu"), ""),
    (re.compile(r"\\\(.."), ""),
    (re.compile(r"\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-e]"), "-"),
    (re.compile(r"\\[&|^%:]"), ""),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\c\s*$"), ""),
]
_ROFF_FONT_MACROS = {
    "B",
    "I",
    "R",
    "SM",
    "SB",
    "BI",
    "BR",
    "IB",
    "IR",
    "RB",
    "RI",
    "UR",
    "MT",
    "Nm",
    "Ar",
    "Fl",
    "Cm",
    "Em",
    "Pa",
    "Va",
    "Xr",
    "Dv",
    "Er",
    "Ev",
    "Fn",
    "Sy",
}
_ROFF_HEAD_MACROS = {"SH", "SS", "Sh", "Ss"}
_ROFF_NOFILL_START = {"nf", "EX", "Bd"}
_ROFF_NOFILL_END = {"fi", "EE", "Ed"}


def _roff_args(rest: str) -> str:
    args = re.findall(r'"([^"]*)"|(\S+)', rest)
    return " ".join(a or b for a, b in args)


def strip_roff(text: str) -> str:
    """man-page roff -> plain text: `.\\"` comments dropped, `.SH/.SS` headings their own
    paragraph, `.PP/.TP/.IP/...` paragraph breaks, font macros (`.B`, `.BR`, ...) joined,
    no-fill blocks (`.nf/.fi`, `.EX/.EE`) dropped, inline escapes removed."""
    out: list[str] = []
    nofill = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if raw.startswith((".", "'")):
            m = re.match(r"^[.']\s*(\S+)\s*(.*)$", raw)
            if not m:
                out.append("")
                continue
            req, rest = m.group(1), m.group(2)
            if req in _ROFF_NOFILL_START:
                nofill = True
            elif req in _ROFF_NOFILL_END:
                nofill = False
            elif req in _ROFF_HEAD_MACROS:
                out.extend(["", _roff_args(rest), ""])
            elif req in _ROFF_FONT_MACROS and not nofill:
                out.append(_roff_args(rest))
            else:
                out.append("")  # .PP .LP .P .TP .IP .sp .br .TH .RS .RE .in ... -> break
            continue
        if nofill:
            continue
        out.append(raw)
    body = "\n".join(out)
    for pat, rep in _ROFF_ESC:
        body = pat.sub(rep, body)
    return body.replace("\\\\", "\\")


_STRIPPERS = {"rst": strip_rst, "md": strip_markdown, "html": strip_html, "roff": strip_roff}
_EXT_FORMAT = {
    ".rst": "rst",
    ".txt": "rst",
    ".rest": "rst",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
}
_MAN_EXT = re.compile(r"^\.[1-9][a-z]*$")


def detect_format(path: Path) -> tuple[str | None, bool]:
    """(format or None when unsupported, gzipped?) from the file name."""
    name = path.name
    gz = name.endswith(".gz")
    inner = name[:-3] if gz else name
    ext = os.path.splitext(inner)[1].lower()
    if ext in _EXT_FORMAT:
        return _EXT_FORMAT[ext], gz
    if _MAN_EXT.match(ext):
        return "roff", gz
    if gz and ext == "":
        return "sniff", gz
    return None, gz


def _read_text(path: Path, gz: bool) -> str:
    data = gzip.open(path, "rb").read() if gz else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def extract_sentences(text: str, fmt: str, min_words: int = 4, min_chars: int = 20, max_chars: int = 400) -> list[str]:
    if fmt == "sniff":
        head = text.lstrip()[:200]
        fmt = "roff" if head.startswith((".TH", '.\\"', "'\\\"", ".Dd", ".so")) else "rst"
    return split_sentences(_STRIPPERS[fmt](text), min_words, min_chars, max_chars)


# ---------------------------------------------------------------------------------------------
# Lanes and caps
# ---------------------------------------------------------------------------------------------
def assign_lanes(sections: dict[str, str], sizes: dict[str, int], max_lanes: int = 16) -> dict[str, str]:
    """Map article id -> lane. `sections` maps article id -> section; when there are more than
    `max_lanes` sections, the `max_lanes - 1` largest by total size keep their own lane and the
    rest become `other` (ties broken by name, so the result is deterministic)."""
    if max_lanes < 2:
        raise ValueError("max_lanes must be >= 2")
    total: Counter[str] = Counter()
    for aid, sec in sections.items():
        total[sec] += sizes.get(aid, 0)
    if len(total) <= max_lanes:
        return dict(sections)
    keep = {s for s, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[: max_lanes - 1]}
    return {aid: (sec if sec in keep else OTHER_LANE) for aid, sec in sections.items()}


def article_hash(article_id: str) -> str:
    return hashlib.sha256(article_id.encode("utf-8")).hexdigest()


def cap_articles(articles: Sequence[Article], max_sentences: int | None) -> tuple[list[Article], bool]:
    """Keep whole articles in article-hash order until `max_sentences` is reached (0/None: all).
    Hash order spreads the sample across lanes and is stable when the corpus grows."""
    if not max_sentences or sum(len(a.sentences) for a in articles) <= max_sentences:
        return list(articles), False
    kept: list[Article] = []
    n = 0
    for a in sorted(articles, key=lambda a: article_hash(a.id)):
        if n + len(a.sentences) > max_sentences and kept:
            continue  # too big for what is left; a smaller later article may still fit
        kept.append(a)
        n += len(a.sentences)
        if n >= max_sentences:
            break
    order = {a.id: i for i, a in enumerate(articles)}
    return sorted(kept, key=lambda a: order[a.id]), True


def drop_contained(articles: Sequence[Article], threshold: float = 0.5) -> tuple[list[Article], int]:
    """Drop articles whose sentences mostly (>= threshold) occur in a larger article.

    Documentation trees repeat themselves (pydoc's `compound` topic contains `if`, `while`,
    `try`, ...; `specialnames` contains `customization`, ...). Left in, the same chain of
    sentences could sit in a train article and an eval article: leakage by content that an
    article-level split cannot see. Articles are visited largest first (ties by id); kept
    articles' sentences form the `seen` set. Returns (kept in input order, number dropped)."""
    seen: set[str] = set()
    drop: set[str] = set()
    for a in sorted(articles, key=lambda a: (-len(a.sentences), a.id)):
        dup = sum(1 for s in a.sentences if s in seen)
        if a.sentences and dup >= threshold * len(a.sentences):
            drop.add(a.id)
            continue
        seen.update(a.sentences)
    return [a for a in articles if a.id not in drop], len(drop)


def _finish(
    source: str,
    articles: list[Article],
    skipped: Counter,
    max_sentences: int | None,
) -> Corpus:
    articles, n_dup = drop_contained(articles)
    if n_dup:
        skipped["duplicate_content"] += n_dup
    articles, capped = cap_articles(articles, max_sentences)
    lanes = sorted({a.lane for a in articles})
    return Corpus(source=source, articles=articles, lanes=lanes, skipped=dict(skipped), capped=capped)


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def iter_files(root: Path, exclude_dirs: Iterable[str] = ()) -> list[Path]:
    excl = set(exclude_dirs)
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith((".", "_")) and not (rel == Path(".") and d in excl)
        )
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def load_folder(
    root: str | os.PathLike,
    max_lanes: int = 16,
    exclude_dirs: Iterable[str] = (),
    max_sentences: int | None = None,
    min_words: int = 4,
    min_chars: int = 20,
    max_chars: int = 400,
) -> Corpus:
    """Read a documentation folder (see the module docstring). Raises CorpusError naming the
    folder when it is missing, unreadable or yields no sentence.

    Lanes are assigned from the byte size of every supported file (a cheap `stat`), so that with
    a cap only the articles kept (in article-hash order) are parsed: a capped load of a large
    tree stays fast and its lanes do not depend on the cap."""
    root = Path(root)
    if not root.exists():
        raise CorpusError(f"corpus folder {root}: does not exist")
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root}: is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise CorpusError(f"corpus folder {root}: is not readable")
    skipped: Counter[str] = Counter()
    files: list[tuple[str, Path, str, bool, str]] = []  # (id, path, fmt, gz, section)
    sizes: dict[str, int] = {}
    for path in iter_files(root, exclude_dirs):
        fmt, gz = detect_format(path)
        if fmt is None:
            skipped["unsupported"] += 1
            continue
        rel = path.relative_to(root)
        aid = rel.as_posix()[:-3] if gz else rel.as_posix()
        section = rel.parts[0] if len(rel.parts) > 1 else ROOT_LANE
        try:
            sizes[aid] = path.stat().st_size
        except OSError:
            sizes[aid] = 0
        files.append((aid, path, fmt, gz, section))
    if not files:
        raise CorpusError(
            f"corpus folder {root}: no documentation files (.rst/.txt/.md/.html/.htm/man pages, optionally .gz)"
        )
    lanes = assign_lanes({f[0]: f[4] for f in files}, sizes, max_lanes)
    order = sorted(files, key=lambda f: article_hash(f[0])) if max_sentences else files
    kept: list[tuple[int, Article]] = []
    position = {f[0]: i for i, f in enumerate(files)}
    n = 0
    capped = False
    for aid, path, fmt, gz, _ in order:
        if max_sentences and n >= max_sentences:
            capped = True
            break
        try:
            text = _read_text(path, gz)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            log.warning("corpus: cannot read %s: %s", path, e)
            skipped["unreadable"] += 1
            continue
        sents = extract_sentences(text, fmt, min_words, min_chars, max_chars)
        if not sents:
            skipped["no_sentences"] += 1
            continue
        if max_sentences and kept and n + len(sents) > max_sentences:
            skipped["over_cap"] += 1
            capped = True
            continue
        kept.append((position[aid], Article(id=aid, lane=lanes[aid], sentences=tuple(sents), fmt=fmt)))
        n += len(sents)
    if not kept:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
        raise CorpusError(f"corpus folder {root}: no readable documentation with sentences ({detail})")
    articles = [a for _, a in sorted(kept, key=lambda t: t[0])]
    articles, n_dup = drop_contained(articles)
    if n_dup:
        skipped["duplicate_content"] += n_dup
    return Corpus(
        source=str(root),
        articles=articles,
        lanes=sorted({a.lane for a in articles}),
        skipped=dict(skipped),
        capped=capped,
    )


# pydoc topic -> lane: an ordered rule table (first match wins), so the grouping is fixed.
_PYDOC_COMPOUND = {
    "if",
    "while",
    "for",
    "try",
    "with",
    "def",
    "class",
    "async",
    "else",
    "elif",
    "except",
    "finally",
    "match",
    "case",
    "function",
    "compound",
}
_PYDOC_LEXICAL = {
    "identifiers",
    "integers",
    "floating",
    "imaginary",
    "strings",
    "numbers",
    "formatstrings",
    "atom-literals",
    "atom-identifiers",
    "booleans",
}
_PYDOC_DATAMODEL = {
    "attribute-access",
    "callable-types",
    "customization",
    "numeric-types",
    "sequence-types",
    "specialattrs",
    "specialnames",
    "objects",
    "types",
    "context-managers",
}
_PYDOC_EXECUTION = {
    "execmodel",
    "naming",
    "exceptions",
    "dynamic-features",
    "debugger",
    "id-classes",
    "global",
    "nonlocal",
    "import",
}


def pydoc_lane(topic: str) -> str:
    """Lane of a pydoc topic: execution model, lexical, data model, builtin types, compound
    statements, simple statements (the remaining keywords), expressions (the rest)."""
    if topic in _PYDOC_EXECUTION:
        return "execution_model"
    if topic in _PYDOC_LEXICAL:
        return "lexical"
    if topic in _PYDOC_DATAMODEL:
        return "data_model"
    if topic.startswith(("bltin-", "types", "string-methods", "truth", "dict", "typesseq")):
        return "builtin_types"
    if topic in _PYDOC_COMPOUND:
        return "compound_statements"
    if (
        keyword.iskeyword(topic)
        or keyword.iskeyword(topic.capitalize())
        or topic in {"assignment", "augassign", "assert"}
    ):
        return "simple_statements"
    return "expressions"


def load_pydoc_topics(
    max_sentences: int | None = None, min_words: int = 4, min_chars: int = 20, max_chars: int = 400
) -> Corpus:
    """Python's documentation topics (`pydoc_data.topics.topics`, shipped with the interpreter):
    one article per topic (id `pydoc/<topic>`), text treated as reST-like plain text."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # pragma: no cover - stripped interpreter
        raise CorpusError(f"corpus {PYDOC_SOURCE}: not available in this interpreter") from e
    articles: list[Article] = []
    skipped: Counter[str] = Counter()
    for name in sorted(topics):
        sents = split_sentences(strip_rst(topics[name]), min_words, min_chars, max_chars)
        if not sents:
            skipped["no_sentences"] += 1
            continue
        articles.append(Article(id=f"pydoc/{name}", lane=pydoc_lane(name), sentences=tuple(sents), fmt="pydoc"))
    if not articles:
        raise CorpusError(f"corpus {PYDOC_SOURCE}: no sentences")
    return _finish(PYDOC_SOURCE, articles, skipped, max_sentences)


def resolve_source(cfg: dict) -> str:
    """Which corpus the default run reads: LVM_CORPUS_DIR (a folder, or `pydoc`), else the
    first existing `corpus.search_dirs` entry (Debian's linux-doc-6.1), else pydoc_data."""
    override = os.environ.get("LVM_CORPUS_DIR", "").strip()
    if override:
        return PYDOC_SOURCE if override.lower() in {"pydoc", PYDOC_SOURCE} else override
    for d in cfg["corpus"].get("search_dirs", []):
        if Path(d).is_dir():
            return d
    return PYDOC_SOURCE


def load_default(cfg: dict) -> Corpus:
    c = cfg["corpus"]
    src = resolve_source(cfg)
    kw = dict(
        max_sentences=c.get("max_sentences") or None,
        min_words=c["min_words"],
        min_chars=c["min_chars"],
        max_chars=c["max_chars"],
    )
    if src == PYDOC_SOURCE:
        return load_pydoc_topics(**kw)
    return load_folder(src, max_lanes=c["max_lanes"], exclude_dirs=c.get("exclude_dirs", []), **kw)
