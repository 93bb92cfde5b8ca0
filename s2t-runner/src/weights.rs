//! `model.safetensors` read in place: the header is parsed by the `safetensors` crate, and
//! every f32 tensor that is 4-byte aligned in the mapping is used as a borrowed `&[f32]`.
//! Anything else (another dtype, or an unaligned f32 tensor) is converted once into owned
//! memory and listed in the [`LoadReport`], so zero-copy is something the report proves
//! rather than assumes.

use std::collections::{BTreeMap, BTreeSet};

use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
use thiserror::Error;

use crate::config::Speech2TextConfig;
use crate::tensor::Tensor;

#[cfg(target_endian = "big")]
compile_error!("safetensors data is little-endian; this crate reads it in place and needs a little-endian target");

#[derive(Debug, Error, PartialEq)]
pub enum WeightsError {
    #[error("model.safetensors is not a valid safetensors file ({0}); is it truncated or corrupt?")]
    Format(String),
    #[error("tensor `{name}` is missing from model.safetensors{hint}")]
    Missing { name: String, hint: String },
    #[error("tensor `{name}` has shape {found:?} but config.json implies {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}` has dtype {dtype}, which this runner cannot convert to f32")]
    Dtype { name: String, dtype: String },
}

/// A tensor that could not be used in place, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Converted {
    pub name: String,
    pub dtype: String,
    pub reason: &'static str,
    pub bytes: usize,
}

/// What loading the weights did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Tensors used in place.
    pub borrowed_tensors: usize,
    pub borrowed_bytes: usize,
    /// Tensors converted into private memory.
    pub converted: Vec<Converted>,
    /// Tensors in the file that the model does not use.
    pub unused: Vec<String>,
}

/// Hands out the tensors of one safetensors buffer by name.
#[derive(Debug)]
pub struct Weights<'w> {
    st: SafeTensors<'w>,
    prefix: &'static str,
    taken: BTreeSet<String>,
    report: LoadReport,
}

impl<'w> Weights<'w> {
    pub fn parse(bytes: &'w [u8]) -> Result<Self, WeightsError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format(format!("{e:?}")))?;
        // `Speech2TextForConditionalGeneration` prefixes everything with `model.`; a bare
        // `Speech2TextModel` does not.
        let prefix = if st.names().iter().any(|n| n.starts_with("model.")) { "model." } else { "" };
        Ok(Self { st, prefix, taken: BTreeSet::new(), report: LoadReport::default() })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.st.tensor(&format!("{}{name}", self.prefix)).is_ok() || self.st.tensor(name).is_ok()
    }

    /// The tensor `name` (without the `model.` prefix, which is tried first), checked
    /// against `shape`.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor<'w>, WeightsError> {
        let (full, view) = self.locate(name, shape)?;
        self.taken.insert(full.clone());
        let bytes: &'w [u8] = view.data();
        let dtype = view.dtype();
        if dtype == Dtype::F32
            && let Ok(floats) = bytemuck::try_cast_slice::<u8, f32>(bytes)
        {
            self.report.borrowed_tensors += 1;
            self.report.borrowed_bytes += bytes.len();
            return Ok(Tensor::borrowed(floats, shape.to_vec()));
        }
        let (data, reason) = convert(bytes, dtype)
            .ok_or_else(|| WeightsError::Dtype { name: full.clone(), dtype: format!("{dtype:?}") })?;
        self.report.converted.push(Converted {
            name: full,
            dtype: format!("{dtype:?}"),
            reason,
            bytes: data.len() * 4,
        });
        Ok(Tensor::owned(data, shape.to_vec()))
    }

    /// Checks that `name` exists with `shape` and a convertible dtype, without taking it.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<(), WeightsError> {
        let (full, view) = self.locate(name, shape)?;
        match view.dtype() {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => Ok(()),
            other => Err(WeightsError::Dtype { name: full, dtype: format!("{other:?}") }),
        }
    }

    fn locate(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(String, safetensors::tensor::TensorView<'w>), WeightsError> {
        let full = format!("{}{name}", self.prefix);
        let (full, view) = match self.st.tensor(&full) {
            Ok(v) => (full, v),
            Err(_) => match self.st.tensor(name) {
                Ok(v) => (name.to_owned(), v),
                Err(_) => return Err(WeightsError::Missing { name: full.clone(), hint: self.hint(&full) }),
            },
        };
        if view.shape() != shape {
            return Err(WeightsError::Shape { name: full, expected: shape.to_vec(), found: view.shape().to_vec() });
        }
        Ok((full, view))
    }

    /// The report, with the tensors nobody asked for listed as unused.
    pub fn finish(mut self) -> LoadReport {
        self.report.unused =
            self.st.names().into_iter().filter(|n| !self.taken.contains(*n)).map(|n| n.to_string()).collect();
        self.report.unused.sort();
        self.report
    }

    /// Names in the file that no model part asked for yet and look like the missing one.
    fn hint(&self, missing: &str) -> String {
        let known: BTreeSet<String> = expected_names_any_layer();
        let stem = |s: &str| s.rsplit('.').nth(1).unwrap_or("").to_string();
        let mut candidates: Vec<&str> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !known.contains(&normalize_layer(n.strip_prefix(self.prefix).unwrap_or(n))))
            .collect();
        candidates.sort();
        if candidates.is_empty() {
            return String::new();
        }
        let same_stem: Vec<&str> = candidates.iter().copied().filter(|c| stem(c) == stem(missing)).take(3).collect();
        let shown = if same_stem.is_empty() { candidates.into_iter().take(3).collect() } else { same_stem };
        format!(" (the file has unexpected tensors such as {})", shown.join(", "))
    }
}

fn normalize_layer(name: &str) -> String {
    name.split('.').map(|p| if p.chars().all(|c| c.is_ascii_digit()) { "N" } else { p }).collect::<Vec<_>>().join(".")
}

fn expected_names_any_layer() -> BTreeSet<String> {
    let mut cfg = Speech2TextConfig::preset(crate::config::Preset::Tiny);
    cfg.encoder_layers = 1;
    cfg.decoder_layers = 1;
    let mut names: BTreeSet<String> = expected_shapes(&cfg).into_iter().map(|(n, _)| normalize_layer(&n)).collect();
    names.insert("lm_head.weight".into());
    names.insert("model.encoder.embed_positions.weights".into());
    names.insert("model.decoder.embed_positions.weights".into());
    names.insert("encoder.embed_positions.weights".into());
    names.insert("decoder.embed_positions.weights".into());
    names.into_iter().flat_map(|n| [n.strip_prefix("model.").unwrap_or(&n).to_string(), n]).collect()
}

/// Converts a tensor to f32 (little-endian source), or `None` for an unsupported dtype.
fn convert(bytes: &[u8], dtype: Dtype) -> Option<(Vec<f32>, &'static str)> {
    Some(match dtype {
        Dtype::F32 => {
            (bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(), "unaligned f32")
        }
        Dtype::F16 => {
            (bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(), "f16 widened")
        }
        Dtype::BF16 => (
            bytes.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
            "bf16 widened",
        ),
        Dtype::F64 => (
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            "f64 narrowed",
        ),
        _ => return None,
    })
}

/// IEEE 754 binary16 to binary32, exact.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f * 2^-24.
            let v = f as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Every tensor the model needs (without the `model.` prefix) and its shape, in file order
/// of a transformers checkpoint. The LM head is tied to `decoder.embed_tokens.weight` unless
/// the config unties it, then `lm_head.weight` (no prefix) is needed as well.
pub fn expected_shapes(c: &Speech2TextConfig) -> Vec<(String, Vec<usize>)> {
    let d = c.d_model;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut in_ch = c.input_dim();
    for (i, &k) in c.conv_kernel_sizes.iter().enumerate() {
        let out = if i + 1 < c.conv_kernel_sizes.len() { c.conv_channels } else { 2 * d };
        v.push((format!("encoder.conv.conv_layers.{i}.weight"), vec![out, in_ch, k]));
        v.push((format!("encoder.conv.conv_layers.{i}.bias"), vec![out]));
        in_ch = out / 2;
    }
    let attn = |v: &mut Vec<(String, Vec<usize>)>, p: &str| {
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            v.push((format!("{p}.{proj}.weight"), vec![d, d]));
            v.push((format!("{p}.{proj}.bias"), vec![d]));
        }
    };
    let norm = |v: &mut Vec<(String, Vec<usize>)>, p: &str| {
        v.push((format!("{p}.weight"), vec![d]));
        v.push((format!("{p}.bias"), vec![d]));
    };
    let ffn = |v: &mut Vec<(String, Vec<usize>)>, p: &str, f: usize| {
        v.push((format!("{p}.fc1.weight"), vec![f, d]));
        v.push((format!("{p}.fc1.bias"), vec![f]));
        v.push((format!("{p}.fc2.weight"), vec![d, f]));
        v.push((format!("{p}.fc2.bias"), vec![d]));
    };
    for l in 0..c.encoder_layers {
        let p = format!("encoder.layers.{l}");
        attn(&mut v, &format!("{p}.self_attn"));
        norm(&mut v, &format!("{p}.self_attn_layer_norm"));
        ffn(&mut v, &p, c.encoder_ffn_dim);
        norm(&mut v, &format!("{p}.final_layer_norm"));
    }
    norm(&mut v, "encoder.layer_norm");
    v.push(("decoder.embed_tokens.weight".into(), vec![c.vocab_size, d]));
    for l in 0..c.decoder_layers {
        let p = format!("decoder.layers.{l}");
        attn(&mut v, &format!("{p}.self_attn"));
        norm(&mut v, &format!("{p}.self_attn_layer_norm"));
        attn(&mut v, &format!("{p}.encoder_attn"));
        norm(&mut v, &format!("{p}.encoder_attn_layer_norm"));
        ffn(&mut v, &p, c.decoder_ffn_dim);
        norm(&mut v, &format!("{p}.final_layer_norm"));
    }
    norm(&mut v, "decoder.layer_norm");
    v
}

/// Shape of the untied LM head.
pub fn lm_head_shape(c: &Speech2TextConfig) -> Vec<usize> {
    vec![c.vocab_size, c.d_model]
}

/// Writes a safetensors file of `tensors` (f32, in the given order) with the `model.`
/// prefix, as transformers' `save_pretrained` would. Returns the bytes.
pub fn serialize_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>, WeightsError> {
    let mut header = BTreeMap::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let len = data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut json = serde_json::to_vec(&header).map_err(|e| WeightsError::Format(e.to_string()))?;
    // Pad the header with spaces so that the data starts 8-byte aligned.
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, data) in tensors {
        out.extend_from_slice(bytemuck::cast_slice(data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
        let t: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone(), (0..s.iter().product::<usize>()).map(|i| i as f32).collect()))
            .collect();
        serialize_f32(&t).unwrap()
    }

    /// Copies `bytes` to an 8-aligned buffer so borrowing is possible regardless of Vec<u8>'s alignment.
    fn aligned(bytes: &[u8]) -> Vec<u64> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn aligned_f32_tensors_are_borrowed_not_copied() {
        let bytes = file(&[("model.a.weight", vec![2, 3]), ("model.b", vec![4])]);
        let buf = aligned(&bytes);
        let slice = &bytemuck::cast_slice::<u64, u8>(&buf)[..bytes.len()];
        let mut w = Weights::parse(slice).unwrap();
        let t = w.get("a.weight", &[2, 3]).unwrap();
        assert!(t.is_borrowed());
        let range = slice.as_ptr_range();
        assert!(range.contains(&(t.as_slice().as_ptr() as *const u8)), "tensor points into the file buffer");
        assert_eq!(t.as_slice(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let report = w.finish();
        assert_eq!(report.borrowed_tensors, 1);
        assert!(report.converted.is_empty());
        assert_eq!(report.unused, vec!["model.b".to_string()]);
    }

    #[test]
    fn unaligned_tensors_are_converted_and_reported() {
        let bytes = file(&[("model.a", vec![3])]);
        let buf = aligned(&[&[0u8][..], &bytes].concat());
        // Starting one byte into an aligned buffer misaligns every tensor.
        let slice = &bytemuck::cast_slice::<u64, u8>(&buf)[1..1 + bytes.len()];
        let mut w = Weights::parse(slice).unwrap();
        let t = w.get("a", &[3]).unwrap();
        assert!(!t.is_borrowed());
        assert_eq!(t.as_slice(), &[0.0, 1.0, 2.0]);
        assert_eq!(w.finish().converted[0].reason, "unaligned f32");
    }

    #[test]
    fn missing_tensor_names_the_tensor_and_suggests_a_misnamed_one() {
        let bytes = file(&[("model.encoder.layer_norm.weigth", vec![4])]);
        let buf = aligned(&bytes);
        let mut w = Weights::parse(&bytemuck::cast_slice::<u64, u8>(&buf)[..bytes.len()]).unwrap();
        let e = w.get("encoder.layer_norm.weight", &[4]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`model.encoder.layer_norm.weight` is missing"), "{msg}");
        assert!(msg.contains("model.encoder.layer_norm.weigth"), "{msg}");
    }

    #[test]
    fn wrong_shape_names_both_shapes() {
        let bytes = file(&[("model.x", vec![2, 3])]);
        let buf = aligned(&bytes);
        let mut w = Weights::parse(&bytemuck::cast_slice::<u64, u8>(&buf)[..bytes.len()]).unwrap();
        let e = w.get("x", &[3, 2]).unwrap_err();
        assert_eq!(e, WeightsError::Shape { name: "model.x".into(), expected: vec![3, 2], found: vec![2, 3] });
    }

    #[test]
    fn truncated_file_is_a_format_error() {
        let bytes = file(&[("model.x", vec![64])]);
        for cut in [4, 20, bytes.len() - 1] {
            let e = Weights::parse(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, WeightsError::Format(_)), "{e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
    }

    #[test]
    fn half_precision_is_widened_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
