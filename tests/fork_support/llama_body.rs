// A Llama written the way candle-transformers writes it (`Cache` of cos/sin tables, `rope` on
// `[b, h, t, d]`, `softmax_last_dim`, `rms_norm` from a `VarBuilder`, `linear_no_bias`,
// `embedding`), forked and annotated the way the README tells users to. Included twice by
// `tests/fork_llama.rs`, under two sets of `use` lines: the migration is only those lines.

/// The model's hyper-parameters (a user's own config struct).
#[derive(Clone, Debug)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
}

/// The rotary tables, `[max_positions, head_dim / 2]`.
#[derive(Clone, Debug)]
pub struct Cache {
    cos: Tensor,
    sin: Tensor,
}

impl Cache {
    pub fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let head_dim = cfg.hidden_size / cfg.num_attention_heads;
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / head_dim as f32))
            .collect();
        let n = theta.len();
        let theta = Tensor::new(theta.as_slice(), device)?;
        let idx_theta = Tensor::arange(0, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?
            .matmul(&theta.reshape((1, n))?)?;
        Ok(Self {
            cos: idx_theta.cos()?.to_dtype(dtype)?,
            sin: idx_theta.sin()?.to_dtype(dtype)?,
        })
    }
}

#[adapter(dora, rank = 4, alpha = 8.0)]
pub struct CausalSelfAttention {
    #[adapt]
    q_proj: Linear,
    #[adapt]
    k_proj: Linear,
    #[adapt]
    v_proj: Linear,
    #[adapt]
    o_proj: Linear,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
}

impl CausalSelfAttention {
    fn apply_rotary_emb(&self, x: &Tensor, index_pos: usize, cache: &Cache) -> Result<Tensor> {
        let (_b, _h, seq_len, _d) = x.dims4()?;
        let cos = cache.cos.narrow(0, index_pos, seq_len)?;
        let sin = cache.sin.narrow(0, index_pos, seq_len)?;
        rope(x, &cos, &sin)
    }

    fn forward(&self, x: &Tensor, index_pos: usize, cache: &Cache) -> Result<Tensor> {
        let (b, seq_len, hidden) = x.dims3()?;
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let q = q
            .reshape((b, seq_len, self.num_attention_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = k
            .reshape((b, seq_len, self.num_key_value_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((b, seq_len, self.num_key_value_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.apply_rotary_emb(&q, index_pos, cache)?;
        let k = self.apply_rotary_emb(&k, index_pos, cache)?;
        let n_rep = self.num_attention_heads / self.num_key_value_heads;
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        let att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let mask = causal_mask(seq_len, x.device())?;
        let att = att.broadcast_add(&mask)?;
        let att = softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, seq_len, hidden))?;
        self.o_proj.forward(&y)
    }

    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let size_in = cfg.hidden_size;
        let head_dim = cfg.hidden_size / cfg.num_attention_heads;
        let size_q = head_dim * cfg.num_attention_heads;
        let size_kv = head_dim * cfg.num_key_value_heads;
        Ok(Self {
            q_proj: linear_no_bias(size_in, size_q, vb.pp("q_proj"))?,
            k_proj: linear_no_bias(size_in, size_kv, vb.pp("k_proj"))?,
            v_proj: linear_no_bias(size_in, size_kv, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(size_q, size_in, vb.pp("o_proj"))?,
            num_attention_heads: cfg.num_attention_heads,
            num_key_value_heads: cfg.num_key_value_heads,
            head_dim,
        })
    }
}

fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, n_kv, seq_len, head_dim) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, n_kv, n_rep, seq_len, head_dim))?
        .reshape((b, n_kv * n_rep, seq_len, head_dim))
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_slice(&mask, (t, t), device)
}

#[adapter(dora, rank = 4, alpha = 8.0)]
pub struct Mlp {
    #[adapt]
    c_fc1: Linear,
    #[adapt]
    c_fc2: Linear,
    #[adapt]
    c_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (silu(&self.c_fc1.forward(x)?)? * self.c_fc2.forward(x)?)?;
        self.c_proj.forward(&x)
    }

    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            c_fc1: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            c_fc2: linear_no_bias(h, i, vb.pp("up_proj"))?,
            c_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }
}

#[adapter(dora, rank = 4, alpha = 8.0)]
pub struct Block {
    #[frozen]
    rms_1: RmsNorm,
    #[nested]
    attn: CausalSelfAttention,
    #[frozen]
    rms_2: RmsNorm,
    #[nested]
    mlp: Mlp,
}

impl Block {
    fn forward(&self, x: &Tensor, index_pos: usize, cache: &Cache) -> Result<Tensor> {
        let residual = x;
        let x = self.rms_1.forward(x)?;
        let x = (self.attn.forward(&x, index_pos, cache)? + residual)?;
        let residual = &x;
        let x = (self.mlp.forward(&self.rms_2.forward(&x)?)? + residual)?;
        Ok(x)
    }

    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let attn = CausalSelfAttention::load(vb.pp("self_attn"), cfg)?;
        let mlp = Mlp::load(vb.pp("mlp"), cfg)?;
        let rms_1 = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?;
        let rms_2 = rms_norm(
            cfg.hidden_size,
            cfg.rms_norm_eps,
            vb.pp("post_attention_layernorm"),
        )?;
        Ok(Self {
            rms_1,
            attn,
            rms_2,
            mlp,
        })
    }
}

#[adapter(dora, rank = 4, alpha = 8.0)]
pub struct Llama {
    #[adapt]
    wte: Embedding,
    #[nested]
    blocks: Vec<Block>,
    #[frozen]
    ln_f: RmsNorm,
    #[frozen]
    lm_head: candle_nn::Linear,
    cache: Cache,
}

impl Llama {
    /// Logits `[b, t, vocab]` of `x [b, t]`.
    pub fn forward(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let mut x = self.wte.forward(x)?;
        for block in &self.blocks {
            x = block.forward(&x, index_pos, &self.cache)?;
        }
        let x = self.ln_f.forward(&x)?;
        self.lm_head.forward(&x)
    }

    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let wte = embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("model.embed_tokens"))?;
        let lm_head = candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?;
        let ln_f = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(vb.pp(format!("model.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let cache = Cache::new(cfg, vb.dtype(), vb.device())?;
        Ok(Self {
            wte,
            blocks,
            ln_f,
            lm_head,
            cache,
        })
    }
}
