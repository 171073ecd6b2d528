//! PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction, no AMSGrad) with its
//! state in f32 whatever the parameter dtype, exposed by parameter name so it can be saved and
//! restored exactly.

use crate::error::{AdapterError, KeyIssue, Result};
use crate::train::grads::Grads;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// AdamW hyper-parameters (PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁, the decay of the first moment.
    pub beta1: f64,
    /// β₂, the decay of the second moment.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (`param *= 1 - lr·wd` before the Adam update).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter's state: `exp_avg`, `exp_avg_sq` (f32, the parameter's shape) and its step count.
#[derive(Clone, Debug)]
struct ParamState {
    m: Tensor,
    v: Tensor,
    step: u64,
}

/// AdamW over named variables; the update is computed in f32 and written back in the parameter's
/// dtype (keep adapter parameters in f32 for exact small updates).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<(String, Var)>,
    state: BTreeMap<String, ParamState>,
}

const M_SUFFIX: &str = ".exp_avg";
const V_SUFFIX: &str = ".exp_avg_sq";
const STEP_SUFFIX: &str = ".step";

impl AdamW {
    /// An optimizer over `params` (e.g. [`crate::Adapters::named_trainable_vars`]).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        for (name, var) in &params {
            if !var.dtype().is_float() {
                return Err(AdapterError::DTypeMismatch {
                    layer: name.clone(),
                    what: "trainable parameter".into(),
                    expected: "a float dtype".into(),
                    actual: var.dtype(),
                });
            }
        }
        Ok(Self {
            config,
            params,
            state: BTreeMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The optimized parameters, by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// How many updates the parameter `name` has received (0 if none or unknown).
    pub fn param_step(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// One AdamW update with learning rate `lr`; parameters without a gradient are left alone
    /// (and their step count does not advance), as in PyTorch.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        for (name, var) in &self.params {
            let Some(grad) = grads.get(name) else {
                continue;
            };
            if grad.dims() != var.dims() {
                return Err(AdapterError::ShapeMismatch {
                    layer: name.clone(),
                    what: "gradient".into(),
                    expected: var.dims().to_vec(),
                    actual: grad.dims().to_vec(),
                });
            }
            let grad = grad.to_dtype(DType::F32)?;
            let st = match self.state.remove(name) {
                Some(st) => st,
                None => ParamState {
                    m: grad.zeros_like()?,
                    v: grad.zeros_like()?,
                    step: 0,
                },
            };
            let step = st.step + 1;
            // exp_avg.lerp_(grad, 1 - β₁): m + (1 - β₁)(g - m).
            let m = (&st.m + ((&grad - &st.m)? * (1.0 - beta1))?)?;
            // exp_avg_sq.mul_(β₂).addcmul_(g, g, value = 1 - β₂).
            let v = ((&st.v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let bias1 = 1.0 - beta1.powf(step as f64);
            let bias2_sqrt = (1.0 - beta2.powf(step as f64)).sqrt();
            let step_size = lr / bias1;
            let denom = ((v.sqrt()? / bias2_sqrt)? + eps)?;
            let theta = var.as_tensor().detach().to_dtype(DType::F32)?;
            let theta = (theta * (1.0 - lr * weight_decay))?;
            let theta = (theta - ((&m / &denom)? * step_size)?)?;
            var.set(&theta.to_dtype(var.dtype())?)?;
            self.state.insert(name.clone(), ParamState { m, v, step });
        }
        Ok(())
    }

    /// [`AdamW::step`] with the gradients of this optimizer's parameters taken from `store`.
    pub fn step_store(&mut self, store: &GradStore, lr: f64) -> Result<()> {
        let grads = Grads::from_store(&self.params, store)?;
        self.step(&grads, lr)
    }

    /// The state as named tensors: `<param>.exp_avg`, `<param>.exp_avg_sq` (f32) and
    /// `<param>.step` (i64, shape `[1]`), for parameters that have been updated at least once.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, st) in &self.state {
            let device = st.m.device();
            out.insert(format!("{name}{M_SUFFIX}"), st.m.clone());
            out.insert(format!("{name}{V_SUFFIX}"), st.v.clone());
            out.insert(
                format!("{name}{STEP_SUFFIX}"),
                Tensor::new(&[st.step as i64], device)?,
            );
        }
        Ok(out)
    }

    /// Restores a state written by [`AdamW::state_tensors`]; every key must name one of this
    /// optimizer's parameters with matching shape. `context` names the source in errors.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, context: &str) -> Result<()> {
        let mut issues = Vec::new();
        let mut state = BTreeMap::new();
        let known: HashMap<&str, &Var> = self.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for key in tensors.keys() {
            let base = [M_SUFFIX, V_SUFFIX, STEP_SUFFIX]
                .iter()
                .find_map(|s| key.strip_suffix(s));
            if !base.is_some_and(|b| known.contains_key(b)) {
                issues.push(KeyIssue::new(
                    key,
                    "absent (no such trainable parameter)",
                    "present",
                ));
            }
        }
        for (name, var) in &self.params {
            let get = |suffix: &str| tensors.get(&format!("{name}{suffix}"));
            let (m, v, step) = match (get(M_SUFFIX), get(V_SUFFIX), get(STEP_SUFFIX)) {
                (None, None, None) => continue,
                (Some(m), Some(v), Some(s)) => (m, v, s),
                _ => {
                    issues.push(KeyIssue::new(
                        name,
                        "exp_avg, exp_avg_sq and step",
                        "only some of them",
                    ));
                    continue;
                }
            };
            for (what, t) in [(M_SUFFIX, m), (V_SUFFIX, v)] {
                if t.dims() != var.dims() || t.dtype() != DType::F32 {
                    issues.push(KeyIssue::new(
                        format!("{name}{what}"),
                        format!("F32 {:?}", var.dims()),
                        format!("{:?} {:?}", t.dtype(), t.dims()),
                    ));
                }
            }
            let step_val = step_value(step);
            let Some(step_val) = step_val else {
                issues.push(KeyIssue::new(
                    format!("{name}{STEP_SUFFIX}"),
                    "one non-negative i64",
                    format!("{:?} {:?}", step.dtype(), step.dims()),
                ));
                continue;
            };
            let device = var.device();
            state.insert(
                name.clone(),
                ParamState {
                    m: on_device(m, device)?,
                    v: on_device(v, device)?,
                    step: step_val,
                },
            );
        }
        if !issues.is_empty() {
            return Err(AdapterError::Keys {
                context: context.to_string(),
                issues,
            });
        }
        self.state = state;
        Ok(())
    }
}

fn step_value(t: &Tensor) -> Option<u64> {
    if t.dtype() != DType::I64 || t.elem_count() != 1 {
        return None;
    }
    let v = t.flatten_all().ok()?.to_vec1::<i64>().ok()?;
    u64::try_from(v[0]).ok()
}

/// A copy of `t` on `device` that does not share storage with the source.
fn on_device(t: &Tensor, device: &Device) -> Result<Tensor> {
    Ok(t.to_device(device)?.copy()?)
}
