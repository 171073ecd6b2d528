#!/usr/bin/env python3
"""GGUF golden fixtures for the Rust GGUF -> Llama loader and candle's GGML dequantization.

Writes into tests/fixtures/gguf/ (see the README.md written there for what every file and key is):

  tiny_llama_{f32,f16,q8_0,q4_0,q4_1}.gguf
      tests/fixtures/peft/tiny_llama_dora/model converted the way llama.cpp's convert_hf_to_gguf.py
      (and, for Q4_0/Q4_1, llama-quantize) would: llama metadata, q/k rows permuted, gpt2 tokenizer.
  tiny_llama_k.gguf
      a second random Llama (hidden 256, so rows fit 256-wide K-quant super-blocks) with the tensor
      types llama-quantize picks for Q4_K_M (Q4_K + Q6_K), quantized with a numpy port of
      ggml-quants.c's quantize_row_q4_K_ref / quantize_row_q6_K_ref.
  expected.safetensors   goldens (input ids, logits, dequantized weights, error figures)
  manifest.json          per-file metadata, per-tensor ggml types, figures, tokenizer goldens
  README.md              generated from the same figures

Usage: /work/pyenv/bin/python scripts/make_gguf_fixtures.py
Needs torch, transformers (5.x), gguf (gguf-py), numpy, safetensors; no network.
Deterministic: re-running writes the same bytes (single-threaded torch, seeded numpy).
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import gguf
import transformers
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import load_file, save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "fixtures" / "peft" / "tiny_llama_dora" / "model"
OUT = ROOT / "tests" / "fixtures" / "gguf"
SEED = 20250611
QK_K = 256

f32 = np.float32


# ----------------------------------------------------------------------------------------------
# llama.cpp conventions
# ----------------------------------------------------------------------------------------------

def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half row order -> GGML interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute` (what transformers' LlamaTensorProcessor._reverse_permute_weights does)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_names(n_layers):
    """(hf_name, gguf_name) in the order the tensors are written."""
    out = [("model.embed_tokens.weight", "token_embd.weight")]
    for i in range(n_layers):
        for hf, gg in HF_TO_GGUF_LAYER.items():
            out.append((f"model.layers.{i}.{hf}", f"blk.{i}.{gg}"))
    out += [("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")]
    return out


# ----------------------------------------------------------------------------------------------
# numpy port of ggml-quants.c reference K-quantizers (quantize_row_q4_K_ref, quantize_row_q6_K_ref)
# All arithmetic in float32, sums accumulated sequentially in the C loop order. nearest_int (the
# 12582912.f trick) is round-half-to-even, i.e. np.rint. Vectorized over all (sub-)blocks at once.
# ----------------------------------------------------------------------------------------------

def _rint(v):
    return np.rint(v).astype(np.int32)


def make_qx_quants(x: np.ndarray, nmax: int):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for every row of x [N, n]."""
    n_rows, n = x.shape
    rows = np.arange(n_rows)
    ax = np.abs(x)
    imax = ax.argmax(axis=1)                      # first index of the largest |x| (C uses '>')
    amax = ax[rows, imax]
    mx = x[rows, imax]
    zero = amax < f32(1e-15)
    mx_safe = np.where(zero, f32(1), mx).astype(f32)
    w = x * x

    def quant(iscale):
        return np.clip(_rint(iscale[:, None] * x), -nmax, nmax - 1)

    def sums(l):
        lf = l.astype(f32)
        sumlx = np.zeros(n_rows, f32)
        suml2 = np.zeros(n_rows, f32)
        for i in range(n):
            sumlx += w[:, i] * x[:, i] * lf[:, i]
            suml2 += w[:, i] * lf[:, i] * lf[:, i]
        return sumlx, suml2

    iscale = (f32(-nmax) / mx_safe).astype(f32)
    L = quant(iscale)
    sumlx, suml2 = sums(L)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0)).astype(f32)
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = (-(f32(nmax) + f32(0.1) * f32(is_)) / mx_safe).astype(f32)
        l = quant(iscale)
        sumlx, suml2 = sums(l)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better[:, None], l, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(f32)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, scale * sumlx, best)
    L = np.where(zero[:, None], 0, L + nmax)
    scale = np.where(zero, f32(0), scale).astype(f32)
    return scale, L


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad=false)."""
    n_rows, n = x.shape
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = weights[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + weights[:, i]
        sum_x = sum_x + weights[:, i] * x[:, i]
    mn = np.where(mn > 0, f32(0), mn).astype(f32)
    degenerate = mx == mn
    span = np.where(degenerate, f32(1), mx - mn).astype(f32)

    def quant(iscale, m):
        return np.clip(_rint(iscale[:, None] * (x - m[:, None])), 0, nmax)

    def err(scale, m, l):
        lf = l.astype(f32)
        e = np.zeros(n_rows, f32)
        for i in range(n):
            diff = scale * lf[:, i] + m - x[:, i]
            e += weights[:, i] * (diff * diff)
        return e

    iscale = (f32(nmax) / span).astype(f32)
    scale = (f32(1) / iscale).astype(f32)
    L = quant(iscale, mn)
    best = err(scale, mn, L)
    the_mn = mn.copy()
    for is_ in range(nstep + 1):
        # as in C, `min` (hence the span and the offset) is the best one found so far
        span = np.where(degenerate, f32(1), mx - the_mn).astype(f32)
        iscale = ((f32(rmin) + f32(rdelta) * f32(is_) + f32(nmax)) / span).astype(f32)
        laux = quant(iscale, the_mn)
        lf = laux.astype(f32)
        sum_l = np.zeros(n_rows, f32)
        sum_l2 = np.zeros(n_rows, f32)
        sum_xl = np.zeros(n_rows, f32)
        for i in range(n):
            wl = weights[:, i] * lf[:, i]
            sum_l += wl
            sum_l2 += wl * lf[:, i]
            sum_xl += wl * x[:, i]
        D = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = ((sum_w * sum_xl - sum_x * sum_l) / D).astype(f32)
            this_min = ((sum_l2 * sum_x - sum_l * sum_xl) / D).astype(f32)
            pos = this_min > 0
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(f32)
            this_min = np.where(pos, f32(0), this_min).astype(f32)
            cur = err(this_scale, this_min, laux)
        upd = (D > 0) & (cur < best) & ~degenerate
        L = np.where(upd[:, None], laux, L)
        best = np.where(upd, cur, best)
        scale = np.where(upd, this_scale, scale)
        the_mn = np.where(upd, this_min, the_mn)
    L = np.where(degenerate[:, None], 0, L)
    scale = np.where(degenerate, f32(0), scale).astype(f32)
    return scale, (-the_mn).astype(f32), L


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """quantize_row_q6_K_ref over a [rows, cols] f32 matrix -> uint8 [rows, cols/256*210]."""
    rows, cols = w.shape
    assert cols % QK_K == 0
    x = np.ascontiguousarray(w, dtype=f32).reshape(-1, QK_K)
    nb = x.shape[0]
    scales, L = make_qx_quants(x.reshape(-1, 16), 32)
    scales = scales.reshape(nb, 16)
    L = L.reshape(nb, QK_K)
    abs_s = np.abs(scales)
    imax = abs_s.argmax(axis=1)
    max_abs = abs_s[np.arange(nb), imax]
    max_scale = scales[np.arange(nb), imax]
    zero = max_abs < f32(1e-15)
    iscale = (f32(-128) / np.where(zero, f32(1), max_scale)).astype(f32)
    d16 = (f32(1) / iscale).astype(np.float16)
    sc = np.minimum(127, _rint(iscale[:, None] * scales)).astype(np.int8)
    dd = d16.astype(f32)[:, None] * sc.astype(f32)               # [nb, 16]
    xs = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnew = np.clip(_rint(xs / dd[:, :, None]), -32, 31) + 32
    L = np.where((dd != 0)[:, :, None], lnew, L.reshape(nb, 16, 16)).reshape(nb, QK_K).astype(np.uint8)
    ql = np.zeros((nb, 128), np.uint8)
    qh = np.zeros((nb, 64), np.uint8)
    for half in range(2):
        j = 128 * half
        a, b, c, d = (L[:, j + o: j + o + 32] for o in (0, 32, 64, 96))
        ql[:, 64 * half: 64 * half + 32] = (a & 0xF) | ((c & 0xF) << 4)
        ql[:, 64 * half + 32: 64 * half + 64] = (b & 0xF) | ((d & 0xF) << 4)
        qh[:, 32 * half: 32 * half + 32] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d16.reshape(nb, 1).view(np.uint8)], axis=1)
    out[zero] = 0
    return out.reshape(rows, -1)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """quantize_row_q4_K_ref over a [rows, cols] f32 matrix -> uint8 [rows, cols/256*144]."""
    rows, cols = w.shape
    assert cols % QK_K == 0
    x = np.ascontiguousarray(w, dtype=f32).reshape(-1, QK_K)
    nb = x.shape[0]
    sub = x.reshape(-1, 32)
    sum_x2 = np.zeros(sub.shape[0], f32)
    for l in range(32):
        sum_x2 += sub[:, l] * sub[:, l]
    av_x = np.sqrt(sum_x2 / f32(32)).astype(f32)
    weights = (av_x[:, None] + np.abs(sub)).astype(f32)
    scales, mins, L = make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    L = L.reshape(nb, 8, 32)
    max_scale = np.zeros(nb, f32)                               # C: start at +0, keep strictly larger
    max_min = np.zeros(nb, f32)                                 # (so a -0.0 min never becomes dmin)
    for j in range(8):
        max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
        max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0)).astype(f32)
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0)).astype(f32)
    ls = np.minimum(63, _rint(inv_scale[:, None] * scales) & 0xFF).astype(np.uint8)   # uint8_t wrap, MIN(63, .)
    lm = np.minimum(63, _rint(inv_min[:, None] * mins) & 0xFF).astype(np.uint8)
    s = np.zeros((nb, 12), np.uint8)
    for j in range(8):
        if j < 4:
            s[:, j] = ls[:, j]
            s[:, j + 4] = lm[:, j]
        else:
            s[:, j + 4] = (ls[:, j] & 0xF) | ((lm[:, j] & 0xF) << 4)
            s[:, j - 4] |= (ls[:, j] >> 4) << 6
            s[:, j] |= (lm[:, j] >> 4) << 6
    d16 = (max_scale / f32(63)).astype(np.float16)
    dmin16 = (max_min / f32(63)).astype(np.float16)
    sc = np.zeros((nb, 8), np.uint8)
    m = np.zeros((nb, 8), np.uint8)
    for j in range(8):                                          # get_scale_min_k4
        if j < 4:
            sc[:, j] = s[:, j] & 63
            m[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            m[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    dd = d16.astype(f32)[:, None] * sc.astype(f32)
    dm = dmin16.astype(f32)[:, None] * m.astype(f32)
    xs = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnew = np.clip(_rint((xs + dm[:, :, None]) / dd[:, :, None]), 0, 15)
    L = np.where((dd != 0)[:, :, None], lnew, L).reshape(nb, QK_K).astype(np.uint8)
    qs = np.zeros((nb, 128), np.uint8)
    for k, j in enumerate(range(0, QK_K, 64)):
        qs[:, 32 * k: 32 * k + 32] = L[:, j: j + 32] | (L[:, j + 32: j + 64] << 4)
    out = np.concatenate([d16.reshape(nb, 1).view(np.uint8), dmin16.reshape(nb, 1).view(np.uint8), s, qs], axis=1)
    return out.reshape(rows, -1)


def quantize(w: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype == QT.Q4_K:
        return quantize_q4_k(w)
    if qtype == QT.Q6_K:
        return quantize_q6_k(w)
    return gguf.quants.quantize(w.astype(f32), qtype)


# ----------------------------------------------------------------------------------------------
# tokenizer: gpt2 byte-level BPE, 96 tokens = 3 specials + 88 single byte-level chars + 5 merges
# ----------------------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


# ids 0 (unk), 1 (bos), 2 (eos). Id 0 is spelled "<|endoftext|>" because transformers builds a gpt2 GGUF
# vocabulary with GPT2Tokenizer, whose defaults add "<|endoftext|>" as an extra (97th) token when absent.
SPECIALS = ["<|endoftext|>", "<s>", "</s>"]
DROPPED_ASCII = "\\^`{|}~"                               # printable ASCII not in the vocab
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r"]


def make_vocab(vocab_size: int):
    b2u = bytes_to_unicode()
    chars = [b2u[c] for c in range(0x20, 0x7F) if chr(c) not in DROPPED_ASCII]
    merged = ["".join(m.split(" ")) for m in MERGES]
    tokens = SPECIALS + chars + merged
    assert len(tokens) == vocab_size == len(set(tokens)), (len(tokens), vocab_size)
    token_type = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS))
    return tokens, [int(t) for t in token_type]


# ----------------------------------------------------------------------------------------------
# GGUF writing
# ----------------------------------------------------------------------------------------------

def write_gguf(path: Path, cfg: dict, name: str, weights: dict, type_of, file_type: int):
    """weights: HF-layout f32 arrays under HF names. type_of(gguf_name, array) -> GGMLQuantizationType."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    # general.* and llama.* in convert_hf_to_gguf.py's order (TextModel + LlamaModel.set_gguf_parameters)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(file_type)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    tokens, token_type = make_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(token_type)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = {}
    for hf, gg in gguf_names(cfg["num_hidden_layers"]):
        a = weights[hf].astype(f32)
        if gg.endswith("attn_q.weight"):
            a = permute(a, n_head)
        elif gg.endswith("attn_k.weight"):
            a = permute(a, n_kv)
        qt = type_of(gg, a)
        types[gg] = qt.name
        if qt == QT.F32:
            w.add_tensor(gg, np.ascontiguousarray(a))
        elif qt == QT.F16:
            w.add_tensor(gg, np.ascontiguousarray(a.astype(np.float16)))
        else:
            w.add_tensor(gg, quantize(a, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


def read_gguf_hf(path: Path, cfg: dict):
    """gguf-py's reading + dequantization, un-permuted, under HF names. Also returns the raw shapes."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    to_hf = {gg: hf for hf, gg in gguf_names(cfg["num_hidden_layers"])}
    r = gguf.GGUFReader(str(path))
    out, info = {}, {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(f32)
        info[t.name] = dict(type=t.tensor_type.name, ne=[int(v) for v in t.shape], nbytes=int(t.n_bytes))
        assert list(a.shape) == [int(v) for v in reversed(t.shape)] or a.ndim == 1, (t.name, a.shape, t.shape)
        if t.name.endswith("attn_q.weight"):
            a = unpermute(a, n_head)
        elif t.name.endswith("attn_k.weight"):
            a = unpermute(a, n_kv)
        out[to_hf[t.name]] = np.ascontiguousarray(a)
    return out, info, r


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

def hf_config_dict(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=float(config.rms_norm_eps),
        rope_theta=float(theta), tie_word_embeddings=bool(config.tie_word_embeddings),
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy().astype(f32)


def load_gguf_with_transformers(fname: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=fname, dtype=torch.float32)
    return m.eval()


def make_k_model():
    """A random Llama whose rows are multiples of 256 (for K-quants). Weights from a seeded numpy RNG,
    so they do not depend on torch's init; norms != 1 so a loader that drops them is caught."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=96, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=128,
                      rope_theta=50000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(SEED + 1)
    sd = {}
    for name, p in sorted(model.state_dict().items()):
        if p.ndim == 1:
            a = 1.0 + 0.1 * rng.standard_normal(p.shape)
        else:
            a = 0.02 * rng.standard_normal(p.shape)
        sd[name] = a.astype(f32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return model, sd


# ----------------------------------------------------------------------------------------------

def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    OUT.mkdir(parents=True, exist_ok=True)
    goldens = {}
    manifest = dict(
        generator="scripts/make_gguf_fixtures.py",
        versions=dict(gguf=__import__("importlib.metadata").metadata.version("gguf"),
                      transformers=transformers.__version__, torch=torch.__version__.split("+")[0],
                      numpy=np.__version__),
        seed=SEED, files={},
    )

    # sanity: the permutation pair, and ours against transformers' own reverse permute
    t = np.arange(64 * 8, dtype=f32).reshape(64, 8)
    for nh in (4, 2):
        assert np.array_equal(unpermute(permute(t, nh), nh), t)
    proc = LlamaTensorProcessor(config=dict(num_attention_heads=4, num_key_value_heads=2))
    assert np.array_equal(proc.process(permute(t, 4), "blk.0.attn_q.weight").weights, t)
    assert np.array_equal(proc.process(permute(t[:32], 2), "blk.0.attn_k.weight").weights, t[:32])

    rng = np.random.default_rng(SEED)
    ids = rng.integers(3, 96, size=(2, 7)).astype(np.int64)
    ids[:, 0] = 1  # bos
    goldens["input_ids"] = ids

    # ------------------------------------------------------------------ tiny_llama_dora conversions
    ref = AutoModelForCausalLM.from_pretrained(str(SRC), dtype=torch.float32).eval()
    cfg = hf_config_dict(ref.config)
    src = load_file(str(SRC / "model.safetensors"))
    ref_logits = logits_of(ref, ids)
    goldens["reference.logits"] = ref_logits
    manifest["reference"] = dict(source=str(SRC.relative_to(ROOT)), config=cfg)

    # llama.cpp's choices: convert_hf_to_gguf --outtype {f32,f16,q8_0} quantizes every 2-D tensor
    # (token_embd and output too) and keeps 1-D norms in F32. Q4_0/Q4_1 come from llama-quantize,
    # which keeps token_embd in the base type and wants Q6_K for output.weight; a 64-wide row is not
    # a multiple of 256, so it falls back to Q8_0 (its Q6_K -> Q8_0 fallback).
    def plan(base, output):
        return lambda gg, a: QT.F32 if a.ndim == 1 else (output if gg == "output.weight" else base)

    variants = [
        ("f32", plan(QT.F32, QT.F32), gguf.LlamaFileType.ALL_F32),
        ("f16", plan(QT.F16, QT.F16), gguf.LlamaFileType.MOSTLY_F16),
        ("q8_0", plan(QT.Q8_0, QT.Q8_0), gguf.LlamaFileType.MOSTLY_Q8_0),
        ("q4_0", plan(QT.Q4_0, QT.Q8_0), gguf.LlamaFileType.MOSTLY_Q4_0),
        ("q4_1", plan(QT.Q4_1, QT.Q8_0), gguf.LlamaFileType.MOSTLY_Q4_1),
    ]
    golden_weights_small = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    tok_text = "hello there, in the winter!"
    for tag, type_of, ftype in variants:
        fname = f"tiny_llama_{tag}.gguf"
        types = write_gguf(OUT / fname, cfg, "tiny-llama-dora", src, type_of, int(ftype))
        entry = check_file(fname, tag, cfg, types, ids, goldens, golden_weights_small,
                           reference=src, ref_logits=ref_logits, tok_text=tok_text)
        manifest["files"][fname] = entry
        if tag == "f32":
            assert entry["logits_vs_reference"]["max_abs_diff"] <= 1e-6, "F32 GGUF must reproduce the HF model"

    # ------------------------------------------------------------------ K-quant model
    kmodel, ksd = make_k_model()
    kcfg = hf_config_dict(kmodel.config)
    k_ref_logits = logits_of(kmodel, ids)
    goldens["k_reference.logits"] = k_ref_logits

    def ktypes(gg, a):
        # llama-quantize's Q4_K_M for this 2-layer model: token_embd Q4_K, output Q6_K, attn_v and
        # ffn_down Q6_K where use_more_bits(layer, 2) holds (layer 1 only), everything else Q4_K.
        if a.ndim == 1:
            return QT.F32
        if gg == "output.weight":
            return QT.Q6_K
        if gg in ("blk.1.attn_v.weight", "blk.1.ffn_down.weight"):
            return QT.Q6_K
        return QT.Q4_K

    fname = "tiny_llama_k.gguf"
    types = write_gguf(OUT / fname, kcfg, "tiny-llama-k", ksd, ktypes, int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
    golden_weights_k = ["model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
    entry = check_file(fname, "k", kcfg, types, ids, goldens, golden_weights_k,
                       reference=ksd, ref_logits=k_ref_logits, tok_text=tok_text)
    entry["reference_model"] = ("random Llama made by make_k_model() (numpy seed SEED+1, weights ~N(0,0.02), "
                                "norms 1+0.1*N(0,1)); not saved (4.7 MB f32), its logits are k_reference.logits")
    manifest["files"][fname] = entry

    save_file({k: np.ascontiguousarray(v) for k, v in sorted(goldens.items())}, str(OUT / "expected.safetensors"),
              metadata={"generator": "scripts/make_gguf_fixtures.py"})
    for f in manifest["files"].values():
        f["sha256"] = hashlib.sha256((OUT / f["file"]).read_bytes()).hexdigest()
        f["size"] = (OUT / f["file"]).stat().st_size
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (OUT / "README.md").write_text(readme(manifest, goldens))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"\nwrote {OUT.relative_to(ROOT)}: {total} bytes in {len(list(OUT.iterdir()))} files")


def check_file(fname, tag, cfg, types, ids, goldens, golden_weights, reference, ref_logits, tok_text):
    """Load `fname` with gguf-py and with transformers, cross-check, and record goldens + figures."""
    from transformers import AutoTokenizer
    path = OUT / fname
    deq, info, reader = read_gguf_hf(path, cfg)

    # (1) transformers' own GGUF loading: config, weights (dequantized + reverse-permuted), logits
    m = load_gguf_with_transformers(fname)
    got_cfg = hf_config_dict(m.config)
    for k, v in cfg.items():
        if k in ("bos_token_id", "eos_token_id"):
            continue
        assert got_cfg[k] == v or (isinstance(v, float) and abs(got_cfg[k] - v) <= 1e-12 * max(1, abs(v))), \
            (fname, k, got_cfg[k], v)
    sd = {k: v.float().numpy() for k, v in m.state_dict().items()}
    assert set(sd) == set(deq), (fname, sorted(set(sd) ^ set(deq)))
    for k, v in deq.items():
        assert np.array_equal(sd[k], v), f"{fname}: transformers' {k} != un-permuted gguf-py dequantization"
    logits = logits_of(m, ids)
    goldens[f"{tag}.logits"] = logits

    # (2) errors against the un-quantized original
    diff = np.abs(logits - ref_logits)
    err = dict(max_abs_diff=float(diff.max()), max_rel_diff=float(diff.max() / np.abs(ref_logits).max()),
               ref_max_abs=float(np.abs(ref_logits).max()))
    goldens[f"{tag}.max_abs_diff"] = np.array([err["max_abs_diff"]], f32)
    goldens[f"{tag}.max_rel_diff"] = np.array([err["max_rel_diff"]], f32)
    werr = {}
    for k in sorted(deq):
        if deq[k].ndim == 2:
            werr[k] = dict(max_abs=float(np.abs(deq[k] - reference[k]).max()), rel_rms=rel_rms(deq[k], reference[k]))
        else:
            assert np.array_equal(deq[k], reference[k]), (fname, k)
    for k in golden_weights:
        goldens[f"{tag}.{k}"] = deq[k]

    # (3) tokenizer from the GGUF metadata
    tok = dict(loaded=False)
    try:
        t = AutoTokenizer.from_pretrained(str(OUT), gguf_file=fname)
        enc = t(tok_text)["input_ids"]
        tok = dict(loaded=True, cls=type(t).__name__, text=tok_text, input_ids=[int(i) for i in enc],
                   decoded=t.decode(enc, skip_special_tokens=True), bos=t.bos_token, eos=t.eos_token,
                   unk=t.unk_token, vocab_size=len(t))
    except Exception as e:  # noqa: BLE001 - recorded in the manifest and printed
        tok["error"] = f"{type(e).__name__}: {e}"
    assert not tok["loaded"] or tok["vocab_size"] == cfg["vocab_size"], (fname, tok)

    per_type = {}
    for name, i in info.items():
        per_type.setdefault(i["type"], []).append(name)
    print(f"\n== {fname} ({path.stat().st_size} bytes)")
    print("   types:", {k: len(v) for k, v in per_type.items()})
    print(f"   transformers == un-permuted gguf-py dequant: OK ({len(deq)} tensors); config OK")
    print(f"   logits vs un-quantized reference: max_abs {err['max_abs_diff']:.3e}  "
          f"max_rel {err['max_rel_diff']:.3e}  (|ref| max {err['ref_max_abs']:.3e})")
    worst = max(werr.values(), key=lambda e: e["rel_rms"])
    print(f"   weights: worst rel_rms {worst['rel_rms']:.3e}, worst max_abs "
          f"{max(e['max_abs'] for e in werr.values()):.3e}")
    print("   tokenizer:", tok)
    return dict(file=fname, tag=tag, config=cfg, tensor_types=types, tensors=info,
                logits_vs_reference=err, weight_errors=werr, tokenizer=tok,
                golden_weights=[f"{tag}.{k}" for k in golden_weights])


def readme(manifest, goldens):
    v = manifest["versions"]
    lines = []
    add = lines.append
    add("# GGUF golden fixtures\n")
    add("Generated by `scripts/make_gguf_fixtures.py` (run `/work/pyenv/bin/python scripts/make_gguf_fixtures.py`;")
    add("deterministic, re-running rewrites the same bytes). Do not edit by hand.\n")
    add(f"Made with gguf-py {v['gguf']}, transformers {v['transformers']}, torch {v['torch']}, numpy {v['numpy']}.\n")
    add("## Files\n")
    add("| file | what | tensor types | bytes |")
    add("| --- | --- | --- | --- |")
    for f in manifest["files"].values():
        counts = {}
        for ty in f["tensor_types"].values():
            counts[ty] = counts.get(ty, 0) + 1
        what = ("`tests/fixtures/peft/tiny_llama_dora/model` converted" if f["tag"] != "k"
                else "random Llama, hidden 256 / ffn 512 (K-quant rows)")
        add(f"| `{f['file']}` | {what} | {', '.join(f'{k}×{n}' for k, n in counts.items())} | {f['size']} |")
    add("| `expected.safetensors` | goldens, keys below | | |")
    add("| `manifest.json` | per-file config, per-tensor ggml type and `ne`, error figures, tokenizer goldens, sha256 | | |")
    add("")
    add("### How each GGUF is made (what llama.cpp would write)\n")
    add("* `general.architecture = \"llama\"`, `general.type = \"model\"`, `general.name`, `general.file_type`")
    add("  (LlamaFileType: 0 F32, 1 F16, 7 Q8_0, 2 Q4_0, 3 Q4_1, 15 Q4_K_M), `general.quantization_version = 2`.")
    add("* `llama.block_count`, `llama.context_length`, `llama.embedding_length`, `llama.feed_forward_length`,")
    add("  `llama.attention.head_count`, `llama.attention.head_count_kv`, `llama.rope.freq_base`,")
    add("  `llama.attention.layer_norm_rms_epsilon`, `llama.attention.key_length`, `llama.attention.value_length`,")
    add("  `llama.vocab_size`, `llama.rope.dimension_count` (= head_dim), in convert_hf_to_gguf.py's order.")
    add("* Tensors (HF name → GGUF name): `model.embed_tokens` → `token_embd`, `model.norm` → `output_norm`,")
    add("  `lm_head` → `output`, and per layer N `input_layernorm` → `blk.N.attn_norm`, `q_proj/k_proj/v_proj/o_proj`")
    add("  → `blk.N.attn_q/attn_k/attn_v/attn_output`, `post_attention_layernorm` → `blk.N.ffn_norm`,")
    add("  `gate_proj/up_proj/down_proj` → `blk.N.ffn_gate/ffn_up/ffn_down` (all `.weight`). Untied: `output.weight` present.")
    add("* Shapes: GGUF records dims reversed (`ne0` = in-features); a `[out, in]` HF matrix is `ne = [in, out]`,")
    add("  and its data is row-major `[out, in]` (each row of `in` values = whole quant blocks).")
    add("* Types: 1-D norms always F32. F32/F16/Q8_0 = `convert_hf_to_gguf.py --outtype` (every 2-D tensor,")
    add("  token_embd and output included, in that type). Q4_0/Q4_1 = `llama-quantize`: token_embd and all")
    add("  projections in the base type; output.weight wants Q6_K but 64 % 256 != 0 so it falls back to **Q8_0**.")
    add("  `tiny_llama_k.gguf` = `llama-quantize Q4_K_M` rules for 2 layers: token_embd Q4_K, output Q6_K,")
    add("  `blk.1.attn_v` and `blk.1.ffn_down` Q6_K (use_more_bits), all other projections Q4_K.")
    add("* Quantization: gguf-py `gguf.quants.quantize` for Q8_0/Q4_0/Q4_1 (matches ggml's reference rounding);")
    add("  Q4_K/Q6_K with the script's numpy port of ggml-quants.c `quantize_row_q4_K_ref`/`quantize_row_q6_K_ref`")
    add("  (same algorithm, float32, C summation order). During development it was checked bit-identical to those C")
    add("  functions built standalone with `gcc -O2 -ffp-contract=off`; a build that contracts to FMA (`-march=native`)")
    add("  rounds differently in ~1-5 % of blocks. gguf-py's Q4_0/Q4_1/Q8_0 were likewise bit-identical to the C `_ref`s.")
    add("  Every file is dequantized back with gguf-py's `gguf.quants.dequantize` for the goldens.")
    add("* Tokenizer (`tokenizer.ggml.*`): `model = \"gpt2\"`, `pre = \"gpt-2\"`, 96 tokens: 0 `<|endoftext|>` (unk), 1 `<s>` (bos),")
    add("  2 `</s>` (eos) as CONTROL (type 3), then 88 byte-level single characters (printable ASCII except")
    add(f"  `` {DROPPED_ASCII} ``, space spelled `Ġ`), then the 5 merges' results {', '.join('`' + ''.join(m.split()) + '`' for m in MERGES)};")
    add(f"  `merges = {MERGES}`, `unknown_token_id = 0`, `add_bos_token = true`, `add_eos_token = false`.")
    add("  It is a toy: bytes outside the vocab (non-ASCII, the dropped characters) have no token; transformers'")
    add("  tokenizer silently drops them, and llama.cpp could not tokenize such text. Id 0 is spelled `<|endoftext|>`")
    add("  because transformers builds gpt2 GGUF vocabularies with GPT2Tokenizer, which otherwise appends that token")
    add("  as a 97th entry.\n")
    add("### q/k row permutation\n")
    add("llama.cpp's converter stores q_proj with `n_head = num_attention_heads` and k_proj with")
    add("`n_head = num_key_value_heads` permuted as")
    add("```python\nw.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)\n```")
    add("(HF rotate-half order → interleaved pairs). A loader undoes it on the *dequantized* `[out, in]` matrix:")
    add("```python\nw.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)\n```")
    add("i.e. for head h and j < hd/2 (hd = head_dim), file rows `h*hd + 2j` and `h*hd + 2j + 1` are HF rows")
    add("`h*hd + j` and `h*hd + hd/2 + j`. Rows are permuted whole, so quant blocks (which run along")
    add("`in`) are unaffected: one can equally un-permute the raw block rows before dequantizing.\n")
    add("## expected.safetensors\n")
    add("All f32 except `input_ids` (i64). `<tag>` ∈ {" + ", ".join(f"`{f['tag']}`" for f in manifest["files"].values()) + "}")
    add("(`k` = `tiny_llama_k.gguf`, otherwise `tiny_llama_<tag>.gguf`).\n")
    add("| key | shape | meaning |")
    add("| --- | --- | --- |")
    add(f"| `input_ids` | {list(goldens['input_ids'].shape)} | token ids (first = bos 1) used for every logits key |")
    add(f"| `reference.logits` | {list(goldens['reference.logits'].shape)} | the original HF checkpoint (`tiny_llama_dora/model`, f32) |")
    add(f"| `k_reference.logits` | {list(goldens['k_reference.logits'].shape)} | the un-quantized random model behind `tiny_llama_k.gguf` |")
    add("| `<tag>.logits` | [2, 7, 96] | `AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)` — transformers' own GGUF loading |")
    add("| `<tag>.max_abs_diff` | [1] | max \\|`<tag>.logits` − reference logits\\| (reference = `k_reference` for `k`) |")
    add("| `<tag>.max_rel_diff` | [1] | `max_abs_diff` / max \\|reference logits\\| |")
    add("| `<tag>.<HF weight name>` | [out, in] | gguf-py's dequantization of that tensor, un-permuted (HF layout) |")
    add("")
    add("Weight goldens present (HF name, ggml type in the file):\n")
    for f in manifest["files"].values():
        add(f"* `{f['tag']}`: " + ", ".join(f"`{k.split('.', 1)[1]}` ({f['tensor_types'][gg_of(k.split('.', 1)[1])]})"
                                            for k in f["golden_weights"]))
    add("")
    add("Checked by the script (it fails otherwise): transformers' loaded state dict equals gguf-py's dequantization")
    add("un-permuted as above, tensor for tensor (names, values, bit-exact); transformers' config from the metadata")
    add("equals the source config; norms round-trip exactly; the F32 file reproduces the HF logits (≤ 1e-6).\n")
    add("## Notes for tests\n")
    add("* Dequantization (candle vs gguf-py): dequantize the named tensor, un-permute if it is attn_q/attn_k, and")
    add("  compare to `<tag>.<HF name>`; both compute `d*q` (+ `m`) in f32, so expect agreement to a few ulp.")
    add("* Loader: load `<file>` with the Rust GGUF loader (config from metadata only) and compare logits on")
    add("  `input_ids` to `<tag>.logits` (same weights as transformers; only f32 op order differs → ~1e-5).")
    add("  For `f32`, `reference.logits` equals `f32.logits` exactly here.")
    add("* Quantization error bound: `<tag>.max_abs_diff` / `max_rel_diff` are what a quantized load costs on")
    add("  these inputs; they are figures for these random models, not general bounds.")
    add("* The tiny_llama_dora checkpoint has all RMSNorm weights = 1, so its files do not catch a loader that")
    add("  drops or mis-maps norms; `tiny_llama_k.gguf` has norms 1 + 0.1·N(0,1), and rope_theta 50000, rms eps 1e-6,")
    add("  context 128 (≠ LlamaConfig's defaults), so a loader ignoring those metadata keys fails on it.")
    add("* `tiny_llama_k.gguf`'s un-quantized model is not saved (4.7 MB in f32); the script rebuilds it from its seed.")
    add("")
    add("## Figures\n")
    add("Logits of the GGUF (as transformers loads it) against the un-quantized model, on `input_ids`; weight error =")
    add("worst over the file's 2-D tensors of rel. RMS (‖deq − orig‖ / ‖orig‖) and of max abs error.\n")
    add("| file | logits max abs diff | logits max rel diff | max \\|ref logit\\| | weight rel RMS (worst) | weight max abs (worst) |")
    add("| --- | --- | --- | --- | --- | --- |")
    for f in manifest["files"].values():
        e = f["logits_vs_reference"]
        we = f["weight_errors"].values()
        add(f"| `{f['file']}` | {e['max_abs_diff']:.3e} | {e['max_rel_diff']:.3e} | {e['ref_max_abs']:.3e} | "
            f"{max(x['rel_rms'] for x in we):.3e} | {max(x['max_abs'] for x in we):.3e} |")
    add("")
    add("## Tokenizer check\n")
    for f in manifest["files"].values():
        t = f["tokenizer"]
        if t.get("loaded"):
            add(f"* `{f['file']}`: `AutoTokenizer.from_pretrained(dir, gguf_file=...)` → {t['cls']}, "
                f"`{t['text']!r}` → `{t['input_ids']}` (decodes back to `{t['decoded']!r}`)")
        else:
            add(f"* `{f['file']}`: transformers could not build the tokenizer: {t.get('error')}")
    add("")
    return "\n".join(lines)


def gg_of(hf_name):
    for hf, gg in gguf_names(64):
        if hf == hf_name:
            return gg
    raise KeyError(hf_name)


if __name__ == "__main__":
    sys.exit(main())
