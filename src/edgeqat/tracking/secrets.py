"""Mask secrets before anything is logged (MLflow params, config dumps, error messages).

Three rules, applied together by :func:`scrub_secrets`:

1. a value whose *key* holds a secret (``password``, ``secret``, ``token``, ``credentials``,
   ``api_key``, ``access_key``, ``private_key``, ...) is replaced by ``***``; keys that only
   *describe* a secret (``password_file``, ``token_env``, ``max_tokens``, ``tokenizer``) stay;
2. the password in a URL (``postgresql://user:pw@host/db``) and signature/token query parameters
   (presigned S3 URLs) are masked wherever they appear;
3. the values of secret-looking environment variables (``AWS_SECRET_ACCESS_KEY``,
   ``EDGEQAT_ADMIN_PASSWORD``, ``MLFLOW_TRACKING_PASSWORD``, ...) are masked wherever they appear,
   even under an innocent key, because a secret pasted into the wrong field is still a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

MASK = "***"
MIN_SECRET_VALUE_LENGTH = 6  # shorter env values ("1", "true") would mask innocent text

_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "secret", "secrets", "token", "credential", "credentials",
    "apikey", "authorization", "cookie", "accesskey", "secretkey", "privatekey", "sessionkey", "dsn",
})
# "<qualifier>_key" is a secret ("api_key", "access_key"); "key" alone ("sort_key") is not.
_KEY_QUALIFIERS = frozenset({
    "api", "access", "secret", "private", "auth", "signing", "encryption", "session", "hmac",
    "master", "client", "ssh", "webhook", "license",
})
# A key ending in one of these describes a secret without holding it (password_file, token_env).
_DESCRIPTIVE_LAST = frozenset({
    "name", "names", "count", "len", "length", "size", "limit", "budget", "file", "path", "dir",
    "env", "var", "enabled", "required", "header", "type", "kind", "source", "ttl", "url", "uri",
    "endpoint",
})
_COUNTING_FIRST = frozenset({"max", "min", "num", "n"})
#: Dotted paths (or bare keys) never masked by the key rule.
DEFAULT_SAFE_KEYS = frozenset({"model.name", "data.source", "tracking.experiment_name", "tracking.run_name"})

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|sig|token|"
    r"access_token|api_key|apikey|password|secret)=)[^&#\s]+",
    re.IGNORECASE,
)

T = TypeVar("T")


def _words(key: str) -> list[str]:
    return [w.lower() for w in _WORD_SPLIT.split(str(key)) if w]


def looks_secret(key: str) -> bool:
    """Whether a config key or variable name holds a secret (see the module docstring for the rule)."""
    words = _words(key)
    if not words or words[-1] in _DESCRIPTIVE_LAST or words[0] in _COUNTING_FIRST:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(w == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(words))


def secret_values_from_env(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Values of secret-looking environment variables, long enough to mask safely."""
    if env is None:
        # key by key, not os.environ.items(): another thread (MLflow's telemetry) may unset a variable
        # between the listing and the lookup, and items() then raises KeyError mid-run
        env = {k: v for k in list(os.environ) if (v := os.environ.get(k)) is not None}
    return frozenset(v for k, v in env.items() if looks_secret(k) and len(v) >= MIN_SECRET_VALUE_LENGTH)


def mask_url(text: str) -> str:
    """Mask URL passwords (``scheme://user:***@host``) and signature/token query parameters."""
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def mask_text(text: str, secret_values: Iterable[str] = ()) -> str:
    """``text`` with URL secrets and every occurrence of ``secret_values`` masked (longest first)."""
    for value in sorted(set(secret_values), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return mask_url(text)


def _mask_all(value: Any) -> Any:
    """Mask every leaf under a secret key, keeping the structure (and ``None``/empty as they are)."""
    if isinstance(value, Mapping):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_all(v) for v in value)
    if value is None or value == "":
        return value  # "not set" is useful to see, and reveals nothing
    return MASK


def _scrub(value: Any, path: str, safe_keys: frozenset[str], secret_values: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if child not in safe_keys and str(key) not in safe_keys and looks_secret(str(key)):
                out[key] = _mask_all(item)
            else:
                out[key] = _scrub(item, child, safe_keys, secret_values)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v, path, safe_keys, secret_values) for v in value)
    if isinstance(value, str):
        return mask_text(value, secret_values)
    return value


def _to_container(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve here (e.g. a missing env var)
        return OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)


def scrub_secrets(
    config: T,
    *,
    safe_keys: Iterable[str] = DEFAULT_SAFE_KEYS,
    extra_secrets: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> T:
    """A copy of ``config`` with secrets masked as ``***``; the input is not modified.

    Args:
        config: a mapping, list/tuple, string, or OmegaConf ``DictConfig``/``ListConfig``
            (interpolations are resolved first, so ``${oc.env:...}`` values are checked too).
        safe_keys: dotted paths or bare keys exempt from the key rule.
        extra_secrets: more literal values to mask wherever they appear.
        env: where to find secret-looking variables (default: ``os.environ``).

    Returns:
        The same shape and type (``DictConfig`` in, ``DictConfig`` out); other objects unchanged.
    """
    secret_values = secret_values_from_env(env) | {s for s in extra_secrets if s}
    safe = frozenset(safe_keys)
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        scrubbed: Any = OmegaConf.create(_scrub(_to_container(config), "", safe, secret_values))
    else:
        scrubbed = _scrub(config, "", safe, secret_values)
    return cast(T, scrubbed)
