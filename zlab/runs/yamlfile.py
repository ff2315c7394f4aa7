"""Reading a sweep file safely: a bounded, regular, decodable file; YAML without surprises.

A sweep file is the user's, but it may be a FIFO, a directory, a symlink loop, UTF-16 from a Windows
editor, a 300-byte alias bomb, or YAML that silently keeps the last of two equal keys. Each of these
is refused with a `ValidationError` naming the file and the problem, before anything is sent.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from zlab.errors import ValidationError

MAX_FILE_BYTES = 1 << 20  # a sweep file is a page of text; a megabyte is clearly something else
MAX_ALIASES = 100  # anchors are fine for sharing a LoRA list; thousands of aliases are a bomb
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: Path, what: str = "sweep file") -> str:
    """The text of a regular file of at most MAX_FILE_BYTES, in UTF-8 or UTF-16 (by its BOM)."""
    try:
        info = path.stat()  # follows symlinks; a loop raises here
    except FileNotFoundError:
        raise ValidationError(what, str(path), "an existing YAML file") from None
    except OSError as exc:
        raise ValidationError(what, str(path), f"a readable file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ValidationError(what, str(path), f"a regular YAML file (this is {kind})")
    if info.st_size > MAX_FILE_BYTES:
        raise ValidationError(what, str(path), f"a YAML file of at most {MAX_FILE_BYTES // 1024} KiB")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never block on a special file
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValidationError(what, str(path), f"a readable file ({exc.strerror})") from None
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        allowed = f"text in UTF-8 (or UTF-16 with a BOM); byte {exc.start} is not"
        raise ValidationError(what, str(path), allowed) from None


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys and counts aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name): refusing a possible alias bomb")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                mark = key_node.start_mark
                raise yaml.YAMLError(f"the key {key!r} appears twice (line {mark.line + 1}); keep one")
            seen.add(key) if isinstance(key, str | int | float | bool) else None
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, what: str = "sweep file") -> Any:
    """Parse a YAML file with every check above; errors name the file and say what is wrong."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ValidationError(what, str(path), f"valid YAML ({str(exc)[:300]})") from None
