use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::models::llama::{load_checkpoint, BaseMode};
use adapters_runtime::train::masked_cross_entropy;
use adapters_runtime::Adapters;
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let mut m = load_checkpoint(
        std::path::Path::new("out/finetune/base"),
        DType::F32,
        &dev,
        BaseMode::Frozen,
    )
    .unwrap()
    .model;
    let lora = std::env::args().nth(1).as_deref() == Some("lora");
    let vm = VarMap::new();
    m.attach_adapters_with(&vm, 0, &mut |_, c| {
        Some(if lora {
            adapters_runtime::AdapterConfig {
                method: adapters_runtime::Method::Lora,
                ..c
            }
        } else {
            c
        })
    })
    .unwrap();
    let ids = Tensor::zeros((32, 19), DType::U32, &dev).unwrap();
    let mask = Tensor::ones((32, 19), DType::F32, &dev).unwrap();
    for i in 0..8 {
        let t = Instant::now();
        let logits = m.forward(&ids).unwrap();
        let t1 = t.elapsed();
        let loss = masked_cross_entropy(&logits, &ids, &mask).unwrap();
        let g = loss.backward().unwrap();
        let t2 = t.elapsed();
        if i > 2 {
            println!(
                "fwd {:?} fwd+bwd {:?} ({} grads)",
                t1,
                t2,
                g.get_ids().count()
            );
        }
    }
}
