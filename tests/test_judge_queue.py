"""Judging queue and Label Studio round trip (lens_core.judge.queue) on small synthetic frames."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from lens_core.judge.queue import (
    NO_CODE,
    import_label_studio,
    judging_queue,
    label_studio_config,
    to_label_studio_tasks,
    write_trec_qrels,
)

SPAN = ["qid", "repo", "path", "start_line", "end_line"]


def _pool() -> pl.DataFrame:
    rows = [  # qid, path, start, end, systems, best_rank
        ("q1", "a.py", 1, 9, ["s1"], 3),
        ("q1", "b.py", 1, 9, ["s1", "s2"], 3),  # same best rank, more systems: first
        ("q1", "c.py", 5, 7, ["s2"], 1),  # best rank: very first
        ("q1", "d.py", 1, 2, ["s1", "s2", "s3"], 8),
        ("q1", "e.py", 1, 2, ["s3"], 2),  # judged below: never queued
        ("q2", "a.py", 1, 9, ["s1"], 1),
        ("q2", "z.py", 1, 9, ["s1"], 1),  # tie with q2 a.py: path breaks it
        ("q2", "y.py", 3, 4, ["s1", "s2"], 5),
    ]
    return pl.DataFrame(
        [
            {"qid": q, "repo": "r", "path": p, "start_line": s, "end_line": e, "systems": sy, "best_rank": b}
            for q, p, s, e, sy, b in rows
        ]
    ).with_columns(pl.col("start_line", "end_line", "best_rank").cast(pl.Int32))


LABELS = pl.DataFrame(
    {
        "qid": ["q1", "q2"],
        "repo": ["r", "r"],
        "path": ["e.py", "y.py"],
        "start_line": [1, 3],
        "end_line": [2, 99],  # q2 y.py: other lines, not a label of 3-4
        "rel": [2, 0],
        "source": ["human:a", "human:a"],
    }
)  # Int64 lines on purpose
QUERIES = pl.DataFrame({"qid": ["q1", "q2"], "text": ["parse a date", "open a socket"]})


def _order(q: pl.DataFrame) -> list[tuple[str, str]]:
    return list(zip(q["qid"], q["path"]))


def test_queue_is_trec_pooling_order_unjudged_only_with_priorities():
    q = judging_queue(_pool(), LABELS, QUERIES, cap_per_query=10)
    assert q.columns == [
        "qid",
        "query",
        "repo",
        "path",
        "start_line",
        "end_line",
        "best_rank",
        "n_systems",
        "priority",
        "code",
    ]
    assert _order(q) == [
        ("q1", "c.py"),
        ("q2", "a.py"),
        ("q2", "z.py"),
        ("q1", "b.py"),
        ("q1", "a.py"),
        ("q2", "y.py"),
        ("q1", "d.py"),
    ]
    assert q["priority"].to_list() == list(range(1, 8))
    assert q["n_systems"].to_list() == [1, 1, 1, 2, 1, 2, 3]
    assert q["query"].to_list()[:2] == ["parse a date", "open a socket"]
    assert q["code"].null_count() == q.height
    assert ("q1", "e.py") not in _order(q)


def test_queue_cap_keeps_the_best_per_query():
    q = judging_queue(_pool(), LABELS, QUERIES, cap_per_query=2)
    assert _order(q) == [("q1", "c.py"), ("q2", "a.py"), ("q2", "z.py"), ("q1", "b.py")]
    assert q["priority"].to_list() == [1, 2, 3, 4]
    assert q.group_by("qid").len()["len"].max() == 2
    with pytest.raises(ValueError, match="cap_per_query"):
        judging_queue(_pool(), LABELS, QUERIES, cap_per_query=0)


def test_queue_without_labels_and_with_n_systems_column_and_reader():
    pool = _pool().with_columns(pl.col("systems").list.len().alias("n_systems")).drop("systems")
    seen = []

    def reader(repo, path, start, end):
        seen.append((repo, path, start, end))
        return None if path == "d.py" else f"# {path} {start}-{end}"

    q = judging_queue(pool, None, QUERIES.filter(pl.col("qid") == "q1"), cap_per_query=10, source_reader=reader)
    assert q.height == 8 and len(seen) == 8
    assert dict(zip(q["path"].filter(q["qid"] == "q1"), q["code"].filter(q["qid"] == "q1"))) == {
        "c.py": "# c.py 5-7",
        "e.py": "# e.py 1-2",
        "b.py": "# b.py 1-9",
        "a.py": "# a.py 1-9",
        "d.py": None,
    }
    assert q.filter(pl.col("qid") == "q2")["query"].null_count() == 3  # no query text known
    empty = LABELS.clear()
    assert judging_queue(pool, empty, QUERIES, cap_per_query=10).height == 8


def test_label_studio_config_is_graded_choices_over_query_and_code():
    root = ET.fromstring(label_studio_config())
    texts = {t.get("name"): t.get("value") for t in root.iter("Text")}
    assert texts == {"query": "$query", "code": "$code"}
    (choices,) = root.iter("Choices")
    assert (choices.get("name"), choices.get("toName"), choices.get("required")) == ("rel", "code", "true")
    assert [c.get("alias") for c in choices] == ["0", "1", "2", "3"]
    assert all(c.get("value").startswith(f"{c.get('alias')} - ") for c in choices)
    assert [c.get("alias") for c in ET.fromstring(label_studio_config((0, 1))).iter("Choice")] == ["0", "1"]


def _tasks():
    q = judging_queue(
        _pool(), LABELS, QUERIES, cap_per_query=2, source_reader=lambda r, p, s, e: None if p == "z.py" else f"code {p}"
    )
    return to_label_studio_tasks(q)


def _ann(aid, choice, by, cancelled=False):
    result = (
        []
        if choice is None
        else [{"from_name": "rel", "to_name": "code", "type": "choices", "value": {"choices": list(choice)}}]
    )
    return {"id": aid, "completed_by": by, "result": result, "was_cancelled": cancelled}


def _export(annotations: dict[int, list[dict]]) -> list[dict]:
    """A Label Studio JSON export of _tasks(): task ids 1.. in order, annotations by task id."""
    return [
        {"id": i, "data": t["data"], "annotations": annotations.get(i, [])} for i, t in enumerate(_tasks(), start=1)
    ]


def test_tasks_carry_docno_code_and_span():
    tasks = _tasks()
    assert [t["data"]["docno"] for t in tasks] == ["r:c.py:5-7", "r:a.py:1-9", "r:z.py:1-9", "r:b.py:1-9"]
    first = tasks[0]["data"]
    assert first | {"code": None} == {
        "qid": "q1",
        "query": "parse a date",
        "docno": "r:c.py:5-7",
        "code": None,
        "repo": "r",
        "path": "c.py",
        "start_line": 5,
        "end_line": 7,
        "priority": 1,
        "best_rank": 1,
        "n_systems": 1,
    }
    assert first["code"] == "code c.py" and tasks[2]["data"]["code"] == NO_CODE
    json.dumps(tasks)  # importable as is


def test_round_trip_tasks_annotations_qrels(tmp_path):
    alice = {"id": 1, "email": "alice@example.com", "first_name": "", "last_name": ""}
    export = _export(
        {
            1: [_ann(11, ["3"], alice), _ann(12, ["0"], 2)],  # two judges of one span
            2: [_ann(21, ["1 - Weak match"], alice)],  # choice by name, not alias
            3: [_ann(31, None, alice, cancelled=True)],  # skipped: no label
            4: [_ann(41, ["2"], alice), _ann(42, ["2"], alice)],  # same label twice: once
        }
    )
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    qrels = import_label_studio(path, grades=(0, 1, 2, 3))
    assert qrels.columns == SPAN + ["rel", "source"]
    assert qrels.schema["rel"] == pl.Int32 and qrels.schema["start_line"] == pl.Int32
    assert qrels.rows() == [
        ("q1", "r", "b.py", 1, 9, 2, "human:alice@example.com"),
        ("q1", "r", "c.py", 5, 7, 0, "human:2"),
        ("q1", "r", "c.py", 5, 7, 3, "human:alice@example.com"),
        ("q2", "r", "a.py", 1, 9, 1, "human:alice@example.com"),
    ]
    assert import_label_studio(export, grades=(0, 1, 2, 3)).equals(qrels)
    # the judged spans leave the queue
    left = judging_queue(_pool(), pl.concat([LABELS, qrels], how="vertical_relaxed"), QUERIES, cap_per_query=10)
    assert not left.join(qrels, on=SPAN, how="semi").height
    assert left.height == 7 - 3
    n = write_trec_qrels(qrels, tmp_path / "human.qrels")
    assert n == 4 and (tmp_path / "human.qrels").read_text().splitlines() == [
        "q1 0 r:b.py:1-9 2",
        "q1 0 r:c.py:5-7 0",
        "q1 0 r:c.py:5-7 3",
        "q2 0 r:a.py:1-9 1",
    ]


def test_import_maps_back_by_docno_when_span_fields_are_gone():
    export = _export({2: [_ann(21, ["2"], 5)]})
    export[1]["data"] = {"qid": "q2", "docno": "org/repo:src/x.py:10-12"}
    assert import_label_studio(export, grades=(0, 1, 2, 3)).rows() == [
        ("q2", "org/repo", "src/x.py", 10, 12, 2, "human:5")
    ]


@pytest.mark.parametrize(
    "annotations, grades, message",
    [
        ({3: [_ann(31, ["5"], 1)]}, (0, 1, 2, 3), r"^task 3 annotation 31: label '5' outside grades"),
        ({3: [_ann(31, ["3"], 1)]}, (0, 1, 2), r"^task 3 annotation 31: label '3' outside grades \(0, 1, 2\)"),
        ({3: [_ann(31, ["Exact"], 1)]}, (0, 1, 2, 3), r"^task 3 annotation 31: label 'Exact' outside"),
        ({3: [_ann(31, None, 1)]}, (0, 1, 2, 3), r"^task 3 annotation 31: expected one relevance choice, got 0"),
        ({3: [_ann(31, ["1", "2"], 1)]}, (0, 1, 2, 3), r"^task 3 annotation 31: expected one relevance choice, got 2"),
        ({3: [_ann(31, ["1"], 1), _ann(32, ["2"], 1)]}, (0, 1, 2, 3), r"^task 3: conflicting labels by human:1 for q2"),
    ],
)
def test_import_refuses_bad_annotations_naming_the_task(annotations, grades, message):
    with pytest.raises(ValueError, match=message) as err:
        import_label_studio(_export(annotations), grades=grades)
    assert "\n" not in str(err.value)


def test_import_refuses_conflicts_across_tasks_and_bad_shapes():
    export = _export({1: [_ann(11, ["1"], 1)]})
    export.append({"id": 9, "data": export[0]["data"], "annotations": [_ann(91, ["3"], 1)]})
    with pytest.raises(ValueError, match=r"^task 1, 9: conflicting labels by human:1 for q1 r:c.py:5-7"):
        import_label_studio(export, grades=(0, 1, 2, 3))
    export[-1]["annotations"][0]["completed_by"] = 2  # another judge may disagree
    assert import_label_studio(export, grades=(0, 1, 2, 3))["rel"].to_list() == [1, 3]
    with pytest.raises(ValueError, match="JSON list of tasks"):
        import_label_studio({"tasks": []}, grades=(0, 1, 2, 3))
    with pytest.raises(ValueError, match=r"^task 4: no data.qid"):
        import_label_studio([{"id": 4, "data": {}, "annotations": [_ann(1, ["1"], 1)]}], grades=(0, 1))
    with pytest.raises(ValueError, match=r"^task 4: neither span fields nor a docno"):
        import_label_studio(
            [{"id": 4, "data": {"qid": "q", "docno": "nope"}, "annotations": [_ann(1, ["1"], 1)]}], grades=(0, 1)
        )
    assert import_label_studio(_export({}), grades=(0, 1)).height == 0  # nothing judged yet


def test_write_trec_qrels_refuses_whitespace(tmp_path):
    bad = pl.DataFrame(
        {
            "qid": ["q1"],
            "repo": ["r"],
            "path": ["my file.py"],
            "start_line": [1],
            "end_line": [2],
            "rel": [1],
            "source": ["human:a"],
        }
    )
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_qrels(bad, tmp_path / "x.qrels")
    assert not (tmp_path / "x.qrels").exists()


def test_span_reader_reads_spans_of_a_checkout_once_per_file_and_never_outside_it(tmp_path, monkeypatch):
    from lens_core.judge.queue import span_reader

    root = tmp_path / "stdlib"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "m.py").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    (tmp_path / "secret.py").write_text("nope\n")
    reads: list[Path] = []
    real = Path.read_text

    def counting(self, *a, **k):
        reads.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", counting)
    read = span_reader({"cpython": (root, "Lib")}, max_lines=3)
    assert read("cpython", "Lib/pkg/m.py", 2, 3) == "line 2\nline 3"
    assert read("cpython", "Lib/pkg/m.py", 4, 9) == "line 4\nline 5\nline 6\n... (3 more lines)"
    assert len(reads) == 1  # two spans of one file: one read
    assert read("cpython", "Lib/../secret.py", 1, 1) is None  # outside the checkout
    assert read("cpython", "Other/pkg/m.py", 1, 1) is None  # not under the repo's prefix
    assert read("arrow", "Lib/pkg/m.py", 1, 1) is None  # unknown repo
    assert read("cpython", "Lib/pkg/m.py", 11, 12) is None  # past the end of the file
    assert read("cpython", "Lib/pkg/missing.py", 1, 1) is None
