//! Adapters on a model: create fresh ones (PEFT's init), attach ones read from PEFT files, and take them off
//! again for saving. The model side is `Linear::lora` (`models/layers.rs`); this file only decides which
//! layers get one and moves tensors.

use super::adapter_io::Adapter;
use super::lora::{LoraBias, LoraConfig, init_lora_a};
use crate::backend::Backend;
use crate::models::decoder::Decoder;
use crate::models::layers::Lora;
use crate::rng::Rng;
use anyhow::{Result, bail};
use ndarray::{Array1, Array2, Axis};
use std::collections::BTreeMap;

// ANCHOR: init_adapters
/// Give every linear layer that `config.target_modules` names a fresh adapter — A ~ U(−1/√in, 1/√in),
/// B = 0, so the model's output is unchanged at step 0 — and freeze the base. Returns the number of adapted layers.
pub fn init_adapters<B: Backend>(model: &mut Decoder<B>, b: &B, config: &LoraConfig, rng: &mut Rng) -> Result<usize> {
    let scaling = config.scaling() as f32;
    let mut adapted = 0;
    for (path, linear) in model.linears_mut() {
        if !config.target_modules.matches(&path) {
            continue;
        }
        let (out, inp) = linear.dims(b);
        let a = init_lora_a(config.r, inp, rng);
        linear.lora = Some(Lora {
            a: b.upload_weight(a),
            b: b.upload_weight(Array2::zeros((out, config.r))),
            scaling,
            dropout: config.lora_dropout as f32,
        });
        adapted += 1;
    }
    if adapted == 0 {
        bail!(
            "`target_modules` matches no linear layer of this model (layers are named like `model.layers.0.self_attn.q_proj`)"
        );
    }
    set_bias_training(model, config.bias);
    model.frozen_base = true;
    model.freeze_base(b);
    Ok(adapted)
}
// ANCHOR_END: init_adapters

/// Attach an adapter read with [`Adapter::load`]; trained biases replace the base model's.
pub fn attach_adapter<B: Backend>(model: &mut Decoder<B>, b: &B, adapter: &Adapter) -> Result<()> {
    let scaling = adapter.config.scaling() as f32;
    let mut remaining: BTreeMap<&str, _> = adapter.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut biases: BTreeMap<&str, _> = adapter.biases.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (path, linear) in model.linears_mut() {
        let (out, inp) = linear.dims(b);
        if let Some((a, bm)) = remaining.remove(path.as_str()) {
            if a.dim() != (adapter.config.r, inp) || bm.dim() != (out, adapter.config.r) {
                bail!(
                    "adapter: `{path}` has A {:?} and B {:?}, but the layer is [{out}, {inp}] with r = {}",
                    a.dim(),
                    bm.dim(),
                    adapter.config.r
                );
            }
            linear.lora = Some(Lora {
                a: b.upload_weight(a.clone()),
                b: b.upload_weight(bm.clone()),
                scaling,
                dropout: adapter.config.lora_dropout as f32,
            });
        }
        if let Some(bias) = biases.remove(path.as_str()) {
            if bias.len() != out {
                bail!("adapter: bias of `{path}` has {} entries, the layer has {out} outputs", bias.len());
            }
            linear.bias = Some(b.upload(bias.clone().insert_axis(Axis(0))));
        }
    }
    if let Some(path) = remaining.keys().chain(biases.keys()).next() {
        bail!("adapter: module `{path}` is not a linear layer of this model");
    }
    set_bias_training(model, adapter.config.bias);
    model.frozen_base = true;
    model.freeze_base(b);
    Ok(())
}

fn set_bias_training<B: Backend>(model: &mut Decoder<B>, bias: LoraBias) {
    for (_, linear) in model.linears_mut() {
        linear.train_bias = match bias {
            LoraBias::None => false,
            LoraBias::LoraOnly => linear.lora.is_some(),
            LoraBias::All => true,
        } && linear.bias.is_some();
    }
}

/// The model's adapters (and trained biases) as an [`Adapter`] to save in PEFT's format.
pub fn extract_adapter<B: Backend>(model: &mut Decoder<B>, b: &B, config: &LoraConfig) -> Adapter {
    let mut tensors = BTreeMap::new();
    let mut biases = BTreeMap::new();
    for (path, linear) in model.linears_mut() {
        if let Some(lora) = &linear.lora {
            let (a, bm) = (
                b.download(&lora.a).as_standard_layout().into_owned(),
                b.download(&lora.b).as_standard_layout().into_owned(),
            );
            tensors.insert(path.clone(), (a, bm));
        }
        if let (true, Some(bias)) = (linear.train_bias, &linear.bias) {
            let row: Array1<f32> = b.download(bias).row(0).to_owned();
            biases.insert(path, row);
        }
    }
    Adapter { config: config.clone(), tensors, biases }
}
