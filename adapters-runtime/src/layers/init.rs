//! Seeded initialisation of adapter weights, as PEFT does it.

use crate::adapter_config::Init;
use crate::seed::{fnv1a, mix_seed};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

/// The adapter's own dtype for a base dtype: f64 bases keep f64 adapters, every other base gets
/// f32 adapters (PEFT's default of full-precision adapter weights).
pub fn adapter_dtype(base: DType) -> DType {
    if base == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A layer's seed: the run's seed mixed with a stable hash (FNV-1a) of the layer's path, so a
/// layer's initial values do not depend on the order layers are attached in.
pub fn layer_seed(seed: u64, path: &str) -> u64 {
    mix_seed(seed, fnv1a(path))
}

/// `lora_A` of a linear layer, `[rank, din]`: kaiming-uniform with a = √5 (bound 1/√din), or
/// N(0, 1/rank) for gaussian init.
pub fn lora_a(
    init: Init,
    rank: usize,
    din: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f64> = match init {
        Init::Kaiming => {
            // torch's kaiming_uniform_(a=√5): gain √(2/(1+a²)) = √(1/3), bound = gain·√(3/fan_in).
            let bound = 1.0 / (din as f64).sqrt();
            let dist = Uniform::new(-bound, bound).map_err(candle_core::Error::wrap)?;
            (0..rank * din).map(|_| dist.sample(&mut rng)).collect()
        }
        Init::Gaussian => normal(&mut rng, 1.0 / rank as f64, rank * din)?,
    };
    Tensor::from_vec(values, (rank, din), device)?.to_dtype(dtype)
}

/// `lora_embedding_B`, `[dim, rank]`: N(0, 1) as PEFT does (its embedding A starts at zero).
pub fn lora_embedding_b(
    rank: usize,
    dim: usize,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values = normal(&mut rng, 1.0, dim * rank)?;
    Tensor::from_vec(values, (dim, rank), device)?.to_dtype(dtype)
}

fn normal(rng: &mut rand::rngs::StdRng, std: f64, n: usize) -> candle_core::Result<Vec<f64>> {
    let dist = Normal::new(0.0, std).map_err(candle_core::Error::wrap)?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}
