"""Published Z-Image LoRA layouts: what a file is, which kinds zlab refuses (and why, in one line), and the
exact fix-ups it adds to diffusers' own conversion.

diffusers converts most layouts itself (`ZImagePipeline.lora_state_dict`): diffusers/PEFT files
(`transformer.<module>.lora_A.weight`), ai-toolkit (`diffusion_model.` + `lora_A/B`, with `.alpha`),
kohya/musubi (`lora_unet_layers_0_attention_to_q.lora_down.weight` + `.alpha`), ComfyUI
(`diffusion_model.` + `lora_down/up`), LoKr (`.lokr_w1`, `.lokr_w2`) and PEFT DoRA
(`.lora_magnitude_vector`). Two things it leaves undone, which `split_fused` finishes after its
conversion, exactly:

- LoRAs trained on Z-Image's original module tree have one fused `attention.qkv` projection where the
  diffusers model has `to_q`, `to_k`, `to_v`. A LoRA's update of the fused layer is `B·A` with `B`
  stacked [B_q; B_k; B_v], so `to_q` gets (A, B_q), `to_k` (A, B_k), `to_v` (A, B_v): the same numbers.
  A DoRA magnitude is per output row, so it splits the same way.
- Their `attention.out` is diffusers' `attention.to_out.0`.

Kinds diffusers cannot apply correctly are refused by `refusal` before anything is read into memory:
LoHa, kohya/LyCORIS DoRA (diffusers drops its `dora_scale` keys with a log line: a different image),
full-weight differences, and LoKr on the fused qkv projection (a Kronecker product does not split).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

_FUSED = re.compile(r"(?P<block>.+\.attention)\.qkv\.(?P<part>lora_A\.weight|lora_B\.weight|lora_magnitude_vector)")
_OUT = re.compile(r"(?P<block>.+\.attention)\.out\.(?P<part>lora_.+)")
_ORIGINAL_TREE = re.compile(r"attention[._](qkv|out)[._]")


def layout(keys: Collection[str]) -> str:
    """A readable name for a LoRA file's layout, judged from its tensor names (for messages and results).

    >>> layout(["lora_unet_layers_0_attention_qkv.lora_down.weight"])
    'musubi (kohya keys, fused qkv)'
    """
    has = lambda text: any(text in key for key in keys)  # noqa: E731
    if has(".hada_"):
        return "LoHa"
    if has(".lokr_"):
        return "LoKr"
    if has("dora_scale"):
        return "kohya DoRA"
    if has("lora_magnitude_vector"):
        return "PEFT DoRA"
    fused = any(_ORIGINAL_TREE.search(key) for key in keys)
    if any(key.startswith("lora_unet_") for key in keys):
        return "musubi (kohya keys, fused qkv)" if fused else "kohya"
    if any(key.startswith("diffusion_model.") for key in keys):
        kind = "ComfyUI" if has(".lora_down.") else "ai-toolkit"
        return f"{kind} (fused qkv)" if fused else kind
    if any(key.startswith("transformer.") for key in keys):
        return "diffusers (fused qkv)" if fused else "diffusers"
    return "PEFT" if has(".lora_A.") else "unknown"


def refusal(keys: Collection[str], name: str) -> str | None:
    """Why a LoRA with these tensor names cannot be applied (one short line naming its kind), or None."""
    kind = layout(keys)
    if kind == "LoHa":
        return f"LoRA {name} is a LoHa adapter, which diffusers cannot apply; convert it to LoRA or LoKr"
    if kind == "kohya DoRA":
        return (
            f"LoRA {name} is a kohya/LyCORIS DoRA (dora_scale), which diffusers would apply without its "
            "magnitudes; save it as PEFT DoRA or plain LoRA"
        )
    if any(key.endswith((".diff", ".diff_b")) for key in keys):
        return f"LoRA {name} holds full-weight differences (LyCORIS full), which diffusers cannot apply"
    if kind == "LoKr" and any(".qkv.lokr_" in key for key in keys):
        return f"LoRA {name} is a LoKr on the fused qkv projection, which cannot be split into Z-Image's q, k, v"
    return None


def split_fused(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Finish diffusers' conversion: fused `attention.qkv` tensors split into `to_q/to_k/to_v`, and
    `attention.out` renamed `attention.to_out.0` (see the module docstring; both exact).

    A fused `lora_B` whose rows do not divide by three is left as it is, for the fit check to refuse.
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        fused = _FUSED.fullmatch(key)
        if fused is not None and (fused["part"] == "lora_A.weight" or value.shape[0] % 3 == 0):
            block, part = fused["block"], fused["part"]
            pieces = [value] * 3 if part == "lora_A.weight" else list(value.chunk(3, dim=0))
            for projection, piece in zip("qkv", pieces, strict=True):
                out[f"{block}.to_{projection}.{part}"] = piece.contiguous()
            continue
        renamed = _OUT.fullmatch(key)
        out[f"{renamed['block']}.to_out.0.{renamed['part']}" if renamed else key] = value
    return out


def short(text: str, limit: int = 160) -> str:
    """The first line of an error, cut to `limit` characters (some libraries list every tensor name)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
