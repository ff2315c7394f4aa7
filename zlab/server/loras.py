"""LoRA files for the diffusers backend: where a `path` points, fetching it once, and whether it fits.

A request's LoRA `path` is one of (checked in this order):

    https://host/dir/file.safetensors    downloaded once into the zlab cache (ZLAB_CACHE_DIR, else
                                         ~/.cache/zlab) under `loras/`, then reused
    /abs/file.safetensors, ~/x, ./x,     a local `.safetensors` file, or a folder holding one
    ../x, or any path that exists        (relative paths are the server's working directory's)
    owner/name                           a Hugging Face repo holding one `.safetensors` file
    owner/name:dir/file.safetensors      one file of a repo that holds several (through the
                                         Hugging Face cache, so a file downloaded once is reused)

Only safetensors files are read: a pickled `.bin`/`.pt` file can run code when it is loaded.

The pure parts, `parse_lora_path`, `pick_weight_file`, `unmatched_keys` and `plan_adapters`, decide;
`LoraFiles` does the I/O (downloads, the hub) and is safe to share between the backend's workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from zlab.core.config import cache_root
from zlab.server.backend import RenderError

SourceKind = Literal["url", "local", "hub"]
SUFFIX = ".safetensors"
PREFERRED_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' own trainers write
MAX_DOWNLOAD = 8 << 30  # bytes; a Z-Image LoRA is tens to hundreds of MB, so this only stops runaway bodies
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class LoraSource:
    """Where a LoRA path points: its kind, the URL / local path / repo id, and a file inside a repo."""

    kind: SourceKind
    location: str
    weight_name: str | None = None  # hub only: the file inside the repo, when the path names one


def parse_lora_path(path: str, exists: bool = False) -> LoraSource:
    """Classify a LoRA `path` (see the module docstring); `exists` says whether it is on this disk.

    >>> parse_lora_path("owner/name:styles/a.safetensors")
    LoraSource(kind='hub', location='owner/name', weight_name='styles/a.safetensors')
    """
    if path.startswith("https://"):
        return LoraSource("url", path)
    if "://" in path:
        raise RenderError(f"LoRA {path!r}: only https:// URLs can be fetched")
    if exists or path.startswith(("/", "~", "./", "../")) or path in (".", ".."):
        return LoraSource("local", path)
    repo, colon, weight_name = path.partition(":")
    if _REPO_ID.fullmatch(repo) and not repo.endswith(SUFFIX) and (not colon or weight_name.endswith(SUFFIX)):
        return LoraSource("hub", repo, weight_name or None)
    if path.endswith(SUFFIX) or "/" in path:
        return LoraSource("local", path)  # a relative path that is not there: the loader says so
    raise RenderError(
        f"LoRA {path!r} is neither a local file, an https:// URL nor a Hugging Face repo id; write "
        "owner/name, owner/name:file.safetensors, https://…/file.safetensors or a path to a .safetensors file"
    )


def pick_weight_file(names: Iterable[str], where: str, repo: bool = False) -> str:
    """The one `.safetensors` file among `names` (a folder's, or a hub `repo`'s files), or a clear error."""
    candidates = sorted(n for n in names if n.endswith(SUFFIX))
    if len(candidates) == 1:
        return candidates[0]
    top_level = [n for n in candidates if "/" not in n]
    if PREFERRED_NAME in top_level:
        return PREFERRED_NAME
    if len(top_level) == 1:
        return top_level[0]
    if not candidates:
        raise RenderError(f"LoRA {where} holds no .safetensors file (pickled .bin/.pt files are not loaded)")
    shown = ", ".join(candidates[:5]) + (", …" if len(candidates) > 5 else "")
    how = f"name one, e.g. {where}:{candidates[0]}" if repo else "give the path of one of them"
    raise RenderError(f"LoRA {where} holds {len(candidates)} .safetensors files ({shown}); {how}")


def url_file_name(url: str) -> str:
    """The cache file name of a URL: a hash of it (same URL, same file) plus a readable tail."""
    tail = re.sub(r"[^A-Za-z0-9_.-]", "_", url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])[-60:]
    stem = tail.removesuffix(SUFFIX) or "lora"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{stem}{SUFFIX}"


def check_safetensors_header(head: bytes, where: str) -> None:
    """Refuse a file whose first bytes are not a safetensors header (an HTML error page, a pickle)."""
    problem = RenderError(f"LoRA {where} is not a .safetensors file (its header does not parse)")
    if len(head) < 10:
        raise problem
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= 100 << 20 or head[8:9] != b"{":
        raise problem


# -- does a LoRA fit the model? ------------------------------------------------------------------------------------

_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector|lokr_w[12](_[ab])?)"
)


def unmatched_keys(
    shapes: Mapping[str, Sequence[int]], linears: Mapping[str, tuple[int, int]], prefix: str = "transformer."
) -> list[str]:
    """The adapter keys (diffusers/PEFT layout) that would not land on a linear layer of the model.

    `shapes` maps each key (`transformer.layers.0.attention.to_q.lora_A.weight`) to its tensor's shape;
    `linears` maps each linear layer's name to (in_features, out_features). A key for another
    component, for a module the model lacks, or with the wrong shape is unmatched: diffusers only
    logs such keys, which would make the LoRA a silent no-op, so the backend refuses them instead.
    DoRA magnitudes (`lora_magnitude_vector`) must have one value per output; LoKr factors
    (`lokr_w1`, `lokr_w2`, …) only need their layer to exist (peft checks their factorisation).
    """
    problems = []
    for key, shape in shapes.items():
        match = _LORA_KEY.fullmatch(key.removeprefix(prefix)) if key.startswith(prefix) else None
        if match is None or match["module"] not in linears:
            problems.append(key)
            continue
        fan_in, fan_out = linears[match["module"]]
        part, dims = match["part"], tuple(shape)
        if part == "lora_A.weight":
            fits = len(dims) == 2 and dims[1] == fan_in
        elif part == "lora_B.weight":
            fits = len(dims) == 2 and dims[0] == fan_out
        elif part.startswith("lokr_"):
            fits = len(dims) == 2
        else:  # a bias or a magnitude: one value per output
            fits = dims == (fan_out,)
        if not fits:
            problems.append(f"{key} {list(dims)}")
    return problems


def mismatch_message(path: str, problems: Sequence[str], total: int, kind: str = "") -> str:
    """Why a LoRA was refused (its layout `kind`, when known), with a few of the keys that do not fit."""
    shown = ", ".join(problems[:3]) + (", …" if len(problems) > 3 else "")
    what = f"LoRA {path!r} ({kind})" if kind else f"LoRA {path!r}"
    return (
        f"{what} does not fit Z-Image Turbo: {len(problems)} of {total} tensors match no layer of its "
        f"transformer ({shown}); is it a LoRA for another model?"
    )


# -- which adapters a pipeline keeps --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdapterPlan:
    """What to do before a render: adapters to unload, adapters to load, and the new order (oldest first)."""

    evict: tuple[str, ...]
    load: tuple[str, ...]
    order: tuple[str, ...]


def plan_adapters(cached: Sequence[str], needed: Sequence[str], capacity: int) -> AdapterPlan:
    """Least-recently-used caching of adapters: keep what is needed, load what is missing, and evict
    the oldest unneeded ones while more than `capacity` would stay (a request's own never count out).

    >>> plan_adapters(["a", "b", "c"], ["d", "b"], capacity=3)
    AdapterPlan(evict=('a',), load=('d',), order=('c', 'd', 'b'))
    """
    wanted = list(dict.fromkeys(needed))
    load = tuple(name for name in wanted if name not in cached)
    keep = [name for name in cached if name not in wanted]
    room = max(capacity, len(wanted)) - len(wanted)
    cut = max(0, len(keep) - room)
    return AdapterPlan(tuple(keep[:cut]), load, (*keep[cut:], *wanted))


# -- fetching -------------------------------------------------------------------------------------------------------


class LoraFiles:
    """Turns LoRA paths into local `.safetensors` files, fetching each URL or hub file once (thread-safe)."""

    def __init__(self, cache_dir: Path | None = None, timeout: float = 60.0, transport: Any = None) -> None:
        self.cache_dir = (cache_dir or cache_root()) / "loras"
        self.timeout = timeout
        self.transport = transport  # an httpx transport for URL downloads (tests swap the network here)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._fetched: dict[str, Path] = {}
        self.downloads = 0  # URL bodies fetched (a benchmark and test figure)

    def local_file(self, path: str) -> Path:
        """The `.safetensors` file that `path` names, fetched if need be; `RenderError` saying why not."""
        expanded = Path(path).expanduser()
        source = parse_lora_path(path, exists=expanded.exists())
        if source.kind == "local":
            return self._local(path, expanded)
        with self._lock_for(path):  # two workers asking for one URL download it once
            if path not in self._fetched:  # asked once per server: no hub round trip per image
                self._fetched[path] = self._download(path) if source.kind == "url" else self._hub(source)
            return self._fetched[path]

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _local(self, path: str, expanded: Path) -> Path:
        if expanded.is_dir():
            names = [str(p.relative_to(expanded)) for p in expanded.rglob(f"*{SUFFIX}")]
            expanded = expanded / pick_weight_file(names, str(expanded))
        if not expanded.is_file():
            raise RenderError(f"LoRA {path!r}: no such file on the server ({expanded.absolute()})")
        if expanded.suffix != SUFFIX:
            raise RenderError(f"LoRA {path!r}: only .safetensors files are loaded (pickled weights can run code)")
        with expanded.open("rb") as handle:
            check_safetensors_header(handle.read(16), repr(path))
        return expanded.resolve()

    def _download(self, url: str) -> Path:
        import httpx

        target = self.cache_dir / url_file_name(url)
        if target.is_file():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with (
                httpx.Client(transport=self.transport, follow_redirects=True, timeout=self.timeout) as http,
                http.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise RenderError(f"LoRA {url!r}: download failed with HTTP {response.status_code}")
                size, head = 0, b""
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        if len(head) < 16:
                            head = (head + chunk)[:16]
                        size += len(chunk)
                        if size > MAX_DOWNLOAD:
                            raise RenderError(f"LoRA {url!r} is over {MAX_DOWNLOAD >> 30} GiB; refusing it")
                        out.write(chunk)
            check_safetensors_header(head, repr(url))
            os.replace(partial, target)  # whole or not at all: a broken download never counts as cached
            self.downloads += 1
        except httpx.HTTPError as exc:
            raise RenderError(f"LoRA {url!r}: download failed ({type(exc).__name__}: {exc})") from exc
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _hub(self, source: LoraSource) -> Path:
        try:
            import huggingface_hub
        except ImportError as exc:  # comes with diffusers, but say what to do if it is missing
            raise RenderError("Hugging Face repo LoRAs need huggingface_hub: pip install 'zlab[local]'") from exc
        repo = source.location
        try:
            if source.weight_name:
                return Path(huggingface_hub.hf_hub_download(repo, source.weight_name))
            try:
                names = huggingface_hub.list_repo_files(repo)
            except Exception as exc:
                return self._cached_repo_file(repo, exc)  # offline: a repo fetched before still works
            return Path(huggingface_hub.hf_hub_download(repo, pick_weight_file(names, repo, repo=True)))
        except RenderError:
            raise
        except Exception as exc:  # the hub's errors vary by version (HTTP, offline, connection); all mean "not here"
            raise self._unreachable(repo, exc) from exc

    def _cached_repo_file(self, repo: str, problem: Exception) -> Path:
        import huggingface_hub

        try:
            folder = Path(huggingface_hub.snapshot_download(repo, local_files_only=True))
        except Exception:
            raise self._unreachable(repo, problem) from problem
        names = [str(path.relative_to(folder)) for path in folder.rglob(f"*{SUFFIX}")]
        return folder / pick_weight_file(names, repo, repo=True)

    @staticmethod
    def _unreachable(repo: str, problem: Exception) -> RenderError:
        detail = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        return RenderError(
            f"LoRA {repo!r} could not be fetched from Hugging Face ({detail}); check the repo id and the network, "
            "or download the file and give its local path"
        )
