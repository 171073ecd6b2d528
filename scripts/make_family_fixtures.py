"""Golden fixtures for more model families: Qwen2 (tied and untied), Qwen3, Mistral (sliding window),
Gemma2 (soft-capping, (1 + w) norms, sandwich norms, alternating sliding layers),
Gemma3 text (q_norm/k_norm, a different rope base for sliding and full layers, 2 sliding : 1 full),
Phi3 (fused qkv_proj and gate_up_proj, sliding window on every layer).

Each supported case is a folder tests/fixtures/families/<name>/:
  model/              save_pretrained output of a tiny random transformers model (config.json + model.safetensors)
  adapter/            PEFT DoRA adapter (r=4, alpha=8, all-linear), random non-zero values, save_pretrained output
  io.safetensors      input_ids [2,12] int64; logits_base; logits_adapter; logits_merged; g;
                      grad.<adapter key> = d(sum(logits_adapter * g)) / d(adapter tensor)
  merged.safetensors  merge_and_unload() weights, exactly the keys of model/model.safetensors
  case.json           what the case is (family, class, config highlights, PEFT counts, targeted modules)
and tests/fixtures/families/unsupported/<name>/config.json holds configs a loader must refuse.

All goldens are computed in float32 with attn_implementation="eager". Every golden is also checked
against an independent float64 re-implementation of the forward pass written from the formulas in
tests/fixtures/families/README.md (so the README states what the numbers actually encode).

Usage: /work/pyenv/bin/python scripts/make_family_fixtures.py [OUT_DIR] [SEED]
       (defaults: tests/fixtures/families 2000 -- the values the committed files were made with)
"""
import contextlib
import copy
import io as _io
import json
import math
import os
import shutil
import sys

import torch
import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

torch.set_default_dtype(torch.float32)

DIMS = dict(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
ROPE_THETA = 50000.0
RMS_EPS = 1e-6
SEQ = (2, 12)
R, ALPHA = 4, 8
TOL_MERGED = 1e-5      # reload(merged.safetensors) vs logits_adapter, max abs
TOL_REF = 2e-4         # float64 reference vs float32 transformers, max abs (logits are O(1..10))
# Gemma2 case: small caps so the tanh soft-capping visibly bends scores and logits
GEMMA2 = dict(query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
              sliding_window=4, hidden_activation="gelu_pytorch_tanh", attention_bias=False)
GEMMA2_ROPE_THETA = 10000.0
GEMMA2_EMBED_STD = 0.1
# Gemma3 text case: 3 layers, sliding_window_pattern 3 -> layer_types [sliding, sliding, full]; rope base 10000 on
# the sliding (local) layers, 50000 on the full (global) layer; no soft-capping (Gemma3TextConfig defaults: None)
GEMMA3 = dict(query_pre_attn_scalar=24, sliding_window=4, hidden_activation="gelu_pytorch_tanh", attention_bias=False,
              sliding_window_pattern=3, num_hidden_layers=3)
GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
               "full_attention": {"rope_type": "default", "rope_theta": 50000.0}}
GEMMA3_EMBED_STD = 0.1
# Phi3 case: sliding_window 4 (applied to every layer), pad_token_id 0 (Phi3Config's default 32000 is outside vocab
# 96 and nn.Embedding refuses it), partial_rotary_factor 1.0 (the default, written into rope_parameters)
PHI3_SLIDING_WINDOW = 4
PHI3_PAD_TOKEN_ID = 0


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------

def make_config(family, tie, sliding_window=None):
    rope = {"rope_type": "default", "rope_theta": ROPE_THETA}
    common = dict(DIMS, rms_norm_eps=RMS_EPS, tie_word_embeddings=tie, rope_parameters=rope,
                  bos_token_id=1, eos_token_id=2)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, attention_bias=False, use_sliding_window=False)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=sliding_window)
    if family == "gemma2":   # layer_types left to Gemma2Config's default: [sliding, full, sliding, ...]
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": GEMMA2_ROPE_THETA}
        return transformers.Gemma2Config(**common, **dict(GEMMA2, sliding_window=sliding_window))
    if family == "gemma3":   # text-only Gemma3TextConfig (model_type gemma3_text); rope_parameters per layer type
        common["rope_parameters"] = copy.deepcopy(GEMMA3_ROPE)
        common.update(GEMMA3, sliding_window=sliding_window)
        return transformers.Gemma3TextConfig(**common)
    if family == "phi3":
        common["rope_parameters"] = dict(common["rope_parameters"], partial_rotary_factor=1.0)
        return transformers.Phi3Config(**common, sliding_window=sliding_window, pad_token_id=PHI3_PAD_TOKEN_ID,
                                       hidden_act="silu")
    raise ValueError(family)


CLASSES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
           "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def build(family, cfg, attn="eager"):
    cls = getattr(transformers, CLASSES[family])
    m = cls._from_config(cfg, attn_implementation=attn, dtype=torch.float32).eval()
    assert m.config._attn_implementation == attn, m.config._attn_implementation
    return m


def randomize(model, gen, zero_centred_norms=False, embed_std=0.25):
    """Re-draw every parameter so each term is visible in the logits: linear weights N(0, 1/in),
    embeddings 0.25 N(0, 1), norm weights 1 + 0.1 N(0,1), biases 0.1 N(0,1).
    zero_centred_norms (Gemma2, whose RMSNorm multiplies by (1 + w)): norm weights 0.1 N(0,1).
    embed_std: Gemma2 uses 0.1 (tied head: 0.25 drives the pre-cap logits to |13| and saturates the final cap)."""
    with torch.no_grad():
        for n, p in model.named_parameters():   # tied lm_head is not listed separately
            z = torch.randn(p.shape, generator=gen)
            if n.endswith("norm.weight") and zero_centred_norms:
                p.copy_(0.1 * z)
            elif n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * z)
            elif n.endswith(".bias"):
                p.copy_(0.1 * z)
            elif "embed_tokens" in n:
                p.copy_(embed_std * z)   # tied lm_head: logits ~ embed_std * sqrt(64) = O(1..2)
            elif p.dim() == 2:
                p.copy_(z / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError("unexpected parameter " + n)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.detach().clone()


# --------------------------------------------------------------------------------------------
# independent float64 reference of the forward pass (the README formulas)
# --------------------------------------------------------------------------------------------

def ref_forward(sd, family, cfg, ids, window=None, window_inclusive=False, qk_norm_after_rope=False,
                rotary_dim=None, window_layers=None):
    """sd: state dict (HF key names). window: sliding window W or None.
    Visible keys for query i: j <= i and j > i - W. window_inclusive=True (j >= i - W) and
    qk_norm_after_rope=True are deliberate mistakes, only to show that the goldens tell them apart.
    rotary_dim (Phi3 partial_rotary_factor): rotate only the first rotary_dim dims of each head (default D).
    window_layers: the layers the window applies to (default: all)."""
    f = {k: v.double() for k, v in sd.items()}
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps, theta = cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    B, T = ids.shape
    RD = D if rotary_dim is None else rotary_dim

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, pre, bias=False):
        y = x @ f[pre + ".weight"].T
        return y + f[pre + ".bias"] if bias else y

    inv = 1.0 / theta ** (torch.arange(0, RD, 2, dtype=torch.float64) / RD)        # [RD/2]
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]              # [T, RD/2]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()       # [T, RD]

    def rope(x):   # x [B, T, n, D]; rotate_half pairs dim d with d + RD/2 within the first RD dims
        xr, xp = x[..., :RD], x[..., RD:]
        x1, x2 = xr[..., : RD // 2], xr[..., RD // 2:]
        rot = torch.cat([-x2, x1], -1)
        return torch.cat([xr * cos[None, :, None, :] + rot * sin[None, :, None, :], xp], -1)

    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i
    visible = causal
    if window is not None:
        visible = visible & ((j >= i - window) if window_inclusive else (j > i - window))

    qkv_bias = family == "qwen2"
    x = f["model.embed_tokens.weight"][ids]
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        vis = visible if window_layers is None or l in window_layers else causal
        h = rms(x, f[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj", qkv_bias).view(B, T, H, D)
        k = lin(h, p + "self_attn.k_proj", qkv_bias).view(B, T, KV, D)
        v = lin(h, p + "self_attn.v_proj", qkv_bias).view(B, T, KV, D)
        if family == "qwen3" and not qk_norm_after_rope:   # per-head RMSNorm over head_dim, BEFORE rope
            q = rms(q, f[p + "self_attn.q_norm.weight"])
            k = rms(k, f[p + "self_attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        if family == "qwen3" and qk_norm_after_rope:
            q = rms(q, f[p + "self_attn.q_norm.weight"])
            k = rms(k, f[p + "self_attn.k_norm.weight"])
        rep = H // KV                  # query head hh uses kv head hh // rep
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)
        s = s.masked_fill(~vis, float("-inf"))
        a = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, T, H * D)
        x = x + lin(a, p + "self_attn.o_proj")          # o_proj has no bias in all three
        h = rms(x, f[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, f["model.norm.weight"])
    head = f["lm_head.weight"] if "lm_head.weight" in f else f["model.embed_tokens.weight"]
    return x @ head.T


def ref_forward_gemma2(sd, cfg, ids, window=None, window_inclusive=False, sliding_layers=None, attn_cap="cfg",
                       final_cap="cfg", scaling=None, norm_one_plus=True, embed_scale=True, softcap_after_mask=False,
                       gelu_tanh=True, post_norms=True):
    """float64 Gemma2 forward from the README formulas (sd: HF key names; lm_head tied to embed_tokens).
    sliding_layers: indices of the sliding layers (default: from cfg.layer_types). The other keyword arguments
    are deliberate mistakes, only to show that the goldens tell them apart."""
    f = {k: v.double() for k, v in sd.items()}
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps, theta = cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    acap = cfg.attn_logit_softcapping if attn_cap == "cfg" else attn_cap
    fcap = cfg.final_logit_softcapping if final_cap == "cfg" else final_cap
    scale = cfg.query_pre_attn_scalar ** -0.5 if scaling is None else scaling
    if sliding_layers is None:
        sliding_layers = [l for l, t in enumerate(cfg.layer_types) if t == "sliding_attention"]
    B, T = ids.shape

    def rms(x, w):   # Gemma2RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w)
        return (1.0 + w if norm_one_plus else w) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, pre):
        return x @ f[pre + ".weight"].T

    def cap(s, c):
        return s if c is None else c * torch.tanh(s / c)

    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos[None, :, None, :] + torch.cat([-x2, x1], -1) * sin[None, :, None, :]

    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i
    win = causal & ((j >= i - window) if window_inclusive else (j > i - window)) if window is not None else causal
    neg = torch.finfo(torch.float32).min

    def act(g):
        if gelu_tanh:
            return 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g.pow(3))))
        return torch.nn.functional.gelu(g)   # exact erf GELU (mistake)

    E = f["model.embed_tokens.weight"]
    x = E[ids] * (math.sqrt(cfg.hidden_size) if embed_scale else 1.0)
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        visible = win if l in sliding_layers else causal
        h = rms(x, f[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").view(B, T, H, D))
        k = rope(lin(h, p + "self_attn.k_proj").view(B, T, KV, D))
        v = lin(h, p + "self_attn.v_proj").view(B, T, KV, D)
        rep = H // KV
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
        if softcap_after_mask:
            s = cap(s + torch.where(visible, 0.0, neg), acap)
        else:
            s = cap(s, acap) + torch.where(visible, 0.0, neg)   # eager: cap, then add the additive mask
        a = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, T, H * D)
        o = lin(a, p + "self_attn.o_proj")
        x = x + (rms(o, f[p + "post_attention_layernorm.weight"]) if post_norms else o)
        h = rms(x, f[p + "pre_feedforward_layernorm.weight"])
        m = lin(act(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = x + (rms(m, f[p + "post_feedforward_layernorm.weight"]) if post_norms else m)
    x = rms(x, f["model.norm.weight"])
    head = f["lm_head.weight"] if "lm_head.weight" in f else E
    return cap(x @ head.T, fcap)


def ref_forward_gemma3(sd, cfg, ids, window=None, window_inclusive=False, sliding_layers=None, theta_local=None,
                       theta_global=None, qk_norm="before_rope", qk_norm_one_plus=True, scaling=None,
                       norm_one_plus=True, embed_scale=True, gelu_tanh=True, post_norms=True, attn_cap=None,
                       final_cap="cfg"):
    """float64 Gemma3 text forward from the README formulas (sd: HF key names; lm_head tied to embed_tokens).
    sliding_layers: default from cfg.layer_types. theta_local / theta_global: default from
    cfg.rope_parameters[sliding_attention / full_attention]. qk_norm: "before_rope" (transformers), "after_rope"
    or None (skipped). attn_cap: Gemma3 never applies attention soft-capping, so any value is a deliberate mistake,
    as are the other keyword arguments."""
    f = {k: v.double() for k, v in sd.items()}
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    th = {"sliding_attention": cfg.rope_parameters["sliding_attention"]["rope_theta"] if theta_local is None
          else theta_local,
          "full_attention": cfg.rope_parameters["full_attention"]["rope_theta"] if theta_global is None
          else theta_global}
    fcap = cfg.final_logit_softcapping if final_cap == "cfg" else final_cap
    scale = cfg.query_pre_attn_scalar ** -0.5 if scaling is None else scaling
    if sliding_layers is None:
        sliding_layers = [l for l, t in enumerate(cfg.layer_types) if t == "sliding_attention"]
    B, T = ids.shape

    def rms(x, w, one_plus=True):   # Gemma3RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w)
        return (1.0 + w if one_plus else w) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, pre):
        return x @ f[pre + ".weight"].T

    def cap(s, c):
        return s if c is None else c * torch.tanh(s / c)

    def rope_tables(theta):
        inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        return torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    tables = {t: rope_tables(v) for t, v in th.items()}

    def rope(x, cs):
        cos, sin = cs
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos[None, :, None, :] + torch.cat([-x2, x1], -1) * sin[None, :, None, :]

    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i
    win = causal & ((j >= i - window) if window_inclusive else (j > i - window)) if window is not None else causal
    neg = torch.finfo(torch.float32).min

    def act(g):
        if gelu_tanh:
            return 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g.pow(3))))
        return torch.nn.functional.gelu(g)

    E = f["model.embed_tokens.weight"]
    x = E[ids] * (math.sqrt(cfg.hidden_size) if embed_scale else 1.0)
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        sliding = l in sliding_layers
        visible = win if sliding else causal
        cs = tables["sliding_attention" if sliding else "full_attention"]
        h = rms(x, f[p + "input_layernorm.weight"], norm_one_plus)
        q = lin(h, p + "self_attn.q_proj").view(B, T, H, D)
        k = lin(h, p + "self_attn.k_proj").view(B, T, KV, D)
        v = lin(h, p + "self_attn.v_proj").view(B, T, KV, D)
        if qk_norm == "before_rope":
            q = rms(q, f[p + "self_attn.q_norm.weight"], qk_norm_one_plus)
            k = rms(k, f[p + "self_attn.k_norm.weight"], qk_norm_one_plus)
        q, k = rope(q, cs), rope(k, cs)
        if qk_norm == "after_rope":
            q = rms(q, f[p + "self_attn.q_norm.weight"], qk_norm_one_plus)
            k = rms(k, f[p + "self_attn.k_norm.weight"], qk_norm_one_plus)
        rep = H // KV
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        s = cap(torch.einsum("bihd,bjhd->bhij", q, k) * scale, attn_cap) + torch.where(visible, 0.0, neg)
        a = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, T, H * D)
        o = lin(a, p + "self_attn.o_proj")
        x = x + (rms(o, f[p + "post_attention_layernorm.weight"], norm_one_plus) if post_norms else o)
        h = rms(x, f[p + "pre_feedforward_layernorm.weight"], norm_one_plus)
        m = lin(act(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = x + (rms(m, f[p + "post_feedforward_layernorm.weight"], norm_one_plus) if post_norms else m)
    x = rms(x, f["model.norm.weight"], norm_one_plus)
    head = f["lm_head.weight"] if "lm_head.weight" in f else E
    return cap(x @ head.T, fcap)


def phi3_unfuse(sd, cfg, swap_kv=False, swap_gate_up=False):
    """Split Phi3's fused weights into Llama key names, as Phi3Attention / Phi3MLP slice them:
    qkv_proj rows [0, H*D) = q, [H*D, H*D + KV*D) = k, [H*D + KV*D, H*D + 2*KV*D) = v;
    gate_up_proj rows [0, I) = gate, [I, 2I) = up (gate, up = chunk(2, dim=-1)).
    swap_kv / swap_gate_up are deliberate mistakes, only to show that the goldens tell them apart."""
    H, KV, D, I = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    out = {}
    for k, v in sd.items():
        if k.endswith("self_attn.qkv_proj.weight"):
            pre = k[: -len("qkv_proj.weight")]
            assert v.shape[0] == H * D + 2 * KV * D, v.shape
            q, kk, vv = v[: H * D], v[H * D: H * D + KV * D], v[H * D + KV * D:]
            if swap_kv:
                kk, vv = vv, kk
            out[pre + "q_proj.weight"], out[pre + "k_proj.weight"], out[pre + "v_proj.weight"] = q, kk, vv
        elif k.endswith("mlp.gate_up_proj.weight"):
            pre = k[: -len("gate_up_proj.weight")]
            assert v.shape[0] == 2 * I, v.shape
            gate, up = v[:I], v[I:]
            if swap_gate_up:
                gate, up = up, gate
            out[pre + "gate_proj.weight"], out[pre + "up_proj.weight"] = gate, up
        else:
            out[k] = v
    return out


def phi3_checks(base, base_sd, cfg, ids, logits_base, W, figs):
    """Phi3: the fused-weight split order, the window on every layer and the rope terms move the logits."""
    def variant(**changes):
        c = copy.deepcopy(cfg)
        for k, v in changes.items():
            setattr(c, k, v)
        m = build("phi3", c)
        m.load_state_dict(base.state_dict())
        return logits_of(m, ids)

    def bigger(key, value, floor=1e-2):
        figs[key] = value
        assert value > floor, (key, value)

    figs["base_max_abs_logit"] = logits_base.abs().max().item()
    figs["base_logit_std"] = logits_base.std().item()
    nowin = variant(sliding_window=None)
    bigger("sliding_window_None_vs_base", maxdiff(nowin, logits_base))
    figs["sliding_window_None_vs_base_first_W_positions"] = maxdiff(nowin[:, :W], logits_base[:, :W])
    assert figs["sliding_window_None_vs_base_first_W_positions"] == 0.0, figs
    r = lambda sd=base_sd, c=cfg, **kw: maxdiff(ref_forward(sd, "phi3", c, ids, **dict(dict(window=W), **kw)),
                                                 logits_base)
    figs["ref64_no_window_vs_transformers_sliding_window_None"] = maxdiff(
        ref_forward(phi3_unfuse(base_sd, cfg), "phi3", cfg, ids, window=None), nowin)
    assert figs["ref64_no_window_vs_transformers_sliding_window_None"] < TOL_REF, figs
    bigger("ref_window_j_ge_i_minus_W_vs_base", r(phi3_unfuse(base_sd, cfg), window_inclusive=True))
    bigger("ref_window_on_layer_0_only_vs_base", maxdiff(
        ref_forward(phi3_unfuse(base_sd, cfg), "phi3", cfg, ids, window=W, window_layers=[0]), logits_base))
    bigger("ref_qkv_k_v_blocks_swapped_vs_base", r(phi3_unfuse(base_sd, cfg, swap_kv=True)))
    bigger("ref_gate_up_halves_swapped_vs_base", r(phi3_unfuse(base_sd, cfg, swap_gate_up=True)))
    rope_alt = copy.deepcopy(cfg)
    rope_alt.rope_parameters = dict(cfg.rope_parameters, rope_theta=10000.0)
    bigger("ref_theta_10000_vs_base", r(phi3_unfuse(base_sd, cfg), c=rope_alt), floor=1e-3)
    half = variant(rope_parameters=dict(cfg.rope_parameters, partial_rotary_factor=0.5))
    bigger("transformers_partial_rotary_factor_0.5_vs_base", maxdiff(half, logits_base), floor=1e-3)
    figs["ref64_partial_rotary_0.5_vs_transformers_partial_rotary_0.5"] = maxdiff(
        ref_forward(phi3_unfuse(base_sd, cfg), "phi3", cfg, ids, window=W, rotary_dim=cfg.head_dim // 2), half)
    assert figs["ref64_partial_rotary_0.5_vs_transformers_partial_rotary_0.5"] < TOL_REF, figs


def ref_merge(base_sd, adapter_sd, scaling):
    """Merged DoRA weight (m / ||W0 + s B A||_row) * (W0 + s B A); biases untouched."""
    out = dict(base_sd)
    pre = "base_model.model."
    for k in adapter_sd:
        if k.endswith(".lora_A.weight"):
            mod = k[len(pre): -len(".lora_A.weight")]
            A = adapter_sd[k].double()
            Bm = adapter_sd[pre + mod + ".lora_B.weight"].double()
            m = adapter_sd[pre + mod + ".lora_magnitude_vector"].double()
            W = base_sd[mod + ".weight"].double() + scaling * (Bm @ A)
            out[mod + ".weight"] = (m / W.norm(dim=1))[:, None] * W
    return out


def maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


def gemma2_checks(base, base_sd, cfg, ids, logits_base, W, figs):
    """Gemma2: each Gemma2-specific term moves the logits (transformers with the term switched off, and
    deliberate mistakes fed to the float64 reference)."""
    def variant(**changes):
        c = copy.deepcopy(cfg)
        for k, v in changes.items():
            setattr(c, k, v)
        m = build("gemma2", c)
        m.load_state_dict(base.state_dict())
        return logits_of(m, ids)

    def bigger(key, value, floor=1e-2):
        figs[key] = value
        assert value > floor, (key, value)

    no_attn_cap = variant(attn_logit_softcapping=None)
    no_final_cap = variant(final_logit_softcapping=None)
    no_caps = variant(attn_logit_softcapping=None, final_logit_softcapping=None)
    bigger("attn_softcap_None_vs_base", maxdiff(no_attn_cap, logits_base))
    bigger("final_softcap_None_vs_base", maxdiff(no_final_cap, logits_base))
    bigger("both_softcaps_None_vs_base", maxdiff(no_caps, logits_base))
    figs["final_softcap_None_max_abs_logit"] = no_final_cap.abs().max().item()
    figs["base_max_abs_logit"] = logits_base.abs().max().item()
    figs["base_logit_std"] = logits_base.std().item()
    # the reference with the caps off reproduces transformers with the caps off
    figs["ref64_no_caps_vs_transformers_no_caps"] = maxdiff(
        ref_forward_gemma2(base_sd, cfg, ids, window=W, attn_cap=None, final_cap=None), no_caps)
    assert figs["ref64_no_caps_vs_transformers_no_caps"] < TOL_REF, figs
    full = variant(layer_types=["full_attention"] * cfg.num_hidden_layers)
    bigger("all_layers_full_attention_vs_base", maxdiff(full, logits_base))
    figs["all_layers_full_attention_vs_base_first_W_positions"] = maxdiff(full[:, :W], logits_base[:, :W])
    assert figs["all_layers_full_attention_vs_base_first_W_positions"] == 0.0, figs
    bigger("both_layers_sliding_vs_base", maxdiff(
        variant(layer_types=["sliding_attention"] * cfg.num_hidden_layers), logits_base))
    r = lambda **kw: maxdiff(ref_forward_gemma2(base_sd, cfg, ids, **dict(dict(window=W), **kw)), logits_base)
    bigger("ref_scaling_head_dim_vs_base", r(scaling=cfg.head_dim ** -0.5))
    bigger("ref_norm_w_instead_of_1_plus_w_vs_base", r(norm_one_plus=False))
    bigger("ref_no_embed_scale_vs_base", r(embed_scale=False))
    bigger("ref_attn_softcap_after_mask_vs_base", r(softcap_after_mask=True))
    bigger("ref_gelu_erf_instead_of_tanh_vs_base", r(gelu_tanh=False), floor=1e-4)
    bigger("ref_without_post_norms_vs_base", r(post_norms=False))
    bigger("ref_window_j_ge_i_minus_W_vs_base", r(window_inclusive=True))
    bigger("ref_sliding_on_layer_1_instead_of_0_vs_base", r(sliding_layers=[1]))
    rope_alt = copy.deepcopy(cfg)
    rope_alt.rope_parameters = dict(cfg.rope_parameters, rope_theta=50000.0)
    bigger("ref_theta_50000_vs_base", maxdiff(ref_forward_gemma2(base_sd, rope_alt, ids, window=W), logits_base),
           floor=1e-3)


def gemma3_checks(base, base_sd, cfg, ids, logits_base, W, model_dir, figs):
    """Gemma3 text: each Gemma3-specific term moves the logits (transformers with the term changed, and deliberate
    mistakes fed to the float64 reference); config spellings transformers treats as equivalent give 0."""
    def variant(**changes):
        c = copy.deepcopy(cfg)
        for k, v in changes.items():
            setattr(c, k, v)
        m = build("gemma3", c)
        m.load_state_dict(base.state_dict())
        return logits_of(m, ids)

    def bigger(key, value, floor=1e-2):
        figs[key] = value
        assert value > floor, (key, value)

    def same(key, value):
        figs[key] = value
        assert value == 0.0, (key, value)

    figs["base_max_abs_logit"] = logits_base.abs().max().item()
    figs["base_logit_std"] = logits_base.std().item()
    # rope base per layer type
    rp = copy.deepcopy(cfg.rope_parameters)
    rp["sliding_attention"]["rope_theta"] = rp["full_attention"]["rope_theta"]
    bigger("local_rope_theta_50000_like_global_vs_base", maxdiff(variant(rope_parameters=rp), logits_base), 1e-3)
    rp = copy.deepcopy(cfg.rope_parameters)
    rp["full_attention"]["rope_theta"] = rp["sliding_attention"]["rope_theta"]
    bigger("global_rope_theta_10000_like_local_vs_base", maxdiff(variant(rope_parameters=rp), logits_base), 1e-3)
    r = lambda **kw: maxdiff(ref_forward_gemma3(base_sd, cfg, ids, **dict(dict(window=W), **kw)), logits_base)
    bigger("ref_local_theta_equal_global_vs_base", r(theta_local=cfg.rope_parameters["full_attention"]["rope_theta"]),
           1e-3)
    bigger("ref_global_theta_equal_local_vs_base", r(theta_global=cfg.rope_parameters["sliding_attention"]["rope_theta"]),
           1e-3)
    bigger("ref_global_theta_1e6_default_vs_base", r(theta_global=1e6), 1e-3)
    bigger("ref_rope_thetas_swapped_vs_base", r(theta_local=cfg.rope_parameters["full_attention"]["rope_theta"],
                                                theta_global=cfg.rope_parameters["sliding_attention"]["rope_theta"]),
           1e-3)
    # q_norm / k_norm
    bigger("ref_qk_norm_skipped_vs_base", r(qk_norm=None))
    bigger("ref_qk_norm_after_rope_vs_base", r(qk_norm="after_rope"))
    bigger("ref_qk_norm_w_instead_of_1_plus_w_vs_base", r(qk_norm_one_plus=False))
    alt = dict(base_sd)
    for k in alt:
        if k.endswith("q_norm.weight") or k.endswith("k_norm.weight"):
            alt[k] = torch.zeros_like(alt[k])
    bigger("ref_qk_norm_weights_zero_vs_base", maxdiff(ref_forward_gemma3(alt, cfg, ids, window=W), logits_base))
    # the rest of the Gemma2-like terms
    bigger("ref_scaling_head_dim_vs_base", r(scaling=cfg.head_dim ** -0.5))
    bigger("ref_norm_w_instead_of_1_plus_w_vs_base", r(norm_one_plus=False))
    bigger("ref_no_embed_scale_vs_base", r(embed_scale=False))
    bigger("ref_gelu_erf_instead_of_tanh_vs_base", r(gelu_tanh=False), floor=1e-4)
    bigger("ref_without_post_norms_vs_base", r(post_norms=False))
    bigger("ref_window_j_ge_i_minus_W_vs_base", r(window_inclusive=True))
    bigger("ref_sliding_on_layer_2_only_vs_base", r(sliding_layers=[2]))
    bigger("ref_sliding_on_layers_0_2_gemma2_pattern_vs_base", r(sliding_layers=[0, 2]))
    bigger("ref_attn_softcap_5_applied_vs_base", r(attn_cap=5.0))
    bigger("ref_final_softcap_3_applied_vs_base", r(final_cap=3.0))
    # layer types
    full = variant(layer_types=["full_attention"] * cfg.num_hidden_layers)
    bigger("all_layers_full_attention_vs_base", maxdiff(full, logits_base))
    bigger("all_layers_sliding_attention_vs_base",
           maxdiff(variant(layer_types=["sliding_attention"] * cfg.num_hidden_layers), logits_base))
    # soft-capping: settable in the config; attn_logit_softcapping is never passed to the attention function
    same("transformers_attn_logit_softcapping_5_vs_base", maxdiff(variant(attn_logit_softcapping=5.0), logits_base))
    capped = variant(final_logit_softcapping=3.0)
    bigger("transformers_final_logit_softcapping_3_vs_base", maxdiff(capped, logits_base))
    figs["ref64_final_cap_3_vs_transformers_final_cap_3"] = maxdiff(
        ref_forward_gemma3(base_sd, cfg, ids, window=W, final_cap=3.0), capped)
    assert figs["ref64_final_cap_3_vs_transformers_final_cap_3"] < TOL_REF, figs
    # equivalent config spellings (reload from an edited config.json, same weights)
    with open(os.path.join(model_dir, "config.json")) as fh:
        cd = json.load(fh)

    def reload_from(d):
        c = transformers.Gemma3TextConfig.from_dict(d)
        m = build("gemma3", c)
        m.load_state_dict(base.state_dict())
        return c, logits_of(m, ids)

    legacy = {k: v for k, v in cd.items() if k not in ("rope_parameters",)}
    legacy.update(rope_theta=cfg.rope_parameters["full_attention"]["rope_theta"],
                  rope_local_base_freq=cfg.rope_parameters["sliding_attention"]["rope_theta"])
    lc, ll = reload_from(legacy)
    assert lc.rope_parameters == cfg.rope_parameters, lc.rope_parameters
    same("config_legacy_rope_theta_and_rope_local_base_freq_vs_base", maxdiff(ll, logits_base))
    nolt = {k: v for k, v in cd.items() if k != "layer_types"}
    lc, ll = reload_from(nolt)
    assert lc.layer_types == cfg.layer_types, lc.layer_types
    same("config_without_layer_types_pattern_3_vs_base", maxdiff(ll, logits_base))
    nopat = {k: v for k, v in cd.items() if k not in ("layer_types", "sliding_window_pattern", "_sliding_window_pattern")}
    lc, ll = reload_from(nopat)
    assert lc.layer_types == ["sliding_attention"] * 3, lc.layer_types
    bigger("config_without_layer_types_and_pattern_default_6_all_sliding_vs_base", maxdiff(ll, logits_base))
    norp = {k: v for k, v in cd.items() if k != "rope_parameters"}
    lc, ll = reload_from(norp)
    assert lc.rope_parameters == {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                  "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}, lc.rope_parameters
    bigger("config_without_rope_parameters_defaults_10000_1e6_vs_base", maxdiff(ll, logits_base), 1e-3)


# --------------------------------------------------------------------------------------------
# one supported case
# --------------------------------------------------------------------------------------------

def perturb_adapter(model, gen):
    """Random non-zero adapter values (as tests/fixtures/peft/make_fixtures.py): A ~ N(0,1/in),
    B ~ 0.05 N(0,1) (non-zero, so B.A matters), magnitude = PEFT's init ||W0||_row * (1 + 0.1 N(0,1))."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" not in n:
                continue
            z = torch.randn(p.shape, generator=gen)
            if "lora_A" in n:
                p.copy_(z / math.sqrt(p.shape[1]))
            elif "lora_B" in n:
                p.copy_(0.05 * z)
            elif "magnitude" in n:
                p.copy_(p * (1.0 + 0.1 * z))
            else:
                raise RuntimeError(n)


def adapter_key(param_name):
    key = param_name.replace(".default", "")
    if key.endswith("lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]
    return key


def sliding_trap(model_dir, window):
    """Real Qwen2.5 / Qwen3 checkpoints carry a numeric sliding_window next to use_sliding_window=false;
    transformers ignores it (Qwen2Config.__post_init__ sets sliding_window=None). Put such a value in
    config.json so a loader that applies sliding_window without checking use_sliding_window is caught."""
    p = os.path.join(model_dir, "config.json")
    with open(p) as fh:
        c = json.load(fh)
    assert c["use_sliding_window"] is False and c["sliding_window"] is None, c
    c["sliding_window"] = window
    c["max_window_layers"] = 1
    with open(p, "w") as fh:
        json.dump(c, fh, indent=2, sort_keys=True)
        fh.write("\n")


def make_case(out, name, family, seed, tie=False, sliding_window=None):
    log(f"\n=== {name}: {CLASSES[family]} (tie_word_embeddings={tie}, sliding_window={sliding_window})")
    d = os.path.join(out, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    cfg = make_config(family, tie, sliding_window)
    base = build(family, cfg)
    if family == "gemma2":
        randomize(base, gen, zero_centred_norms=True, embed_std=GEMMA2_EMBED_STD)
    elif family == "gemma3":
        randomize(base, gen, zero_centred_norms=True, embed_std=GEMMA3_EMBED_STD)
    else:
        randomize(base, gen)
    if tie:
        assert base.lm_head.weight is base.model.embed_tokens.weight
    model_dir = os.path.join(d, "model")
    base.save_pretrained(model_dir, safe_serialization=True)
    os.remove(os.path.join(model_dir, "generation_config.json"))   # not part of the fixture layout
    if family in ("qwen2", "qwen3"):
        sliding_trap(model_dir, 4)
    base_sd = load_file(os.path.join(model_dir, "model.safetensors"))
    log("checkpoint keys:", len(base_sd), "| lm_head.weight stored:", "lm_head.weight" in base_sd)
    assert ("lm_head.weight" in base_sd) == (not tie)

    ids = torch.randint(0, cfg.vocab_size, SEQ, generator=gen)
    logits_base = logits_of(base, ids)
    log(f"logits_base: shape {list(logits_base.shape)} std {logits_base.std():.4f} "
        f"max|.| {logits_base.abs().max():.4f}")

    # ---- checks on the base model
    figs = {}
    fresh = getattr(transformers, CLASSES[family]).from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    if family == "gemma2":
        assert fresh.config.layer_types == ["sliding_attention", "full_attention"], fresh.config.layer_types
    elif family == "gemma3":
        assert fresh.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"], \
            fresh.config.layer_types
        assert fresh.config.rope_parameters == GEMMA3_ROPE, fresh.config.rope_parameters
    else:
        assert "sliding_attention" not in (getattr(fresh.config, "layer_types", None) or [])
    figs["reload_vs_base"] = maxdiff(logits_of(fresh, ids), logits_base)
    assert figs["reload_vs_base"] == 0.0, figs
    if family in ("qwen2", "qwen3"):
        # legacy-shaped config (no layer_types, as in real Qwen2.5 checkpoints): still all full attention
        with open(os.path.join(model_dir, "config.json")) as fh:
            cd = json.load(fh)
        cd.pop("layer_types")
        lc = type(cfg).from_dict(cd)
        assert lc.sliding_window is None and lc.layer_types == ["full_attention"] * 2, (lc.sliding_window, lc.layer_types)
        legacy = build(family, lc)
        legacy.load_state_dict(base.state_dict())
        figs["config_without_layer_types_vs_base"] = maxdiff(logits_of(legacy, ids), logits_base)
        assert figs["config_without_layer_types_vs_base"] == 0.0
    if family != "gemma2":   # Gemma2 refuses sdpa (_supports_sdpa = False: no soft-capping in sdpa)
        sdpa = getattr(transformers, CLASSES[family]).from_pretrained(
            model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
        figs["sdpa_vs_eager"] = maxdiff(logits_of(sdpa, ids), logits_base)
    with torch.no_grad():
        figs["use_cache_true_vs_false"] = maxdiff(base(input_ids=ids, use_cache=True).logits, logits_base)
    if family == "gemma2":
        ref = ref_forward_gemma2(base_sd, cfg, ids, window=sliding_window)
    elif family == "gemma3":
        ref = ref_forward_gemma3(base_sd, cfg, ids, window=sliding_window)
    elif family == "phi3":
        ref = ref_forward(phi3_unfuse(base_sd, cfg), family, cfg, ids, window=sliding_window)
    else:
        ref = ref_forward(base_sd, family, cfg, ids, window=sliding_window)
    figs["ref64_vs_base"] = maxdiff(ref, logits_base)
    assert figs["ref64_vs_base"] < TOL_REF, figs
    if family == "qwen2":
        nob = {k: (torch.zeros_like(v) if k.endswith(".bias") else v) for k, v in base_sd.items()}
        figs["ref_without_qkv_bias_vs_base"] = maxdiff(ref_forward(nob, family, cfg, ids), logits_base)
        assert figs["ref_without_qkv_bias_vs_base"] > 1e-2
    if family == "qwen3":
        alt = dict(base_sd)
        for k in list(alt):
            if k.endswith("q_norm.weight") or k.endswith("k_norm.weight"):
                alt[k] = torch.ones_like(alt[k])
        figs["ref_with_unit_qk_norm_weights_vs_base"] = maxdiff(ref_forward(alt, family, cfg, ids), logits_base)
        assert figs["ref_with_unit_qk_norm_weights_vs_base"] > 1e-2
        figs["ref_qk_norm_after_rope_vs_base"] = maxdiff(
            ref_forward(base_sd, family, cfg, ids, qk_norm_after_rope=True), logits_base)
        assert figs["ref_qk_norm_after_rope_vs_base"] > 1e-2
    if family == "mistral":
        full_cfg = copy.deepcopy(cfg)
        full_cfg.sliding_window = None
        nowin = build(family, full_cfg)
        nowin.load_state_dict(base.state_dict())
        figs["sliding_window_None_vs_base"] = maxdiff(logits_of(nowin, ids), logits_base)
        assert figs["sliding_window_None_vs_base"] > 1e-2, figs
        figs["ref_window_j_ge_i_minus_W_vs_base"] = maxdiff(
            ref_forward(base_sd, family, cfg, ids, window=sliding_window, window_inclusive=True), logits_base)
        assert figs["ref_window_j_ge_i_minus_W_vs_base"] > 1e-2, figs
        # positions before the window first bites (i < W) agree with full attention
        figs["sliding_window_None_vs_base_first_W_positions"] = maxdiff(
            logits_of(nowin, ids)[:, :sliding_window], logits_base[:, :sliding_window])
    if family == "gemma2":
        gemma2_checks(base, base_sd, cfg, ids, logits_base, sliding_window, figs)
    elif family == "gemma3":
        gemma3_checks(base, base_sd, cfg, ids, logits_base, sliding_window, model_dir, figs)
    elif family == "phi3":
        phi3_checks(base, base_sd, cfg, ids, logits_base, sliding_window, figs)
    else:
        rope_alt = copy.deepcopy(cfg)
        rope_alt.rope_parameters = dict(cfg.rope_parameters, rope_theta=10000.0)
        figs["ref_theta_10000_vs_base"] = maxdiff(ref_forward(base_sd, family, rope_alt, ids, window=sliding_window),
                                                  logits_base)
        assert figs["ref_theta_10000_vs_base"] > 1e-3

    # ---- DoRA adapter
    base_params = sum(p.numel() for p in base.parameters())
    pcfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", use_dora=True, lora_dropout=0.0)
    pm = get_peft_model(base, pcfg)
    perturb_adapter(pm, gen)
    pm.eval()
    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        pm.print_trainable_parameters()
    ptp = buf.getvalue().strip()
    trainable, total = pm.get_nb_trainable_parameters()
    log("print_trainable_parameters:", ptp)
    from peft.tuners.lora import LoraLayer
    targeted = sorted(n[len("base_model.model."):] for n, mod in pm.named_modules() if isinstance(mod, LoraLayer))
    log("targeted modules:", len(targeted), targeted[:7], "...")
    pm.save_pretrained(os.path.join(d, "adapter"))
    os.remove(os.path.join(d, "adapter", "README.md"))   # PEFT's model card; not part of the fixture layout
    adapter_sd = load_file(os.path.join(d, "adapter", "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter", "adapter_config.json")) as fh:
        saved_targets = sorted(json.load(fh)["target_modules"])

    pm.zero_grad()
    logits_adapter = pm(input_ids=ids, use_cache=False).logits
    g = torch.randn(logits_adapter.shape, generator=gen)
    (logits_adapter * g).sum().backward()
    io = {"input_ids": ids.contiguous(), "logits_base": logits_base.contiguous(),
          "logits_adapter": logits_adapter.detach().clone().contiguous(), "g": g.contiguous()}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
            io["grad." + adapter_key(n)] = p.grad.detach().clone().contiguous()
    grad_keys = {k[len("grad."):] for k in io if k.startswith("grad.")}
    assert grad_keys == set(adapter_sd), sorted(grad_keys ^ set(adapter_sd))
    assert all(io["grad." + k].abs().max() > 0 for k in grad_keys)
    logits_adapter = io["logits_adapter"]
    figs["adapter_vs_base"] = maxdiff(logits_adapter, logits_base)
    assert figs["adapter_vs_base"] > 1e-2

    # adapter reload through PEFT onto a fresh base
    fresh2 = getattr(transformers, CLASSES[family]).from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    figs["peft_reload_vs_adapter"] = maxdiff(
        logits_of(PeftModel.from_pretrained(fresh2, os.path.join(d, "adapter")).eval(), ids), logits_adapter)
    assert figs["peft_reload_vs_adapter"] < 1e-6, figs

    # ---- merge
    with torch.no_grad():
        merged = pm.merge_and_unload()
        logits_merged = logits_of(merged, ids)
    msd = {k: v.detach().clone().contiguous() for k, v in merged.state_dict().items() if k in base_sd}
    assert set(msd) == set(base_sd), sorted(set(msd) ^ set(base_sd))
    save_file(msd, os.path.join(d, "merged.safetensors"), metadata={"format": "pt"})
    io["logits_merged"] = logits_merged.contiguous()
    save_file(io, os.path.join(d, "io.safetensors"))
    figs["merged_in_memory_vs_adapter"] = maxdiff(logits_merged, logits_adapter)
    scaling = ALPHA / R
    rm = ref_merge(base_sd, adapter_sd, scaling)
    figs["ref_merge_formula_vs_merged_weights"] = max(maxdiff(rm[k], msd[k]) for k in msd)
    assert figs["ref_merge_formula_vs_merged_weights"] < 1e-5, figs
    changed = sorted(k for k in msd if not torch.equal(msd[k], base_sd[k]))
    assert changed == sorted(t + ".weight" for t in targeted), changed

    # verify: reload merged.safetensors into a fresh model -> logits_adapter within 1e-5
    fresh3 = getattr(transformers, CLASSES[family]).from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    missing, unexpected = fresh3.load_state_dict(load_file(os.path.join(d, "merged.safetensors")), strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tie else set()), (missing, unexpected)
    if tie:
        assert fresh3.lm_head.weight is fresh3.model.embed_tokens.weight
    figs["merged_reload_vs_adapter"] = maxdiff(logits_of(fresh3, ids), logits_adapter)
    assert figs["merged_reload_vs_adapter"] < TOL_MERGED, figs
    if family == "gemma2":
        figs["ref64_on_merged_vs_adapter"] = maxdiff(ref_forward_gemma2(msd, cfg, ids, window=sliding_window),
                                                     logits_adapter)
    elif family == "gemma3":
        figs["ref64_on_merged_vs_adapter"] = maxdiff(ref_forward_gemma3(msd, cfg, ids, window=sliding_window),
                                                     logits_adapter)
    elif family == "phi3":
        figs["ref64_on_merged_vs_adapter"] = maxdiff(
            ref_forward(phi3_unfuse(msd, cfg), family, cfg, ids, window=sliding_window), logits_adapter)
    else:
        figs["ref64_on_merged_vs_adapter"] = maxdiff(ref_forward(msd, family, cfg, ids, window=sliding_window),
                                                     logits_adapter)
    assert figs["ref64_on_merged_vs_adapter"] < TOL_REF, figs

    for k, v in figs.items():
        log(f"  {k:48s} {v:.3e}")
    with open(os.path.join(model_dir, "config.json")) as fh:
        saved_cfg = json.load(fh)
    highlights = {k: saved_cfg.get(k) for k in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "attention_bias", "use_sliding_window",
        "sliding_window", "max_window_layers", "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping",
        "final_logit_softcapping", "hidden_activation", "sliding_window_pattern") if k in saved_cfg}
    if family == "phi3":   # extra keys only for phi3, so the other cases' case.json bytes stay the same
        highlights.update({k: saved_cfg.get(k) for k in ("hidden_act", "pad_token_id", "bos_token_id",
                                                         "eos_token_id", "original_max_position_embeddings",
                                                         "resid_pdrop", "embd_pdrop") if k in saved_cfg})
        highlights["fused_shapes"] = {
            "self_attn.qkv_proj.weight": list(base_sd["model.layers.0.self_attn.qkv_proj.weight"].shape),
            "mlp.gate_up_proj.weight": list(base_sd["model.layers.0.mlp.gate_up_proj.weight"].shape)}
    meta = dict(
        name=name, family=family, transformers_class=CLASSES[family], config=highlights,
        semantics={
            "qwen2": "q/k/v_proj have biases, o_proj and MLP none; otherwise Llama. sliding_window=4 in "
                     "config.json is IGNORED because use_sliding_window=false (transformers sets it to None).",
            "qwen3": "no q/k/v/o bias (attention_bias=false); per-head RMSNorm q_norm/k_norm (weight [head_dim], "
                     "eps=rms_norm_eps) on q and k after projection and BEFORE rope. sliding_window=4 in "
                     "config.json is IGNORED because use_sliding_window=false.",
            "mistral": f"Llama-like, no biases; causal sliding window W={sliding_window} on every layer: query i "
                       "sees key j iff j <= i and j > i - W (the W most recent positions, itself included).",
            "gemma2": "x = embed[ids] * sqrt(hidden) (f32 tensor cast to the weight dtype; 8.0 here). "
                      "RMSNorm(x; w) = (x_f32 / sqrt(mean(x_f32^2) + eps)) * (1 + w_f32), cast back. Layer: "
                      "x += post_attention_layernorm(attn(input_layernorm(x))); "
                      "x += post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))). Attention scores = "
                      "q.k * query_pre_attn_scalar**-0.5 (24**-0.5, not head_dim**-0.5), then "
                      "attn_logit_softcapping * tanh(s / attn_logit_softcapping), THEN the additive mask, then "
                      "softmax. MLP: down(gelu_tanh(gate(h)) * up(h)). logits = final_logit_softcapping * "
                      "tanh((norm(x) @ embed_tokens.weight^T) / final_logit_softcapping) (tied, no lm_head.weight "
                      f"stored). layer_types = [sliding_attention, full_attention] (Gemma2Config default: layer i is "
                      f"sliding iff i is even); the sliding layer 0 uses W={sliding_window}: query i sees key j iff "
                      "j <= i and j > i - W; layer 1 is plain causal. No biases; rope default, theta 10000.",
            "gemma3": "As gemma2 (embed * sqrt(hidden) = 8.0; (1 + w) RMSNorm in f32; input/post_attention/"
                      "pre_feedforward/post_feedforward norms; scores * query_pre_attn_scalar**-0.5 = 24**-0.5; "
                      "gelu_tanh MLP; tied head; no biases) with these differences: per-head q_norm/k_norm "
                      "(Gemma3RMSNorm, (1 + w), weight [head_dim], eps=rms_norm_eps) on q and k after the projection "
                      "and BEFORE rope; NO attention soft-capping (attn_logit_softcapping is not passed to the "
                      "attention function, even when set) and final_logit_softcapping null (not applied); "
                      "layer_types = [sliding_attention, sliding_attention, full_attention] (sliding_window_pattern 3: "
                      "layer i slides iff (i + 1) % 3 != 0); rope per layer type: sliding layers use "
                      "rope_parameters.sliding_attention.rope_theta = 10000, the full layer "
                      "rope_parameters.full_attention.rope_theta = 50000; sliding layers: query i sees key j iff "
                      f"j <= i and j > i - W, W={sliding_window}; the full layer is plain causal.",
            "phi3": "Llama-like (RMSNorm w * x / sqrt(mean(x^2) + eps); input_layernorm -> attention -> residual; "
                    "post_attention_layernorm -> MLP -> residual; final model.norm; untied lm_head; no biases) "
                    "with FUSED weights: self_attn.qkv_proj.weight [H*D + 2*KV*D, hidden] = [128, 64], rows "
                    "[0,64) = q (4 heads x 16), [64,96) = k (2 kv heads x 16), [96,128) = v; "
                    "mlp.gate_up_proj.weight [2*intermediate, hidden] = [320, 64], gate, up = chunk(2, dim=-1): "
                    "rows [0,160) = gate, [160,320) = up; MLP = down_proj(up * silu(gate)). rope default, "
                    "theta 50000, partial_rotary_factor 1.0 (all 16 dims rotated, half-split rotate_half). "
                    f"sliding_window W={sliding_window} on EVERY layer (no layer_types): query i sees key j iff "
                    "j <= i and j > i - W. scores * head_dim**-0.5. pad_token_id 0 only sets padding_idx.",
        }[family],
        adapter=dict(kind="dora", r=R, lora_alpha=ALPHA, scaling=scaling, target_modules="all-linear",
                     target_modules_saved=saved_targets, targeted_modules=targeted,
                     print_trainable_parameters=ptp, base_params=base_params, trainable_params=trainable, all_params=total,
                     adapter_tensors=len(adapter_sd)),
        io={"input_ids": "int64 [2,12], ids < vocab_size, positions 0..11, no padding",
            "logits_base": "base model logits [2,12,96] f32, eager attention",
            "logits_adapter": "logits with the DoRA adapter active (PEFT, unmerged) [2,12,96]",
            "logits_merged": "logits of PEFT's in-memory merge_and_unload() model",
            "g": "random upstream gradient, shape of logits",
            "grad.<adapter key>": "d(sum(logits_adapter * g)) / d(adapter tensor); keys = adapter_model.safetensors "
                                  "keys; DoRA weight norm detached (PEFT)"},
        figures=figs, seed=seed, dtype="float32", attn_implementation="eager",
        torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    with open(os.path.join(d, "case.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    return meta


# --------------------------------------------------------------------------------------------
# unsupported configs
# --------------------------------------------------------------------------------------------

def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def make_unsupported(out):
    log("\n=== unsupported configs")
    u = os.path.join(out, "unsupported")
    if os.path.exists(u):
        shutil.rmtree(u)
    os.makedirs(u)
    base = dict(DIMS, rms_norm_eps=RMS_EPS, bos_token_id=1, eos_token_id=2)
    cases = {}

    c = transformers.Gemma2Config(**base, sliding_window=4, architectures=["Gemma2ForCausalLM"])
    c.save_pretrained(os.path.join(u, "gemma2"))
    cases["gemma2"] = ("model_type gemma2: (1 + w) RMSNorm, sandwich norms (pre+post attention/MLP), "
                       "embeddings scaled by sqrt(hidden), GELU-tanh MLP, attention and final logit "
                       "soft-capping, alternating sliding-window layers, query_pre_attn_scalar")

    c = transformers.Phi3Config(**base, pad_token_id=0, architectures=["Phi3ForCausalLM"])
    c.save_pretrained(os.path.join(u, "phi3"))
    cases["phi3"] = ("model_type phi3: fused qkv_proj and gate_up_proj weights, different key names; "
                     "may carry partial_rotary_factor / longrope")

    # legacy (transformers 4 style) llama config with YaRN rope scaling, as found in the wild
    legacy = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                  rope_theta=ROPE_THETA,
                  rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
                  **base)
    write_json(os.path.join(u, "llama_yarn_rope_scaling", "config.json"), legacy)
    lc = transformers.AutoConfig.from_pretrained(os.path.join(u, "llama_yarn_rope_scaling"))
    assert lc.rope_parameters["rope_type"] == "yarn" and lc.rope_parameters["factor"] == 4.0, lc.rope_parameters
    assert lc.rope_parameters["rope_theta"] == ROPE_THETA
    # transformers accepts it and it changes the numbers (inv_freq differs from default rope)
    ym = transformers.LlamaForCausalLM(lc)
    dflt = copy.deepcopy(lc)
    dflt.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    dm = transformers.LlamaForCausalLM(dflt)
    inv_diff = maxdiff(ym.model.rotary_emb.inv_freq, dm.model.rotary_emb.inv_freq)
    log(f"llama yarn accepted by transformers: rope_parameters={lc.rope_parameters}; "
        f"max|inv_freq(yarn) - inv_freq(default)| = {inv_diff:.3e}, "
        f"attention_scaling={ym.model.rotary_emb.attention_scaling:.6f}")
    assert inv_diff > 0
    cases["llama_yarn_rope_scaling"] = ("model_type llama with legacy top-level rope_scaling "
                                        "{rope_type: yarn} (transformers 4 style): YaRN not implemented")
    # the same in transformers 5 form (rope_parameters)
    lc.save_pretrained(os.path.join(u, "llama_yarn_rope_parameters"))
    with open(os.path.join(u, "llama_yarn_rope_parameters", "config.json")) as fh:
        assert json.load(fh)["rope_parameters"]["rope_type"] == "yarn"
    cases["llama_yarn_rope_parameters"] = ("model_type llama with rope_parameters.rope_type = yarn "
                                           "(transformers 5 form of the same config)")

    qc = transformers.Qwen2Config(**base, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                  architectures=["Qwen2ForCausalLM"],
                                  rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA})
    assert qc.layer_types == ["full_attention", "sliding_attention"], qc.layer_types
    qc.save_pretrained(os.path.join(u, "qwen2_use_sliding_window"))
    cases["qwen2_use_sliding_window"] = ("model_type qwen2 with use_sliding_window=true: layers "
                                         ">= max_window_layers use a sliding window (layer_types "
                                         "[full_attention, sliding_attention]); refuse unless implemented")
    write_json(os.path.join(u, "cases.json"), {k: {"config": f"{k}/config.json", "why": v}
                                               for k, v in cases.items()})
    for k in cases:
        log("  unsupported:", k)


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT writes target_modules from a Python set: fix the hash seed so the bytes are reproducible
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "fixtures", "families")
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    log("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
    make_case(out, "qwen2_tied", "qwen2", seed + 0, tie=True)
    make_case(out, "qwen2_untied", "qwen2", seed + 1, tie=False)
    make_case(out, "qwen3", "qwen3", seed + 2, tie=False)
    make_case(out, "mistral", "mistral", seed + 3, tie=False, sliding_window=4)
    make_case(out, "gemma2", "gemma2", seed + 4, tie=True, sliding_window=GEMMA2["sliding_window"])
    make_case(out, "gemma3", "gemma3", seed + 5, tie=True, sliding_window=GEMMA3["sliding_window"])
    make_case(out, "phi3", "phi3", seed + 6, tie=False, sliding_window=PHI3_SLIDING_WINDOW)
    make_unsupported(out)
    total = 0
    for root, _, files in os.walk(out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    log(f"\ntotal size of {out}: {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
