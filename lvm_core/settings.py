"""LVM configuration: `config/lvm.yaml`, its profile, a partial YAML from `LVM_CONFIG`, then env.

Order (later wins): the defaults of `config/lvm.yaml` (the `small` profile, what `make demo`
runs); the profile named by `LVM_PROFILE` (or the `profile` argument, which the Dagster assets
take from the run tag `lvm/profile`), merged from `profiles.<name>`, then its `cpu` block when
the run's device is the CPU (a CPU path that finishes in hours); `LVM_CONFIG` (a partial YAML);
the single env settings; explicit overrides.

Environment: `LVM_PROFILE` (`small` / `full`), `LVM_CONFIG`, `LVM_CORPUS_DIR` (a documentation
folder, or `pydoc`), `LVM_MAX_SENTENCES` (corpus cap; 0 = none), `LVM_CONTEXT_LEN`,
`LVM_EPOCHS`, `LVM_DEVICE` (`cpu` / `cuda`; default: cuda when available).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from lens_core.common.settings import env_number

DEFAULT_CONFIG = Path(__file__).with_name("config") / "lvm.yaml"
PROFILE_TAG = "lvm/profile"  # Dagster run tag naming the profile (the weekly LVM schedule sets it)
DEFAULT_PROFILE = "small"


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_int(name: str) -> int | None:
    return env_number(name, int, minimum=0)


def profile_name(profile: str | None = None) -> str:
    return (profile or os.environ.get("LVM_PROFILE", "") or DEFAULT_PROFILE).strip().lower()


def load_config(
    overrides: dict[str, Any] | None = None, profile: str | None = None, device: str | None = None
) -> dict[str, Any]:
    """The merged LVM config as a plain dict (a fresh copy each call); `cfg["profile"]` names
    the profile and `cfg["profile_device"]` the device its device block was chosen for."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    profiles = data.pop("profiles", {}) or {}
    name = profile_name(profile)
    if name not in profiles:
        raise ValueError(f"LVM_PROFILE={name}: unknown profile (known: {', '.join(sorted(profiles))})")
    prof = dict(profiles[name] or {})
    cpu_block = prof.pop("cpu", None)
    data = _deep_merge(data, prof)
    dev = None
    if cpu_block:
        dev = pick_device(device)
        if dev == "cpu":
            data = _deep_merge(data, cpu_block)
    data["profile"] = name
    data["profile_device"] = dev
    extra = os.environ.get("LVM_CONFIG", "").strip()
    if extra:
        p = Path(extra)
        if not p.is_file():
            raise FileNotFoundError(f"LVM_CONFIG={extra}: no such file")
        data = _deep_merge(data, yaml.safe_load(p.read_text()) or {})
    if (v := _env_int("LVM_MAX_SENTENCES")) is not None:
        data["corpus"]["max_sentences"] = v
    if (v := _env_int("LVM_CONTEXT_LEN")) is not None:
        if v < 1:
            raise ValueError("LVM_CONTEXT_LEN must be >= 1")
        data["sequences"]["context_len"] = v
    if (v := _env_int("LVM_EPOCHS")) is not None:
        data["train"]["epochs"] = v
    if overrides:
        data = _deep_merge(data, copy.deepcopy(overrides))
    return data


def pick_device(preferred: str | None = None) -> str:
    """`cuda` when available (or asked for via LVM_DEVICE), else `cpu`: chosen at run time."""
    import torch

    want = (preferred or os.environ.get("LVM_DEVICE", "")).strip().lower()
    if want == "cpu":
        return "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("LVM_DEVICE=cuda but no CUDA device is available")
    return "cuda" if torch.cuda.is_available() else "cpu"
