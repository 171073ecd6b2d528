//! The gradient census behind [`Adapters::check_gradients`]: which attached adapter tensors a
//! backward pass did not reach, grouped by module.

use crate::adapters::Adapters;
use crate::error::{AdapterError, Result};
use candle_core::backprop::GradStore;
use std::collections::BTreeMap;

/// Errors naming every adapter tensor of `model` without a gradient entry in `grads`.
pub(crate) fn check<M: Adapters + ?Sized>(model: &M, grads: &GradStore) -> Result<()> {
    // module name → (layers having it, layers missing something, missing tensor names)
    let mut groups: BTreeMap<String, (usize, usize, Vec<String>)> = BTreeMap::new();
    let (mut total, mut missing) = (0usize, 0usize);
    model.for_each_layer(&mut |path, l| {
        let vars = l.named_vars();
        if vars.is_empty() {
            return;
        }
        let module = path.rsplit('.').next().unwrap_or(path).to_string();
        let g = groups.entry(module).or_default();
        g.0 += 1;
        let absent: Vec<String> = vars
            .iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
            .map(|(k, _)| k.clone())
            .collect();
        total += vars.len();
        missing += absent.len();
        if !absent.is_empty() {
            g.1 += 1;
            for k in absent {
                if !g.2.contains(&k) {
                    g.2.push(k);
                }
            }
        }
    })?;
    if missing == 0 {
        return Ok(());
    }
    // Modules with the same counts and tensors are reported together.
    let mut merged: Vec<(Vec<String>, usize, usize, Vec<String>)> = Vec::new();
    for (module, (n, bad, tensors)) in groups.into_iter().filter(|(_, g)| g.1 > 0) {
        match merged
            .iter_mut()
            .find(|m| m.1 == bad && m.2 == n && m.3 == tensors)
        {
            Some(m) => m.0.push(module),
            None => merged.push((vec![module], bad, n, tensors)),
        }
    }
    let summary = merged
        .into_iter()
        .map(|(modules, bad, n, tensors)| {
            let names = match modules.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} and {last}", rest.join(", "))
                }
                _ => modules.concat(),
            };
            let layers = if n == 1 { "layer" } else { "layers" };
            format!("{names} in {bad} of {n} {layers} ({})", tensors.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(AdapterError::MissingGradients {
        missing,
        total,
        summary,
    })
}
