//! `gen-random`: a model directory (config.json, model.safetensors, vocab.json) with random
//! weights for a named architecture, so that demos and benchmarks move and run a real-size
//! model when no checkpoint can be downloaded. Its transcripts are noise; its config carries
//! `"_s2t_runner_random_weights": true` and the runner says so in its output.
//!
//! Weights are uniform in ±1/sqrt(fan_in) (PyTorch's default range for linear and conv
//! layers), biases in ±0.1, LayerNorm gains around 1; the stream is a seeded xorshift, so a
//! seed always gives the same bytes. The file is written tensor by tensor (constant memory).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::Speech2TextConfig;
use crate::source::{CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE};
use crate::vocab::Vocab;
use crate::weights::expected_shapes;

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Generated {
    pub dir: PathBuf,
    pub parameters: usize,
    pub weight_bytes: u64,
}

struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // 24 random bits to [-1, 1).
        ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn fan_in(shape: &[usize]) -> usize {
    shape.iter().skip(1).product::<usize>().max(1)
}

/// Writes a random model for `config` into `dir` (created if needed).
pub fn generate(config: &Speech2TextConfig, dir: &Path, seed: u64) -> Result<Generated, GenerateError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GenerateError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut cfg = config.clone();
    cfg.random_weights = true;
    cfg.tie_word_embeddings = true;
    let mut json: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        obj.insert("model_type".into(), "speech_to_text".into());
        obj.insert("architectures".into(), serde_json::json!(["Speech2TextForConditionalGeneration"]));
    }
    let config_path = dir.join(CONFIG_FILE);
    std::fs::write(&config_path, serde_json::to_string_pretty(&json).unwrap_or_default()).map_err(io(&config_path))?;
    let vocab_path = dir.join(VOCAB_FILE);
    std::fs::write(&vocab_path, Vocab::synthetic_json(cfg.vocab_size)).map_err(io(&vocab_path))?;

    let tensors: Vec<(String, Vec<usize>)> =
        expected_shapes(&cfg).into_iter().map(|(n, s)| (format!("model.{n}"), s)).collect();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let len = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    while !(8 + head.len()).is_multiple_of(8) {
        head.push(b' ');
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let file = std::fs::File::create(&weights_path).map_err(io(&weights_path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(head.len() as u64).to_le_bytes()).map_err(io(&weights_path))?;
    w.write_all(&head).map_err(io(&weights_path))?;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut parameters = 0;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        parameters += n;
        let is_norm = name.contains("layer_norm");
        let (center, range) = if is_norm && name.ends_with(".weight") {
            (1.0, 0.2)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.ends_with("embed_tokens.weight") {
            (0.0, 1.0)
        } else {
            (0.0, 1.0 / (fan_in(shape) as f32).sqrt())
        };
        let mut left = n;
        while left > 0 {
            let take = left.min(1 << 18);
            buf.clear();
            for _ in 0..take {
                buf.extend_from_slice(&(center + range * rng.next_f32()).to_le_bytes());
            }
            w.write_all(&buf).map_err(io(&weights_path))?;
            left -= take;
        }
    }
    w.flush().map_err(io(&weights_path))?;
    Ok(Generated { dir: dir.to_owned(), parameters, weight_bytes: (8 + head.len() + offset) as u64 })
}
