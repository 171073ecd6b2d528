//! Annotates a small Llama-style candle model with `#[adapter]`, attaches DoRA adapters, prints
//! the compile-time constants next to the runtime's counts, and trains the adapters for a few
//! steps, checking that every adapter tensor gets a gradient.
//!
//! ```text
//! cargo run --example annotate
//! ```
//!
//! Migrating existing candle code takes the attribute, the field sizes, and swapped `use` lines:
//! `adapters_runtime::nn` has `candle_nn`'s names and signatures. Its `linear_no_bias` returns an
//! adapted layer that remembers its `VarBuilder` path (so adapters get PEFT's key names); its
//! `rms_norm` / `RmsNorm`, `ops::softmax_last_dim`, `ops::silu` and `rotary_emb::rope*` run
//! candle's fused kernels *and record gradients* (candle-nn 0.11's record none, so nothing below
//! them would train).

use adapters_runtime::candle_core::{DType, Device, Module, Tensor};
use adapters_runtime::candle_nn::{self, Embedding, Linear, VarBuilder, VarMap};
// was: use candle_nn::{linear_no_bias, rms_norm, RmsNorm}; use candle_nn::ops::softmax_last_dim;
use adapters_runtime::nn::ops::{silu, softmax_last_dim};
use adapters_runtime::nn::{linear_no_bias, rms_norm, RmsNorm};
use adapters_runtime::train::{masked_cross_entropy, AdamW, AdamWConfig, Grads};
use adapters_runtime::{adapter, Adapters};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const VOCAB: usize = 1000;
const H: usize = 128;
const MLP: usize = 344;
const HEADS: usize = 4;
const LAYERS: usize = 4;

/// Causal self-attention; DoRA on all four projections.
#[adapter(dora, rank = 8, alpha = 16.0, dtype = "f32")]
pub struct Attention {
    #[adapt(in = H, out = H)]
    q_proj: Linear,
    #[adapt(in = H, out = H)]
    k_proj: Linear,
    #[adapt(in = H, out = H)]
    v_proj: Linear,
    #[adapt(in = H, out = H)]
    o_proj: Linear,
}

impl Attention {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: linear_no_bias(H, H, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(H, H, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(H, H, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(H, H, vb.pp("o_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = H / HEADS;
        let split = |y: Tensor| y.reshape((b, t, HEADS, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        // 0 on and below the diagonal, -1e9 above it.
        let mask = ((Tensor::tril2(t, DType::F32, x.device())? - 1.0)? * 1e9)?;
        let probs = softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, H))?;
        Ok(self.o_proj.forward(&out)?)
    }
}

/// The SwiGLU MLP; DoRA on gate, up and down.
#[adapter(dora, rank = 8, alpha = 16.0, dtype = "f32")]
pub struct Mlp {
    #[adapt(in = H, out = MLP)]
    gate_proj: Linear,
    #[adapt(in = H, out = MLP)]
    up_proj: Linear,
    #[adapt(in = MLP, out = H)]
    down_proj: Linear,
}

impl Mlp {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gate_proj: linear_no_bias(H, MLP, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(H, MLP, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(MLP, H, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = silu(&self.gate_proj.forward(x)?)?;
        Ok(self
            .down_proj
            .forward(&(gate * self.up_proj.forward(x)?)?)?)
    }
}

/// A pre-norm decoder layer; the norms are frozen and counted.
#[adapter(dora, rank = 8, alpha = 16.0, dtype = "f32")]
pub struct Block {
    #[frozen(params = H)]
    input_layernorm: RmsNorm,
    #[nested]
    self_attn: Attention,
    #[frozen(params = H)]
    post_attention_layernorm: RmsNorm,
    #[nested]
    mlp: Mlp,
}

impl Block {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: rms_norm(H, 1e-5, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(vb.pp("self_attn"))?,
            post_attention_layernorm: rms_norm(H, 1e-5, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?)?)?;
        Ok((&h
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }
}

/// The whole model, with budgets the build checks.
#[adapter(
    dora,
    rank = 8,
    alpha = 16.0,
    dtype = "f32",
    batch_tokens = 4096,
    max_trainable_params = 1_000_000,
    max_vram = "2 GiB"
)]
pub struct TinyLlama {
    #[frozen(in = VOCAB, out = H)]
    embed_tokens: Embedding,
    #[nested(count = LAYERS)]
    layers: Vec<Block>,
    #[frozen(params = H)]
    norm: RmsNorm,
    #[frozen(in = H, out = VOCAB)]
    lm_head: Linear,
}

impl TinyLlama {
    fn new(vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        Ok(Self {
            embed_tokens: candle_nn::embedding(VOCAB, H, m.pp("embed_tokens"))?,
            layers: (0..LAYERS)
                .map(|i| Block::new(m.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            norm: rms_norm(H, 1e-5, m.pp("norm"))?,
            lm_head: candle_nn::linear_no_bias(H, VOCAB, vb.pp("lm_head"))?,
        })
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embed_tokens.forward(ids)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(self.lm_head.forward(&self.norm.forward(&x)?)?)
    }
}

// The constants work in const contexts.
const _: () = assert!(TinyLlama::TRAINABLE_PARAMS < TinyLlama::FROZEN_PARAMS / 10);

/// What [`train`] saw: the loss of each step, and per step the adapter tensors that had no
/// gradient entry and those whose gradient was all zeros.
pub struct TrainReport {
    /// Loss before each optimizer step.
    pub losses: Vec<f32>,
    /// Per step: tensors without a gradient entry.
    pub missing: Vec<Vec<String>>,
    /// Per step: tensors whose gradient is exactly zero.
    pub zero: Vec<Vec<String>>,
    /// Adapter tensors in all.
    pub tensors: usize,
}

/// Builds the model on random base weights, attaches DoRA, and trains the adapters for `steps`
/// AdamW steps on next-token prediction of a fixed sequence.
pub fn train(steps: usize) -> Result<TrainReport> {
    let device = Device::Cpu;
    let weights = VarMap::new();
    let mut model = TinyLlama::new(VarBuilder::from_varmap(&weights, DType::F32, &device))?;
    model.attach_adapters(&VarMap::new(), 0)?;
    let vars = model.named_trainable_vars()?;
    let ids = Tensor::new(
        &[[1u32, 5, 9, 42, 7, 3, 11, 64, 5, 9, 42, 7, 3, 11]],
        &device,
    )?;
    let t = ids.dim(1)?;
    let (input, targets) = (ids.narrow(1, 0, t - 1)?, ids.narrow(1, 1, t - 1)?);
    let mask = targets.ones_like()?.to_dtype(DType::F32)?;
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let mut report = TrainReport {
        losses: Vec::new(),
        missing: Vec::new(),
        zero: Vec::new(),
        tensors: vars.len(),
    };
    for _ in 0..steps {
        let loss = masked_cross_entropy(&model.forward(&input)?, &targets, &mask)?;
        report.losses.push(loss.to_scalar::<f32>()?);
        let store = loss.backward()?;
        let (mut missing, mut zero) = (Vec::new(), Vec::new());
        for (name, v) in &vars {
            match store.get(v.as_tensor()) {
                None => missing.push(name.clone()),
                Some(g) if g.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 => {
                    zero.push(name.clone())
                }
                Some(_) => {}
            }
        }
        report.missing.push(missing);
        report.zero.push(zero);
        // The guard the trainer runs after its first backward pass.
        model.check_gradients(&store)?;
        opt.step(&Grads::from_store(&vars, &store)?, 1e-2)?;
    }
    Ok(report)
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    let weights = VarMap::new();
    let mut model = TinyLlama::new(VarBuilder::from_varmap(&weights, DType::F32, &device))?;
    let ids = Tensor::new(&[[1u32, 5, 9, 42, 7, 3]], &device)?;
    let base = model.forward(&ids)?;

    let adapters = VarMap::new();
    model.attach_adapters(&adapters, 0)?;
    // DoRA starts at B = 0 and m = ‖W0‖: the adapted model computes the base model's function.
    let adapted = model.forward(&ids)?;
    let drift = (adapted - &base)?.abs()?.max_all()?.to_scalar::<f32>()?;

    let in_varmap: usize = adapters.all_vars().iter().map(|v| v.elem_count()).sum();
    println!(
        "{:<28} {:>15} {:>15}",
        "TinyLlama", "compile time", "runtime"
    );
    let rows = [
        (
            "TRAINABLE_PARAMS",
            TinyLlama::TRAINABLE_PARAMS,
            model.trainable_params()?,
        ),
        (
            "FROZEN_PARAMS",
            TinyLlama::FROZEN_PARAMS,
            model.frozen_params()?,
        ),
        (
            "trainable in the VarMap",
            TinyLlama::TRAINABLE_PARAMS,
            in_varmap,
        ),
        ("ADAPTER_BYTES", TinyLlama::ADAPTER_BYTES, 4 * in_varmap),
    ];
    for (name, constant, runtime) in rows {
        let mark = if constant == runtime {
            ""
        } else {
            "  MISMATCH"
        };
        println!("{name:<28} {constant:>15} {runtime:>15}{mark}");
    }
    println!("{:<28} {:>15}", "BASE_BYTES", TinyLlama::BASE_BYTES);
    println!(
        "{:<28} {:>15}",
        "ACTIVATION_BYTES_PER_TOKEN",
        TinyLlama::ACTIVATION_BYTES_PER_TOKEN
    );
    println!(
        "{:<28} {:>15}  ({})",
        "VRAM_BYTES (4096 tokens)",
        TinyLlama::VRAM_BYTES,
        adapters_runtime::estimate::human_bytes(TinyLlama::VRAM_BYTES)
    );
    let layers = model.adapter_layers()?;
    println!("\n{} adapted layers, e.g.:", layers.len());
    for l in layers.iter().take(3) {
        println!(
            "  {:<36} {:?} r={} {}x{}",
            l.path, l.method, l.rank, l.din, l.dout
        );
    }
    println!("\nmax |adapted - base| right after attach: {drift:e}");
    assert_eq!(model.trainable_params()?, TinyLlama::TRAINABLE_PARAMS);
    assert_eq!(model.frozen_params()?, TinyLlama::FROZEN_PARAMS);

    let report = train(8)?;
    println!(
        "\ntraining {} adapter tensors: loss {:.4} → {:.4} in {} steps; tensors without a gradient: {} at step 1, zero gradients at step 2: {}",
        report.tensors,
        report.losses[0],
        report.losses[report.losses.len() - 1],
        report.losses.len(),
        report.missing[0].len(),
        report.zero[1].len()
    );
    Ok(())
}
