"""C and C++ functions of header/source files, for the engine's corpus (language `cpp`).

No compiler front end is needed for what the suites use: a function's span, name, enclosing
class, parameter names, the names it calls (inline bodies) and its documentation comment.
`units_of_cpp` scans the file once:

1. comments, string/char literals and preprocessor lines are blanked (line structure kept);
   comment blocks are remembered by line;
2. a brace-depth walk splits the text into statements (`;`, `{`, `}`); a statement that opens
   `class|struct|union X {` or `namespace X {` pushes a scope; one that looks like a function
   head (`... name(...)`, name not a keyword or an ALL_CAPS macro, no `=` before the `(`) is a
   function: a declaration when it ends in `;`, a definition when a body `{...}` follows (the
   span then runs to the matching `}`).

The span is 1-based inclusive from the statement's first line (a `template <...>` line
included) to its `;` or closing `}`. The documentation is the comment block that ends on the
line just before the span (`///`, `//!`, `/** */`, or plain `//` lines); Doxygen commands
(`\\brief`, `@brief`) are dropped, `\\param`/`\\return` lines end the summary paragraph. The
documentation is outside the span, so it is never indexed. Operators and destructors are
skipped (no useful identifier or docstring queries).
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path

KEYWORDS = frozenset(
    """
if for while switch return sizeof decltype static_assert alignof alignas catch throw new delete
case do else goto typeid noexcept requires co_await co_return co_yield defined
""".split()
)
_SCOPE_RE = re.compile(
    r"^(?:template\s*<.*>\s*)?(class|struct|union|namespace)\b\s*(?:\[\[[^\]]*\]\]\s*)?"
    r"(?:[A-Z][A-Z0-9_]*(?:\([^)]*\))?\s+)*([A-Za-z_]\w*)?"
)
_HEAD_RE = re.compile(r"([A-Za-z_~]\w*)\s*(?:<[^<>()]*>)?\s*\(")
_SKIP_START = re.compile(r"^(?:typedef|using|friend|return|enum|extern\s+\"|static_assert|goto)\b")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_STMT_END = re.compile(r"[;{}]")
_BRACE = re.compile(r"[{}]")
_DOX = re.compile(r"^[\\@](?:brief|short)\s+")
_DOX_END = re.compile(r"^[\\@](?:param|tparam|return|returns|retval|throws|note|see|sa|pre|post|deprecated)\b")


def _blank(src: str) -> tuple[str, dict[int, str]]:
    """(src with comments, literals and preprocessor lines replaced by spaces, {line: comment
    text} for lines that hold comments; lines are 1-based)."""
    out = list(src)
    comments: dict[int, list[str]] = {}
    i, n, line = 0, len(src), 1
    at_line_start = True
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            at_line_start = True
            i += 1
            continue
        if at_line_start and c == "#":
            # preprocessor directive, with backslash continuations
            while i < n and src[i] != "\n":
                if src[i] == "\\" and i + 1 < n and src[i + 1] == "\n":
                    out[i] = " "
                    i += 2
                    line += 1
                    continue
                out[i] = " "
                i += 1
            continue
        if not c.isspace():
            at_line_start = False
        if c == "/" and i + 1 < n and src[i + 1] == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            comments.setdefault(line, []).append(src[i:j])
            for k in range(i, j):
                out[k] = " "
            i = j
            continue
        if c == "/" and i + 1 < n and src[i + 1] == "*":
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k, piece in enumerate(src[i:j].split("\n")):
                comments.setdefault(line + k, []).append(piece)
            for k in range(i, j):
                if src[k] != "\n":
                    out[k] = " "
            line += src.count("\n", i, j)
            i = j
            continue
        if c in "\"'":
            # raw strings are rare in headers; a plain literal ends at the unescaped quote
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
            continue
        i += 1
    return "".join(out), {k: "\n".join(v) for k, v in comments.items()}


def _clean_doc(lines: list[str]) -> str:
    out: list[str] = []
    for raw in lines:
        s = raw.strip()
        s = re.sub(r"^/\*+!?|\*+/$", "", s).strip()
        s = re.sub(r"^(?://[/!]?|\*)", "", s).strip()
        if _DOX_END.match(s):
            out.append("")
            continue
        out.append(_DOX.sub("", s))
    text = "\n".join(out).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def _split_params(inner: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in inner:
        if ch in "<([{":
            depth += 1
        elif ch in ">)]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    names = []
    for p in parts:
        p = p.split("=")[0].strip()
        if not p or p == "void" or p == "...":
            continue
        p = re.sub(r"\[[^\]]*\]$", "", p).strip()  # array suffix
        ids = _IDENT.findall(p)
        if len(ids) >= 2:  # a type and a name; an unnamed parameter has only its type
            names.append(ids[-1])
    return names


def _paren_span(s: str, open_at: int) -> int:
    depth = 0
    for k in range(open_at, len(s)):
        if s[k] == "(":
            depth += 1
        elif s[k] == ")":
            depth -= 1
            if depth == 0:
                return k
    return -1


def _function_head(stmt: str) -> tuple[str, list[str]] | None:
    """(name, parameter names) when the statement text looks like a function head."""
    flat = " ".join(stmt.split())
    if not flat or _SKIP_START.match(flat) or "operator" in flat:
        return None
    body = re.sub(r"^template\s*<.*?>\s*(?=[A-Za-z_~])", "", flat)
    for m in _HEAD_RE.finditer(body):
        name = m.group(1)
        before = body[: m.start()]
        if "=" in before or "(" in before:
            return None
        if name in KEYWORDS or name.startswith("~") or (name.isupper() and len(name) > 1):
            return None
        close = _paren_span(body, body.index("(", m.start()))
        if close < 0:
            return None
        tail = body[close + 1 :]
        # what may follow a function's parameter list
        if tail and not re.match(
            r"^\s*(?:const|override|final|noexcept(?:\([^)]*\))?|volatile|&|&&|->|=\s*(?:0|default|delete)|"
            r":|[A-Z][A-Z0-9_]*(?:\([^)]*\))?|\[\[[^\]]*\]\]|\s)*(?:->.*|:.*|=.*)?$",
            tail,
        ):
            return None
        if not before.strip() and name[0].islower() and "::" not in body:
            return None  # a bare call statement `foo(x);`, not a declaration
        return name, _split_params(body[body.index("(", m.start()) + 1 : close])
    return None


def units_of_cpp(data: bytes, wire_path: str, rel: Path, repo: str, package: str, module: str, unit_cls) -> list:
    """Every function declared or defined in a C/C++ file, as `unit_cls` (lens_engine.corpus.Unit)."""
    src = data.decode("utf-8", errors="replace")
    blank, comments = _blank(src)
    src_lines = src.splitlines(keepends=True)
    line_starts = [0] + [m.end() for m in re.finditer("\n", blank)]

    def line_of(off: int) -> int:
        return bisect.bisect_right(line_starts, off)

    out = []
    scopes: list[tuple[str, str, int]] = []  # (kind, name, depth at which it closes)
    depth = 0
    stmt_start = 0
    i, n = 0, len(blank)
    while i < n:
        m = _STMT_END.search(blank, i)
        if m is None:
            break
        i = m.start()
        ch = blank[i]
        stmt = blank[stmt_start:i]
        first = stmt_start + (len(stmt) - len(stmt.lstrip()))
        if ch == "}":
            depth -= 1
            while scopes and scopes[-1][2] > depth:
                scopes.pop()
            stmt_start = i + 1
            i += 1
            continue
        flat = " ".join(stmt.split())
        # access specifiers end with ':' inside a statement: drop them
        flat_nolabel = re.sub(r"^(?:(?:public|private|protected)\s*:\s*)+", "", flat)
        if flat_nolabel != flat:
            m = re.search(r"(?:public|private|protected)\s*:", stmt)
            first = stmt_start + m.end() + (len(stmt[m.end() :]) - len(stmt[m.end() :].lstrip()))
            stmt = stmt[m.end() :]
        head = _function_head(stmt) if ch in ";{" else None
        in_function = any(k == "function" for k, _, _ in scopes)
        if ch == "{":
            sm = _SCOPE_RE.match(flat_nolabel)
            if sm and "(" not in flat_nolabel.split("{")[0].split(":")[0]:
                scopes.append((sm.group(1), sm.group(2) or "", depth + 1))
                depth += 1
                stmt_start = i + 1
                i += 1
                continue
            if head is not None and not in_function:
                # a definition: find the matching brace
                d, k = 0, n - 1
                for b in _BRACE.finditer(blank, i):
                    d += 1 if b.group() == "{" else -1
                    if d == 0:
                        k = b.start()
                        break
                end = k
                out.append(
                    _unit(
                        head,
                        first,
                        end,
                        blank[i:end],
                        scopes,
                        src_lines,
                        comments,
                        line_of,
                        wire_path,
                        repo,
                        package,
                        module,
                        unit_cls,
                    )
                )
                i = end + 1
                stmt_start = i
                continue
            scopes.append(("block", "", depth + 1))
            depth += 1
            stmt_start = i + 1
            i += 1
            continue
        # ';'
        if head is not None and not in_function and not any(k == "block" for k, _, _ in scopes):
            out.append(
                _unit(
                    head, first, i, "", scopes, src_lines, comments, line_of, wire_path, repo, package, module, unit_cls
                )
            )
        stmt_start = i + 1
        i += 1
    return out


def _unit(
    head,
    first: int,
    end: int,
    body: str,
    scopes,
    src_lines,
    comments,
    line_of,
    wire_path,
    repo,
    package,
    module,
    unit_cls,
):
    name, params = head
    start_line, end_line = line_of(first), line_of(end)
    # documentation: the comment block ending right above the span
    doc_lines: list[str] = []
    ln = start_line - 1
    while ln >= 1 and ln in comments and not src_lines[ln - 1].split("//")[0].split("/*")[0].strip():
        doc_lines.insert(0, comments[ln])
        ln -= 1
    doc = _clean_doc("\n".join(doc_lines).splitlines()) if doc_lines else ""
    cls = ".".join(s for k, s, _ in scopes if k in ("class", "struct", "union") and s)
    calls = sorted(
        {c for c in _CALL.findall(body) if c not in KEYWORDS and c != name and not (c.isupper() and len(c) > 1)}
    )
    text = "".join(src_lines[start_line - 1 : end_line])
    return unit_cls(
        repo=repo,
        path=wire_path,
        start_line=start_line,
        end_line=end_line,
        name=name,
        qualname=f"{cls}.{name}" if cls else name,
        cls=cls,
        package=package,
        module=module,
        language="cpp",
        text=text,
        doc=doc,
        params=tuple(params),
        calls=tuple(calls),
        decorators=(),
        is_stub=False,
    )
