"""API keys: where they come from, and how they are kept out of every text we write.

A key lives only in a ``Secret`` (whose repr is masked) and in the headers of the request being
sent. Everything that leaves the process as text (log records, exception messages, failure
reasons, cached answers) passes through ``redact``, which masks every key seen by this process,
so even a server that echoes the key back in an error body cannot make us write it down.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import urllib.parse

from vlmclf.models.api.errors import ApiKeyMissing

logger = logging.getLogger("vlmclf.api")

KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}

_MASK = "***"
_URLSAFE = str.maketrans("+/", "-_")
_secrets: set[str] = set()
_prefixes: set[str] = set()
_secrets_lock = threading.Lock()


class Secret:
    """A key that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Secret is not picklable: pass the key through the environment")


PREFIX_MIN = 12
"""A key's prefix this long (or longer) is masked too, in keys of at least ``2 * PREFIX_MIN``
characters: a server that echoes a truncated key still shows most of it."""
ENCODED_MIN = 16  # shorter fragments of an encoded key could be ordinary text


def register_secret(value: str) -> None:
    """Remember a value that ``redact`` must mask from now on, with its obvious encodings:
    base64 (standard and URL-safe, at any byte offset inside a longer encoded text), URL
    quoting and hex."""
    if len(value) < 4:  # masking shorter strings would garble ordinary text
        return
    forms = {value, *(f for f in encoded_forms(value) if len(f) >= ENCODED_MIN)}
    with _secrets_lock:
        _secrets.update(forms)
        if len(value) >= 2 * PREFIX_MIN:
            _prefixes.add(value)


def encoded_forms(value: str) -> set[str]:
    """The key as it reads once encoded: ``base64`` of it (also as the middle of a longer
    encoded text, whatever its byte offset there), URL-quoted and hex."""
    raw = value.encode()
    forms = {urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), raw.hex(),
             raw.hex().upper()}  # fmt: skip
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        # only the characters every bit of which comes from the key itself
        core = encoded[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6]
        forms.update({core, core.translate(_URLSAFE)})
    return forms - {value}


def redact(text: str) -> str:
    """``text`` with every registered key (and its encodings, and a long prefix) masked."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
        prefixes = list(_prefixes)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    for key in prefixes:
        text = _mask_prefixes(text, key)
    return text


def _mask_prefixes(text: str, key: str) -> str:
    """Every run of ``PREFIX_MIN`` or more of the key's first characters, masked."""
    head = key[:PREFIX_MIN]
    start = text.find(head)
    while start != -1:
        end = start + PREFIX_MIN
        while end - start < len(key) and end < len(text) and text[end] == key[end - start]:
            end += 1
        text = text[:start] + _MASK + text[end:]
        start = text.find(head, start + len(_MASK))
    return text


class RedactingFilter(logging.Filter):
    """Masks keys in a record's formatted message, so no handler ever sees one."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def _install_filter() -> None:
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())


_install_filter()


def find_key(provider: str, *, key_optional: bool) -> Secret | None:
    """The key from the provider's standard variable(s), or a clear error naming them.

    ``key_optional`` is for OpenAI-compatible servers other than api.openai.com (vLLM, llama.cpp,
    Ollama), which often need no key: then a missing key means "send no Authorization header".
    """
    names = KEY_VARIABLES[provider]
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return Secret(value)
    if key_optional:
        return None
    wanted = " (or ".join(names) + ")" * (len(names) - 1)
    hint = " (or --base-url pointing at an OpenAI-compatible server that needs none)"
    raise ApiKeyMissing(
        f"{provider} models need an API key: set the {wanted} environment variable"
        + (hint if provider == "openai" else "")
    )


def strip_credentials(url: str) -> str:
    """``url`` without user:password, query string or fragment: safe to log and to hash."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
