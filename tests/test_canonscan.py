"""The C scanner of canonical raw-run lines (`lens_core.ingest._canonscan`, ingestion's first fast
tier): its values equal Python's json/float to the bit, it accepts nothing the RE2
certification would refuse, and whatever it accepts gives the exact path's tables."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

import lens_core.ingest.ndjson as ingest_mod
from lens_core.collect.rawruns import encode_record, write_raw_run
from lens_core.common.settings import load_config
from lens_core.common.systems import baseline
from lens_core.common.tables import SchemaError
from lens_core.ingest.ndjson import ingest
from lens_core.sim.simulator import Simulator

canonscan = pytest.importorskip(
    "lens_core.ingest._canonscan", reason="the C scanner is not built (no C compiler at install)"
)

NUM = ("obj", "r", [("x", ("num", "x", True))])
INT = ("obj", "r", [("x", ("int", "x", False))])
STR = ("obj", "r", [("s", ("str", "s", True))])


def _scan(spec, body: bytes):
    sc = canonscan.Scanner(spec)
    if not sc.feed(body):
        return None
    return {name: (typ, vals, data, valid) for name, typ, vals, data, valid in sc.finish()}


def _doubles(tokens: list[str]) -> np.ndarray | None:
    out = _scan(NUM, b"".join(b'{"x":' + t.encode() + b"}\n" for t in tokens))
    return None if out is None else np.frombuffer(out["x"][1], dtype=np.float64)


def _bits(values) -> list[int]:
    return [struct.unpack("<Q", struct.pack("<d", v))[0] for v in values]


def test_numbers_equal_python_float_to_the_bit():
    rng = random.Random(7)
    tokens = [
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1",
        "-1",
        "1e22",
        "1e23",
        "9007199254740993",
        "0.1",
        "0.3",
        "123456789012345",
        "1234567890123456789",
        "12345678901234567890123",
        "5e-324",
        "2.4703282292062328e-324",
        "2.2250738585072011e-308",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "4.9406564584124654e-324",
        "1E5",
        "1e+5",
        "1.5E-3",
        "100.204565",
        "0.000001",
        "3.0e0",
        "7.2057594037927933e16",
        "9.999999999999999e22",
        "1.00000000000000011102230246251565404236316680908203125",
    ]
    for _ in range(20_000):
        kind = rng.random()
        if kind < 0.5:
            tokens.append(repr(rng.uniform(-1e6, 1e6)))  # json.dumps writes floats with repr
        elif kind < 0.7:
            tokens.append(repr(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(62)))[0]))
        elif kind < 0.85:
            tokens.append(
                f"{rng.randint(0, 10 ** rng.randint(1, 19))}.{rng.randint(0, 10 ** rng.randint(1, 19))}"
                f"e{rng.randint(-30, 30)}"
            )
        else:
            tokens.append(str(rng.randint(-(10**18), 10**18)))
    tokens = [t for t in tokens if t not in ("nan", "inf", "-inf") and len(t) < 64]
    got = _doubles(tokens)
    assert got is not None
    assert _bits(got) == _bits(float(t) for t in tokens)


@pytest.mark.parametrize(
    "token",
    ["1e400", "-1e400", "01", "1.", ".5", "+1", "1e", "1.5e+", "NaN", "Infinity", "0x10", "1" * 70, "- 1", "1_000"],
)
def test_numbers_outside_the_grammar_or_a_double_are_declined(token):
    assert _doubles([token]) is None


def test_integers_are_int32_and_integer_tokens_only():
    out = _scan(INT, b'{"x":2147483647}\n{"x":-2147483648}\n{"x":0}\n{"x":-0}\n')
    assert np.frombuffer(out["x"][1], dtype=np.int32).tolist() == [2**31 - 1, -(2**31), 0, 0]
    for bad in (b"2147483648", b"-2147483649", b"1.0", b"1e2", b"null", b'"1"', b"true", b"12345678901"):
        assert _scan(INT, b'{"x":' + bad + b"}\n") is None, bad


def test_strings_equal_json_loads():
    rng = random.Random(11)
    alphabet = ["a", "Z", "/", " ", '"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "€", "\u2028", "😀", "𝄞"]
    values = ["", "plain", 'quote " and \\ backslash'] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(3000)
    ]
    lines = []
    for i, v in enumerate(values):
        lines.append(json.dumps({"s": v}, separators=(",", ":"), ensure_ascii=bool(i % 2)))
    lines.append('{"s":null}')
    lines.append('{"s":"\\u00e9\\/\\b\\f\\r\\ud834\\udd1e\\u0041"}')
    out = _scan(STR, ("\n".join(lines) + "\n").encode())
    assert out is not None
    _, offsets, data, valid = out["s"]
    off = np.frombuffer(offsets, dtype=np.int32)
    got = [data[off[i] : off[i + 1]].decode() for i in range(len(off) - 1)]
    want = [json.loads(line)["s"] for line in lines]
    assert np.frombuffer(valid, dtype=np.uint8).tolist() == [int(w is not None) for w in want]
    assert got == [w if w is not None else "" for w in want]


@pytest.mark.parametrize(
    "body",
    [
        b'{"s":"\\ud834"}',
        b'{"s":"\\udd1e"}',
        b'{"s":"\\ud834\\u0041"}',  # lone surrogates: no UTF-8 form
        b'{"s":"\\x41"}',
        b'{"s":"\\u00G1"}',
        b'{"s":"tab\there"}',
        b'{"s":"nl\\',
        b'{"s":"\xff"}',
        b'{"s":"\xc3"}',
        b'{"s":"\xe0\x80\x80"}',
        b'{"s":"\xed\xa0\x80"}',
        b'{"s":"\xf4\x90\x80\x80"}',  # not UTF-8
        b'{"s":abc}',
        b'{"s":"x" }',
        b'{ "s":"x"}',
        b'{"s":"x","t":1}',
        b'{"t":"x"}',
        b'{"s":"x"}\r',
        b"{}",
    ],
)
def test_strings_and_objects_outside_the_layout_are_declined(body):
    assert _scan(STR, body + b"\n") is None


def test_vocabularies_lists_and_nulls():
    spec = (
        "obj",
        "r",
        [
            ("w", ("flags", "w", ["lex", "struct", "sem"])),
            ("st", ("enum", "st", ["ok", "timeout"])),
            ("xs", ("list", "xs", ("obj", "xs", [("i", ("int", "xs.i", True))]))),
        ],
    )
    body = b'{"w":[],"st":"ok","xs":[]}\n{"w":["sem","lex","sem"],"st":"timeout","xs":[{"i":null},{"i":3}]}\n'
    out = _scan(spec, body)
    assert [np.frombuffer(out[f"w.{r}"][1], np.uint8).tolist() for r in ("lex", "struct", "sem")] == [
        [0, 1],
        [0, 0],
        [0, 1],
    ]
    assert out["st"][2] == b"oktimeout"
    assert np.frombuffer(out["xs"][1], np.int32).tolist() == [0, 2]
    assert np.frombuffer(out["xs.i"][1], np.int32).tolist() == [0, 3]
    assert np.frombuffer(out["xs.i"][3], np.uint8).tolist() == [0, 1]
    for bad in (
        b'{"w":["LEX"],"st":"ok","xs":[]}',
        b'{"w":["lex",],"st":"ok","xs":[]}',
        b'{"w":"lex","st":"ok","xs":[]}',
        b'{"w":[],"st":"cancelled","xs":[]}',
        b'{"w":[],"st":null,"xs":[]}',
        b'{"w":[],"st":"ok","xs":[{"i":1},]}',
        b'{"w":[],"st":"ok","xs":null}',
        b'{"w":[],"st":"ok","xs":[]}{"w":[],"st":"ok","xs":[]}',
    ):
        assert _scan(spec, bad + b"\n") is None, bad


def test_spec_errors_and_misuse_are_reported():
    with pytest.raises(ValueError, match="unknown kind"):
        canonscan.Scanner(("obj", "r", [("x", ("float", "x", False))]))
    with pytest.raises(ValueError, match="root must be an obj"):
        canonscan.Scanner(("str", "x", False))
    with pytest.raises(TypeError):
        canonscan.Scanner(("obj", "r", [("x",)]))
    sc = canonscan.Scanner(INT)
    assert not sc.feed(b'{"x":1.5}\n')
    assert not sc.feed(b'{"x":1}\n')  # a scanner that declined stays declined
    with pytest.raises(RuntimeError):
        sc.finish()


# ---------------------------------------------------------------------------------------------
# Against the contract: the generated spec, the RE2 certification and the exact path
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def records():
    cfg = load_config()
    sim = Simulator(cfg.sim.model_copy(update={"queries_per_suite": 3}), seed=5)
    return sim.run(baseline(cfg), "r1", sim.queries, 150.0, 10, 1.7e12)


def _exact_tables(monkeypatch, path):
    with monkeypatch.context() as m:
        m.setattr(ingest_mod, "_canonscan", None)
        m.setattr(ingest_mod, "_fast_scan", lambda path, fd: None)
        try:
            return ingest([path])
        except SchemaError as e:
            return str(e)


def _mutate(line: str, rng: random.Random) -> str:
    """One small edit: most keep the line valid JSON of the right types (a digit for a digit,
    a letter for a letter), the others break it somewhere."""
    i = rng.randrange(len(line))
    c = line[i]
    roll = rng.random()
    if roll < 0.35 and c.isdigit():
        return line[:i] + rng.choice("0123456789") + line[i + 1 :]
    if roll < 0.55 and c.isalpha():
        return line[:i] + rng.choice('abcXYZé\\u00e9\\"') + line[i + 1 :]
    if roll < 0.7:
        return line[:i] + line[i + 1 :]
    if roll < 0.85:
        return (
            line[:i] + rng.choice(['"', ",", ":", "{", "}", "[", "]", " ", "-", ".", "e", "0", "null", "\\"]) + line[i:]
        )
    return line[:i] + rng.choice(['"', ",", "1", "n", "]", "\t"]) + line[i + 1 :]


def test_fuzzed_files_give_the_exact_paths_tables_or_its_error(tmp_path, records, monkeypatch):
    """Random edits of canonical lines: whatever the scanner accepts, RE2 certifies too (the
    scanner accepts a subset), and ingestion gives the exact path's tables, or its error."""
    rng = random.Random(2026)
    base = [encode_record(r) for r in records[:4]]
    accepted = 0
    for k in range(150):
        lines = list(base)
        j = rng.randrange(len(lines))
        for _ in range(rng.randint(1, 2)):
            lines[j] = _mutate(lines[j], rng)
        body = "\n".join(lines) + "\n"
        p = tmp_path / f"f{k}.ndjson"
        p.write_text(body + json.dumps({"type": "done", "records": len(lines)}, separators=(",", ":")) + "\n")
        sc = canonscan.Scanner(ingest_mod._CANON_SPEC)
        if sc.feed(body.encode()):
            accepted += 1
            assert ingest_mod._certified(memoryview(body.encode())), lines[j]
        want = _exact_tables(monkeypatch, p)
        try:
            got = ingest([p])
        except SchemaError as e:
            got = str(e)
        if isinstance(want, str):
            assert got == want
        else:
            assert not isinstance(got, str), got
            assert got[0].equals(want[0]) and got[1].equals(want[1]), lines[j]
    assert 15 < accepted < 150  # the edits reach both sides of the scanner's verdict


def test_a_file_the_scanner_declines_goes_to_duckdb_then_gives_the_same_tables(tmp_path, records, monkeypatch):
    """A number token longer than the scanner's 63 bytes is still canonical JSON: the scanner
    declines, RE2 certifies, DuckDB's tier parses it; the tables are the exact path's."""
    recs = json.loads(json.dumps(records[:3]))
    path = Path(write_raw_run(tmp_path / "long_number.ndjson", recs)["path"])
    lines = path.read_text().split("\n")  # the second record: the first line is canonical for both tiers
    assert '"sla_ms":150.0,' in lines[1]
    lines[1] = lines[1].replace('"sla_ms":150.0,', '"sla_ms":150.' + "0" * 70 + ",")
    path.write_text("\n".join(lines))
    taken = []
    for cls, name in ((ingest_mod._CanonFile, "canon"), (ingest_mod._FastFile, "duckdb")):
        real = cls.tables

        def spy(self, real=real, name=name):
            out = real(self)
            taken.append((name, out is not None))
            return out

        monkeypatch.setattr(cls, "tables", spy)
    agg, hits = ingest([path])
    assert taken == [("canon", False), ("duckdb", True)]
    want = _exact_tables(monkeypatch, path)
    assert agg.equals(want[0]) and hits.equals(want[1])


def test_spec_follows_the_contract():
    """The scanner's spec and the RE2 pattern come from the same contract: a canonical line
    of every optional form is accepted by both."""
    line = (
        encode_record(
            {
                "run_id": "r",
                "system": "s",
                "cfg_hash": "c",
                "qid": "q",
                "suite": "x",
                "intent": "nl",
                "language": "py",
                "req_ts": 1.7e12,
                "sla_ms": 150,
                "lat_ms": None,
                "hits": [
                    {
                        "rank": 1,
                        "repo": "r",
                        "path": "p",
                        "start_line": 1,
                        "end_line": 2,
                        "score": 0.5,
                        "why": [],
                        "shard": None,
                    }
                ],
                "shards": [
                    {
                        "shard": 0,
                        "probe_id": "a",
                        "issued_ts": 1.0,
                        "first_byte_ts": None,
                        "done_ts": None,
                        "cancel_ts": 2,
                        "status": "cancelled",
                    }
                ],
                "cost": {"probes": 1, "cpu_ms": 0},
                "error": "boom",
            }
        ).encode()
        + b"\n"
    )
    assert canonscan.Scanner(ingest_mod._CANON_SPEC).feed(line)
    assert ingest_mod._certified(memoryview(line))
