"""Judging queue and the Label Studio round trip (issue 16: pooled judgments).

The queue lists the pool members that carry no explicit label yet, in the order the TREC
pooling method judges them: best (minimum) rank over the systems first, then the number of
systems that retrieved the span (more first), then qid/repo/path/start/end as the
deterministic tie-break; at most `cap_per_query` per query. `priority` is the 1-based place in
the whole queue, so a judge who stops early has judged the most pool-critical spans of every
query first.

Label Studio: `label_studio_config()` is the labelling interface (query, span, code, one
graded relevance choice), `to_label_studio_tasks()` turns the queue into importable tasks and
`import_label_studio()` reads the standard JSON export back into qrels rows with
`source = "human:<annotator>"`. `write_trec_qrels()` writes TREC qrels lines with spans,
`qid 0 repo:path:start-end rel`.

Pure functions: polars and the standard library only (no dagster).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path
from xml.sax.saxutils import quoteattr

import polars as pl

from lens_core.common.hashing import atomic_path, atomic_write_text

SPAN_KEYS = ["qid", "repo", "path", "start_line", "end_line"]
QUEUE_COLUMNS = ["qid", "query", "repo", "path", "start_line", "end_line", "best_rank", "n_systems", "priority", "code"]
QRELS_COLUMNS = SPAN_KEYS + ["rel", "source"]
DEFAULT_GRADES = (0, 1, 2, 3)
# CodeSearchNet's four relevance grades.
GRADE_NAMES = {0: "Irrelevant", 1: "Weak match", 2: "Strong match", 3: "Exact match"}
FROM_NAME, TO_NAME = "rel", "code"  # the Choices control and the object it labels
NO_CODE = "(source not available)"
_DOCNO = re.compile(r"^(?P<repo>[^:\s]+):(?P<path>\S+):(?P<start_line>\d+)-(?P<end_line>\d+)$")

SourceReader = Callable[[str, str, int, int], "str | None"]


def _spans(df: pl.DataFrame) -> pl.DataFrame:
    """Cast the span key columns to the canonical dtypes (so joins never fail on Int64 vs Int32)."""
    return df.with_columns(pl.col("qid", "repo", "path").cast(pl.Utf8), pl.col("start_line", "end_line").cast(pl.Int32))


def docno(repo: str = "repo", path: str = "path", start: str = "start_line", end: str = "end_line") -> pl.Expr:
    """Expression for the span's document id `repo:path:start-end` (the TREC qrels docno)."""
    return pl.format("{}:{}:{}-{}", pl.col(repo), pl.col(path), pl.col(start), pl.col(end)).alias("docno")


def judging_queue(
    pool: pl.DataFrame,
    labels: pl.DataFrame | None,
    queries: pl.DataFrame,
    *,
    cap_per_query: int,
    source_reader: SourceReader | None = None,
) -> pl.DataFrame:
    """Unjudged pool members in TREC pooling order, at most `cap_per_query` per query.

    pool: pool.parquet rows (qid, repo, path, start_line, end_line, best_rank and either
    `systems`, the list of systems that retrieved the span, or `n_systems`). labels: qrels rows
    (explicit labels only); a member with a non-null rel there is judged and left out.
    queries: qid, text. source_reader(repo, path, start, end) -> str | None fills `code`.
    Columns: qid, query, repo, path, start_line, end_line, best_rank, n_systems, priority, code.
    """
    if cap_per_query < 1:
        raise ValueError(f"cap_per_query must be >= 1, got {cap_per_query}")
    n_sys = pl.col("systems").list.len() if "systems" in pool.columns else pl.col("n_systems")
    members = _spans(pool).select(
        *SPAN_KEYS, pl.col("best_rank").cast(pl.Int32), n_sys.cast(pl.Int32).alias("n_systems")
    )
    if labels is not None and labels.height:
        judged = _spans(labels.filter(pl.col("rel").is_not_null()).select(SPAN_KEYS)).unique()
        members = members.join(judged, on=SPAN_KEYS, how="anti")
    text = queries.select(pl.col("qid").cast(pl.Utf8), pl.col("text").cast(pl.Utf8).alias("query")).unique("qid")
    queue = (
        members.sort(["best_rank", "n_systems", *SPAN_KEYS], descending=[False, True] + [False] * 5)
        .filter(pl.int_range(pl.len()).over("qid") < cap_per_query)
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("priority"))
        .join(text, on="qid", how="left", maintain_order="left")
    )
    code = [None] * queue.height
    if source_reader is not None:
        code = [
            source_reader(r, p, s, e)
            for r, p, s, e in queue.select("repo", "path", "start_line", "end_line").iter_rows()
        ]
    return queue.with_columns(pl.Series("code", code, dtype=pl.Utf8)).select(QUEUE_COLUMNS)


def label_studio_config(grades: Iterable[int] = DEFAULT_GRADES) -> str:
    """Label Studio labelling config: the query, the span and its code, one required graded choice.

    Each grade is a Choice named like "2 - Strong match" whose `alias` is the bare grade, so
    an annotation's result carries {"choices": ["2"]}.
    """
    names = {g: f"{g} - {GRADE_NAMES.get(g, 'grade')}" for g in grades}
    choices = "\n".join(f'    <Choice value={quoteattr(n)} alias="{g}" hotkey="{g}"/>' for g, n in names.items())
    return f"""<View>
  <Header value="Query $qid"/>
  <Text name="query" value="$query"/>
  <Header value="$docno" size="5"/>
  <View style="font-family: monospace; white-space: pre; overflow-x: auto; border: 1px solid #ccc; padding: 8px">
    <Text name="{TO_NAME}" value="$code" granularity="symbol"/>
  </View>
  <Header value="How relevant is this code to the query?" size="5"/>
  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" required="true" showInline="true">
{choices}
  </Choices>
</View>
"""


def to_label_studio_tasks(queue: pl.DataFrame) -> list[dict]:
    """Label Studio import tasks, one per queue row, in priority order.

    `data` holds qid, query, docno, code (a placeholder when the source was not read) and the
    span fields (repo, path, start_line, end_line) plus priority/best_rank/n_systems, so an
    export maps back to qrels without parsing the docno.
    """
    rows = queue.sort("priority").with_columns(
        docno(), pl.col("code").fill_null(NO_CODE), pl.col("query").fill_null("")
    )
    keep = [
        "qid",
        "query",
        "docno",
        "code",
        "repo",
        "path",
        "start_line",
        "end_line",
        "priority",
        "best_rank",
        "n_systems",
    ]
    return [{"data": d} for d in rows.select(keep).to_dicts()]


def _annotator(completed_by) -> str:
    """`completed_by` of an export: a user id, or a user dict (email preferred, else id)."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return str(completed_by)


def _span_of(task: dict, tid) -> dict:
    """The span a task stands for: its data's span fields, else its parsed docno."""
    data = task.get("data")
    if not isinstance(data, dict) or data.get("qid") is None:
        raise ValueError(f"task {tid}: no data.qid")
    if all(data.get(k) is not None for k in SPAN_KEYS[1:]):
        span = {k: data[k] for k in SPAN_KEYS}
    else:
        m = _DOCNO.match(str(data.get("docno", "")))
        if not m:
            raise ValueError(f"task {tid}: neither span fields nor a docno repo:path:start-end in data")
        span = {"qid": data["qid"], **m.groupdict()}
    try:
        return {
            "qid": str(span["qid"]),
            "repo": str(span["repo"]),
            "path": str(span["path"]),
            "start_line": int(span["start_line"]),
            "end_line": int(span["end_line"]),
        }
    except (TypeError, ValueError):
        raise ValueError(f"task {tid}: span lines are not integers") from None


def _grade(annotation: dict, tid, grades: tuple[int, ...]) -> int:
    """The one relevance grade of an annotation (alias "2" or value "2 - Strong match")."""
    picked = [
        c
        for r in annotation.get("result") or []
        if isinstance(r, dict) and r.get("type") == "choices"
        for c in (r.get("value") or {}).get("choices") or []
    ]
    aid = annotation.get("id")
    if len(picked) != 1:
        raise ValueError(f"task {tid} annotation {aid}: expected one relevance choice, got {len(picked)}")
    m = re.match(r"^\s*(-?\d+)\b", str(picked[0]))
    if not m or int(m.group(1)) not in grades:
        raise ValueError(f"task {tid} annotation {aid}: label {picked[0]!r} outside grades {grades}")
    return int(m.group(1))


def import_label_studio(export: list[dict] | str | PathLike, *, grades: Iterable[int] = DEFAULT_GRADES) -> pl.DataFrame:
    """qrels rows (qid, repo, path, start_line, end_line, rel, source) from a Label Studio JSON export.

    export: the export's task list, or the path of its JSON file. Every non-cancelled
    annotation gives one row with source "human:<annotator>". Tasks without annotations are
    skipped. Raises ValueError (one line, naming the task id) on a label outside `grades`, an
    annotation without exactly one choice, a task without a span, or one annotator giving
    different labels to the same span; the same label twice is kept once.
    """
    grades = tuple(int(g) for g in grades)
    if isinstance(export, (str, PathLike)):
        export = json.loads(Path(export).read_text())
    if not isinstance(export, list):
        raise ValueError(f"Label Studio export must be a JSON list of tasks, got {type(export).__name__}")  # noqa: TRY004
    rows = []
    for i, task in enumerate(export):
        if not isinstance(task, dict):
            raise ValueError(f"task #{i}: not a JSON object")  # noqa: TRY004
        tid = task.get("id", f"#{i}")
        anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not anns:
            continue
        span = _span_of(task, tid)
        rows += [
            {
                **span,
                "rel": _grade(a, tid, grades),
                "source": f"human:{_annotator(a.get('completed_by'))}",
                "task": str(tid),
            }
            for a in anns
        ]
    schema = {
        "qid": pl.Utf8,
        "repo": pl.Utf8,
        "path": pl.Utf8,
        "start_line": pl.Int32,
        "end_line": pl.Int32,
        "rel": pl.Int32,
        "source": pl.Utf8,
        "task": pl.Utf8,
    }
    qrels = pl.DataFrame(rows, schema=schema)
    clash = (
        qrels.group_by(SPAN_KEYS + ["source"])
        .agg(pl.col("rel").n_unique().alias("n"), pl.col("task").unique().sort())
        .filter(pl.col("n") > 1)
        .sort(SPAN_KEYS + ["source"])
    )
    if clash.height:
        c = clash.row(0, named=True)
        raise ValueError(
            f"task {', '.join(c['task'])}: conflicting labels by {c['source']} for "
            f"{c['qid']} {c['repo']}:{c['path']}:{c['start_line']}-{c['end_line']}"
        )
    return qrels.select(QRELS_COLUMNS).unique().sort(SPAN_KEYS + ["source"])


def write_trec_qrels(qrels: pl.DataFrame, path: str | PathLike) -> int:
    """Write `qid 0 repo:path:start-end rel` lines (sorted by span); returns the line count.

    Every row becomes a line (two annotators of one span give two lines). Raises ValueError
    when a qid or docno has whitespace, which TREC's whitespace-split lines cannot hold.
    """
    lines = (
        _spans(qrels)
        .sort(SPAN_KEYS)
        .select(
            pl.format("{} 0 {} {}", pl.col("qid"), docno(), pl.col("rel").cast(pl.Int32)).alias("line"),
            (pl.col("qid").str.contains(r"\s") | docno().str.contains(r"\s")).alias("bad"),
        )
    )
    if lines["bad"].any():
        raise ValueError(f"qrels line {lines.filter('bad')['line'][0]!r}: whitespace in qid or docno")
    Path(path).write_text("".join(f"{s}\n" for s in lines["line"]))
    return lines.height


def span_reader(roots: dict[str, tuple[Path, str]], max_lines: int = 200) -> SourceReader:
    """A source reader over local checkouts: `roots[repo] = (root, prefix)`; the span's path is
    `prefix/relative path` and its file `root/relative path`; lines start..end (at most
    `max_lines`, the rest elided). None when the repo, the file or the lines are not there."""

    @functools.lru_cache(maxsize=256)
    def lines_of(f: Path) -> list[str] | None:  # a queue holds many spans of the same file: read it once
        try:
            return f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None

    def read(repo: str, path: str, start: int, end: int) -> str | None:
        if repo not in roots:
            return None
        root, prefix = roots[repo]
        if prefix:
            if not path.startswith(prefix.rstrip("/") + "/"):
                return None
            path = path[len(prefix.rstrip("/")) + 1 :]
        f = (Path(root) / path).resolve()
        if Path(root).resolve() not in f.parents or not f.is_file():  # never outside the checkout
            return None
        lines = lines_of(f)
        if lines is None or start < 1 or start > len(lines):
            return None
        body = lines[start - 1 : min(end, start - 1 + max_lines)]
        more = end - start + 1 - len(body)
        return "\n".join(body) + (f"\n... ({more} more lines)" if more > 0 else "")

    return read


def export_queue(
    queue: pl.DataFrame, out_dir: str | PathLike, grades: Iterable[int] = DEFAULT_GRADES
) -> dict[str, Path]:
    """Write the queue as `queue.parquet`, Label Studio `tasks.json` and `label_config.xml`
    into `out_dir` (each file atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"queue": out / "queue.parquet", "tasks": out / "tasks.json", "config": out / "label_config.xml"}
    with atomic_path(paths["queue"]) as tmp:
        queue.write_parquet(tmp)
    atomic_write_text(paths["tasks"], json.dumps(to_label_studio_tasks(queue), indent=1, ensure_ascii=False))
    atomic_write_text(paths["config"], label_studio_config(tuple(grades)))
    return paths
