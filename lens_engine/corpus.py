"""The reference engine's corpus: functions of source code every machine with the project has.

Languages (env `LENS_CORPUS_LANGUAGES`, default `python,cpp`; `lens_engine corpus` lists what
was found):
- `python`: the running interpreter's standard library, repo `cpython`, path
  `Lib/<path relative to the stdlib root>` (always present);
- `cpp`: the Apache Arrow C++ headers that ship inside the `pyarrow` wheel (a dependency of the
  project, so present wherever it is installed), repo `arrow`, path `cpp/src/arrow/<path>` as in
  the Arrow repository; parsed by `lens_engine.cpp_units` (declarations and inline
  definitions, with their Doxygen comments as docstrings). Skipped, with a log line, when
  pyarrow has no headers.
Other roots (the `roots` argument) keep their directory name as repo. Test folders (`test/`,
`tests/`, `idle_test/`, `testing/`), vendored third-party code, `site-packages` and
`__pycache__` are excluded unless `include_tests=True` (vendored code always).

A unit is a module-level function or a method of a (possibly nested) class, found with `ast`;
functions nested inside functions stay part of their parent. Its span covers the `def`
including decorators (inclusive, 1-based). The indexed text is the unit's source with its own
docstring removed, so natural-language queries built from docstrings are not trivially
matched.

The manifest lists (repo, path, sha256 of the file bytes) of every included file; the digest
is the sha256 of its canonical JSON, so it pins the exact versions (Python and pyarrow) a run
indexed. `max_functions` keeps whole top-level packages (a C++ package is `arrow.<first
directory>`), chosen in a seeded hash order per language, within each language's share of the
cap (`LANGUAGE_SHARES`: Python 75%, C++ 25%), so the package split of the suites stays clean.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import sysconfig
import time
from pathlib import Path
from typing import Iterable, Sequence

from lens_core.common.hashing import atomic_write_text, canonical_json, sha256_hex
from lens_engine.cpp_units import units_of_cpp

log = logging.getLogger(__name__)

CORPUS_VERSION = "2"
DEFAULT_MAX_FUNCTIONS = 4200  # the smallest default with >= 200 hard-NL and >= 500 NL test queries
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "testing", "__pycache__", "site-packages", "vendored"})
ALWAYS_EXCLUDED = frozenset({"__pycache__", "site-packages", "vendored"})
LANGUAGES = ("python", "cpp")
LANGUAGE_SHARES = {"python": 0.75, "cpp": 0.25}
SUFFIXES = {"python": (".py",), "cpp": (".h", ".hpp", ".hh", ".cc", ".cpp")}


@dataclasses.dataclass(frozen=True)
class Unit:
    repo: str
    path: str
    start_line: int
    end_line: int
    name: str
    qualname: str
    cls: str  # enclosing class qualname, "" for module-level functions
    package: str  # top-level package (or module) name
    module: str  # dotted module name
    language: str
    text: str  # source with the docstring removed (what is indexed)
    doc: str  # the docstring (cleaned), "" if none; never indexed
    params: tuple[str, ...]
    calls: tuple[str, ...]
    decorators: tuple[str, ...]
    is_stub: bool


@dataclasses.dataclass
class Corpus:
    units: list[Unit]
    manifest: list[tuple[str, str, str]]  # (repo, path, sha256)
    packages: list[str]
    files: int

    @property
    def digest(self) -> str:
        return manifest_digest(self.manifest)

    def __len__(self) -> int:
        return len(self.units)

    def languages(self) -> dict[str, dict[str, int]]:
        """{language: {"files": n, "functions": n, "packages": n}} of what the corpus holds."""
        out: dict[str, dict[str, object]] = {}
        for u in self.units:
            d = out.setdefault(u.language, {"files": set(), "functions": 0, "packages": set()})
            d["files"].add(u.path)
            d["functions"] += 1
            d["packages"].add(u.package)
        return {
            lang: {"files": len(d["files"]), "functions": d["functions"], "packages": len(d["packages"])}
            for lang, d in sorted(out.items())
        }


def manifest_digest(manifest: Sequence[tuple[str, str, str]]) -> str:
    rows = [list(r) for r in sorted(manifest)]
    return sha256_hex(canonical_json({"version": CORPUS_VERSION, "files": rows}).encode())


def env_languages() -> list[str]:
    raw = os.environ.get("LENS_CORPUS_LANGUAGES", "").strip()
    if not raw:
        return list(LANGUAGES)
    langs = [x.strip().lower() for x in raw.split(",") if x.strip()]
    bad = [x for x in langs if x not in LANGUAGES]
    if bad or not langs:
        raise ValueError(f"LENS_CORPUS_LANGUAGES={raw!r}: expected a comma-separated subset of {', '.join(LANGUAGES)}")
    return langs


def arrow_include_dir() -> Path | None:
    """The Arrow C++ headers shipped in the pyarrow wheel, when present."""
    try:
        import pyarrow
    except ImportError:
        return None
    d = Path(pyarrow.get_include()) / "arrow"
    return d if d.is_dir() else None


def default_roots(languages: Sequence[str] | None = None) -> list[tuple[str, Path, str, str]]:
    """(repo, root dir, path prefix, language) of every language found on this machine."""
    languages = env_languages() if languages is None else list(languages)
    roots: list[tuple[str, Path, str, str]] = []
    if "python" in languages:
        roots.append(("cpython", Path(sysconfig.get_paths()["stdlib"]), "Lib", "python"))
    if "cpp" in languages:
        arrow = arrow_include_dir()
        if arrow is None:
            log.warning("corpus: no Arrow C++ headers in pyarrow; the C++ part of the corpus is skipped")
        else:
            roots.append(("arrow", arrow, "cpp/src/arrow", "cpp"))
    if not roots:
        raise ValueError("corpus: no source root found for languages " + ", ".join(languages))
    return roots


def _excluded(rel: Path, include_tests: bool) -> bool:
    dirs = rel.parts[:-1]
    bad = ALWAYS_EXCLUDED if include_tests else EXCLUDED_DIRS
    # `config-3.x-<platform>` holds the build's platform config, not library code.
    return any(d in bad or d.startswith("config-") for d in dirs)


def _iter_files(roots: Sequence[tuple[str, Path, str, str]], include_tests: bool):
    for repo, root, prefix, language in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"corpus root {root} is not a directory")
        suffixes = SUFFIXES[language]
        bad = ALWAYS_EXCLUDED if include_tests else EXCLUDED_DIRS
        found: list[tuple[str, ...]] = []
        # os.walk pruning excluded folders (the stdlib root holds site-packages); sorted by path
        # parts, the order pathlib sorts in, which fixes the unit order the index relies on
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in bad and not d.startswith("config-")]
            base = Path(dirpath).relative_to(root).parts
            found.extend(base + (f,) for f in filenames if os.path.splitext(f)[1] in suffixes)
        for parts in sorted(found):
            rel = Path(*parts)
            p = root / rel
            if _excluded(rel, include_tests) or not p.is_file():
                continue
            yield repo, p, rel, (f"{prefix}/{rel.as_posix()}" if prefix else rel.as_posix()), language


def _package_of(rel: Path, language: str = "python") -> str:
    top = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    return top if language == "python" else f"arrow.{top}"


def _module_of(rel: Path, language: str = "python") -> str:
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if language == "python" else ".".join(["arrow"] + parts)


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_stub(body: list[ast.stmt]) -> bool:
    rest = body
    if (
        rest
        and isinstance(rest[0], ast.Expr)
        and isinstance(getattr(rest[0], "value", None), ast.Constant)
        and isinstance(rest[0].value.value, str)
    ):
        rest = rest[1:]
    if not rest:
        return True
    if len(rest) != 1:
        return False
    s = rest[0]
    if isinstance(s, ast.Pass):
        return True
    if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is Ellipsis:
        return True
    if isinstance(s, ast.Raise) and s.exc is not None:
        exc = s.exc.func if isinstance(s.exc, ast.Call) else s.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _strip_docstring(lines: list[bytes], start: int, end: int, doc_node: ast.expr | None) -> str:
    """Source lines start..end (1-based, inclusive) without the docstring expression."""
    seg = list(lines[start - 1 : end])
    if doc_node is not None:
        l0, c0 = doc_node.lineno, doc_node.col_offset
        l1, c1 = doc_node.end_lineno, doc_node.end_col_offset
        i0, i1 = l0 - start, l1 - start
        first, last = seg[i0], seg[i1]
        joined = first[:c0] + last[c1:]
        replacement = [] if not joined.strip() else [joined if joined.endswith(b"\n") else joined + b"\n"]
        seg[i0 : i1 + 1] = replacement
    return b"".join(seg).decode("utf-8", errors="replace")


def _units_of_file(repo: str, wire_path: str, rel: Path, data: bytes, language: str = "python") -> list[Unit]:
    if language == "cpp":
        return units_of_cpp(data, wire_path, rel, repo, _package_of(rel, language), _module_of(rel, language), Unit)
    try:
        tree = ast.parse(data, filename=wire_path)
    except (SyntaxError, ValueError) as e:
        log.warning("skipping %s: cannot parse (%s)", wire_path, e)
        return []
    lines = data.splitlines(keepends=True)
    package, module = _package_of(rel), _module_of(rel)
    out: list[Unit] = []

    def visit(body: Iterable[ast.stmt], cls: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{cls}.{node.name}" if cls else node.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                end = node.end_lineno or node.lineno
                doc_node = None
                if (
                    node.body
                    and isinstance(node.body[0], ast.Expr)
                    and isinstance(node.body[0].value, ast.Constant)
                    and isinstance(node.body[0].value.value, str)
                ):
                    doc_node = node.body[0].value
                doc = ast.get_docstring(node, clean=True) or ""
                a = node.args
                params = [x.arg for x in a.posonlyargs + a.args]
                if a.vararg:
                    params.append("*" + a.vararg.arg)
                params += [x.arg for x in a.kwonlyargs]
                if a.kwarg:
                    params.append("**" + a.kwarg.arg)
                calls = sorted({n for c in ast.walk(node) if isinstance(c, ast.Call) for n in [_call_name(c)] if n})
                out.append(
                    Unit(
                        repo=repo,
                        path=wire_path,
                        start_line=start,
                        end_line=end,
                        name=node.name,
                        qualname=f"{cls}.{node.name}" if cls else node.name,
                        cls=cls,
                        package=package,
                        module=module,
                        language=language,
                        text=_strip_docstring(lines, start, end, doc_node),
                        doc=doc,
                        params=tuple(params),
                        calls=tuple(calls),
                        decorators=tuple(sorted({n for d in node.decorator_list for n in [_decorator_name(d)] if n})),
                        is_stub=_is_stub(node.body),
                    )
                )

    visit(tree.body, "")
    return out


def _cache_file(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "lens_engine" / f"corpus-{key[:24]}.jsonl"


def _full_corpus(
    roots, include_tests: bool, cache_dir
) -> tuple[list[Unit], list[tuple[str, str, str]], dict[str, str]]:
    """Every unit of every included file, plus the manifest and file -> package map (cached by
    the full manifest's digest)."""
    manifest: list[tuple[str, str, str]] = []
    blobs: dict[str, tuple[str, Path, bytes, str]] = {}
    pkg_of_file: dict[str, str] = {}
    for repo, p, rel, wire_path, language in _iter_files(roots, include_tests):
        data = p.read_bytes()
        manifest.append((repo, wire_path, sha256_hex(data)))
        blobs[wire_path] = (repo, rel, data, language)
        pkg_of_file[wire_path] = _package_of(rel, language)
    key = sha256_hex(canonical_json({"v": CORPUS_VERSION, "manifest": manifest, "tests": include_tests}).encode())
    cache = _cache_file(cache_dir, key) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        units = [
            Unit(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(line).items()})
            for line in cache.read_text("utf-8").splitlines()
            if line
        ]
        return units, manifest, pkg_of_file
    t0 = time.monotonic()
    units = []
    for wire_path, (repo, rel, data, language) in blobs.items():
        units.extend(_units_of_file(repo, wire_path, rel, data, language))
    log.info("parsed %d files -> %d functions in %.1fs", len(blobs), len(units), time.monotonic() - t0)
    if cache is not None:
        atomic_write_text(cache, "".join(json.dumps(dataclasses.asdict(u), ensure_ascii=False) + "\n" for u in units))
    return units, manifest, pkg_of_file


def choose_packages(
    counts: dict[str, int], max_functions: int | None, seed: int = 0, language_of: dict[str, str] | None = None
) -> list[str]:
    """Whole packages in a seeded hash order, greedily while they fit under the cap; with
    `language_of` (package -> language), each language within its share of the cap
    (LANGUAGE_SHARES renormalised over the languages present)."""
    if max_functions is None or max_functions <= 0:
        return sorted(counts)
    langs = sorted(set((language_of or {}).values()))
    if len(langs) > 1:
        total_share = sum(LANGUAGE_SHARES.get(lang, 0.0) for lang in langs) or 1.0
        chosen = []
        for lang in langs:
            quota = int(round(max_functions * LANGUAGE_SHARES.get(lang, 0.0) / total_share))
            sub = {p: c for p, c in counts.items() if language_of.get(p) == lang}
            chosen += choose_packages(sub, quota, seed)
        return sorted(chosen)
    order = sorted(counts, key=lambda p: sha256_hex(f"lens-corpus:{seed}:{p}".encode()))
    chosen, total = [], 0
    for p in order:
        if total + counts[p] <= max_functions:
            chosen.append(p)
            total += counts[p]
    return sorted(chosen)


def env_max_functions() -> int | None:
    raw = os.environ.get("LENS_CORPUS_MAX_FUNCTIONS")
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_FUNCTIONS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"LENS_CORPUS_MAX_FUNCTIONS={raw!r}: expected an integer (0 = no cap)") from None
    return value if value > 0 else None


_UNSET = object()


def build_corpus(
    roots: Sequence[tuple] | None = None,
    max_functions=_UNSET,
    seed: int = 0,
    include_tests: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """The corpus (see the module docstring).

    `roots`: (repo, directory, path prefix[, language]) tuples; default `default_roots()`. `max_functions`: cap by whole packages; default from
    `LENS_CORPUS_MAX_FUNCTIONS` (default 4200; 0 = everything); None = no cap.
    `cache_dir`: where parsed units are cached by the digest of the full manifest.
    """
    if max_functions is _UNSET:
        max_functions = env_max_functions()
    roots = [(r[0], Path(r[1]), r[2], r[3] if len(r) > 3 else "python") for r in roots] if roots else default_roots()
    units, manifest, pkg_of_file = _full_corpus(roots, include_tests, cache_dir)
    counts: dict[str, int] = {}
    language_of: dict[str, str] = {}
    for u in units:
        counts[u.package] = counts.get(u.package, 0) + 1
        language_of[u.package] = u.language
    chosen = set(choose_packages(counts, max_functions, seed, language_of))
    keep_units = [u for u in units if u.package in chosen]
    keep_manifest = [m for m in manifest if pkg_of_file[m[1]] in chosen]
    return Corpus(units=keep_units, manifest=keep_manifest, packages=sorted(chosen), files=len(keep_manifest))
