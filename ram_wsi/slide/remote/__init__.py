"""Slides on object storage and web servers: ``s3://``, ``gs://``, ``az://`` and ``http(s)://``
OME-Zarr stores, read through zarr v3's own store layer (:class:`zarr.storage.FsspecStore`).

Why this package: a cohort of 10^4-10^6 slides lives in object storage and every Ray worker reads
from there while only URIs travel. The store provides *bytes* -- whole objects and byte ranges
of shards -- and :mod:`.._zarr_decode` keeps decoding them as it decodes local files, so a remote
glimpse equals the local one to the bit.

Split by job:

- :mod:`.options`: the storage options of a URI (per process or per source), credentials
  refused (they belong in the environment or a credentials file);
- :mod:`.store`: the filesystem clients, :class:`RemoteStore` (batched byte requests: one round
  trip per batch) and the errors a failed request becomes (:func:`storage_error`,
  :data:`UNREACHABLE`, :func:`is_transient`);
- :mod:`.listing`: what lies under a prefix (:func:`scan_prefix`), the inputs' stamps
  (:func:`stamps`), and the store ``ram-wsi convert`` writes (:func:`writable_store`).
"""

from .listing import drop_metadata, scan_prefix, stamps, stored_bytes, writable_store
from .options import (
    MAX_IN_FLIGHT,
    REMOTE_SCHEMES,
    WEB_SCHEMES,
    check_storage_options,
    is_remote,
    join,
    options_for,
    parse_storage_options,
    scheme_of,
    set_storage_options,
    storage_options,
    use_config,
)
from .store import (
    UNREACHABLE,
    RemoteStore,
    Request,
    entry_stamp,
    filesystem,
    is_transient,
    run,
    storage_error,
)

__all__ = [
    "MAX_IN_FLIGHT",
    "REMOTE_SCHEMES",
    "UNREACHABLE",
    "WEB_SCHEMES",
    "RemoteStore",
    "Request",
    "check_storage_options",
    "drop_metadata",
    "entry_stamp",
    "filesystem",
    "is_remote",
    "is_transient",
    "join",
    "options_for",
    "parse_storage_options",
    "run",
    "scan_prefix",
    "scheme_of",
    "set_storage_options",
    "stamps",
    "storage_error",
    "storage_options",
    "stored_bytes",
    "use_config",
    "writable_store",
]
