"""`zlab generate`: one image to a file or a directory, or `--collect` a paid one by its request id.

The output is checked before anything is sent (and paid for); a file gets the format its suffix names.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zlab import errors
from zlab.cli.commands import reach
from zlab.cli.parser import parse_lora


def generate(args: argparse.Namespace) -> int:
    from zlab.api.download import write_image_as
    from zlab.client import Client
    from zlab.core.request import DEFAULT_LORAS, LoRA, Request

    if (args.prompt is None) == (args.collect is None):
        raise errors.ValidationError("prompt", args.prompt, "a prompt, or --collect REQUEST_ID (not both)")
    out = _check_out_file(args.out)  # before anything is paid for
    try:
        with Client() as client:
            reach(client.base_url, client.aclient.builtin)
            if args.collect is not None:  # a job paid for earlier: fetched by its id, never sent again
                generation = client.job(args.collect).download(args.timeout)
            else:
                loras = () if args.no_lora else [LoRA(*parse_lora(text)) for text in args.lora] or DEFAULT_LORAS
                request = Request(args.prompt, loras=loras, width=args.width, height=args.height, seed=args.seed)
                generation = client.generate(request, timeout=args.timeout)
    except KeyboardInterrupt:  # the client said what was paid and how to collect it; never "run again"
        print("zlab: interrupted", file=sys.stderr)
        return 130
    path = out / f"{_safe_name(generation.request_id)}{generation.suffix}" if out.is_dir() else out
    try:
        converted = write_image_as(path, generation.data, generation.image)
    except OSError as exc:
        raise errors.ZlabError(
            f"could not write {path} ({exc.strerror}); the image is paid for: collect it again with "
            f"`zlab generate --collect {generation.request_id} --out FILE`"
        ) from None
    note = f"; converted from {generation.suffix[1:].upper()} as served" if converted else ""
    size = f"{generation.image.width}x{generation.image.height}"
    print(
        f"{path} ({size}, request {generation.request_id}{note})"
        + (f"\nzlab: {generation.note}" if generation.note else "")
    )
    return 0


def _check_out_file(text: str) -> Path:
    """`generate --out`: checked before the job is sent (and paid for). A name with an image suffix is that
    file (written in that format); an existing directory, a name ending in a separator or a name without a
    suffix is a directory (made if needed) that gets ``<request id>.<served suffix>``."""
    out = Path(text)
    if out.is_dir() or text.endswith(("/", os.sep)) or (not out.suffix and not out.exists()):
        if out.exists() and not out.is_dir():
            raise errors.ValidationError("--out", text, "a directory (this is a file)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.ValidationError("--out", text, "a directory you may create", exc.strerror or "") from None
        if not os.access(out, os.W_OK):
            raise errors.ValidationError("--out", text, "a directory you may write")
        return out
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):  # what write_image_as writes
        raise errors.ValidationError(
            "--out", text, "a file ending in .png, .jpg, .jpeg or .webp, or a directory", "nothing was sent"
        )
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise errors.ValidationError("--out", text, f"a file in an existing directory ({parent} does not exist)")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise errors.ValidationError("--out", text, "a file you may write")
    return out


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip(".") or "image"
