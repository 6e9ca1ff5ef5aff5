"""The pre-flight of a weekly run: every setting checked, and the endpoint's door knocked on,
before a job starts or a byte of data is written (issue 18: config and auth fail fast).

`preflight()` is pure apart from one `GET /health` (prod only). It raises ONE `PreflightError`
whose message is one line (a config file with several problems lists them, one per line) and
never holds a token; `exit_code` is what `lens-eval run` exits with:

* `ConfigError` (exit 2, a bad value): `DATA_SOURCE`, `SLA_MS`, `LENS_CLIENT_CONCURRENCY`,
  `LENS_CONFIG` (the model refuses unknown keys), a system name or `run.env` that is not a
  path-safe identifier (`../../../x` would write a raw run outside `LENS_DATA_DIR`), a token
  with a control character or a space (a trailing newline), `LENS_ENDPOINTS` empty or not
  http(s), `LENS_SUITES` / `LENS_GROUND_TRUTH` not files, `LENS_DATA_DIR` an invalid `s3://` URL.
* `AuthError` (exit 1): the endpoint answered 401/403 on `/health` (or, when it has no
  `/health` route, on one probe query).
* `EndpointError` (exit 1): the endpoint cannot be reached at all; or, with an `s3://` data dir,
  its bucket cannot be reached, does not exist, or refuses the credentials.

A config or auth error is not a gate failure: the run never starts, so no data gate runs and
no publication page is sent. The weekly job runs the same pre-flight as its first step (runs
launched by a schedule or the UI have no CLI in front of them); `REFUSAL_ERRORS` names the
exceptions that mean "the run was refused", not "a gate failed": the paging sensor and
`lens-eval run` page nothing for them and print one line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lens_core.collect.client import LensAuthRefused, LensClient, LensUnreachable, check_token, endpoints_from_env
from lens_core.common import objectstore
from lens_core.common.settings import data_source, env_number, load_config, sla_ms
from lens_core.common.systems import all_systems, check_safe_name

# Class names of the errors that refuse a run (settings, credentials, endpoint, a partition held
# by another run), as Dagster records them in a step failure (`SerializableErrorInfo.cls_name`).
REFUSAL_ERRORS = frozenset(
    {"PreflightError", "ConfigError", "AuthError", "EndpointError", "LensAuthRefused", "PartitionBusy"}
)


class PreflightError(Exception):
    """A weekly run that must not start; `exit_code` for the CLI."""

    exit_code = 1


class ConfigError(PreflightError):
    """A setting is invalid (exit 2: a bad value)."""

    exit_code = 2


class AuthError(PreflightError):
    """The endpoint refused the credentials (401/403 on /health)."""


class EndpointError(PreflightError):
    """The endpoint cannot be reached."""


@dataclasses.dataclass(frozen=True)
class Preflight:
    source: str
    env: str
    systems: tuple[str, ...]
    endpoint: str | None = None  # printable (no credentials)
    health: dict[str, Any] | None = None


def _one_line(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or 'value'}: {e.get('msg')}" for e in err.errors())


def _config(source: str | None = None) -> tuple[str, str, tuple[str, ...]]:
    src = source or data_source()
    cfg = load_config()
    sla_ms()
    env_number("LENS_CLIENT_CONCURRENCY", int, minimum=1)
    env = "prod" if src == "prod" else cfg.run.env
    check_safe_name(env, "run.env" if src != "prod" else "env")
    names: dict[str, None] = {}
    for full in (False, True):  # the demo subset and the full grids (the weekly schedule's)
        try:
            systems = all_systems(full_grid=full, config=cfg)
        except ValidationError as e:
            raise ValueError(f"LENS_CONFIG: a system is invalid: {_one_line(e)}") from None
        names.update(dict.fromkeys(s.name for s in systems))
    return src, env, tuple(names)


def _tokens(src: str) -> str | None:
    names = ("LENS_ENGINE_TOKEN", "AUTH_TOKEN") if src == "local" else ("AUTH_TOKEN",)
    for name in names:
        value = os.environ.get(name)
        if value:
            check_token(value, name)
    return os.environ.get("AUTH_TOKEN") or None


def _files() -> None:
    suites = os.environ.get("LENS_SUITES", "").strip()
    if not suites:
        raise ValueError("DATA_SOURCE=prod needs LENS_SUITES: a Parquet file of queries")
    for name, value in (("LENS_SUITES", suites), ("LENS_GROUND_TRUTH", os.environ.get("LENS_GROUND_TRUTH", ""))):
        if value.strip() and not Path(value.strip()).is_file():
            raise ValueError(f"{name}={value.strip()}: no such file")


def _knock_bucket(store: objectstore.S3Store | None, probe: bool) -> None:
    """With an s3:// data dir: the bucket exists and takes these credentials (one HEAD)."""
    if store is None or not probe:
        return
    try:
        store.check()
    except objectstore.ObjectStoreError as e:
        raise EndpointError(str(e)) from None


def preflight(*, probe: bool = True, health_attempts: int = 2, source: str | None = None) -> Preflight:
    """Check the settings of the run the environment describes (`source`: the data source when
    the caller's resource names one, else `DATA_SOURCE`); for `prod`, also probe the first
    endpoint's `/health` with the configured token (`probe=False` skips the probe)."""
    try:
        store = objectstore.store_from_url(objectstore.configured_url()) if objectstore.configured_url() else None
        src, env, names = _config(source)
        token = _tokens(src) if src in ("local", "prod") else None
        if src != "prod":
            _knock_bucket(store, probe)
            return Preflight(src, env, names)
        _files()
        eps = endpoints_from_env()
        if not eps:
            raise ValueError("DATA_SOURCE=prod needs LENS_ENDPOINTS (comma-separated Lens base URLs)")
        clients = [LensClient(e, token=token, k=1, retries=max(0, health_attempts - 1), backoff_ms=100) for e in eps]
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ConfigError(str(e).strip()) from None
    client = clients[0]
    _knock_bucket(store, probe)
    if not probe:
        return Preflight(src, env, names, client.endpoint)
    try:
        health = client.health(attempts=health_attempts)
    except LensAuthRefused as e:
        raise AuthError(str(e)) from None
    except LensUnreachable as e:
        raise EndpointError(str(e)) from None
    if health.get("status") == "unknown":
        # no /health route (the open-source Lens server): one tiny query tells whether the
        # credentials are taken, rather than a run of thousands of 401s
        res = client.search("preflight", "lens-eval preflight", names[0])
        if res.status in (401, 403):
            raise AuthError(
                f"{client.endpoint} refused the credentials: a probe query returned {res.error}; check AUTH_TOKEN"
            )
    return Preflight(src, env, names, client.endpoint, health)
