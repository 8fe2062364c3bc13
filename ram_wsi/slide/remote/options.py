"""Storage options of remote slides: what a URI's filesystem is opened with, never credentials.

Credentials come from where the ecosystem keeps them, never from this package's configs or
command lines (both are written down: configs into checkpoints, command lines into
``run_metadata.json``): the standard environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an
S3-compatible store; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``), the shared files
(``~/.aws``, ``~/.netrc`` for a web server with ``client_kwargs: {trust_env: true}``) and
instance roles. *Storage options* hold the rest (``endpoint_url``, ``anon: true`` for a public
bucket, ``profile``, ``client_kwargs``, ``config_kwargs``): set per process with
:func:`set_storage_options` (from ``data.slides.storage_options`` or ``--storage-option``) or
per source (``open_source(url, storage_options=...)``); :func:`check_storage_options` refuses a
credential among them with the reason.

Options are flat for the object stores (``s3``, ``gs``, ``az``) or per scheme under the
scheme's name (``{s3: {...}, https: {...}}``); a web server takes only its own section (an
``endpoint_url`` means nothing to it).

Process state: the storage options (a setting, like :mod:`..cache`'s sizes).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MAX_IN_FLIGHT",
    "REMOTE_SCHEMES",
    "WEB_SCHEMES",
    "check_storage_options",
    "is_remote",
    "join",
    "options_for",
    "parse_storage_options",
    "scheme_of",
    "set_storage_options",
    "storage_options",
    "use_config",
]


#: The schemes read through fsspec, and the package each needs.
REMOTE_SCHEMES: dict[str, str] = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
    "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp",
}
_SECTION = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}  # scheme -> options section
#: The web schemes: a server takes only its own options section and has no buckets.
WEB_SCHEMES = frozenset({"http", "https"})

# Keys whose values are credentials, in any backend's spelling (compared lower-case, at any
# depth of the options): refused, see the module docstring.
_CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "session_token", "password", "passwd", "username",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key",
    "secret_key", "access_key_id", "secret_access_key", "account_key", "sas_token",
    "client_secret", "connection_string", "credential", "credentials", "authorization",
    "cookie", "auth", "api_key",
})
# gcsfs' ``token`` may name a method instead of holding one.
_TOKEN_METHODS = frozenset({"anon", "google_default", "cloud", "browser"})

# Requests in flight per batch (an object store answers each in ~10-50 ms; more in flight hide
# it); S3's connection pool is sized to match (botocore's default is 10).
MAX_IN_FLIGHT = 64
_S3_DEFAULTS: dict[str, Any] = {
    # No HEAD before a whole-object GET (s3fs does one to split big downloads).
    "max_concurrency": 1,
    "config_kwargs": {"max_pool_connections": MAX_IN_FLIGHT},
}


def scheme_of(url: str) -> str:
    """The URI's scheme, lower-case (``""`` for a plain path)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def is_remote(path: Any) -> bool:
    """A slide named by an object-store or web URI (``s3://``, ``gs://``, ``az://``,
    ``http(s)://`` ...): read through fsspec, never stat-ed as a local path."""
    return isinstance(path, str) and scheme_of(path) in REMOTE_SCHEMES


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended by ``/`` (no double slashes)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


# ----------------------------------------------------------------------------- storage options
_settings: dict[str, Any] = {"options": {}}
_settings_lock = threading.Lock()


def check_storage_options(options: Mapping[str, Any] | None, where: str = "storage options"
                          ) -> dict[str, Any]:
    """A plain-dict copy of ``options`` when nothing in it is a credential.

    Raises:
        ValueError: ``options`` is not a mapping, or holds a credential (a key such as
            ``key``, ``secret``, ``token``, ``password``, or a URL with a user or password in
            it), saying where credentials belong instead.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{where} must be a mapping of option: value, got "  # noqa: TRY004
                         f"{type(options).__name__}")

    def walk(node: Any, trail: str) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                name = f"{trail}.{k}" if trail else str(k)
                low = str(k).lower()
                if low in _CREDENTIAL_KEYS and not (low == "token" and v in _TOKEN_METHODS):
                    raise ValueError(
                        f"{where}: {name!r} is a credential, and options are written down "
                        "(configs into checkpoints, command lines into run_metadata.json); "
                        "use the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                        "AWS_PROFILE or the option 'profile', GOOGLE_APPLICATION_CREDENTIALS, "
                        "AZURE_STORAGE_*), a credentials file, or anon: true for a public "
                        "bucket")
                out[str(k)] = walk(v, name)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(v, trail) for v in node]
        if isinstance(node, str) and "://" in node and _has_userinfo(node):
            raise ValueError(f"{where}: {trail!r} is a URL with a user or password in it; "
                             "credentials belong in the environment or a credentials file")
        return node

    return walk(options, "")


def _has_userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return bool(parts.username or parts.password)
    except ValueError:
        return False


def set_storage_options(options: Mapping[str, Any] | None) -> None:
    """The storage options of this process: every remote slide opened without its own (a Ray
    actor's, a scorer's) uses them. Checked by :func:`check_storage_options` (ValueError)."""
    clean = check_storage_options(options)
    with _settings_lock:
        _settings["options"] = clean


def use_config(cfg: Any) -> None:
    """Take a slide run's ``data.slides.storage_options`` as this process's (when it states
    any): what a trainer, a Ray rollout actor and ``ram-wsi eval`` call before opening a
    slide, since the readers below them open slides by path alone."""
    data = getattr(cfg, "data", None)
    opts = getattr(getattr(data, "slides", None), "storage_options", None)
    if getattr(data, "source", None) == "slides" and opts:
        set_storage_options(opts)


def storage_options() -> dict[str, Any]:
    """A copy of this process's storage options."""
    return json.loads(json.dumps(_settings["options"], default=str))


def options_for(url: str, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The filesystem options for ``url``: the defaults of its scheme, then the flat options
    (object stores only), then the scheme's own section; ``explicit`` replaces the process's
    options."""
    scheme = scheme_of(url)
    section = _SECTION.get(scheme, scheme)
    base = check_storage_options(explicit) if explicit is not None else storage_options()
    sections = {k for k, v in base.items() if k in REMOTE_SCHEMES and isinstance(v, Mapping)}
    flat = {k: v for k, v in base.items() if k not in sections}
    own = dict(base.get(section) or {})
    if scheme != section:
        own = {**dict(base.get(scheme) or {}), **own}
    if section in WEB_SCHEMES:
        out = own
    else:
        out = _merge(_S3_DEFAULTS if section == "s3" else {}, _merge(flat, own))
    return out


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a`` updated by ``b``, nested mappings merged (``config_kwargs`` keeps its defaults)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), Mapping) else v
    return out


def parse_storage_options(items: Iterable[str], where: str = "--storage-option"
                          ) -> dict[str, Any]:
    """``KEY=VALUE`` strings as storage options: values parsed as YAML (``anon=true`` is a
    bool), dotted keys nest (``config_kwargs.connect_timeout=5``, ``s3.endpoint_url=...``).

    Raises:
        ValueError: an item without ``=``, or a credential (:func:`check_storage_options`).
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where} {item!r} is not of the form KEY=VALUE")
        value = yaml.safe_load(text) if text != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where} {item!r}: {part!r} is not a section")  # noqa: TRY004
        node[parts[-1]] = value
    return check_storage_options(out, where)
