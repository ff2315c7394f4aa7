"""Secrets out of report files: the RunComfy token in any form it can take in an output (raw, JSON/HTML/URL
escaped, inside base64 text) is replaced by a mask. The token never reaches a report through zlab; this
catches a notebook that prints it."""

from __future__ import annotations

import base64
import html
import json
import math
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zlab.core.config import environment

SECRET_ENV = ("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY")
MASK = "**********"
_MIN_SECRET_LEN = 6  # shorter values would scrub ordinary text; real tokens are far longer


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    env = environment() if env is None else env
    raw = [env.get(k, "") for k in SECRET_ENV]
    # zlab sends the token stripped (a token file may end in "\r\n"): scrub both spellings.
    values = {v for r in raw for v in (r, r.strip())}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    return MASK if any(s in str(value) for s in secrets) else value


def _secret_forms(secret: str) -> set[str]:
    """Ways a secret can show up in an output file: raw, JSON/HTML/URL-escaped, inside base64 text."""
    forms = {secret, json.dumps(secret)[1:-1], html.escape(secret), urllib.parse.quote(secret, safe="")}
    raw = secret.encode()
    for shift in range(3):  # base64 of text that contains the secret at any byte offset
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            full = enc(b"\0" * shift + raw).decode()
            start = math.ceil(shift * 4 / 3)  # drop chars that mix in the preceding bytes
            end = (shift + len(raw)) * 8 // 6  # and the ones that mix in what follows
            if end - start >= 8:
                forms.add(full[start:end])
    return {f for f in forms if f}


def scrub_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        for form in sorted(_secret_forms(secret), key=len, reverse=True):
            text = text.replace(form, MASK)
    return text


def scrub_file(path: Path, secrets: list[str]) -> bool:
    """Replace every secret form in `path` by MASK; True when something was replaced."""
    if not secrets or not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    clean = scrub_text(text, secrets)
    if clean == text:
        return False
    path.write_text(clean, encoding="utf-8")
    return True
