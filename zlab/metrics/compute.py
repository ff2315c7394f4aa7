"""`add_metrics`: learned metrics per image as columns of the results table, batched and cached by image hash.

Columns (each only when asked for; NaN where a row has no image or no baseline):

- `clip_score`: prompt adherence, 100 × cosine of the CLIP image and prompt embeddings;
- `clip_distance`, `dino_distance`: 1 − cosine to the row's no-LoRA baseline image (same prompt, seed, size;
  see `zlab.metrics.groups.baseline_rows`), with CLIP or DINOv2 (timm) image embeddings;
- `lpips`: LPIPS distance to the baseline image;
- `ref_similarity`: cosine of the DINOv2 embedding to the mean of `references` (style or identity images);
- `seed_variety`: mean pairwise 1 − cosine (DINOv2, else CLIP) across the seeds of the row's group.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from zlab.errors import ValidationError
from zlab.metrics.cache import MetricCache, file_hash, text_hash
from zlab.metrics.groups import baseline_rows, mean_pairwise_distance, seed_groups
from zlab.runs.tables import open_results, write_results

Metric = Literal["clip_score", "clip_distance", "dino_distance", "lpips", "ref_similarity", "seed_variety"]
METRICS: tuple[str, ...] = ("clip_score", "clip_distance", "dino_distance", "lpips", "ref_similarity", "seed_variety")
DEFAULT_METRICS = ("clip_score", "dino_distance", "lpips", "seed_variety")


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Embeddings:
    """Image embeddings for one model, from the cache or computed in batches."""

    def __init__(self, model: Any, cache: MetricCache, batch_size: int, tick: Callable[[int], None]) -> None:
        self.model, self.cache, self.batch_size, self.tick = model, cache, batch_size, tick

    def of(self, paths: dict[str, Path]) -> dict[str, np.ndarray]:
        """Embeddings by hash for {hash: path}."""
        have = self.cache.vectors(self.model.name, list(paths))
        todo = [h for h in paths if h not in have]
        for part in _batches(todo, self.batch_size):
            images = []
            for h in part:
                with Image.open(paths[h]) as im:
                    images.append(im.convert("RGB"))
            vecs = self.model.embed_images(images)
            new = dict(zip(part, vecs, strict=True))
            self.cache.put_vectors(self.model.name, new)
            have.update(new)
            self.tick(len(part))
        return have


def add_metrics(
    source: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    references: Sequence[str | os.PathLike[str]] = (),
    clip: Any = None,
    dino: Any = None,
    lpips: Any = None,
    device: str | None = None,
    batch_size: int = 16,
    cache: bool | str | os.PathLike[str] = True,
    write: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """The results table of `source` (a run directory, RunResult or DataFrame) with metric columns added.

    Models not given are loaded with their defaults (`zlab.metrics.models`) on `device` (the GPU when there is
    one). `cache=True` keeps embeddings in DIR/metrics.sqlite (a path: there; False: memory only). `write=True`
    writes the columns into DIR/results.parquet, where sheets, the gallery and reports read them.
    """
    from zlab.metrics import models as m

    unknown = [x for x in metrics if x not in METRICS]
    if unknown:
        raise ValidationError("metrics", unknown[0], "one of " + ", ".join(METRICS))
    if "ref_similarity" in metrics and not references:
        raise ValidationError("references", [], "reference images for ref_similarity")
    df, root = open_results(source)
    df = df.copy()
    base = root or Path()
    store_at = (
        None
        if cache is False
        else (Path(cache) if not isinstance(cache, bool) else (root / "metrics.sqlite" if root else None))
    )
    store = MetricCache(store_at)
    paths: list[Path | None] = [
        (base / str(p)) if isinstance(p, str) and p and (base / p).is_file() else None
        for p in df.get("image_path", pd.Series([None] * len(df)))
    ]
    hashes = [file_hash(p) if p is not None else None for p in paths]
    by_hash = {h: p for h, p in zip(hashes, paths, strict=True) if h is not None and p is not None}
    bases = baseline_rows(df)
    needs_clip = bool({"clip_score", "clip_distance"} & set(metrics))
    needs_dino = bool({"dino_distance", "ref_similarity"} & set(metrics))
    if "seed_variety" in metrics and not needs_clip:
        needs_dino = True  # variety is measured on DINOv2 embeddings unless CLIP's are computed anyway

    bar = _progress(len(by_hash) * (int(needs_clip) + int(needs_dino)), progress)
    try:
        clip_vecs: dict[str, np.ndarray] = {}
        if needs_clip:
            clip = clip or m.ClipModel.load(device=device)
            clip_vecs = _Embeddings(clip, store, batch_size, bar).of(by_hash)
        dino_vecs: dict[str, np.ndarray] = {}
        if needs_dino:
            dino = dino or m.TimmEmbedder.load(device=device)
            dino_vecs = _Embeddings(dino, store, batch_size, bar).of(by_hash)

        if "clip_score" in metrics:
            df["clip_score"] = _clip_scores(df, hashes, clip, clip_vecs, store)
        for name, vecs in (("clip_distance", clip_vecs), ("dino_distance", dino_vecs)):
            if name in metrics:
                pairs = zip(hashes, bases, strict=True)
                df[name] = [_cosine_distance(vecs, h, hashes[b] if b is not None else None) for h, b in pairs]
        if "lpips" in metrics:
            lpips = lpips or m.LpipsModel.load(device=device)
            df["lpips"] = _lpips(lpips, hashes, bases, by_hash, store, batch_size)
        if "ref_similarity" in metrics:
            refs = {file_hash(r): Path(r) for r in references}
            ref_vecs = _Embeddings(dino, store, batch_size, lambda n: None).of(refs)
            centre = np.mean(list(ref_vecs.values()), axis=0)
            centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
            df["ref_similarity"] = [float(dino_vecs[h] @ centre) if h is not None else np.nan for h in hashes]
        if "seed_variety" in metrics:
            vecs = dino_vecs or clip_vecs
            variety = np.full(len(df), np.nan)
            for group in seed_groups(df):
                members = [vecs[h] for h in (hashes[i] for i in group) if h is not None]
                variety[group] = mean_pairwise_distance(members)
            df["seed_variety"] = variety
    finally:
        store.close()
        bar(-1)
    if write:
        if root is None:
            raise ValidationError("write", True, "a results table from a run directory")
        write_results(df, root)
    return df


def _cosine_distance(vecs: dict[str, np.ndarray], a: str | None, b: str | None) -> float:
    return 1.0 - float(vecs[a] @ vecs[b]) if a is not None and b is not None else float("nan")


def _clip_scores(
    df: pd.DataFrame, hashes: list[str | None], clip: Any, vecs: dict[str, np.ndarray], store: MetricCache
) -> list[float]:
    prompts = [str(p) for p in df["prompt"]]
    keys = {text_hash(p): p for p in prompts}
    texts = store.vectors(clip.name, list(keys))
    todo = [k for k in keys if k not in texts]
    for part in _batches(todo, 64):
        new = dict(zip(part, clip.embed_texts([keys[k] for k in part]), strict=True))
        store.put_vectors(clip.name, new)
        texts.update(new)
    return [
        100.0 * float(vecs[h] @ texts[text_hash(p)]) if h is not None else np.nan
        for h, p in zip(hashes, prompts, strict=True)
    ]


def _lpips(
    model: Any,
    hashes: list[str | None],
    bases: list[int | None],
    by_hash: dict[str, Path],
    store: MetricCache,
    batch_size: int,
) -> list[float]:
    pairs = {
        f"{h}:{hashes[b]}": (h, hashes[b])
        for h, b in zip(hashes, bases, strict=True)
        if h is not None and b is not None and hashes[b]
    }
    have = store.numbers(model.name, list(pairs))
    todo = [k for k in pairs if k not in have]
    for part in _batches(todo, batch_size):
        images = []
        for k in part:
            a, b = pairs[k]
            with Image.open(by_hash[a]) as x, Image.open(by_hash[str(b)]) as y:
                images.append((x.convert("RGB"), y.convert("RGB")))
        new = dict(zip(part, (float(v) for v in model.distances(images)), strict=True))
        store.put_numbers(model.name, new)
        have.update(new)
    return [
        have.get(f"{h}:{hashes[b]}", np.nan) if h is not None and b is not None else np.nan
        for h, b in zip(hashes, bases, strict=True)
    ]


def _progress(total: int, show: bool) -> Callable[[int], None]:
    """A tick(n) callback over a tqdm bar (tick(-1) closes it); silent when not shown or nothing to do."""
    if not show or total == 0:
        return lambda n: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="zlab metrics", unit="img")

    def tick(n: int) -> None:
        if n < 0:
            bar.close()
        else:
            bar.update(n)

    return tick


def clip_adherence(clip: Any) -> Callable[[Image.Image, Image.Image, str], float]:
    """A quality measure for `find_scale(quality=…)`: the image's CLIP score for the prompt over its baseline's,
    so the overcook test reads "prompt adherence fell below (1 − overcook_drop) of its best"."""
    texts: dict[str, np.ndarray] = {}

    def adherence(baseline: Image.Image, image: Image.Image, prompt: str) -> float:
        if prompt not in texts:
            texts[prompt] = clip.embed_texts([prompt])[0]
        base, img = clip.embed_images([baseline, image])
        return float(img @ texts[prompt]) / max(float(base @ texts[prompt]), 1e-6)

    return adherence
