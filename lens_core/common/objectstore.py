"""Object storage as the system of record: `LENS_DATA_DIR=s3://bucket/prefix` (issue 22 item 4).

The chain computes in a local working copy (`data_dir()` keeps returning a local `Path`:
`$LENS_WORK_DIR`, else `$XDG_CACHE_HOME/lens/work/<sha256(url)[:16]>`, default
`~/.cache/lens/work/...`) and commits every artifact to the bucket at its commit point, under the
same relative name it has in the working copy (`<prefix>/runs/...`, `<prefix>/staging/...`,
`<prefix>/bundles/<fp>/...`, `<prefix>/published.json`).

The protocol (S3 has no rename, so nothing is "moved into place"):

- every object is written whole by one PUT (a multipart upload is also atomic: the object appears
  only when it completes) and carries its sha256 as user metadata (`x-amz-meta-sha256`); a
  reader that copies an object to its working copy re-hashes it and refuses a mismatch;
- a bundle is uploaded objects first, its manifest (`attestation.json`: every artifact's sha256)
  last: a bundle prefix without its manifest is incomplete and nothing reads it (verify says
  "missing attestation");
- `published.json` is written last of all with a conditional PUT: `If-Match: <ETag read>` when a
  pointer exists, `If-None-Match: *` when none does; a publisher that loses (HTTP 412) re-reads
  the pointer, decides again and retries, so two publishers never both overwrite the same
  predecessor and no publication is lost (`PreconditionFailed`).

Credentials come from boto3's standard chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_PROFILE`, instance roles); the endpoint from `LENS_S3_ENDPOINT`, else
`AWS_ENDPOINT_URL` (boto3 reads it), else AWS. Credentials are never put in a URL, an exception,
a log line or metadata: a URL with user info is refused, and every error is rewritten into one
line naming the object and the S3 error code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from lens_core.common.hashing import atomic_path, sha256_file

SCHEME = "s3"
ENDPOINT_ENV = "LENS_S3_ENDPOINT"
WORK_DIR_ENV = "LENS_WORK_DIR"
SHA_META = "sha256"  # user metadata: x-amz-meta-sha256
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SECRET_ENVS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
INSTALL_HINT = "pip install -e '.[s3]'"


class ObjectStoreError(RuntimeError):
    """An object-store operation failed (one line: the object, the operation, the S3 code)."""


class PreconditionFailed(ObjectStoreError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


def is_url(value: str | os.PathLike | None) -> bool:
    """Whether a LENS_DATA_DIR value is an object-store URL (`scheme://...`), not a local path."""
    return isinstance(value, str) and "://" in value


def parse_url(url: str, what: str = "LENS_DATA_DIR") -> tuple[str, str]:
    """(bucket, prefix without slashes) of `s3://bucket/prefix`; anything else is refused in one line."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != SCHEME:
        raise ValueError(f"{what}={_safe(url)}: only s3:// URLs are supported (or a local path)")
    if "@" in parts.netloc:
        raise ValueError(
            f"{what}: credentials in the URL are refused; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) instead"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket or "") or ".." in bucket:
        raise ValueError(f"{what}={_safe(url)}: {bucket!r} is not a valid S3 bucket name")
    if parts.query or parts.fragment:
        raise ValueError(f"{what}={_safe(url)}: a query or fragment is not part of an s3:// location")
    prefix = parts.path.strip("/")
    segs = prefix.split("/") if prefix else []
    if any(s in ("", ".", "..") for s in segs):
        raise ValueError(f"{what}={_safe(url)}: the prefix has an empty, '.' or '..' segment")
    return bucket, prefix


def _safe(url: str) -> str:
    """A URL as it may be printed: user info (if any) removed."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl()


def work_dir_for(url: str) -> Path:
    """The local working copy of an object-store data dir: `$LENS_WORK_DIR`, else a directory
    derived from the URL under the user's cache (`~/.cache/lens/work/<hash>`)."""
    parse_url(url)  # refuse a bad URL before naming a directory after it
    override = os.environ.get(WORK_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    digest = hashlib.sha256(url.strip().rstrip("/").encode()).hexdigest()[:16]
    return (Path(cache) / "lens" / "work" / digest).resolve()


def _scrub(text: str) -> str:
    for name in _SECRET_ENVS:
        v = os.environ.get(name)
        if v and len(v) >= 4:
            text = text.replace(v, "***")
    return text


def endpoint_url() -> str | None:
    """`LENS_S3_ENDPOINT`, else `AWS_ENDPOINT_URL` (None: AWS itself). User info is refused."""
    for name in (ENDPOINT_ENV, "AWS_ENDPOINT_URL"):
        v = os.environ.get(name, "").strip()
        if v:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{name}={_safe(v)}: expected an http(s):// URL")
            if "@" in parts.netloc:
                raise ValueError(f"{name}: credentials in the endpoint URL are refused; use the AWS_* variables")
            return v
    return None


@dataclass
class S3Store:
    """One bucket and prefix; keys are the working copy's relative POSIX paths."""

    bucket: str
    prefix: str
    _client: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, rel: str) -> str:
        rel = PurePosixPath(rel).as_posix().lstrip("/")
        if any(s in ("", ".", "..") for s in rel.split("/")):
            raise ValueError(f"{rel!r}: not a relative object name")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def where(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3  # lazy: the optional `s3` extra, only with an s3:// data dir
                from botocore.config import Config  # lazy: as above
            except ImportError:
                raise ObjectStoreError(f"{self.url}: boto3 is not installed (the `s3` extra: {INSTALL_HINT})") from None
            cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=120)
            self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=cfg)
        return self._client

    # -- errors -------------------------------------------------------------------------------
    def _error(self, op: str, rel: str, err: BaseException) -> ObjectStoreError:
        code, status = _code(err)
        where = self.where(rel) if rel else self.url
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{where}: {op}: the object changed since it was read ({code})")
        name = type(err).__name__
        if name == "NoCredentialsError":
            msg = "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            msg = f"cannot reach the endpoint {endpoint_url() or 'of AWS S3'}"
        elif status == 404 and not rel:
            msg = "NoSuchBucket (HTTP 404)"
        elif status == 403:
            msg = f"{code or 'AccessDenied'} (HTTP 403: check the AWS credentials and the bucket policy)"
        elif code:
            msg = f"{code}" + (f" (HTTP {status})" if status else "")
        else:
            msg = f"{name}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        return ObjectStoreError(_scrub(f"{where}: {op} failed: {msg}"))

    def _call(self, op: str, rel: str, fn, **kw):
        try:
            return fn(**kw)
        except ObjectStoreError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore's errors, rewritten into one scrubbed line
            raise self._error(op, rel, e) from None

    def check(self) -> None:
        """The bucket exists and these credentials may use it (one HEAD of the bucket)."""
        self._call("HEAD bucket", "", self.client.head_bucket, Bucket=self.bucket)

    # -- objects ------------------------------------------------------------------------------
    def head(self, rel: str) -> dict[str, Any] | None:
        """{etag, size, sha256} of an object, or None when there is none."""
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
        except Exception as e:  # noqa: BLE001
            if _code(e)[1] == 404 or _code(e)[0] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("HEAD", rel, e) from None
        return {
            "etag": r.get("ETag"),
            "size": r.get("ContentLength"),
            "sha256": (r.get("Metadata") or {}).get(SHA_META),
        }

    def get_bytes(self, rel: str) -> tuple[bytes, str] | None:
        """(content, ETag) of an object, or None when there is none."""
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
            return r["Body"].read(), r.get("ETag")
        except Exception as e:  # noqa: BLE001
            if _code(e)[1] == 404 or _code(e)[0] in ("NoSuchKey", "404"):
                return None
            raise self._error("GET", rel, e) from None

    def put_bytes(self, rel: str, data: bytes, if_match: str | None = None, if_none_match: bool = False) -> str:
        """One PUT of `data` with its sha256 as metadata; conditional on `if_match` (an ETag) or
        `if_none_match` (the object must not exist). Returns the new ETag; a lost condition
        raises `PreconditionFailed`."""
        kw: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key(rel),
            "Body": data,
            "Metadata": {SHA_META: hashlib.sha256(data).hexdigest()},
        }
        if if_match is not None:
            kw["IfMatch"] = if_match
        elif if_none_match:
            kw["IfNoneMatch"] = "*"
        return self._call("PUT", rel, self.client.put_object, **kw).get("ETag")

    def put_file(self, local: str | os.PathLike, rel: str, sha256: str | None = None) -> str:
        """Upload one file whole (one PUT, or a multipart upload that appears only when complete)."""
        sha = sha256 or sha256_file(local)
        self._call(
            "PUT",
            rel,
            self.client.upload_file,
            Filename=os.fspath(local),
            Bucket=self.bucket,
            Key=self.key(rel),
            ExtraArgs={"Metadata": {SHA_META: sha}},
        )
        return sha

    def download(self, rel: str, local: str | os.PathLike, want_sha256: str | None = None) -> str:
        """Copy an object to `local` (atomically: a temporary name, renamed when its sha256 is
        the one recorded with the object, or `want_sha256`). Returns the sha256."""
        head = self.head(rel)
        if head is None:
            raise ObjectStoreError(f"{self.where(rel)}: no such object")
        want = want_sha256 or head.get("sha256")
        with atomic_path(local) as tmp:
            self._call(
                "GET", rel, self.client.download_file, Bucket=self.bucket, Key=self.key(rel), Filename=os.fspath(tmp)
            )
            got = sha256_file(tmp)
            if want and got != want:
                raise ObjectStoreError(f"{self.where(rel)}: sha256 {got[:12]}… != recorded {want[:12]}… (refused)")
        return got

    def get_file(self, rel: str, local: str | os.PathLike) -> None:
        """Copy an object to `local` as it is (atomically), unchecked: for a reader that judges the
        content itself against a manifest (verify)."""
        with atomic_path(local) as tmp:
            self._call(
                "GET", rel, self.client.download_file, Bucket=self.bucket, Key=self.key(rel), Filename=os.fspath(tmp)
            )

    def list(self, rel_prefix: str) -> list[str]:
        """The relative names of the objects under `rel_prefix/` (sorted)."""
        base = self.key(rel_prefix) + "/"
        out: list[str] = []
        pages = self._call("LIST", rel_prefix, self.client.get_paginator("list_objects_v2").paginate,
                           Bucket=self.bucket, Prefix=base)  # fmt: skip
        try:
            for page in pages:
                out += [o["Key"] for o in page.get("Contents", [])]
        except Exception as e:  # noqa: BLE001
            raise self._error("LIST", rel_prefix, e) from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in out)

    def delete(self, rel: str) -> None:
        self._call("DELETE", rel, self.client.delete_object, Bucket=self.bucket, Key=self.key(rel))

    # -- sets of objects ------------------------------------------------------------------------
    def put_tree(self, local_dir: str | os.PathLike, rel_prefix: str, last: str | None = None) -> dict[str, str]:
        """Upload every file under `local_dir` to `rel_prefix/...`, the file named `last` (the
        manifest) after all others. Returns {relative name: sha256}."""
        root = Path(local_dir)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        order = [f for f in files if f != last] + ([last] if last in files else [])
        return {f: self.put_file(root / f, f"{rel_prefix}/{f}") for f in order}

    def get_tree(self, rel_prefix: str, local_dir: str | os.PathLike) -> list[str]:
        """Copy every object under `rel_prefix/` into `local_dir` (each checked against its
        recorded sha256). Returns the relative names."""
        names = [n[len(rel_prefix) + 1 :] for n in self.list(rel_prefix)]
        for n in names:
            self.download(f"{rel_prefix}/{n}", Path(local_dir) / n)
        return names


def _code(err: BaseException) -> tuple[str, int | None]:
    resp = getattr(err, "response", None)
    if not isinstance(resp, dict):
        return "", None
    code = str((resp.get("Error") or {}).get("Code") or "")
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status


@functools.lru_cache(maxsize=8)
def _store(bucket: str, prefix: str, endpoint: str | None) -> S3Store:
    return S3Store(bucket, prefix)


def store_from_url(url: str, what: str = "LENS_DATA_DIR") -> S3Store:
    bucket, prefix = parse_url(url, what)
    return _store(bucket, prefix, endpoint_url())


def configured_url() -> str | None:
    """`LENS_DATA_DIR` when it is an object-store URL, else None."""
    v = os.environ.get("LENS_DATA_DIR", "").strip()
    return v if is_url(v) else None


def store_for(path: str | os.PathLike) -> tuple[S3Store, str] | None:
    """(store, relative name) when `path` lies in the working copy of the configured object-store
    data dir; None with a local data dir (the artifact stays where it is)."""
    url = configured_url()
    if url is None:
        return None
    root = work_dir_for(url)
    p = Path(path)
    p = p if p.is_absolute() else Path.cwd() / p
    try:
        rel = p.parent.resolve().relative_to(root).as_posix()
    except ValueError:
        return None
    return store_from_url(url), (p.name if rel == "." else f"{rel}/{p.name}")


def commit_file(path: str | os.PathLike, sha256: str | None = None) -> bool:
    """Upload a file of the working copy to its object (its commit point); False when the data
    dir is local."""
    hit = store_for(path)
    if hit is None:
        return False
    store, rel = hit
    store.put_file(path, rel, sha256)
    return True


def sync_file(path: str | os.PathLike) -> Path:
    """Make the working copy's file the store's: copied when absent locally or different from the
    object (by sha256); left alone when the store has no such object or the data dir is local."""
    p = Path(path)
    hit = store_for(p)
    if hit is None:
        return p
    store, rel = hit
    head = store.head(rel)
    if head is None:
        return p
    if p.is_file() and head.get("sha256") and sha256_file(p) == head["sha256"]:
        return p
    store.download(rel, p)
    return p
