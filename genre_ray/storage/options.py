"""Object-store settings: one dictionary in the vocabulary Lance already speaks, translated for the other clients.

`storage.options` in the config and the standard AWS variables of the environment are merged (the config wins) into
object_store keys (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`, `aws_region`, `aws_endpoint`,
`allow_http`, `aws_virtual_hosted_style_request`): exactly what Lance, LanceDB and lance-ray take as
`storage_options`, and what obstore takes as its config. pyarrow's S3FileSystem (Ray Data, Ray Train, small files)
gets the same settings under its own names. Nothing here logs or returns a secret in a printable form: `redacted`
is what run.json and messages may show.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# environment variable -> object_store key (the first one set wins for a key)
_ENV = (
    ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    ("AWS_SESSION_TOKEN", "aws_session_token"),
    ("AWS_REGION", "aws_region"),
    ("AWS_DEFAULT_REGION", "aws_region"),
    ("AWS_ENDPOINT_URL_S3", "aws_endpoint"),
    ("AWS_ENDPOINT_URL", "aws_endpoint"),
    ("AWS_ENDPOINT", "aws_endpoint"),
    ("AWS_ALLOW_HTTP", "allow_http"),
)
# spellings Lance / object_store also accept, folded into one key so a config may use either
_ALIASES = {
    "access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "region": "aws_region",
    "endpoint": "aws_endpoint",
    "endpoint_url": "aws_endpoint",
    "aws_endpoint_url": "aws_endpoint",
    "aws_allow_http": "allow_http",
}
SECRET_WORDS = ("secret", "token", "password", "access_key", "credential", "sas", "key_id")
REDACTED = "<redacted>"


def is_secret(key: str) -> bool:
    return any(w in key.lower() for w in SECRET_WORDS)


def redacted(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as run.json and messages may show them: every credential-like value replaced."""
    return {k: (REDACTED if is_secret(k) else v) for k, v in options.items()}


def resolve(configured: Mapping[str, str] | None) -> dict[str, str]:
    """Environment (standard AWS variables) overlaid with the configured options, in object_store keys."""
    out: dict[str, str] = {}
    for var, key in _ENV:
        value = os.environ.get(var)
        if value and key not in out:
            out[key] = value
    for key, value in (configured or {}).items():
        out[_ALIASES.get(key.lower(), key.lower())] = str(value)
    endpoint = out.get("aws_endpoint", "")
    if endpoint.startswith("http://"):
        out.setdefault("allow_http", "true")  # object_store refuses plain HTTP unless told
    return out


def pyarrow_s3_kwargs(options: Mapping[str, str]) -> dict[str, Any]:
    """pyarrow.fs.S3FileSystem arguments for the same settings (only those given: the rest stays pyarrow's
    default credential chain, e.g. an instance role)."""
    kw: dict[str, Any] = {}
    names = {
        "aws_access_key_id": "access_key",
        "aws_secret_access_key": "secret_key",
        "aws_session_token": "session_token",
        "aws_region": "region",
    }
    for key, arg in names.items():
        if options.get(key):
            kw[arg] = options[key]
    endpoint = options.get("aws_endpoint")
    if endpoint:
        scheme, sep, rest = endpoint.partition("://")
        kw["endpoint_override"] = rest if sep else endpoint
        kw["scheme"] = scheme if sep else "https"
    if options.get("aws_virtual_hosted_style_request", "").lower() == "true":
        kw["force_virtual_addressing"] = True
    # a missing bucket is an error to report, never something to create
    kw["allow_bucket_creation"] = False
    kw["allow_bucket_deletion"] = False
    return kw
