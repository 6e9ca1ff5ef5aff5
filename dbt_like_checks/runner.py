"""Table-level data tests declared in YAML, compiled to SQL and run in DuckDB over Parquet.

Pure core: no dagster import (the asset checks live in `dbt_like_checks.checks`).

The YAML (`tests.yaml` beside this file) has a dbt-like shape::

    tables:
      agg:
        tests:
          - not_null: [run_id, system, qid]                    # list shorthand: columns
          - unique: {columns: [run_id, system, qid], severity: warn}
          - accepted_values: {column: rel, values: [0, 1, 2, 3]}
          - relationships: {columns: [run_id, system, qid], to: agg}
          - covers: {columns: [run_id, system, qid], of: agg}  # every key of `of` is here
          - row_count: {min: 1, max: 10000000}
          - expression: {name: lat_ms_non_negative, sql: "lat_ms IS NULL OR lat_ms >= 0"}
          - sql: {name: one_cfg_hash, sql: "SELECT ... FROM agg ...", refs: []}

Every test compiles to one SELECT that returns the *failing* rows (as dbt does); the test
passes when it returns none. Each declaration may carry `name`, `severity` (`error`, the
default, or `warn`), `description` and `where` (a filter on the tested table). In `sql`,
`where` and expression strings, `${NAME}` expands to the SQL list of the string tuple
`lens_core.common.contracts.NAME` (so metric and vocabulary names are imported, never retyped), and
`accepted_values.values_from` takes such names too.

Each table is a DuckDB view named after the table over `read_parquet(<path(s)>)` on one
in-memory connection. A missing Parquet file, a missing column or a SQL error is a failed test
with the reason in `error`, never a silent pass.

Why this is one module: the data-test runner interprets tests.yaml: every test kind shares the table loader, the row-reporting and the check-result construction.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Sequence, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from lens_core.common import contracts

DEFAULT_SPEC_PATH = Path(__file__).with_name("tests.yaml")
SAMPLE_LIMIT = 5
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
Severity = Literal["error", "warn"]

# Table name -> contract schema, used to bind every compiled test against empty tables of the
# contract schemas (catches a typo in tests.yaml without any data).
CONTRACT_SCHEMAS = {
    "agg": contracts.AGG_SCHEMA,
    "hits": contracts.HITS_SCHEMA,
    "pool": contracts.POOL_SCHEMA,
    "qrels": contracts.QRELS_SCHEMA,
    "per_query": contracts.PER_QUERY_SCHEMA,
    "scores": contracts.SCORES_SCHEMA,
}


class SpecError(ValueError):
    """A malformed test specification; the message names the file, table and test."""


# ---------------------------------------------------------------------------------------------
# Spec models
# ---------------------------------------------------------------------------------------------
def duckdb_limits() -> dict[str, str]:
    """DuckDB's memory for the data tests (issue 22: memory bounded whatever the week's size):
    `LENS_DUCKDB_MEMORY` (default 2GB); joins and aggregations beyond it spill to a temporary
    directory of their own (not DuckDB's default `.tmp` in the working directory)."""
    import tempfile

    return {
        "memory_limit": os.environ.get("LENS_DUCKDB_MEMORY", "2GB"),
        "temp_directory": os.path.join(tempfile.gettempdir(), f"lens-duckdb-{os.getpid()}"),
    }


def _check_ident(value: str, what: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ValueError(f"{what} {value!r} is not a plain identifier (letters, digits, _)")
    return value


def _contract_tuple(name: str) -> tuple[str, ...]:
    value = getattr(contracts, name, None)
    if not isinstance(value, tuple) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"${{{name}}}: lens_core.common.contracts has no non-empty tuple of strings {name!r}")
    return value


def expand_placeholders(text: str) -> str:
    """Replace `${NAME}` by the SQL list `('a', 'b', ...)` of `lens_core.common.contracts.NAME`."""

    def sub(m: re.Match[str]) -> str:
        return "(" + ", ".join(sql_literal(v) for v in _contract_tuple(m.group(1))) + ")"

    return _PLACEHOLDER.sub(sub, text)


class _TestBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    severity: Severity = "error"
    description: str | None = None
    where: str | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        return None if v is None else _check_ident(v, "test name")

    @field_validator("where")
    @classmethod
    def _where_ok(cls, v: str | None) -> str | None:
        if v is not None:
            expand_placeholders(v)
        return v

    def default_name(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def test_name(self) -> str:
        return self.name or self.default_name()

    def refs(self) -> tuple[str, ...]:
        """Other tables this test reads."""
        return ()

    def columns_used(self) -> tuple[str, ...]:
        """Columns of the tested table the test names explicitly (checked before running)."""
        return ()


def _columns_validator(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("columns must not be empty")
    for c in v:
        _check_ident(c, "column")
    if len(set(v)) != len(v):
        raise ValueError(f"duplicate column in {v}")
    return v


Columns = Annotated[list[str], AfterValidator(_columns_validator)]


class NotNullTest(_TestBase):
    kind: Literal["not_null"] = "not_null"
    columns: Columns

    def default_name(self) -> str:
        return "not_null"

    def columns_used(self) -> tuple[str, ...]:
        return tuple(self.columns)


class UniqueTest(_TestBase):
    kind: Literal["unique"] = "unique"
    columns: Columns

    def default_name(self) -> str:
        return "unique_key"

    def columns_used(self) -> tuple[str, ...]:
        return tuple(self.columns)


Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class AcceptedValuesTest(_TestBase):
    kind: Literal["accepted_values"] = "accepted_values"
    column: str
    values: list[Scalar] | None = None
    values_from: list[str] | None = None

    @field_validator("column")
    @classmethod
    def _col(cls, v: str) -> str:
        return _check_ident(v, "column")

    @model_validator(mode="after")
    def _some_values(self) -> "AcceptedValuesTest":
        for name in self.values_from or ():
            _contract_tuple(name)
        if not self.values and not self.values_from:
            raise ValueError("accepted_values needs a non-empty `values` or `values_from`")
        for v in self.values or ():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"accepted value {v!r} is not finite")
        return self

    def all_values(self) -> list[Any]:
        out: list[Any] = list(self.values or [])
        for name in self.values_from or ():
            out.extend(_contract_tuple(name))
        return out

    def default_name(self) -> str:
        return f"accepted_values_{self.column}"

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)


class RelationshipsTest(_TestBase):
    """Every (non-null) key of this table exists in table `to` (a foreign key)."""

    kind: Literal["relationships"] = "relationships"
    columns: Columns
    to: str
    to_columns: list[str] | None = None
    to_where: str | None = None

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        return _check_ident(v, "table")

    @model_validator(mode="after")
    def _to_cols(self) -> "RelationshipsTest":
        if self.to_columns is not None:
            _columns_validator(self.to_columns)
            if len(self.to_columns) != len(self.columns):
                raise ValueError("to_columns must have as many columns as columns")
        if self.to_where is not None:
            expand_placeholders(self.to_where)
        return self

    @property
    def parent_columns(self) -> list[str]:
        return self.to_columns or self.columns

    def default_name(self) -> str:
        return f"relationships_to_{self.to}"

    def refs(self) -> tuple[str, ...]:
        return (self.to,)

    def columns_used(self) -> tuple[str, ...]:
        return tuple(self.columns)


class CoversTest(_TestBase):
    """Every key of table `of` exists in this table (the reverse of relationships)."""

    kind: Literal["covers"] = "covers"
    columns: Columns
    of: str
    of_columns: list[str] | None = None
    of_where: str | None = None

    @field_validator("of")
    @classmethod
    def _of(cls, v: str) -> str:
        return _check_ident(v, "table")

    @model_validator(mode="after")
    def _of_cols(self) -> "CoversTest":
        if self.of_columns is not None:
            _columns_validator(self.of_columns)
            if len(self.of_columns) != len(self.columns):
                raise ValueError("of_columns must have as many columns as columns")
        if self.of_where is not None:
            expand_placeholders(self.of_where)
        return self

    @property
    def source_columns(self) -> list[str]:
        return self.of_columns or self.columns

    def default_name(self) -> str:
        return f"covers_{self.of}"

    def refs(self) -> tuple[str, ...]:
        return (self.of,)

    def columns_used(self) -> tuple[str, ...]:
        return tuple(self.columns)


class RowCountTest(_TestBase):
    kind: Literal["row_count"] = "row_count"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "RowCountTest":
        if self.min is None and self.max is None:
            raise ValueError("row_count needs `min` and/or `max`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"row_count min {self.min} > max {self.max}")
        return self

    def default_name(self) -> str:
        return "row_count"


class ExpressionTest(_TestBase):
    """A boolean SQL expression every row must satisfy; NULL counts as a failure."""

    kind: Literal["expression"] = "expression"
    name: str
    sql: str

    @field_validator("sql")
    @classmethod
    def _sql(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expression sql is empty")
        expand_placeholders(v)
        return v

    def default_name(self) -> str:
        return self.name


class SqlTest(_TestBase):
    """A singular test: a SELECT returning the failing rows; tables are referenced by name."""

    kind: Literal["sql"] = "sql"
    name: str
    sql: str
    refs_: list[str] = Field(default_factory=list, alias="refs")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("sql")
    @classmethod
    def _sql(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("sql is empty")
        expand_placeholders(v)
        return v

    @field_validator("refs_")
    @classmethod
    def _refs(cls, v: list[str]) -> list[str]:
        for t in v:
            _check_ident(t, "table")
        return v

    @model_validator(mode="after")
    def _no_where(self) -> "SqlTest":
        if self.where is not None:
            raise ValueError("`where` is not supported on a sql test; filter inside its SQL")
        return self

    def default_name(self) -> str:
        return self.name

    def refs(self) -> tuple[str, ...]:
        return tuple(self.refs_)


DataTest = Annotated[
    Union[
        NotNullTest,
        UniqueTest,
        AcceptedValuesTest,
        RelationshipsTest,
        CoversTest,
        RowCountTest,
        ExpressionTest,
        SqlTest,
    ],
    Field(discriminator="kind"),
]
_TEST_ADAPTER: TypeAdapter[Any] = TypeAdapter(DataTest)
TEST_KINDS: tuple[str, ...] = (
    "not_null",
    "unique",
    "accepted_values",
    "relationships",
    "covers",
    "row_count",
    "expression",
    "sql",
)
_LIST_SHORTHAND = {"not_null", "unique"}


@dataclass(frozen=True)
class TableSpec:
    name: str
    tests: tuple[Any, ...]
    description: str | None = None


@dataclass(frozen=True)
class Spec:
    tables: dict[str, TableSpec]
    source: str = "<dict>"

    def tests(self, tables: Iterable[str] | None = None) -> list[tuple[str, Any]]:
        wanted = None if tables is None else set(tables)
        return [(t, test) for t, ts in self.tables.items() if wanted is None or t in wanted for test in ts.tests]

    def __len__(self) -> int:
        return sum(len(t.tests) for t in self.tables.values())


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("function-after",))
        parts.append(f"{loc + ': ' if loc else ''}{e.get('msg')}")
    return "; ".join(parts)


def parse_test(entry: Any, where: str = "test") -> Any:
    """One YAML test entry (`{kind: params}`) -> a validated test model."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise SpecError(
            f"{where}: a test is a mapping with exactly one key (its kind, one of "
            f"{', '.join(TEST_KINDS)}), got {entry!r}"
        )
    kind, params = next(iter(entry.items()))
    if kind not in TEST_KINDS:
        raise SpecError(f"{where}: unknown test kind {kind!r} (expected one of {', '.join(TEST_KINDS)})")
    if isinstance(params, list):
        if kind not in _LIST_SHORTHAND:
            raise SpecError(f"{where} ({kind}): the list shorthand is only for not_null and unique; use a mapping")
        params = {"columns": params}
    if not isinstance(params, dict):
        raise SpecError(f"{where} ({kind}): parameters must be a mapping, got {params!r}")
    try:
        return _TEST_ADAPTER.validate_python({**params, "kind": kind})
    except ValidationError as err:
        raise SpecError(f"{where} ({kind}): {_format_validation_error(err)}") from None
    except ValueError as err:  # raised outside pydantic's wrapping
        raise SpecError(f"{where} ({kind}): {err}") from None


def spec_from_dict(data: Any, source: str = "<dict>") -> Spec:
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict) or not data["tables"]:
        raise SpecError(f"{source}: expected a top-level mapping `tables:` of table -> {{tests: [...]}}")
    extra = set(data) - {"tables", "version"}
    if extra:
        raise SpecError(f"{source}: unknown top-level key(s) {sorted(extra)}")
    tables: dict[str, TableSpec] = {}
    for tname, tbody in data["tables"].items():
        where_t = f"{source}: tables.{tname}"
        if not isinstance(tname, str) or not _IDENT.match(tname):
            raise SpecError(f"{where_t}: table name must be a plain identifier")
        if not isinstance(tbody, dict) or not isinstance(tbody.get("tests"), list):
            raise SpecError(f"{where_t}: expected a mapping with a `tests:` list")
        extra = set(tbody) - {"tests", "description"}
        if extra:
            raise SpecError(f"{where_t}: unknown key(s) {sorted(extra)}")
        tests = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(tbody["tests"]):
            test = parse_test(entry, f"{where_t}.tests[{i}]")
            if test.test_name in seen:
                raise SpecError(
                    f"{where_t}.tests[{i}] ({test.kind}): duplicate test name {test.test_name!r} "
                    f"(also tests[{seen[test.test_name]}]); give one of them a `name:`"
                )
            seen[test.test_name] = i
            tests.append(test)
        tables[tname] = TableSpec(tname, tuple(tests), tbody.get("description"))
    # references must name declared tables (a typo would otherwise only show up at run time)
    for tname, ts in tables.items():
        for i, test in enumerate(ts.tests):
            for ref in test.refs():
                if ref not in tables and ref not in CONTRACT_SCHEMAS:
                    raise SpecError(
                        f"{source}: tables.{tname}.tests[{i}] ({test.kind} {test.test_name}): "
                        f"references unknown table {ref!r}"
                    )
    return Spec(tables, source)


def load_spec(path: str | Path | None = None) -> Spec:
    """Load and validate the YAML test declarations (default: `dbt_like_checks/tests.yaml`)."""
    path = Path(path) if path is not None else DEFAULT_SPEC_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: test spec file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: invalid YAML: {err}") from None
    return spec_from_dict(data, str(path))


# ---------------------------------------------------------------------------------------------
# SQL compilation
# ---------------------------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite literal {value!r}")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot render {value!r} as a SQL literal")


def _src(table: str, where: str | None) -> str:
    base = f"SELECT * FROM {quote_ident(table)}"
    if where:
        base += f" WHERE ({expand_placeholders(where)})"
    return base


def compile_test(table: str, test: Any) -> tuple[str, str]:
    """(test name, SQL selecting the failing rows of `test` on the view named `table`)."""
    q = quote_ident
    src = f"WITH src AS ({_src(table, test.where)})\n"
    kind = test.kind
    if kind == "not_null":
        cond = " OR ".join(f"{q(c)} IS NULL" for c in test.columns)
        which = ", ".join(f"CASE WHEN {q(c)} IS NULL THEN {sql_literal(c)} END" for c in test.columns)
        sql = src + f"SELECT concat_ws(',', {which}) AS null_columns, * FROM src\nWHERE {cond}"
    elif kind == "unique":
        cols = ", ".join(q(c) for c in test.columns)
        sql = src + f"SELECT {cols}, count(*) AS n_rows FROM src\nGROUP BY {cols}\nHAVING count(*) > 1"
    elif kind == "accepted_values":
        col = q(test.column)
        values = ", ".join(sql_literal(v) for v in test.all_values())
        sql = (
            src + f"SELECT {col}, count(*) AS n_rows FROM src\n"
            f"WHERE {col} IS NOT NULL AND {col} NOT IN ({values})\nGROUP BY {col}"
        )
    elif kind == "relationships":
        child = ", ".join(f"c.{q(c)}" for c in test.columns)
        notnull = " AND ".join(f"c.{q(c)} IS NOT NULL" for c in test.columns)
        join = " AND ".join(f"p.{q(pc)} = c.{q(cc)}" for cc, pc in zip(test.columns, test.parent_columns))
        sql = (
            src + f", parent AS ({_src(test.to, test.to_where)})\n"
            f"SELECT {child}, count(*) AS n_rows FROM src AS c\n"
            f"WHERE {notnull}\n  AND NOT EXISTS (SELECT 1 FROM parent AS p WHERE {join})\n"
            f"GROUP BY {child}"
        )
    elif kind == "covers":
        keys = ", ".join(f"o.{q(c)}" for c in test.source_columns)
        notnull = " AND ".join(f"o.{q(c)} IS NOT NULL" for c in test.source_columns)
        join = " AND ".join(f"c.{q(cc)} = o.{q(oc)}" for cc, oc in zip(test.columns, test.source_columns))
        sql = (
            src + f", other AS ({_src(test.of, test.of_where)})\n"
            f"SELECT {keys}, count(*) AS n_rows FROM other AS o\n"
            f"WHERE {notnull}\n  AND NOT EXISTS (SELECT 1 FROM src AS c WHERE {join})\n"
            f"GROUP BY {keys}"
        )
    elif kind == "row_count":
        conds = []
        if test.min is not None:
            conds.append(f"n < {int(test.min)}")
        if test.max is not None:
            conds.append(f"n > {int(test.max)}")
        sql = (
            src + f"SELECT n AS row_count, {sql_literal(test.min) if test.min is not None else 'NULL'}"
            f" AS min_rows, {sql_literal(test.max) if test.max is not None else 'NULL'} AS max_rows\n"
            f"FROM (SELECT count(*) AS n FROM src)\nWHERE {' OR '.join(conds)}"
        )
    elif kind == "expression":
        sql = src + f"SELECT * FROM src\nWHERE NOT coalesce(({expand_placeholders(test.sql)}), FALSE)"
    elif kind == "sql":
        sql = expand_placeholders(test.sql).strip().rstrip(";")
    else:  # pragma: no cover - the discriminated union forbids it
        raise SpecError(f"unknown test kind {kind!r}")
    return test.test_name, sql


def describe_test(test: Any) -> str:
    """A one-line human description of a test (for the UI)."""
    if test.description:
        return test.description
    k = test.kind
    if k == "not_null":
        d = f"not null: {', '.join(test.columns)}"
    elif k == "unique":
        d = f"unique key ({', '.join(test.columns)})"
    elif k == "accepted_values":
        vals = test.all_values()
        shown = ", ".join(map(str, vals[:12])) + (", ..." if len(vals) > 12 else "")
        d = f"{test.column} in {{{shown}}}"
    elif k == "relationships":
        d = f"({', '.join(test.columns)}) references {test.to}({', '.join(test.parent_columns)})"
    elif k == "covers":
        d = f"every {test.of}({', '.join(test.source_columns)}) has a row here ({', '.join(test.columns)})"
    elif k == "row_count":
        d = f"row count in [{test.min if test.min is not None else 0}, {test.max if test.max is not None else 'inf'}]"
    elif k == "expression":
        d = f"every row satisfies: {test.sql}"
    else:
        d = f"custom SQL test {test.name} returns no rows"
    return d + (f" (where {test.where})" if test.where else "")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class

    name: str
    table: str
    kind: str
    severity: str
    passed: bool
    failing_rows: int
    sample: list[dict[str, Any]]
    sql: str
    error: str | None = None
    description: str = ""
    paths: tuple[str, ...] = field(default_factory=tuple)
    elapsed_ms: float = 0.0
    # rows the test judged (the tested table, after its `where`); None for row_count tests (the
    # count is what they judge) and when the test could not run
    subjects: int | None = None

    @property
    def check_name(self) -> str:
        return check_name(self.table, self.name)

    @property
    def status(self) -> str:
        """error (it could not run) | fail (failing rows) | insufficient (no rows to judge: not a
        pass, never green) | pass. `passed` is the rule (no failing rows); the status is what a
        reader is shown, as for the gates (lens_core.decide.gate_view)."""
        if self.error:
            return "error"
        if not self.passed:
            return "fail"
        if self.subjects == 0:
            return "insufficient"
        return "pass"

    @property
    def blocking(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paths"] = list(self.paths)
        return d


def check_name(table: str, test_name: str) -> str:
    """The asset check name of a test: `dbt_<table>_<test name>`."""
    return f"dbt_{table}_{test_name}"


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _fetch_dicts(con: Any, sql: str) -> list[dict[str, Any]]:
    rel = con.sql(sql)
    to_table = getattr(rel, "to_arrow_table", None) or rel.arrow
    table = to_table()
    if hasattr(table, "read_all"):  # a RecordBatchReader
        table = table.read_all()
    return [{k: _jsonable(v) for k, v in row.items()} for row in table.to_pylist()]


PathLike = Union[str, Path]


def _as_paths(value: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def _open_view(con: Any, table: str, paths: list[Path]) -> str | None:
    """Create the view `table` over the Parquet file(s); return an error message or None."""
    if not paths:
        return f"no Parquet path given for table {table!r}"
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return f"table {table!r}: Parquet file not found: {', '.join(missing)}"
    files = ", ".join(sql_literal(str(p)) for p in paths)
    try:
        con.execute(f"CREATE OR REPLACE VIEW {quote_ident(table)} AS SELECT * FROM read_parquet([{files}])")
        con.execute(f"SELECT * FROM {quote_ident(table)} LIMIT 0").fetchall()
    except Exception as err:  # corrupt file, not Parquet, ...
        return f"table {table!r}: cannot read {', '.join(map(str, paths))}: {type(err).__name__}: {err}"
    return None


def _columns(con: Any, table: str) -> set[str]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {quote_ident(table)}").fetchall()
    return {r[0] for r in rows}


def _missing_columns_error(con: Any, table: str, test: Any) -> str | None:
    needed: list[tuple[str, tuple[str, ...]]] = [(table, test.columns_used())]
    if test.kind == "relationships":
        needed.append((test.to, tuple(test.parent_columns)))
    if test.kind == "covers":
        needed.append((test.of, tuple(test.source_columns)))
    problems = []
    for t, cols in needed:
        if not cols:
            continue
        have = _columns(con, t)
        missing = [c for c in cols if c not in have]
        if missing:
            problems.append(f"table {t!r} lacks column(s) {', '.join(missing)}")
    return "; ".join(problems) or None


def run_tests(
    table_paths: Mapping[str, PathLike | Sequence[PathLike]],
    spec: Spec | None = None,
    tables: Iterable[str] | None = None,
    names: Iterable[str] | None = None,
    *,
    sample_limit: int = SAMPLE_LIMIT,
    connection: Any = None,
) -> list[TestResult]:
    """Run the declared tests over Parquet files and return one result per test.

    `table_paths` maps a table name to its Parquet file (or a list of files, read as one table).
    `tables` limits the run to the tests declared on those tables (default: every table of the
    spec; a declared table with no path fails its tests). `names` limits it to those test names.
    Related tables (relationships/covers targets, `sql` refs) are read from `table_paths` too.
    """
    import duckdb

    spec = spec or load_spec()
    selected = spec.tests(tables)
    if tables is not None:
        unknown = set(tables) - set(spec.tables)
        if unknown:
            raise SpecError(f"{spec.source}: no tests declared for table(s) {sorted(unknown)}")
    if names is not None:
        wanted = set(names)
        unknown = wanted - {test.test_name for _, test in selected}
        if unknown:
            raise SpecError(
                f"{spec.source}: no test named {sorted(unknown)} on table(s) "
                f"{sorted(tables) if tables is not None else 'any'}"
            )
        selected = [(t, test) for t, test in selected if test.test_name in wanted]

    con = connection or duckdb.connect(":memory:", config=duckdb_limits())
    view_errors: dict[str, str | None] = {}
    view_paths: dict[str, tuple[str, ...]] = {}

    def ensure(t: str) -> str | None:
        if t not in view_errors:
            paths = _as_paths(table_paths.get(t))
            view_paths[t] = tuple(str(p) for p in paths)
            view_errors[t] = _open_view(con, t, paths)
        return view_errors[t]

    results: list[TestResult] = []
    try:
        for table, test in selected:
            name, sql = compile_test(table, test)
            t0 = time.perf_counter()
            error = None
            failing = 0
            subjects: int | None = None
            sample: list[dict[str, Any]] = []
            for t in (table, *test.refs()):
                err = ensure(t)
                if err:
                    error = err if t == table else f"related table: {err}"
                    break
            try:
                if error is None:
                    error = _missing_columns_error(con, table, test)
                if error is None:
                    failing = int(con.execute(f"SELECT count(*) FROM (\n{sql}\n) AS failing").fetchall()[0][0])
                    if failing:
                        sample = _fetch_dicts(con, f"SELECT * FROM (\n{sql}\n) AS failing LIMIT {int(sample_limit)}")
                    if test.kind != "row_count":
                        subjects = int(
                            con.execute(f"SELECT count(*) FROM ({_src(table, test.where)})").fetchall()[0][0]
                        )
            except Exception as err:  # binder errors (missing column in an expression), type errors
                error = f"{type(err).__name__}: {err}"
            passed = error is None and failing == 0
            results.append(
                TestResult(
                    name=name,
                    table=table,
                    kind=test.kind,
                    severity=test.severity,
                    passed=passed,
                    failing_rows=failing,
                    sample=sample,
                    sql=sql,
                    error=error,
                    description=describe_test(test),
                    paths=view_paths.get(table, ()),
                    elapsed_ms=round((time.perf_counter() - t0) * 1000, 3),
                    subjects=subjects if error is None else None,
                )
            )
    finally:
        if connection is None:
            con.close()
    return results


def failed_results(spec: Spec, table: str, names: Iterable[str] | None, error: str) -> list[TestResult]:
    """Every selected test of `table` failed with `error` (e.g. its Parquet path is unknown)."""
    wanted = None if names is None else set(names)
    out = []
    for _, test in spec.tests([table]):
        if wanted is not None and test.test_name not in wanted:
            continue
        name, sql = compile_test(table, test)
        out.append(
            TestResult(
                name=name,
                table=table,
                kind=test.kind,
                severity=test.severity,
                passed=False,
                failing_rows=0,
                sample=[],
                sql=sql,
                error=error,
                description=describe_test(test),
            )
        )
    return out


def bind_against_contracts(spec: Spec | None = None) -> list[tuple[str, str, str]]:
    """Compile every test and bind it over empty tables of the contract schemas.

    Returns (table, test name, error) for each test whose SQL does not bind (a typo in a column
    name, a bad expression); an empty list means every declaration is consistent with
    `lens_core.common.contracts`.
    """
    import duckdb
    import pyarrow as pa

    spec = spec or load_spec()
    con = duckdb.connect(":memory:")
    try:
        for t, schema in CONTRACT_SCHEMAS.items():
            empty = pa.Table.from_pylist([], schema=schema)  # noqa: F841 - read by DuckDB below
            con.register(f"__empty_{t}", empty)
            con.execute(f"CREATE VIEW {quote_ident(t)} AS SELECT * FROM {quote_ident('__empty_' + t)}")
        problems = []
        for table, test in spec.tests():
            name, sql = compile_test(table, test)
            try:
                err = _missing_columns_error(con, table, test)
                if err:
                    raise ValueError(err)
                con.execute(f"SELECT count(*) FROM (\n{sql}\n) AS failing").fetchall()
            except Exception as err:
                problems.append((table, name, f"{type(err).__name__}: {err}"))
        return problems
    finally:
        con.close()


def summarize(results: Sequence[TestResult]) -> dict[str, Any]:
    """Counts of passed / failed (blocking) / failed (warn) tests."""
    return {
        "tests": len(results),
        "passed": sum(r.passed for r in results),
        "failed_error": sum((not r.passed) and r.severity == "error" for r in results),
        "failed_warn": sum((not r.passed) and r.severity == "warn" for r in results),
        "insufficient": sum(r.status == "insufficient" for r in results),
    }
