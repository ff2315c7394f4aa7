"""A tiny random Z-Image pipeline and random LoRAs for it: the diffusers backend's test and benchmark double.

Everything is built from configs with random weights, so nothing is downloaded and no file is shipped:
the real `ZImagePipeline`, `ZImageTransformer2DModel`, `AutoencoderKL` and Qwen3 text encoder, each a few
thousand parameters, and a byte-level tokenizer with a chat template. Its images are noise-like, but they
go through every step the real model's do (prompt encoding, LoRA adapters, 8 flow-matching steps, VAE
decode), a 256×256 image in well under a second on a CPU.

>>> pipe = tiny_pipeline()                                  # doctest: +SKIP
>>> save_lora(random_lora(pipe, seed=1), "style.safetensors")   # doctest: +SKIP

The `to_*` functions write one LoRA in the layouts trainers publish, each with the same effect as the
diffusers-layout original (exactly, or within float rounding), so a test can compare each against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
TARGETS = re.compile(r"layers\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])")


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (one token per UTF-8 byte, id 0 for padding) that any text round-trips through."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, **{char: index + 1 for index, char in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", chat_template=CHAT_TEMPLATE)


def tiny_pipeline(seed: int = 0) -> Any:
    """A `ZImagePipeline` with tiny random components, in float32 on the CPU (same `seed`, same weights)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    transformer: Any = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    with torch.no_grad():  # these start as torch.empty: uninitialised memory would make runs differ
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    # Four VAE levels (factor 8, as in the real model) keep 256×256, the smallest size the API allows, cheap.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
    )
    pipe: Any = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def base_linears(pipe: Any) -> dict[str, Any]:
    """The transformer's own linear layers by name, also once adapters have wrapped them (`….base_layer`)."""
    import torch

    found = {}
    for name, module in pipe.transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name and ".lokr_" not in name:
            found[name.removesuffix(".base_layer")] = module
    return found


def random_lora(pipe: Any, seed: int, rank: int = 4, strength: float = 0.5) -> dict[str, Any]:
    """A random LoRA for `pipe`'s transformer in diffusers' layout (`transformer.<module>.lora_A.weight`)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, module in base_linears(pipe).items():
        if TARGETS.fullmatch(name):
            down = torch.randn(rank, module.in_features, generator=generator) * strength
            up = torch.randn(module.out_features, rank, generator=generator) * strength
            tensors[f"transformer.{name}.lora_A.weight"] = down
            tensors[f"transformer.{name}.lora_B.weight"] = up
    return tensors


def to_kohya(tensors: Mapping[str, Any], alpha_over_rank: float = 1.0) -> dict[str, Any]:
    """The same LoRA in kohya/sd-scripts layout: `lora_unet_<module_with_underscores>.lora_down/up.weight`
    and `.alpha`. The up weights are divided by `alpha_over_rank`, so the LoRA's effect is unchanged."""
    import torch

    out: dict[str, Any] = {}
    for key, value in tensors.items():
        module, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        base = "lora_unet_" + module.replace(".", "_")
        if part == "A.weight":
            out[f"{base}.lora_down.weight"] = value
            out[f"{base}.alpha"] = torch.tensor(float(value.shape[0]) * alpha_over_rank)
        else:
            out[f"{base}.lora_up.weight"] = value / alpha_over_rank
    return out


def to_peft(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """PEFT's own layout: the diffusers keys without the `transformer.` prefix."""
    return {key.removeprefix("transformer."): value for key, value in tensors.items()}


def to_ai_toolkit(tensors: Mapping[str, Any], alpha_over_rank: float = 1.0) -> dict[str, Any]:
    """ai-toolkit's layout: `diffusion_model.<module>.lora_A/B.weight` and `.alpha`; B divided by alpha/rank."""
    import torch

    out: dict[str, Any] = {}
    for key, value in tensors.items():
        module, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        if part == "A.weight":
            out[f"diffusion_model.{module}.lora_A.weight"] = value
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(value.shape[0]) * alpha_over_rank)
        else:
            out[f"diffusion_model.{module}.lora_B.weight"] = value / alpha_over_rank
    return out


def fuse_qkv(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The LoRA on Z-Image's original module tree (one `attention.qkv`, `attention.out`), still in diffusers
    keys: the q/k/v downs stacked, the ups block-diagonal, so each projection's update is unchanged."""
    import torch

    out: dict[str, Any] = {}
    for key, value in tensors.items():
        if ".attention.to_q." in key or ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        out[key.replace(".attention.to_out.0.", ".attention.out.")] = value
    blocks = sorted({key.partition(".attention.to_q.")[0] for key in tensors if ".attention.to_q." in key})
    for block in blocks:
        names = [f"{block}.attention.to_{p}" for p in "qkv"]
        out[f"{block}.attention.qkv.lora_A.weight"] = torch.cat([tensors[f"{n}.lora_A.weight"] for n in names])
        out[f"{block}.attention.qkv.lora_B.weight"] = torch.block_diag(*[tensors[f"{n}.lora_B.weight"] for n in names])
    return out


def to_comfyui(tensors: Mapping[str, Any], alpha_over_rank: float = 1.0) -> dict[str, Any]:
    """ComfyUI's layout: `diffusion_model.` + the original module tree (fused qkv) + `lora_down/up` and `.alpha`."""
    return {
        key.replace(".lora_A.", ".lora_down.").replace(".lora_B.", ".lora_up."): value
        for key, value in to_ai_toolkit(fuse_qkv(tensors), alpha_over_rank).items()
    }


def to_musubi(tensors: Mapping[str, Any], alpha_over_rank: float = 1.0) -> dict[str, Any]:
    """musubi-tuner's layout: kohya keys (`lora_unet_…`) over the original module tree (fused qkv)."""
    return to_kohya(fuse_qkv(tensors), alpha_over_rank)


def to_dora(pipe: Any, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """PEFT DoRA: the LoRA plus `lora_magnitude_vector`s equal to the row norms of W + B·A, so at scale 1 the
    DoRA's weight, m · (W + B·A) / ‖W + B·A‖, is the LoRA's W + B·A."""
    modules = base_linears(pipe)
    out = dict(tensors)
    for key, down in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            merged = modules[name].weight.detach().float() + tensors[key.replace("lora_A", "lora_B")] @ down
            out[f"transformer.{name}.lora_magnitude_vector"] = merged.norm(p=2, dim=1)
    return out


def random_lokr(pipe: Any, seed: int, strength: float = 0.3) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random LoKr on the attention projections in ai-toolkit's layout (`diffusion_model.<module>.lokr_w1/w2`,
    full factors), and its twin LoRA in diffusers' layout: A the identity, B = w1 ⊗ w2 (the same update)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    lokr: dict[str, Any] = {}
    twin: dict[str, Any] = {}
    for name, module in base_linears(pipe).items():
        if re.fullmatch(r"layers\.\d+\.attention\.to_(q|k|v|out\.0)", name):
            w1 = torch.randn(4, 4, generator=generator) * strength
            w2 = torch.randn(module.out_features // 4, module.in_features // 4, generator=generator) * strength
            lokr[f"diffusion_model.{name}.lokr_w1"] = w1
            lokr[f"diffusion_model.{name}.lokr_w2"] = w2
            twin[f"transformer.{name}.lora_A.weight"] = torch.eye(module.in_features)
            twin[f"transformer.{name}.lora_B.weight"] = torch.kron(w1, w2)
    return lokr, twin


def to_loha(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A LoHa-shaped file (`hada_w1_a`, …; the numbers are stand-ins): a kind diffusers cannot apply."""
    out: dict[str, Any] = {}
    for key, value in to_kohya(tensors).items():
        if key.endswith(".lora_down.weight"):
            base = key.removesuffix(".lora_down.weight")
            out |= {f"{base}.hada_w1_b": value, f"{base}.hada_w2_b": value.clone()}
        elif key.endswith(".lora_up.weight"):
            base = key.removesuffix(".lora_up.weight")
            out |= {f"{base}.hada_w1_a": value, f"{base}.hada_w2_a": value.clone()}
    return out


def save_lora(tensors: Mapping[str, Any], path: str | Path) -> Path:
    """Write a LoRA's tensors as a `.safetensors` file."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path
