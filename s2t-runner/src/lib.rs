//! The reference application: transcribes audio with a Speech2Text model
//! (transformers' `Speech2TextForConditionalGeneration`, e.g. facebook/s2t-medium-librispeech-asr)
//! whose weights are used in place: from the node's object store they are read straight from
//! the read-only shared mapping of the sealed object, so k runners on a node share one
//! physical copy and getting the weights costs a round trip and an `mmap`.
//!
//! Pipeline: [`source`] (where the files come from) → [`config`] + [`weights`] (the
//! safetensors header, tensors borrowed) → [`model`] (encoder/decoder over [`tensor`]) ←
//! [`audio`] + [`fbank`] (WAV to normalized log-mel features) → [`generate`] (greedy or beam
//! search) → [`vocab`] (text). [`run`] does it all and fills a [`Report`].

pub mod audio;
pub mod config;
pub mod fbank;
pub mod generate;
pub mod memory;
pub mod model;
pub mod random;
pub mod source;
pub mod tensor;
pub mod vocab;
pub mod weights;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

pub use config::{Preset, Speech2TextConfig};
pub use generate::{DecodeOptions, Decoded};
pub use memory::MemoryUsage;
pub use model::Speech2Text;
pub use source::{ModelFiles, ModelSource};

/// Everything that can stop a run, each naming what went wrong.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error(transparent)]
    Vocab(#[from] vocab::VocabError),
    #[error(transparent)]
    Audio(#[from] audio::AudioError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: ModelSource,
    pub audio: PathBuf,
    /// Overrides of the config's generation settings.
    pub num_beams: Option<usize>,
    pub max_length: Option<usize>,
    /// How long to wait for store objects that are not sealed yet.
    pub store_timeout: Duration,
    /// Hash the weight bytes held (after inference, untimed) into [`Report::weights_blake3`].
    pub weights_digest: bool,
}

/// The transcript and the timing report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub transcript: String,
    pub tokens: Vec<u32>,
    /// Set when the model's weights are random (`gen-random`): the transcript is noise.
    pub random_weights: bool,
    pub source: String,
    pub source_kind: &'static str,
    /// Bytes of model.safetensors, and of all three files.
    pub weight_bytes: usize,
    pub model_bytes: usize,
    /// Getting the files into the address space (store: three gets; dir: open + mmap).
    pub transfer_seconds: f64,
    pub transfer_mb_per_s: f64,
    /// From start to a model ready to run (transfer, config, header, tensor views, vocab).
    pub ready_seconds: f64,
    pub tensors_borrowed: usize,
    pub borrowed_bytes: usize,
    pub tensors_converted: Vec<weights::Converted>,
    pub audio_seconds: f64,
    pub audio_load_seconds: f64,
    /// Features + encoder + decoding.
    pub inference_seconds: f64,
    pub features_seconds: f64,
    pub encoder_seconds: f64,
    pub decoder_seconds: f64,
    pub decoder_steps: usize,
    pub decoding: String,
    pub real_time_factor: f64,
    /// Memory when the model was ready, and after inference (all weights touched).
    pub memory_ready: Option<MemoryUsage>,
    pub memory_after: Option<MemoryUsage>,
    /// `Private_Clean + Private_Dirty` after inference: what this runner adds on top of the
    /// shared weights.
    pub private_bytes: u64,
    /// BLAKE3 (hex) of the weight bytes this runner held and ran on (its store mapping, file
    /// mapping or S3 download), computed after inference when [`RunOptions::weights_digest`]
    /// asks for it; `None` otherwise.
    pub weights_blake3: Option<String>,
}

impl Report {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let mut s = String::new();
        if self.random_weights {
            s.push_str("note: random weights (gen-random): the transcript is noise\n");
        }
        s.push_str(&format!("transcript: {}\n", self.transcript));
        s.push_str(&format!(
            "model      {} ({}), {:.1} MB of weights, {} tensors in place ({:.1} MB), {} converted\n",
            self.source,
            self.source_kind,
            self.weight_bytes as f64 / 1e6,
            self.tensors_borrowed,
            self.borrowed_bytes as f64 / 1e6,
            self.tensors_converted.len()
        ));
        if let Some(d) = &self.weights_blake3 {
            s.push_str(&format!("weights    blake3 {d} (of the bytes held)\n"));
        }
        s.push_str(&format!(
            "transfer   {:.3} ms ({:.0} MB/s)\nready      {:.3} ms\n",
            self.transfer_seconds * 1e3,
            self.transfer_mb_per_s,
            self.ready_seconds * 1e3
        ));
        s.push_str(&format!(
            "inference  {:.3} s for {:.2} s of audio (RTF {:.3}): features {:.3} s, encoder {:.3} s, decoder {:.3} s ({} steps, {})\n",
            self.inference_seconds,
            self.audio_seconds,
            self.real_time_factor,
            self.features_seconds,
            self.encoder_seconds,
            self.decoder_seconds,
            self.decoder_steps,
            self.decoding
        ));
        if let (Some(r), Some(a)) = (self.memory_ready, self.memory_after) {
            s.push_str(&format!(
                "memory     private {:.1} MB at ready, {:.1} MB after inference (anonymous {:.1} MB, shared {:.1} MB)\n",
                mb(r.private_bytes),
                mb(a.private_bytes),
                mb(a.anonymous_bytes),
                mb(a.shared_bytes)
            ));
        }
        s
    }
}

/// A loaded model and its vocabulary, borrowing the files.
#[derive(Debug)]
pub struct Loaded<'f> {
    pub model: Speech2Text<'f>,
    pub vocab: vocab::Vocab,
}

/// Parses config, weights and vocabulary of `files`.
pub fn load(files: &ModelFiles) -> Result<Loaded<'_>, RunError> {
    let config = Speech2TextConfig::from_json(&files.config)?;
    let specials = [config.bos_token_id, config.pad_token_id, config.eos_token_id];
    let model = Speech2Text::load(config, &files.weights)?;
    let vocab = vocab::Vocab::from_json(&files.vocab, &specials)?;
    Ok(Loaded { model, vocab })
}

/// Timings of one transcription.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcription {
    pub text: String,
    pub decoded: Decoded,
    pub features_seconds: f64,
    pub encoder_seconds: f64,
    pub decoder_seconds: f64,
}

impl Loaded<'_> {
    /// Transcribes 16 kHz mono samples.
    pub fn transcribe(&self, samples: &[f32], opts: &DecodeOptions) -> Result<Transcription, RunError> {
        let t0 = Instant::now();
        let feats = fbank::features(samples, self.model.config.input_dim());
        let t1 = Instant::now();
        let (enc, t_enc) = self.model.encode(&feats)?;
        let t2 = Instant::now();
        let decoded = generate::decode(&self.model, &enc, t_enc, opts)?;
        let t3 = Instant::now();
        Ok(Transcription {
            text: self.vocab.decode(&decoded.tokens),
            decoded,
            features_seconds: (t1 - t0).as_secs_f64(),
            encoder_seconds: (t2 - t1).as_secs_f64(),
            decoder_seconds: (t3 - t2).as_secs_f64(),
        })
    }
}

/// Loads the model, calls `on_ready` (with the memory at that point), transcribes the audio.
pub fn run(opts: &RunOptions, on_ready: impl FnOnce(&ReadyInfo)) -> Result<Report, RunError> {
    let start = Instant::now();
    let files = ModelFiles::open(&opts.source, opts.store_timeout)?;
    let loaded = load(&files)?;
    let ready = start.elapsed();
    let memory_ready = MemoryUsage::current();
    on_ready(&ReadyInfo {
        ready_seconds: ready.as_secs_f64(),
        memory: memory_ready,
        weight_bytes: files.weights.len(),
    });

    let t_audio = Instant::now();
    let audio = audio::read_wav_file(&opts.audio)?;
    let audio_load = t_audio.elapsed();
    let mut decode = DecodeOptions::from_config(&loaded.model);
    if let Some(b) = opts.num_beams {
        decode.num_beams = b;
    }
    if let Some(m) = opts.max_length {
        decode.max_length = m;
    }
    let t = Instant::now();
    let out = loaded.transcribe(&audio.samples, &decode)?;
    let inference = t.elapsed().as_secs_f64();
    let memory_after = MemoryUsage::current();
    // After every timing and memory reading: hashing reads all of the weights.
    let weights_blake3 = opts.weights_digest.then(|| files.weights_blake3());
    let transfer = files.transfer.as_secs_f64();
    let report = &loaded.model.load_report;
    Ok(Report {
        transcript: out.text,
        tokens: out.decoded.tokens,
        random_weights: loaded.model.config.random_weights,
        source: opts.source.to_string(),
        source_kind: files.kind,
        weight_bytes: files.weights.len(),
        model_bytes: files.total_bytes(),
        transfer_seconds: transfer,
        transfer_mb_per_s: if transfer > 0.0 { files.weights.len() as f64 / 1e6 / transfer } else { 0.0 },
        ready_seconds: ready.as_secs_f64(),
        tensors_borrowed: report.borrowed_tensors,
        borrowed_bytes: report.borrowed_bytes,
        tensors_converted: report.converted.clone(),
        audio_seconds: audio.seconds(),
        audio_load_seconds: audio_load.as_secs_f64(),
        inference_seconds: inference,
        features_seconds: out.features_seconds,
        encoder_seconds: out.encoder_seconds,
        decoder_seconds: out.decoder_seconds,
        decoder_steps: out.decoded.steps,
        decoding: if decode.num_beams > 1 {
            format!("beam search, {} beams, max_length {}", decode.num_beams, decode.max_length)
        } else {
            format!("greedy, max_length {}", decode.max_length)
        },
        real_time_factor: if audio.seconds() > 0.0 { inference / audio.seconds() } else { 0.0 },
        memory_ready,
        memory_after,
        private_bytes: memory_after.map(|m| m.private_bytes).unwrap_or(0),
        weights_blake3,
    })
}

/// What is known when the model is ready.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ReadyInfo {
    pub ready_seconds: f64,
    pub memory: Option<MemoryUsage>,
    pub weight_bytes: usize,
}
