//! The Llama decoder (GQA, RoPE, RMSNorm, SwiGLU, tied or untied embeddings), annotated with
//! `#[adapter]`: every projection and the embedding are adaptable; norms and an untied `lm_head`
//! are frozen and counted. Dimensions come from `config.json` at run time, so the counts are the
//! runtime ones (see `examples/finetune` for compile-time constants of a fixed-size model).

use super::kv_cache::{KvCache, LayerKv};
use super::rope::Rope;
use crate::adapter;
use crate::adapters::FrozenModule;
use crate::candle_nn::{Embedding, Linear};
use crate::estimate::QuantFormat;
use crate::hf::llama_config::{Family, LlamaConfig};
use crate::hf::llama_layout::{self as layout, LlamaLayout};
use crate::layers::{AdaptedEmbedding, AdaptedLinear};
use crate::nn::ops::{silu, softmax_last_dim};
use crate::nn::RmsNorm;
use crate::ops::frozen_matmul;
use crate::quant::QuantWeight;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::sync::Arc;

/// Whether the base weights are loaded frozen (fine-tuning) or as trainable variables (pretraining).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseMode {
    /// Frozen: no gradient is ever formed for a base weight.
    Frozen,
    /// Trainable: base weights carry gradients (full training from a `VarMap`-backed builder).
    Trainable,
}

/// How the projections' frozen weights are stored (QLoRA / QDoRA): as loaded, quantized on
/// load, or already quantized (read from a GGUF file). Embeddings, norms and the output head
/// always stay in the base dtype.
#[derive(Clone, Debug, Default)]
pub enum BaseQuant {
    /// Dense, in the base dtype.
    #[default]
    None,
    /// Each projection weight is quantized to this format as it is loaded.
    Quantize(QuantFormat),
    /// Projection weights by HF name (`model.layers.0.self_attn.q_proj.weight`), already
    /// quantized and in HF's row order; projections not in the map load dense from the builder.
    Prequantized(Arc<HashMap<String, Arc<QuantWeight>>>),
}

/// What the loaders thread down to every projection.
#[derive(Clone, Copy)]
struct Load<'a> {
    mode: BaseMode,
    quant: &'a BaseQuant,
}

/// The projection `name` of a decoder layer, with the dimensions the layout gives it.
fn projection(
    cfg: &LlamaConfig,
    name: &str,
    vb: &VarBuilder,
    load: Load,
) -> candle_core::Result<AdaptedLinear> {
    let mode = load.mode;
    let (din, dout, bias) = LlamaLayout::new(cfg).projection_dims(name).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "no projection `{name}` in a Llama layer (or its width overflows)"
        ))
    })?;
    let vb = vb.pp(name);
    let path = vb.prefix();
    let b = if bias {
        Some(vb.get(dout, "bias")?)
    } else {
        None
    };
    let key = format!("{path}.weight");
    let quantized = match (load.quant, mode) {
        (BaseQuant::Prequantized(map), BaseMode::Frozen) => map.get(&key).cloned(),
        (BaseQuant::Quantize(format), BaseMode::Frozen) => {
            let w = vb.get((dout, din), "weight")?;
            let q = QuantWeight::quantize(&path, &w, *format).map_err(|e| e.into_candle())?;
            Some(Arc::new(q))
        }
        _ => None,
    };
    if let Some(q) = quantized {
        if q.dims() != (dout, din) {
            candle_core::bail!(
                "`{key}`: the quantized weight is {:?}, expected [{dout}, {din}]",
                q.dims()
            )
        }
        return AdaptedLinear::new_quantized(q, b, vb.dtype())
            .map(|l| l.with_path(path))
            .map_err(|e| e.into_candle());
    }
    let w = vb.get((dout, din), "weight")?;
    let layer = match mode {
        BaseMode::Frozen => AdaptedLinear::new(w, b),
        BaseMode::Trainable => AdaptedLinear::new_trainable(w, b),
    };
    Ok(layer.with_path(path))
}

/// Self-attention with grouped key / value heads.
#[adapter(dora, rank = 8, alpha = 16.0, crate = crate)]
pub struct Attention {
    #[adapt]
    q_proj: Linear,
    #[adapt]
    k_proj: Linear,
    #[adapt]
    v_proj: Linear,
    #[adapt]
    o_proj: Linear,
    /// Qwen3's per-head query norm (before RoPE); `None` in the other families.
    #[frozen]
    q_norm: Option<RmsNorm>,
    /// Qwen3's per-head key norm.
    #[frozen]
    k_norm: Option<RmsNorm>,
    core: AttnCore,
}

/// What attention does after the projections: heads, RoPE, scaled (and soft-capped) scores,
/// the mask, softmax, the weighted values.
#[derive(Clone, Debug)]
struct AttnCore {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// The query scale: `1/√head_dim`, Gemma's `query_pre_attn_scalar^-1/2`.
    q_scale: f64,
    /// Gemma 2's attention soft-capping.
    softcap: Option<f64>,
    rope: Arc<Rope>,
}

impl AttnCore {
    fn new(cfg: &LlamaConfig, rope: Arc<Rope>) -> Self {
        Self {
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.kv_heads(),
            head_dim: cfg.head_dim(),
            q_scale: match cfg.family() {
                f if f.is_gemma() => 1.0 / cfg.query_pre_attn_scalar.unwrap_or(256.0).sqrt(),
                _ => 1.0 / (cfg.head_dim() as f64).sqrt(),
            },
            softcap: match cfg.family() {
                Family::Gemma2 => Some(cfg.attn_logit_softcapping.unwrap_or(50.0)),
                // Gemma 3 keeps the setting but transformers never applies it.
                _ => None,
            },
            rope,
        }
    }
}

/// Phi-3's self-attention: q, k and v from one fused projection (rows: q, k, v), adapted as
/// one module.
#[adapter(dora, rank = 8, alpha = 16.0, crate = crate)]
pub struct FusedAttention {
    #[adapt]
    qkv_proj: Linear,
    #[adapt]
    o_proj: Linear,
    core: AttnCore,
}

impl FusedAttention {
    fn load(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        rope: Arc<Rope>,
        load: Load,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            qkv_proj: projection(cfg, "qkv_proj", &vb, load)?,
            o_proj: projection(cfg, "o_proj", &vb, load)?,
            core: AttnCore::new(cfg, rope),
        })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        let c = &self.core;
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let y = self.qkv_proj.forward(x)?;
        let out = attend(
            c,
            (&None, &None),
            y.narrow(D::Minus1, 0, q)?.contiguous()?,
            y.narrow(D::Minus1, q, kv)?.contiguous()?,
            y.narrow(D::Minus1, q + kv, kv)?.contiguous()?,
            pass,
        )?;
        self.o_proj.forward(&out)
    }
}

impl Attention {
    fn load(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        rope: Arc<Rope>,
        load: Load,
    ) -> candle_core::Result<Self> {
        let qk_norm = |name: &str| -> candle_core::Result<Option<RmsNorm>> {
            if !matches!(cfg.family(), Family::Qwen3 | Family::Gemma3) {
                return Ok(None);
            }
            let w = vb.pp(name).get(cfg.head_dim(), "weight")?;
            family_norm(cfg, w).map(Some)
        };
        Ok(Self {
            q_proj: projection(cfg, "q_proj", &vb, load)?,
            k_proj: projection(cfg, "k_proj", &vb, load)?,
            v_proj: projection(cfg, "v_proj", &vb, load)?,
            o_proj: projection(cfg, "o_proj", &vb, load)?,
            q_norm: qk_norm(layout::QK_NORMS[0])?,
            k_norm: qk_norm(layout::QK_NORMS[1])?,
            core: AttnCore::new(cfg, rope),
        })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        let out = attend(
            &self.core,
            (&self.q_norm, &self.k_norm),
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
            pass,
        )?;
        self.o_proj.forward(&out)
    }
}

/// What a layer's attention needs besides its input: where the input starts, its mask, and (in
/// incremental decoding) the layer's key / value cache.
struct Pass<'a> {
    /// The position of the first input token (the number of positions already cached).
    offset: usize,
    /// The additive mask `[t, offset + t]`; `None` when every query sees every key.
    mask: Option<&'a Tensor>,
    /// The layer's cache: this pass's keys and values are appended, attention covers them all.
    cache: Option<&'a mut LayerKv>,
}

/// Attention over projected `q [b, t, h·d]`, `k`, `v [b, t, kv·d]`: `[b, t, h·d]`, before the
/// output projection. `norms` are Qwen3 / Gemma 3's per-head query and key norms.
fn attend(
    c: &AttnCore,
    norms: (&Option<RmsNorm>, &Option<RmsNorm>),
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pass: Pass,
) -> candle_core::Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    let heads = |y: Tensor, n: usize| {
        y.reshape((b, t, n, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    // Qwen3 / Gemma 3 normalise each head of q and k over its width before RoPE.
    let norm = |y: Tensor, n: &Option<RmsNorm>| match n {
        Some(n) => n.forward(&y),
        None => Ok(y),
    };
    let q = c
        .rope
        .apply_at(&norm(heads(q, c.n_heads)?, norms.0)?, pass.offset)?;
    let k = c
        .rope
        .apply_at(&norm(heads(k, c.n_kv_heads)?, norms.1)?, pass.offset)?;
    let v = heads(v, c.n_kv_heads)?;
    // Incremental decoding: the rotated keys and the values join those of earlier positions.
    let (k, v) = match pass.cache {
        Some(cache) => cache.append(&k, &v)?,
        None => (k, v),
    };
    let s = k.dim(2)?;
    let (h, kv, d) = (c.n_heads, c.n_kv_heads, c.head_dim);
    let rep = h / kv;
    // The query scale on q ([b, h, t, d]) rather than on the [b, h, t, t] scores: one fewer
    // t × t buffer kept for the backward pass.
    let q = (q * c.q_scale)?;
    // Grouped-query attention without repeating k and v: the `rep` query heads that share a
    // key/value head are adjacent, so q as [b, kv, rep·t, d] multiplies that head's k and v
    // directly (the same dot products as repeated heads, no [b, h, t, d] copies of k and v).
    let scores = q
        .reshape((b, kv, rep * t, d))?
        .matmul(&k.t()?)?
        .reshape((b, h, t, s))?;
    let scores = scores.to_dtype(DType::F32)?;
    // Gemma 2: cap · tanh(scores / cap), before the mask.
    let scores = match c.softcap {
        Some(cap) => ((scores / cap)?.tanh()? * cap)?,
        None => scores,
    };
    let scores = match pass.mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let probs = softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    probs
        .reshape((b, kv, rep * t, s))?
        .matmul(&v)?
        .reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, h * d))
}

/// The SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[adapter(dora, rank = 8, alpha = 16.0, crate = crate)]
pub struct Mlp {
    #[adapt]
    gate_proj: Linear,
    #[adapt]
    up_proj: Linear,
    #[adapt]
    down_proj: Linear,
    /// GeGLU (Gemma 2: the tanh GELU) instead of SwiGLU.
    gelu: bool,
}

impl Mlp {
    fn load(cfg: &LlamaConfig, vb: VarBuilder, load: Load) -> candle_core::Result<Self> {
        Ok(Self {
            gate_proj: projection(cfg, "gate_proj", &vb, load)?,
            up_proj: projection(cfg, "up_proj", &vb, load)?,
            down_proj: projection(cfg, "down_proj", &vb, load)?,
            gelu: cfg.family().is_gemma(),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let gate = if self.gelu {
            gate.gelu()?
        } else {
            silu(&gate)?
        };
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

/// Phi-3's MLP: gate and up from one fused projection (rows: gate, then up), adapted as one
/// module: `down(silu(gate) ⊙ up)`.
#[adapter(dora, rank = 8, alpha = 16.0, crate = crate)]
pub struct FusedMlp {
    #[adapt]
    gate_up_proj: Linear,
    #[adapt]
    down_proj: Linear,
    intermediate: usize,
}

impl FusedMlp {
    fn load(cfg: &LlamaConfig, vb: VarBuilder, load: Load) -> candle_core::Result<Self> {
        Ok(Self {
            gate_up_proj: projection(cfg, "gate_up_proj", &vb, load)?,
            down_proj: projection(cfg, "down_proj", &vb, load)?,
            intermediate: cfg.intermediate_size,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.gate_up_proj.forward(x)?;
        let i = self.intermediate;
        let gate = silu(&y.narrow(D::Minus1, 0, i)?.contiguous()?)?;
        let up = y.narrow(D::Minus1, i, i)?;
        self.down_proj.forward(&(gate * up)?)
    }
}

/// One decoder layer (pre-norm attention and MLP with residuals).
#[adapter(dora, rank = 8, alpha = 16.0, crate = crate)]
pub struct Block {
    #[frozen]
    input_layernorm: RmsNorm,
    /// The attention (one; none for Phi-3).
    #[nested]
    self_attn: Vec<Attention>,
    /// Phi-3's fused attention (one; none for the other families).
    #[nested]
    fused_attn: Vec<FusedAttention>,
    #[frozen]
    post_attention_layernorm: RmsNorm,
    /// Gemma 2's norm of the MLP input (its `post_attention_layernorm` normalises the attention
    /// output instead).
    #[frozen]
    pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma 2's norm of the MLP output.
    #[frozen]
    post_feedforward_layernorm: Option<RmsNorm>,
    /// The MLP (one; none for Phi-3).
    #[nested]
    mlp: Vec<Mlp>,
    /// Phi-3's fused MLP (one; none for the other families).
    #[nested]
    fused_mlp: Vec<FusedMlp>,
    /// The attention window of this layer (`None`: full causal attention).
    window: Option<usize>,
}

impl Block {
    fn load(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        layer: usize,
        rope: Arc<Rope>,
        load: Load,
    ) -> candle_core::Result<Self> {
        let norm = |name: &str| family_norm(cfg, vb.pp(name).get(cfg.hidden_size, "weight")?);
        let gemma = cfg.family().is_gemma();
        let gemma_norm = |name: &str| -> candle_core::Result<Option<RmsNorm>> {
            if gemma {
                norm(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let fused = cfg.family() == Family::Phi3;
        let (self_attn, fused_attn) = if fused {
            let a = FusedAttention::load(cfg, vb.pp("self_attn"), rope, load)?;
            (Vec::new(), vec![a])
        } else {
            (
                vec![Attention::load(cfg, vb.pp("self_attn"), rope, load)?],
                Vec::new(),
            )
        };
        let (mlp, fused_mlp) = if fused {
            (Vec::new(), vec![FusedMlp::load(cfg, vb.pp("mlp"), load)?])
        } else {
            (vec![Mlp::load(cfg, vb.pp("mlp"), load)?], Vec::new())
        };
        Ok(Self {
            input_layernorm: norm(layout::LAYER_NORMS[0])?,
            self_attn,
            fused_attn,
            post_attention_layernorm: norm(layout::LAYER_NORMS[1])?,
            pre_feedforward_layernorm: gemma_norm(layout::GEMMA_MLP_NORMS[0])?,
            post_feedforward_layernorm: gemma_norm(layout::GEMMA_MLP_NORMS[1])?,
            mlp,
            fused_mlp,
            window: cfg.attention_window(layer),
        })
    }

    fn attention(&self, x: &Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        match (self.self_attn.first(), self.fused_attn.first()) {
            (Some(a), _) => a.forward(x, pass),
            (None, Some(a)) => a.forward(x, pass),
            (None, None) => candle_core::bail!("a decoder layer without attention"),
        }
    }

    fn mlp(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match (self.mlp.first(), self.fused_mlp.first()) {
            (Some(m), _) => m.forward(x),
            (None, Some(m)) => m.forward(x),
            (None, None) => candle_core::bail!("a decoder layer without an MLP"),
        }
    }

    /// The layer's projections by name (`q_proj`, … or Phi-3's `qkv_proj`, …).
    fn projection(&self, name: &str) -> Option<&AdaptedLinear> {
        if let Some(a) = self.self_attn.first() {
            let l = match name {
                "q_proj" => &a.q_proj,
                "k_proj" => &a.k_proj,
                "v_proj" => &a.v_proj,
                "o_proj" => &a.o_proj,
                _ => return self.mlp_projection(name),
            };
            return Some(l);
        }
        match (name, self.fused_attn.first()) {
            ("qkv_proj", Some(a)) => Some(&a.qkv_proj),
            ("o_proj", Some(a)) => Some(&a.o_proj),
            _ => self.mlp_projection(name),
        }
    }

    fn mlp_projection(&self, name: &str) -> Option<&AdaptedLinear> {
        if let Some(m) = self.mlp.first() {
            return match name {
                "gate_proj" => Some(&m.gate_proj),
                "up_proj" => Some(&m.up_proj),
                "down_proj" => Some(&m.down_proj),
                _ => None,
            };
        }
        let m = self.fused_mlp.first()?;
        match name {
            "gate_up_proj" => Some(&m.gate_up_proj),
            "down_proj" => Some(&m.down_proj),
            _ => None,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        masks: &Masks,
        cache: Option<&mut LayerKv>,
    ) -> candle_core::Result<Tensor> {
        let pass = Pass {
            offset: masks.offset,
            mask: masks.get(self.window),
            cache,
        };
        let attn = self.attention(&self.input_layernorm.forward(x)?, pass)?;
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            // Gemma 2: norms after attention and around the MLP.
            (Some(pre), Some(post)) => {
                let h = (x + self.post_attention_layernorm.forward(&attn)?)?;
                let m = self.mlp(&pre.forward(&h)?)?;
                &h + post.forward(&m)?
            }
            _ => {
                let h = (x + attn)?;
                &h + self.mlp(&self.post_attention_layernorm.forward(&h)?)?
            }
        }
    }
}

/// The output projection: its own weight, or the embedding table when tied.
#[derive(Debug)]
pub enum LmHead {
    /// `lm_head.weight`.
    Untied(Tensor),
    /// Shares `model.embed_tokens.weight` (counted once, with the embedding).
    Tied,
}

impl FrozenModule for LmHead {
    fn frozen_params(&self) -> usize {
        match self {
            LmHead::Untied(w) => w.elem_count(),
            LmHead::Tied => 0,
        }
    }
}

/// `LlamaForCausalLM`: token ids `[batch, seq]` → logits `[batch, seq, vocab]`.
#[adapter(dora, rank = 8, alpha = 16.0, crate = crate)]
pub struct Llama {
    #[adapt]
    embed_tokens: Embedding,
    #[nested]
    layers: Vec<Block>,
    #[frozen]
    norm: RmsNorm,
    #[frozen]
    lm_head: LmHead,
    config: LlamaConfig,
    rope: Arc<Rope>,
}

impl Llama {
    /// Loads `model.*` / `lm_head.*` weights in HF's layout from `vb` (its dtype is the base
    /// dtype). Layers remember their checkpoint paths, so adapters get PEFT's key names.
    pub fn load(cfg: &LlamaConfig, vb: VarBuilder, mode: BaseMode) -> candle_core::Result<Self> {
        Self::load_with(cfg, vb, mode, &BaseQuant::None)
    }

    /// [`Llama::load`] with the projections' frozen weights stored as `quant` says (QLoRA /
    /// QDoRA; only for [`BaseMode::Frozen`] — a trainable base is never quantized).
    pub fn load_with(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        mode: BaseMode,
        quant: &BaseQuant,
    ) -> candle_core::Result<Self> {
        if mode == BaseMode::Trainable && !matches!(quant, BaseQuant::None) {
            candle_core::bail!(
                "a trainable base (full training) cannot be quantized: load it frozen to quantize it"
            )
        }
        let load = Load { mode, quant };
        cfg.validate().map_err(|(f, e, a)| {
            candle_core::Error::Msg(format!("config: `{f}` is {a}, expected {e}"))
        })?;
        let rope = Arc::new(Rope::new(
            cfg.head_dim(),
            cfg.max_position_embeddings,
            &cfg.rope(),
            vb.dtype(),
            vb.device(),
        )?);
        // Gemma 3: the sliding layers' own RoPE base.
        let local_rope = match cfg.family() {
            Family::Gemma3 => Some(Arc::new(Rope::new(
                cfg.head_dim(),
                cfg.max_position_embeddings,
                &cfg.local_rope(),
                vb.dtype(),
                vb.device(),
            )?)),
            _ => None,
        };
        let table = vb
            .pp(layout::EMBED_TOKENS)
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let embed_tokens = match mode {
            BaseMode::Frozen => AdaptedEmbedding::new(table),
            BaseMode::Trainable => AdaptedEmbedding::new_trainable(table),
        }
        .with_path(layout::EMBED_TOKENS);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let r = match (&local_rope, cfg.attention_window(i)) {
                    (Some(local), Some(_)) => local.clone(),
                    _ => rope.clone(),
                };
                Block::load(cfg, vb.pp(layout::LAYERS).pp(i), i, r, load)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = family_norm(
            cfg,
            vb.pp(layout::FINAL_NORM).get(cfg.hidden_size, "weight")?,
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            LmHead::Tied
        } else {
            LmHead::Untied(
                vb.pp(layout::LM_HEAD)
                    .get((cfg.vocab_size, cfg.hidden_size), "weight")?,
            )
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: cfg.clone(),
            rope,
        })
    }

    /// For inference over GGML-quantized projections (a GGUF base): forward products run GGML's
    /// quantized kernels, as llama.cpp does, instead of the exact dequantized product
    /// ([`QuantWeight::set_ggml_kernels`]; ~1 % from exact, many times faster per token).
    /// Returns how many projections are GGML-quantized. Turn it off again before training.
    pub fn set_ggml_kernels(&self, on: bool) -> usize {
        let mut n = 0;
        let projections = LlamaLayout::new(&self.config).projections();
        for l in &self.layers {
            for p in projections {
                if let Some(q) = l.projection(p.name).and_then(|lin| lin.quantized()) {
                    q.set_ggml_kernels(on);
                    n += usize::from(q.as_qtensor().is_some());
                }
            }
        }
        n
    }

    /// An empty key / value cache for [`Llama::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The rotary tables shared by every layer (built only for the positions used so far).
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The base dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.embed_tokens.embeddings().device()
    }

    /// Logits `[batch, seq, vocab]` for `ids [batch, seq]` (causal attention).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.forward_hidden(ids)?;
        self.logits(&h)
    }

    /// Incremental decoding: runs `ids [batch, t]` as the positions after those in `cache`
    /// (appending their keys and values to it) and returns the logits `[batch, vocab]` of the
    /// last of them — the prompt first, then one sampled token per call. Every row of a batch is
    /// at the same position (no padding). Gives the logits [`Llama::forward`] gives at that
    /// position over the whole sequence. On an error the cache is cleared.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> crate::Result<Tensor> {
        let out = self.forward_cached_inner(ids, cache);
        if out.is_err() {
            cache.reset();
        }
        out
    }

    fn forward_cached_inner(&self, ids: &Tensor, cache: &mut KvCache) -> crate::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        cache.check(self.layers.len(), b, t, self.rope.max_positions())?;
        let h = self.hidden(ids, Some(cache))?;
        let last = h.narrow(1, t - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }

    /// Logits from final-normed hidden states, soft-capped for Gemma 2.
    fn logits(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.project(h)?;
        match self.logit_softcap() {
            // Gemma 2: cap · tanh(logits / cap).
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// Gemma 2's final logit soft-capping, `None` for the other families (a loss through the
    /// frozen head without the logits, `train::causal_lm_loss`, cannot apply it).
    pub fn logit_softcap(&self) -> Option<f64> {
        match self.config.family() {
            Family::Gemma2 => Some(self.config.final_logit_softcapping.unwrap_or(30.0)),
            Family::Gemma3 => self.config.final_logit_softcapping,
            _ => None,
        }
    }

    /// The final-normed hidden states `[batch, seq, hidden]` for `ids [batch, seq]`: what the
    /// output projection ([`Llama::head_weight`]) turns into logits. A training loss can take
    /// these with the frozen head weight and never form the full logits
    /// (`adapters_runtime::train::causal_lm_loss`).
    pub fn forward_hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.hidden(ids, None)
    }

    /// Final-normed hidden states of `ids`, as the positions after those in `cache` (whose
    /// length it advances).
    fn hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let window = self.layers.iter().find_map(|l| l.window);
        let masks = Masks::new(t, offset, window, self.device())?;
        let mut h = self.embed_tokens.forward(ids)?;
        if self.config.family().is_gemma() {
            // Gemma: embeddings times √hidden, the factor rounded to the activation dtype.
            let normalizer = Tensor::new((self.config.hidden_size as f64).sqrt(), h.device())?
                .to_dtype(h.dtype())?;
            h = h.broadcast_mul(&normalizer)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            h = layer.forward(&h, &masks, layer_cache)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.norm.forward(&h)
    }

    /// The output projection's weight `[vocab, hidden]` when it is frozen (an untied `lm_head`,
    /// or the tied embedding table of a fine-tuned model); `None` when it trains.
    pub fn head_weight(&self) -> Option<&Tensor> {
        let w = match &self.lm_head {
            LmHead::Untied(w) => w,
            LmHead::Tied => self.embed_tokens.embeddings(),
        };
        (!w.track_op()).then_some(w)
    }

    /// Logits from final-normed hidden states.
    fn project(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        match &self.lm_head {
            // A trainable head (pretraining) needs its gradient: a plain matmul.
            LmHead::Untied(w) if w.track_op() => h.broadcast_matmul(&w.t()?),
            LmHead::Untied(w) => frozen_matmul(h, w),
            LmHead::Tied => {
                let table = self.embed_tokens.embeddings();
                if table.track_op() {
                    h.broadcast_matmul(&table.t()?)
                } else {
                    frozen_matmul(h, table)
                }
            }
        }
    }

    /// Every base tensor under its HF name (merged weights while adapters are merged) — what a
    /// checkpoint of this model holds. With `merged`, adapted weights are exported merged without
    /// changing the model.
    pub fn base_tensors(&self, merged: bool) -> crate::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let emb = if merged {
            self.embed_tokens.merged_weight_tensor()?
        } else {
            self.embed_tokens.embeddings().clone()
        };
        out.push((format!("{}.weight", layout::EMBED_TOKENS), emb));
        // Norm weights as the checkpoint stores them (Gemma: w, not the 1 + w used).
        let offset = self.config.norm_offset();
        let stored = |n: &RmsNorm| -> crate::Result<Tensor> {
            Ok(if offset != 0.0 {
                (n.weight() - offset)?
            } else {
                n.weight().clone()
            })
        };
        for (i, l) in self.layers.iter().enumerate() {
            let norms = [&l.input_layernorm, &l.post_attention_layernorm];
            for (name, norm) in layout::LAYER_NORMS.iter().zip(norms) {
                let key = format!("{}.{i}.{name}.weight", layout::LAYERS);
                out.push((key, stored(norm)?));
            }
            let extra = [&l.pre_feedforward_layernorm, &l.post_feedforward_layernorm];
            for (name, norm) in layout::GEMMA_MLP_NORMS.iter().zip(extra) {
                if let Some(n) = norm {
                    out.push((format!("{}.{i}.{name}.weight", layout::LAYERS), stored(n)?));
                }
            }
            for p in LlamaLayout::new(&self.config).projections() {
                let path = LlamaLayout::projection_path(i, p);
                let lin =
                    l.projection(p.name)
                        .ok_or_else(|| crate::AdapterError::InvalidState {
                            layer: path.clone(),
                            op: "base_tensors",
                            reason: "the layer has no such projection".into(),
                        })?;
                let w = if merged {
                    lin.merged_weight_tensor()?
                } else {
                    lin.dense_weight()?
                };
                out.push((format!("{path}.weight"), w));
                if let Some(b) = lin.bias() {
                    out.push((format!("{path}.bias"), b.clone()));
                }
            }
            let no_norms = (None, None);
            let (qn, kn) = l
                .self_attn
                .first()
                .map_or(no_norms, |a| (a.q_norm.as_ref(), a.k_norm.as_ref()));
            for (name, norm) in layout::QK_NORMS.iter().zip([qn, kn]) {
                if let Some(n) = norm {
                    let key = format!("{}.{i}.self_attn.{name}.weight", layout::LAYERS);
                    out.push((key, stored(n)?));
                }
            }
        }
        out.push((
            format!("{}.weight", layout::FINAL_NORM),
            stored(&self.norm)?,
        ));
        if let LmHead::Untied(w) = &self.lm_head {
            out.push((format!("{}.weight", layout::LM_HEAD), w.clone()));
        }
        Ok(out)
    }
}

/// The causal mask of `t` queries after `offset` cached positions, and the sliding-window one
/// when a layer has a window (`None`: nothing is masked).
struct Masks {
    offset: usize,
    full: Option<Tensor>,
    sliding: Option<Tensor>,
}

impl Masks {
    fn new(
        t: usize,
        offset: usize,
        window: Option<usize>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            offset,
            full: causal_mask(t, offset, None, device)?,
            sliding: match window {
                Some(w) => causal_mask(t, offset, Some(w), device)?,
                None => None,
            },
        })
    }

    /// The mask of a layer with `window` (all windowed layers of a model share one size).
    fn get(&self, window: Option<usize>) -> Option<&Tensor> {
        match window {
            Some(_) => self.sliding.as_ref(),
            None => self.full.as_ref(),
        }
    }
}

/// A norm of the model's family: Gemma's scale `1 + w` is stored as the weight.
fn family_norm(cfg: &LlamaConfig, w: Tensor) -> candle_core::Result<RmsNorm> {
    let offset = cfg.norm_offset();
    let w = if offset != 0.0 { (w + offset)? } else { w };
    Ok(RmsNorm::new(w, cfg.rms_norm_eps))
}

/// `[t, offset + t]` additive mask of queries at positions `offset..offset + t` over keys at
/// `0..offset + t`: 0 where query `i` sees key `j`, −∞ elsewhere. Causal: `j ≤ i`; with a
/// `window` (Mistral's sliding window, as transformers masks it) also `j > i − window`, so each
/// position sees itself and the `window − 1` before it. `None` when every query sees every key
/// (one new token past a full-attention cache).
fn causal_mask(
    t: usize,
    offset: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let keys = offset + t;
    let sees = move |i: usize, j: usize| j <= i && window.is_none_or(|w| i - j < w);
    let all = (offset..keys).all(|i| (0..keys).all(|j| sees(i, j)));
    if all {
        return Ok(None);
    }
    let v: Vec<f32> = (offset..keys)
        .flat_map(|i| (0..keys).map(move |j| if sees(i, j) { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(v, (t, keys), device).map(Some)
}
