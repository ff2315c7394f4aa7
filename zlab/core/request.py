"""The input schema of `tongyi-mai/z-image/turbo/lora`, validated before anything is sent.

A `Request` is a frozen value: building one checks every field against the model's schema and
raises `ValidationError` naming the field, the value and the allowed range. Its canonical JSON
(every field explicit, the schema's defaults filled in) is what goes on the wire, and its `key`
(a hash of model id + canonical JSON) names it everywhere: ledger rows, image files, caches.

>>> req = Request("a red fox", loras=[LoRA("renderartist/Technically-Color-Z-Image-Turbo", 0.8)], seed=1)
>>> req.width, req.height
(1024, 1536)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zlab.errors import ValidationError

MODEL_ID = "tongyi-mai/z-image/turbo/lora"
DEFAULT_LORA_PATH = "renderartist/Technically-Color-Z-Image-Turbo"
MAX_LORAS = 3
SCALE_RANGE = (0.0, 4.0)
SIZE_RANGE = (256, 1536)
SIZE_STEP = 16  # Z-Image works on 16-pixel patches: other sizes are snapped (or refused) by the service
SEED_RANGE = (-1, 2_147_483_647)
FIELDS = ("prompt", "loras", "width", "height", "seed")
_SCALE_DIGITS = 6  # 0.1 + 0.2 and 0.3 are the same scale, and so the same request key


def check_int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValidationError(field, value, f"an integer from {lo} to {hi}")
    if not lo <= int(value) <= hi:
        raise ValidationError(field, value, f"an integer from {lo} to {hi}")
    return int(value)


def check_size(field: str, value: Any) -> int:
    """A width or height: an integer in range and a multiple of 16; the error names the nearest valid sizes."""
    lo, hi = SIZE_RANGE
    size = check_int(field, value, lo, hi)
    if size % SIZE_STEP:
        below, above = size - size % SIZE_STEP, size - size % SIZE_STEP + SIZE_STEP
        nearest = " or ".join(str(n) for n in (below, above) if lo <= n <= hi)
        raise ValidationError(
            field, value, f"a multiple of {SIZE_STEP} from {lo} to {hi}", f"The nearest valid values are {nearest}."
        )
    return size


def check_scale(field: str, value: Any) -> float:
    lo, hi = SCALE_RANGE
    allowed = f"a number from {lo:g} to {hi:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValidationError(field, value, allowed)
    if not math.isfinite(float(value)) or not lo <= float(value) <= hi:
        raise ValidationError(field, value, allowed)
    return round(float(value), _SCALE_DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0


def check_path(field: str, value: Any) -> str:
    allowed = "a Hugging Face repo id (owner/name) or an https:// URL"
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValidationError(field, value, allowed)
    if "://" in value and not value.startswith("https://"):
        raise ValidationError(field, value, allowed)
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class LoRA:
    """One LoRA: where it lives (`path`) and how strongly it applies (`scale`, 0 to 4)."""

    path: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_path("lora.path", self.path))
        object.__setattr__(self, "scale", check_scale("lora.scale", self.scale))

    def to_input(self) -> dict[str, Any]:
        """The LoRA as the API's input takes it: `{"path": …, "scale": …}`."""
        return {"path": self.path, "scale": self.scale}


DEFAULT_LORAS: tuple[LoRA, ...] = (LoRA(DEFAULT_LORA_PATH, 1.0),)


def _as_lora(item: Any, index: int) -> LoRA:
    """Accept a LoRA, a {"path", "scale"} mapping or a (path, scale) pair; name the item in errors."""
    where = f"loras[{index}]"
    if isinstance(item, LoRA):
        return item
    if isinstance(item, Mapping):
        extra = set(item) - {"path", "scale"}
        if extra:
            raise ValidationError(f"{where}.{sorted(extra)[0]}", item, "only the keys 'path' and 'scale'")
        if "path" not in item:
            raise ValidationError(f"{where}.path", None, "a Hugging Face repo id (owner/name) or an https:// URL")
        path, scale = item["path"], item.get("scale", 1.0)
    elif isinstance(item, tuple | list) and len(item) == 2:
        path, scale = item
    else:
        raise ValidationError(where, item, "a LoRA, a {'path', 'scale'} mapping or a (path, scale) pair")
    # Check here first so the error names the item (loras[1].scale), then build the value.
    return LoRA(check_path(f"{where}.path", path), check_scale(f"{where}.scale", scale))


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One generation with Z-Image Turbo + LoRAs; every field is checked when it is built.

    Defaults are the model schema's: the Technically-Color LoRA at scale 1, 1024×1536, seed -1 (random).
    A seed of -1 is sent as is by `Client.generate`; sweeps resolve it to a concrete seed first.
    """

    prompt: str
    loras: Sequence[LoRA] = DEFAULT_LORAS  # also accepts {"path", "scale"} dicts or pairs; stored as a tuple
    width: int = 1024
    height: int = 1536
    seed: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValidationError("prompt", self.prompt, "a non-empty string")
        loras = self.loras
        if isinstance(loras, LoRA | Mapping) or not isinstance(loras, Iterable) or isinstance(loras, str):
            raise ValidationError("loras", loras, f"a list of at most {MAX_LORAS} LoRAs")
        loras = tuple(_as_lora(item, i) for i, item in enumerate(loras))
        if len(loras) > MAX_LORAS:
            raise ValidationError("loras", f"{len(loras)} LoRAs", f"at most {MAX_LORAS} LoRAs")
        object.__setattr__(self, "loras", loras)
        object.__setattr__(self, "width", check_size("width", self.width))
        object.__setattr__(self, "height", check_size("height", self.height))
        object.__setattr__(self, "seed", check_int("seed", self.seed, *SEED_RANGE))

    @classmethod
    def from_input(cls, payload: Mapping[str, Any]) -> Request:
        """Build from the wire's JSON shape; missing fields take the schema's defaults."""
        if not isinstance(payload, Mapping):
            raise ValidationError("body", payload, "a JSON object with the model's input fields")
        unknown = sorted(set(payload) - set(FIELDS))
        if unknown:
            raise ValidationError(unknown[0], payload[unknown[0]], f"one of the fields {', '.join(FIELDS)}")
        if "prompt" not in payload:
            raise ValidationError("prompt", None, "a non-empty string (it is required)")
        return cls(**payload)

    def to_input(self) -> dict[str, Any]:
        """The request body: every field explicit, so a request's key says exactly what was generated."""
        return {
            "prompt": self.prompt,
            "loras": [lora.to_input() for lora in self.loras],
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
        }

    def canonical_json(self, model: str = MODEL_ID) -> str:
        """The request as canonical JSON (sorted keys, every field explicit): what its `key` hashes."""
        return canonical_json(model, self.to_input())

    @property
    def key(self) -> str:
        """A stable 16-hex-digit name for this request: same model and input, same key."""
        return request_key(MODEL_ID, self.to_input())

    @property
    def megapixels(self) -> float:
        """Output size in megapixels (what per-megapixel prices and run-time estimates scale with)."""
        return self.width * self.height / 1_000_000

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        prompt = self.prompt if len(self.prompt) <= 40 else self.prompt[:39] + "…"
        loras = ", ".join(f"{lora.path}@{lora.scale:g}" for lora in self.loras) or "no LoRA"
        return f"<Request {prompt!r} {self.width}x{self.height} seed={self.seed} [{loras}]>"


def is_local_path(path: str) -> bool:
    """A LoRA path that names a file on this machine (which only the local diffusers backend can read):
    an absolute, home or dot-relative path, a Windows path, or a relative `….safetensors` file (a hub file
    is written `owner/name:file.safetensors`)."""
    if path.startswith("https://"):
        return False
    if path.startswith(("/", "./", "../", "~", "\\\\")) or (len(path) > 2 and path[1] == ":" and path[2] in "\\/"):
        return True
    return path.lower().endswith(".safetensors") and ":" not in path


def canonical_json(model: str, payload: Mapping[str, Any]) -> str:
    return json.dumps({"model": model, "input": payload}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(model: str, payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(model, payload).encode()).hexdigest()[:16]


def input_problems(payload: Any) -> list[ValidationError]:
    """Every reason `payload` is not a valid input (empty when it is); the local server's 422 detail."""
    if not isinstance(payload, Mapping):
        return [ValidationError("body", payload, "a JSON object with the model's input fields")]
    problems: list[ValidationError] = []
    for name in sorted(set(payload) - set(FIELDS)):
        problems.append(ValidationError(name, payload[name], f"one of the fields {', '.join(FIELDS)}"))
    checks = {
        "prompt": lambda: Request(payload["prompt"], loras=()),
        "loras": lambda: Request("p", loras=payload["loras"]),
        "width": lambda: Request("p", loras=(), width=payload["width"]),
        "height": lambda: Request("p", loras=(), height=payload["height"]),
        "seed": lambda: Request("p", loras=(), seed=payload["seed"]),
    }
    if "prompt" not in payload:
        problems.append(ValidationError("prompt", None, "a non-empty string (it is required)"))
    for name, check in checks.items():
        if name in payload:
            try:
                check()
            except ValidationError as exc:
                problems.append(exc)
    return problems
