"""Paging webhook (SPEC §13): PagerDuty Events v2 by default, any URL that takes its JSON.

`PagerResource.trigger()` / `.resolve()` POST one Events v2 event with the stdlib
(`urllib.request`) and return True when the webhook answered 2xx, False when it is down,
slow (past `timeout_s`) or answered anything else. They never raise for a delivery problem:
the caller (the paging sensor) keeps the event pending and retries on its next tick.

Configuration (empty fields fall back to the environment at call time):

* `url`: `PAGER_URL`. Empty = disabled: the event is logged (without the routing key) and
  counted as handled (returns True), so `make demo` without a pager still shows what it
  would have sent. Only `http://` and `https://` URLs are accepted.
* `routing_key`: `PAGER_ROUTING_KEY`. A secret: it appears only in the POST body, never in a
  log line, `repr()`, an exception or Dagster metadata. Prefer leaving it empty (env) or
  `dg.EnvVar("PAGER_ROUTING_KEY")`; a literal value would be shown in the UI's resource
  config. Log lines name the webhook only by scheme://host:port (a webhook URL may embed a
  token in its path).
* `timeout_s` (2.0): connect + read timeout of one POST.
* `source` ("lens-pipeline"): the event's `payload.source` when the caller gives none.

Severity: the Events v2 severities are `critical | error | warning | info`. Priorities map
as P0 -> critical, P1 -> error, P2 -> warning, P3 / P4 (and anything lower) -> info; the four
Events v2 names pass through (case-insensitive) and Dagster's `ERROR` / `WARN` map to
error / warning. Anything else is a ValueError (a programming error, raised before sending).

Payload (Events v2):

    {"routing_key": ..., "event_action": "trigger", "dedup_key": ...,
     "payload": {"summary", "source", "severity", "component", "group", "class",
                 "custom_details": {"owners": [...], ...details}}}

A resolve is `{"routing_key", "event_action": "resolve", "dedup_key"}`. Summaries are cut to
1024 characters (the Events v2 limit). Delivery is at-least-once: a POST that timed out may
still have arrived, and the retry carries the same `dedup_key`, which PagerDuty folds into
the same incident.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import urllib.error
import urllib.request
from typing import Any, Iterable
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

log = logging.getLogger(__name__)

SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "info")
PRIORITY_SEVERITY: dict[str, str] = {
    "p0": "critical",
    "p1": "error",
    "p2": "warning",
    "p3": "info",
    "p4": "info",
    "p5": "info",
}
_DAGSTER_SEVERITY = {"warn": "warning"}
MAX_SUMMARY = 1024
REDACTED = "***"


def pd_severity(severity: str) -> str:
    """P0..P5, an Events v2 severity, or Dagster's ERROR/WARN -> an Events v2 severity."""
    s = str(severity).strip().lower()
    if s in SEVERITIES:
        return s
    if s in PRIORITY_SEVERITY:
        return PRIORITY_SEVERITY[s]
    if s in _DAGSTER_SEVERITY:
        return _DAGSTER_SEVERITY[s]
    raise ValueError(f"pager severity {severity!r}: expected P0..P5 or one of {', '.join(SEVERITIES)}")


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what log lines may say about the webhook."""
    try:
        p = urlsplit(url)
        host = p.hostname or "?"
        port = f":{p.port}" if p.port else ""
        return f"{p.scheme}://{host}{port}"
    except ValueError:
        return "<invalid url>"


def _jsonable(obj: Any) -> Any:
    """Details as JSON-safe values: unknown objects become their str, NaN/inf become "nan"/"inf"
    (a gate whose value is not finite must still be pageable)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


class PagerResource(dg.ConfigurableResource):
    """Sends PagerDuty Events v2 trigger/resolve events to a webhook (see module docstring)."""

    url: str = Field("", description="webhook URL; empty = $PAGER_URL; neither = disabled (log only)")
    routing_key: str = Field(
        "", description="Events v2 routing key; empty = $PAGER_ROUTING_KEY (secret: use the env var or dg.EnvVar)"
    )
    timeout_s: float = Field(2.0, description="timeout of one POST (seconds)")
    source: str = Field("lens-pipeline", description="payload.source when the caller gives none")

    # -- secrets never reach repr()/str() ---------------------------------------------------
    def __repr_args__(self):  # pydantic's repr/str
        for k, v in super().__repr_args__():
            yield k, (REDACTED if k == "routing_key" and v else v)

    # -- resolved settings -------------------------------------------------------------------
    def resolved_url(self) -> str:
        return (self.url or os.environ.get("PAGER_URL", "")).strip()

    def _routing_key(self) -> str:
        return (self.routing_key or os.environ.get("PAGER_ROUTING_KEY", "")).strip()

    def enabled(self) -> bool:
        return bool(self.resolved_url())

    def describe(self) -> dict[str, Any]:
        """What may be shown (metadata, logs): never the key, never the URL's path."""
        url = self.resolved_url()
        return {
            "enabled": bool(url),
            "webhook": _origin(url) if url else "",
            "routing_key_set": bool(self._routing_key()),
            "timeout_s": self.timeout_s,
        }

    # -- payloads ----------------------------------------------------------------------------
    def trigger_payload(
        self,
        dedup_key: str,
        summary: str,
        severity: str,
        source: str = "",
        component: str = "",
        owners: Iterable[str] = (),
        details: dict | None = None,
        group: str = "",
        klass: str = "",
    ) -> dict[str, Any]:
        if not dedup_key:
            raise ValueError("pager trigger: empty dedup_key")
        custom = {"owners": list(owners)}
        for k, v in (_jsonable(details) or {}).items():
            if k != "owners":
                custom[k] = v
        return {
            "routing_key": self._routing_key(),
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": (summary or dedup_key)[:MAX_SUMMARY],
                "source": source or self.source,
                "severity": pd_severity(severity),
                "component": component,
                "group": group,
                "class": klass,
                "custom_details": custom,
            },
        }

    def resolve_payload(self, dedup_key: str) -> dict[str, Any]:
        if not dedup_key:
            raise ValueError("pager resolve: empty dedup_key")
        return {"routing_key": self._routing_key(), "event_action": "resolve", "dedup_key": dedup_key}

    # -- sending -----------------------------------------------------------------------------
    def trigger(
        self,
        dedup_key: str,
        summary: str,
        severity: str,
        source: str = "",
        component: str = "",
        owners: Iterable[str] = (),
        details: dict | None = None,
        group: str = "",
        klass: str = "",
    ) -> bool:
        """Open (or re-assert) the incident `dedup_key`. True = the webhook took it (2xx)."""
        return self.send(
            self.trigger_payload(dedup_key, summary, severity, source, component, owners, details, group, klass)
        )

    def resolve(self, dedup_key: str) -> bool:
        """Resolve the incident `dedup_key`. True = the webhook took it (2xx)."""
        return self.send(self.resolve_payload(dedup_key))

    def send(self, event: dict[str, Any]) -> bool:
        """POST one Events v2 event. Never raises for a delivery problem; returns success."""
        action, dedup = event.get("event_action"), event.get("dedup_key")
        url = self.resolved_url()
        if not url:
            payload = event.get("payload") or {}
            # one line (the terminal summary stays readable); the details are in the event's source
            log.warning(
                "pager disabled (no PAGER_URL): would send %s %s (%s): %s",
                action,
                dedup,
                payload.get("severity", "-"),
                " ".join(str(payload.get("summary", "")).split())[:200],
            )
            return True
        where = _origin(url)
        if urlsplit(url).scheme not in ("http", "https"):
            log.error("pager %s %s: webhook %s is not an http(s) URL; not sent", action, dedup, where)
            return False
        body = json.dumps(event, allow_nan=False).encode("utf-8")
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status = resp.status
                resp.read(4096)
        except urllib.error.HTTPError as e:  # non-2xx answers
            log.warning("pager %s %s: webhook %s answered HTTP %s", action, dedup, where, e.code)
            return False
        except (socket.timeout, TimeoutError):
            log.warning("pager %s %s: webhook %s did not answer within %.1fs", action, dedup, where, self.timeout_s)
            return False
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", e)
            log.warning(
                "pager %s %s: webhook %s unreachable (%s)",
                action,
                dedup,
                where,
                self._redact(f"{type(reason).__name__}: {reason}"),
            )
            return False
        if 200 <= status < 300:
            log.info("pager %s %s: delivered to %s (HTTP %s)", action, dedup, where, status)
            return True
        log.warning("pager %s %s: webhook %s answered HTTP %s", action, dedup, where, status)
        return False

    def _redact(self, text: str) -> str:
        for secret in (self._routing_key(), self.resolved_url()):
            if secret:
                text = text.replace(secret, REDACTED)
        return text


# The one pager instance of the code location: Definitions.merge refuses two different objects
# under one resource key, so every domain binds `pager` to this one.
DEFAULT_PAGER = PagerResource()
