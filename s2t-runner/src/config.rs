//! The model's `config.json`: the fields of transformers' `Speech2TextConfig` this runner
//! uses, their defaults, and the generation settings (beams, length, early stopping) that the
//! published s2t checkpoints keep in the same file.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("config.json is not valid JSON for a Speech2Text config: {0}")]
    Parse(String),
    #[error("config.json: {0}")]
    Invalid(String),
}

/// How beam search decides it is done (transformers' `early_stopping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EarlyStopping {
    /// `true` or `false`.
    Flag(bool),
    /// `"never"`: the canonical beam search stopping rule.
    Word(EarlyStoppingWord),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStoppingWord {
    Never,
}

fn default_true() -> bool {
    true
}

/// The subset of `Speech2TextConfig` this implementation reads. Field names and defaults are
/// transformers'; unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speech2TextConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::d_model")]
    pub d_model: usize,
    #[serde(default = "d::encoder_layers")]
    pub encoder_layers: usize,
    #[serde(default = "d::decoder_layers")]
    pub decoder_layers: usize,
    #[serde(default = "d::heads")]
    pub encoder_attention_heads: usize,
    #[serde(default = "d::heads")]
    pub decoder_attention_heads: usize,
    #[serde(default = "d::ffn")]
    pub encoder_ffn_dim: usize,
    #[serde(default = "d::ffn")]
    pub decoder_ffn_dim: usize,
    #[serde(default = "d::activation")]
    pub activation_function: String,
    #[serde(default = "default_true")]
    pub scale_embedding: bool,
    #[serde(default = "d::num_conv_layers")]
    pub num_conv_layers: usize,
    #[serde(default = "d::conv_kernel_sizes")]
    pub conv_kernel_sizes: Vec<usize>,
    #[serde(default = "d::conv_channels")]
    pub conv_channels: usize,
    #[serde(default = "d::input_feat_per_channel")]
    pub input_feat_per_channel: usize,
    #[serde(default = "d::input_channels")]
    pub input_channels: usize,
    #[serde(default = "d::max_source_positions")]
    pub max_source_positions: usize,
    #[serde(default = "d::max_target_positions")]
    pub max_target_positions: usize,
    #[serde(default = "d::pad")]
    pub pad_token_id: u32,
    #[serde(default = "d::bos")]
    pub bos_token_id: u32,
    #[serde(default = "d::eos")]
    pub eos_token_id: u32,
    #[serde(default = "d::eos")]
    pub decoder_start_token_id: u32,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Generation settings kept in the model config by the published checkpoints.
    #[serde(default = "d::num_beams")]
    pub num_beams: usize,
    #[serde(default = "d::max_length")]
    pub max_length: usize,
    #[serde(default = "d::length_penalty")]
    pub length_penalty: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Written by `gen-random`: the weights are random and the transcript is noise.
    #[serde(default, rename = "_s2t_runner_random_weights", skip_serializing_if = "std::ops::Not::not")]
    pub random_weights: bool,
}

/// transformers' defaults (`Speech2TextConfig.__init__`), except `num_beams`, which defaults to
/// the 5 beams of the published checkpoints.
mod d {
    pub fn vocab_size() -> usize {
        10000
    }
    pub fn d_model() -> usize {
        256
    }
    pub fn encoder_layers() -> usize {
        12
    }
    pub fn decoder_layers() -> usize {
        6
    }
    pub fn heads() -> usize {
        4
    }
    pub fn ffn() -> usize {
        2048
    }
    pub fn activation() -> String {
        "relu".into()
    }
    pub fn num_conv_layers() -> usize {
        2
    }
    pub fn conv_kernel_sizes() -> Vec<usize> {
        vec![5, 5]
    }
    pub fn conv_channels() -> usize {
        1024
    }
    pub fn input_feat_per_channel() -> usize {
        80
    }
    pub fn input_channels() -> usize {
        1
    }
    pub fn max_source_positions() -> usize {
        6000
    }
    pub fn max_target_positions() -> usize {
        1024
    }
    pub fn pad() -> u32 {
        1
    }
    pub fn bos() -> u32 {
        0
    }
    pub fn eos() -> u32 {
        2
    }
    pub fn num_beams() -> usize {
        5
    }
    pub fn max_length() -> usize {
        200
    }
    pub fn length_penalty() -> f32 {
        1.0
    }
}

/// Named architectures for `gen-random`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// facebook/s2t-medium-librispeech-asr: 71.2 M parameters, 285 MB.
    Medium,
    /// facebook/s2t-small-librispeech-asr: 29.5 M parameters, 118 MB.
    Small,
    /// A few hundred kB, for tests.
    Tiny,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "medium" => Ok(Self::Medium),
            "small" => Ok(Self::Small),
            "tiny" => Ok(Self::Tiny),
            other => Err(format!("unknown preset `{other}` (medium, small or tiny)")),
        }
    }
}

impl Speech2TextConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: Self = serde_json::from_slice(bytes).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        // Serializing a plain struct of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn preset(p: Preset) -> Self {
        let mut c = Self::from_json(b"{}").unwrap_or_else(|_| unreachable!("defaults are valid"));
        match p {
            Preset::Medium => {
                c.d_model = 512;
                c.encoder_attention_heads = 8;
                c.decoder_attention_heads = 8;
            }
            Preset::Small => {}
            Preset::Tiny => {
                c.vocab_size = 96;
                c.d_model = 32;
                c.encoder_layers = 2;
                c.decoder_layers = 2;
                c.encoder_attention_heads = 4;
                c.decoder_attention_heads = 4;
                c.encoder_ffn_dim = 64;
                c.decoder_ffn_dim = 64;
                c.conv_channels = 48;
                c.max_length = 24;
            }
        }
        c.early_stopping = Some(EarlyStopping::Flag(true));
        c
    }

    /// Input features per frame (80 mel bins x 1 channel).
    pub fn input_dim(&self) -> usize {
        self.input_feat_per_channel * self.input_channels
    }

    pub fn early_stopping_mode(&self) -> EarlyStopping {
        self.early_stopping.unwrap_or(EarlyStopping::Flag(false))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("conv_channels", self.conv_channels),
            ("input_feat_per_channel", self.input_feat_per_channel),
            ("input_channels", self.input_channels),
            ("num_beams", self.num_beams),
            ("max_length", self.max_length),
        ];
        for (name, v) in positive {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.d_model.is_multiple_of(2) {
            return bad(format!("d_model {} must be even (sinusoidal positions)", self.d_model));
        }
        for (name, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if !self.d_model.is_multiple_of(heads) {
                return bad(format!("d_model {} is not divisible by {name} {heads}", self.d_model));
            }
        }
        if !self.conv_channels.is_multiple_of(2) {
            return bad(format!("conv_channels {} must be even (GLU halves it)", self.conv_channels));
        }
        if self.num_conv_layers != self.conv_kernel_sizes.len() || self.num_conv_layers == 0 {
            return bad(format!(
                "num_conv_layers {} does not match conv_kernel_sizes {:?}",
                self.num_conv_layers, self.conv_kernel_sizes
            ));
        }
        if self.conv_kernel_sizes.contains(&0) {
            return bad("conv_kernel_sizes must be positive".into());
        }
        if self.activation_function != "relu" {
            return bad(format!("activation_function `{}` is not supported (only relu)", self.activation_function));
        }
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return bad(format!("{name} {id} is outside the vocabulary of {}", self.vocab_size));
            }
        }
        if !(self.length_penalty.is_finite()) {
            return bad("length_penalty must be finite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let c = Speech2TextConfig::from_json(b"{}").unwrap();
        assert_eq!((c.d_model, c.encoder_layers, c.decoder_layers, c.vocab_size), (256, 12, 6, 10000));
        assert_eq!((c.pad_token_id, c.bos_token_id, c.eos_token_id, c.decoder_start_token_id), (1, 0, 2, 2));
        assert_eq!(c.early_stopping_mode(), EarlyStopping::Flag(false));
        assert_eq!(c.num_beams, 5);
    }

    #[test]
    fn early_stopping_accepts_bool_and_never() {
        let c = Speech2TextConfig::from_json(br#"{"early_stopping": true}"#).unwrap();
        assert_eq!(c.early_stopping_mode(), EarlyStopping::Flag(true));
        let c = Speech2TextConfig::from_json(br#"{"early_stopping": "never"}"#).unwrap();
        assert_eq!(c.early_stopping_mode(), EarlyStopping::Word(EarlyStoppingWord::Never));
    }

    #[test]
    fn inconsistent_config_is_refused_with_the_field_named() {
        let e = Speech2TextConfig::from_json(br#"{"d_model": 250, "encoder_attention_heads": 8}"#).unwrap_err();
        assert!(e.to_string().contains("encoder_attention_heads"), "{e}");
        let e = Speech2TextConfig::from_json(br#"{"num_conv_layers": 3}"#).unwrap_err();
        assert!(e.to_string().contains("conv_kernel_sizes"), "{e}");
        let e = Speech2TextConfig::from_json(br#"{"d_model": "big"}"#).unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)), "{e}");
    }

    #[test]
    fn medium_preset_has_the_published_parameter_count() {
        let c = Speech2TextConfig::preset(Preset::Medium);
        assert_eq!(
            crate::weights::expected_shapes(&c).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(),
            71_207_936
        );
    }

    #[test]
    fn preset_round_trips_through_json() {
        let c = Speech2TextConfig::preset(Preset::Tiny);
        assert_eq!(Speech2TextConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
    }
}
