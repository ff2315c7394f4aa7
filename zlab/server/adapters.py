"""LoRA files made ready for a pipeline, away from the GPU's thread: fetched, named by content, converted, checked.

`AdapterStore.prepare(path)` does everything about a LoRA that does not touch the model, so the
diffusers backend runs it on a preparation thread while the GPU renders the previous image:

1. the file: `LoraFiles` resolves the path (a download, a hub file, a local file);
2. its identity: a SHA-256 of the file's bytes, computed once per file version (cached by path,
   size, modification and change times and inode), so a retrained file copied in with `cp -p` or
   `rsync -a` at the same size and mtime is still a new adapter, and two copies of one file are one;
3. its tensors in diffusers' layout (`lora_formats`: refusals, diffusers' conversion, fused-qkv split),
   checked against the model's linear layers (`loras.unmatched_keys`).

A LoRA that failed 2–3 is remembered as failed under its identity, so every later cell naming that
file fails at once with the same message, without reading it again. Converted tensors are kept
for the `keep` most recently used adapters (a pipeline evicts an adapter and may need it again; with
several GPUs each one loads it).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zlab.server.backend import RenderError
from zlab.server.lora_formats import layout, refusal, short, split_fused
from zlab.server.loras import LoraFiles, mismatch_message, unmatched_keys

# (file) → (tensors in diffusers' layout, adapter metadata or None): `ZImagePipeline.lora_state_dict`
ReadLora = Callable[[Path], tuple[dict[str, Any], Any]]


@dataclasses.dataclass(frozen=True)
class PreparedAdapter:
    """A LoRA ready to load into a transformer: its adapter name (from its content), layout and tensors."""

    name: str
    path: str
    layout: str
    state_dict: Mapping[str, Any] = dataclasses.field(repr=False)
    metadata: Any = dataclasses.field(default=None, repr=False)


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(4 << 20):
            digest.update(piece)
    return digest.hexdigest()


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a `.safetensors` file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


class AdapterStore:
    """Prepares LoRAs for one model (see the module docstring); thread-safe, shared by every pipeline."""

    def __init__(self, files: LoraFiles, read: ReadLora, linears: Mapping[str, tuple[int, int]], keep: int = 8) -> None:
        self.files, self._read, self._linears, self._keep = files, read, dict(linears), max(1, keep)
        self._digests: dict[tuple[str, int, int, int, int], str] = {}  # the file's stat → content hash
        self._ready: collections.OrderedDict[str, PreparedAdapter] = collections.OrderedDict()
        self._failed: dict[str, str] = {}  # adapter name → the message every cell naming it gets
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self.counts: collections.Counter[str] = collections.Counter()  # hashes, reads (conversions)

    def name_of(self, path: str) -> str:
        """The adapter name of the file `path` names now: `zlab_` and 16 hex digits of its content hash."""
        local = self.files.local_file(path)
        stat = local.stat()
        # ctime and inode too: `cp -p` and `rsync -a` restore the mtime, but any write moves the ctime.
        key = (str(local), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        with self._guard:
            digest = self._digests.get(key)
        if digest is None:
            with self._lock_for(str(key)):  # two threads asking about one new file hash it once
                with self._guard:
                    digest = self._digests.get(key)
                if digest is None:
                    digest = file_digest(local)
                    with self._guard:
                        self._digests[key] = digest
                        self.counts["hashes"] += 1
        return "zlab_" + digest[:16]

    def prepare(self, path: str) -> PreparedAdapter:
        """The LoRA at `path`, converted and checked (cached); `RenderError` saying why not (remembered)."""
        name = self.name_of(path)
        with self._lock_for(name):
            with self._guard:
                if name in self._failed:
                    raise RenderError(self._failed[name])
                ready = self._ready.get(name)
                if ready is not None:
                    self._ready.move_to_end(name)
                    return dataclasses.replace(ready, path=path) if ready.path != path else ready
            try:
                prepared = self._convert(path, name)
            except RenderError as exc:
                self.fail(name, str(exc))
                raise
            with self._guard:
                self._ready[name] = prepared
                while len(self._ready) > self._keep:
                    self._ready.popitem(last=False)
            return prepared

    def fail(self, name: str, message: str) -> None:
        """Remember that adapter `name` cannot be used, and why (e.g. the model refused to load it)."""
        with self._guard:
            self._failed[name] = message
            self._ready.pop(name, None)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _convert(self, path: str, name: str) -> PreparedAdapter:
        local = self.files.local_file(path)
        with self._guard:
            self.counts["reads"] += 1
        keys = safetensors_keys(local)
        kind = layout(keys)
        refused = refusal(keys, repr(path))
        if refused:
            raise RenderError(refused)
        try:
            state_dict, metadata = self._read(local)
        except Exception as exc:  # a layout diffusers cannot convert: which file, which kind, why (short)
            raise RenderError(f"LoRA {path!r} ({kind}) could not be converted: {short(str(exc))}") from exc
        if state_dict and not any(key.startswith("transformer.") for key in state_dict):
            state_dict = {f"transformer.{key}": value for key, value in state_dict.items()}  # a bare PEFT file
        state_dict = split_fused(state_dict)
        if not state_dict:
            raise RenderError(f"LoRA {path!r} holds no LoRA tensors")
        problems = unmatched_keys({k: tuple(v.shape) for k, v in state_dict.items()}, self._linears)
        if problems:
            raise RenderError(mismatch_message(path, problems, len(state_dict), kind))
        return PreparedAdapter(name, path, kind, state_dict, metadata)
