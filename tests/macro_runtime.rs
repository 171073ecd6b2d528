//! The `#[adapter]` constants equal what the runtime counts after attaching adapters to a small
//! model built from random tensors; paths, per-field configs and declared sizes are checked too,
//! as are clones and `#[frozen(params = N)]` fields of foreign types.

use std::collections::HashMap;

use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::candle_nn::{Embedding, Linear, VarMap};
use adapters_runtime::{adapter, AdaptedLinear, AdapterError, Adapters, Method};

const D: usize = 16;
const F: usize = 24;
const V: usize = 50;

/// A DoRA block: a per-field rank override, a biased layer, a frozen layer and a plain field.
#[adapter(dora, rank = 4, alpha = 8.0)]
#[derive(Clone)]
pub struct Block {
    #[adapt(in = D, out = D)]
    q: Linear,
    #[adapt(in = D, out = F, rank = 2, alpha = 3.0, bias = true)]
    up: Linear,
    #[frozen(in = F, out = D)]
    down: Linear,
    pub scale: Tensor,
}

/// A LoRA model holding blocks in a `Vec` (with `count`), in an array, and one by value.
#[adapter(lora, rank = 8, alpha = 16.0, dtype = "f32")]
#[derive(Clone)]
pub struct Tiny {
    #[adapt(in = V, out = D)]
    embed: Embedding,
    #[nested(count = 3)]
    layers: Vec<Block>,
    #[nested]
    pair: [Block; 2],
    #[nested]
    last: Block,
    #[frozen(params = V * D)]
    head: Linear,
}

fn randn(shape: (usize, usize)) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
}

fn linear(din: usize, dout: usize, bias: bool) -> Linear {
    let b = bias.then(|| Tensor::zeros(dout, DType::F32, &Device::Cpu).unwrap());
    Linear::new(randn((dout, din)), b)
}

fn block() -> Block {
    Block {
        q: linear(D, D, false).into(),
        up: linear(D, F, true).into(),
        down: linear(F, D, false),
        scale: Tensor::ones(D, DType::F32, &Device::Cpu).unwrap(),
    }
}

fn tiny(layers: usize) -> Tiny {
    Tiny {
        embed: Embedding::new(randn((V, D)), D).into(),
        layers: (0..layers).map(|_| block()).collect(),
        pair: [block(), block()],
        last: block(),
        head: linear(D, V, false),
    }
}

#[test]
fn constants_equal_runtime_counts() {
    let mut model = tiny(3);
    let varmap = VarMap::new();
    // Built from tensors with `.into()`: no checkpoint paths, so name adapters by field on purpose.
    model.name_layers_by_field().unwrap();
    model.attach_adapters(&varmap, 7).unwrap();
    assert_eq!(model.trainable_params().unwrap(), Tiny::TRAINABLE_PARAMS);
    assert_eq!(model.frozen_params().unwrap(), Tiny::FROZEN_PARAMS);
    let in_varmap: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(in_varmap, Tiny::TRAINABLE_PARAMS);
    let vars: usize = model
        .trainable_vars()
        .unwrap()
        .iter()
        .map(|v| v.elem_count())
        .sum();
    assert_eq!(vars, Tiny::TRAINABLE_PARAMS);
    // By hand: q 4·32 + 16 = 144, up 2·40 + 24 = 104 → 248 per block; 6 blocks; embed 8·66.
    assert_eq!(Block::TRAINABLE_PARAMS, 248);
    assert_eq!(Tiny::TRAINABLE_PARAMS, 6 * 248 + 528);
    // q 256, up 384 + 24 bias, down 384 → 1 048 per block; embed 800; head 800.
    assert_eq!(Tiny::FROZEN_PARAMS, 6 * 1_048 + 800 + 800);
}

#[test]
fn paths_and_configs_follow_the_declaration() {
    let mut model = tiny(3);
    model.name_layers_by_field().unwrap();
    model.attach_adapters(&VarMap::new(), 1).unwrap();
    let layers = model.adapter_layers().unwrap();
    let paths: Vec<&str> = layers.iter().map(|l| l.path.as_str()).collect();
    let mut expected = vec!["embed".to_string()];
    for block in [
        "layers.0", "layers.1", "layers.2", "pair.0", "pair.1", "last",
    ] {
        expected.push(format!("{block}.q"));
        expected.push(format!("{block}.up"));
    }
    assert_eq!(paths, expected);
    let embed = &layers[0];
    assert!(embed.embedding);
    assert_eq!(
        (embed.method, embed.rank, embed.alpha),
        (Method::Lora, 8, 16.0)
    );
    let q = &layers[1];
    assert_eq!((q.method, q.rank, q.alpha), (Method::Dora, 4, 8.0));
    let up = &layers[2];
    assert_eq!(
        (up.method, up.rank, up.alpha, up.din, up.dout),
        (Method::Dora, 2, 3.0, D, F)
    );
    let names: Vec<String> = model
        .named_trainable_vars()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"layers.1.up.lora_A.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"last.q.lora_magnitude_vector".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"embed.lora_embedding_A".to_string()),
        "{names:?}"
    );
}

#[test]
fn vec_length_is_checked_against_count() {
    let mut model = tiny(2);
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    assert!(
        matches!(&err, AdapterError::CountMismatch { path, expected: 3, actual: 2 } if path == "layers"),
        "{err}"
    );
}

#[test]
fn declared_dims_are_checked_against_weights() {
    let mut model = tiny(3);
    model.layers[1].q = AdaptedLinear::from(linear(D, D + 1, false));
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("layers.1.q"), "{msg}");
    assert!(
        msg.contains("[16, 17]") && msg.contains("[16, 16]"),
        "{msg}"
    );
}

#[test]
fn declared_bias_is_checked() {
    let mut model = tiny(3);
    model.last.up = linear(D, F, false).into();
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    assert!(err.to_string().contains("last.up"), "{err}");
}

#[test]
fn declared_params_are_checked() {
    let mut model = tiny(3);
    model.head = linear(D, V + 1, false);
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    assert!(
        matches!(&err, AdapterError::ParamCountMismatch { path, expected: 800, actual: 816 } if path == "head"),
        "{err}"
    );
}

/// A container without adapter configuration: a foreign type counted by `params`, a
/// `FrozenModule` counted by `params` (checked against the weights), and a nested block.
#[adapter]
pub struct Counted {
    #[frozen(params = 7)]
    table: HashMap<String, f32>,
    #[frozen(params = V * D)]
    head: Linear,
    #[nested]
    block: Block,
}

fn counted() -> Counted {
    Counted {
        table: HashMap::new(),
        head: linear(D, V, false),
        block: block(),
    }
}

fn var_sum(v: &adapters_runtime::candle_core::Var) -> f32 {
    v.as_tensor().sum_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn a_clone_shares_the_adapter_vars() {
    let mut model = tiny(3);
    model.name_layers_by_field().unwrap();
    model.attach_adapters(&VarMap::new(), 5).unwrap();
    let copy = model.clone();
    let name = "layers.1.up.lora_B.weight";
    let find = |m: &Tiny| {
        m.named_trainable_vars()
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    let (var, seen) = (find(&model), find(&copy));
    assert_eq!(var_sum(&seen), 0.0); // `lora_B` starts at zero
    var.set(&var.ones_like().unwrap()).unwrap();
    assert_eq!(var_sum(&seen), var.elem_count() as f32);
    // And the other way round, on every tensor of the clone.
    for (_, v) in copy.named_trainable_vars().unwrap() {
        v.set(&v.zeros_like().unwrap()).unwrap();
    }
    assert!(model
        .named_trainable_vars()
        .unwrap()
        .iter()
        .all(|(_, v)| var_sum(v) == 0.0));
    assert_eq!(copy.trainable_params().unwrap(), Tiny::TRAINABLE_PARAMS);
}

#[test]
fn frozen_params_counts_fields_of_any_type() {
    let mut model = counted();
    assert_eq!(Counted::FROZEN_PARAMS, 7 + V * D + Block::FROZEN_PARAMS);
    assert_eq!(model.frozen_params().unwrap(), Counted::FROZEN_PARAMS);
    model.name_layers_by_field().unwrap();
    model.attach_adapters(&VarMap::new(), 0).unwrap();
    assert_eq!(model.trainable_params().unwrap(), Counted::TRAINABLE_PARAMS);
    assert_eq!(model.frozen_params().unwrap(), Counted::FROZEN_PARAMS);
    // `params` on a `FrozenModule` is still checked against the loaded weights.
    let mut model = counted();
    model.head = linear(D, V + 1, false);
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    assert!(
        matches!(&err, AdapterError::ParamCountMismatch { path, expected: 800, actual: 816 } if path == "head"),
        "{err}"
    );
}

#[test]
fn counted_fields_are_listed_as_frozen() {
    /// Nothing to adapt: attaching lists what was visited.
    #[adapter]
    pub struct OnlyCounted {
        #[frozen(params = 7)]
        table: HashMap<String, f32>,
    }
    let mut model = OnlyCounted {
        table: HashMap::new(),
    };
    assert_eq!(model.frozen_params().unwrap(), 7);
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    assert!(err.to_string().contains("table (#[frozen])"), "{err}");
}

/// A model whose blocks were not marked `#[nested]`: nothing to adapt is visible.
#[adapter(lora, rank = 4, alpha = 8.0)]
pub struct ForgotNested {
    pub blocks: Vec<Block>,
    #[frozen(in = F, out = D)]
    proj: Linear,
}

#[test]
fn attaching_nothing_is_an_error_listing_the_fields_visited() {
    let mut m = ForgotNested {
        blocks: vec![block()],
        proj: linear(F, D, false),
    };
    let err = m.attach_adapters(&VarMap::new(), 0).unwrap_err();
    assert!(matches!(err, AdapterError::NothingAttached { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("no `#[adapt]` field"), "{text}");
    assert!(text.contains("proj (#[frozen])"), "{text}");

    // Run-time targets that match nothing are the same error, naming the plan.
    let mut model = tiny(3);
    model.name_layers_by_field().unwrap();
    let err = model
        .attach_adapters_with(&VarMap::new(), 0, &mut |_, _| None)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("chose none"), "{text}");
    assert!(text.contains("layers.0.q (#[adapt])"), "{text}");
    assert!(model.adapter_layers().unwrap().is_empty());
}

#[test]
fn layers_without_a_checkpoint_path_are_reported_at_attach() {
    // Built with `.into()` from candle layers: no VarBuilder path.
    let mut model = tiny(3);
    let err = model.attach_adapters(&VarMap::new(), 0).unwrap_err();
    let AdapterError::UnknownCheckpointPath { count, fields } = &err else {
        panic!("{err}")
    };
    assert_eq!(*count, 1 + 2 * 6, "embed, and q and up of 6 blocks");
    assert!(
        fields.starts_with("embed, layers.0.q, layers.0.up"),
        "{fields}"
    );
    let text = err.to_string();
    assert!(text.contains("adapters_runtime::nn::"), "{text}");
    assert!(text.contains("name_layers_by_field"), "{text}");
    assert!(
        model.adapter_layers().unwrap().is_empty(),
        "nothing attached"
    );

    // A path given by hand is used as the adapters' name.
    let mut block = block();
    block.q = AdaptedLinear::from(linear(D, D, false)).with_path("model.layers.0.q_proj");
    block.up = AdaptedLinear::from(linear(D, F, true)).with_path("model.layers.0.up_proj");
    block.attach_adapters(&VarMap::new(), 0).unwrap();
    let names: Vec<String> = block
        .named_trainable_vars()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"model.layers.0.q_proj.lora_A.weight".to_string()),
        "{names:?}"
    );
}
