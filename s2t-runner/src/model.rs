//! transformers' `Speech2TextForConditionalGeneration`, forward pass only, over weights
//! borrowed from the mapping (`'w`).
//!
//! Encoder: Conv1d subsampler (each layer stride 2, padding k/2, then GLU over channels),
//! `× sqrt(d_model)` when `scale_embedding`, plus sinusoidal positions, then pre-norm layers
//! (LayerNorm → self-attention → residual; LayerNorm → fc1 → ReLU → fc2 → residual) and a final
//! LayerNorm. Decoder: token embedding `× sqrt(d_model)` plus positions, pre-norm layers with
//! causal self-attention (KV cache), cross-attention over the encoder output (its keys and
//! values computed once, shared by all beams) and the FFN, a final LayerNorm, and the LM head
//! (tied to the token embedding unless `tie_word_embeddings` is false).
//!
//! Positions follow transformers' `create_position_ids_from_input_ids`: a non-padding token's
//! position is `past_len + (its 1-based index among non-padding tokens) + pad_token_id`, i.e.
//! `t + 2` for pad 1; a padding token gets the all-zero row `pad_token_id`.

use rayon::prelude::*;
use thiserror::Error;

use crate::config::Speech2TextConfig;
use crate::tensor::{self, Tensor, add_assign, layer_norm, linear, matmul_strided, relu, sinusoid_row, softmax};
use crate::weights::{LoadReport, Weights, WeightsError, expected_shapes, lm_head_shape};

#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("the audio is too short: {frames} feature frames give no encoder output (need at least 25 ms)")]
    TooShort { frames: usize },
    #[error("features have {got} values, not a multiple of {bins} bins")]
    FeatureShape { got: usize, bins: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    Token { id: u32, vocab: usize },
}

#[derive(Debug)]
struct Linear<'w> {
    w: Tensor<'w>,
    b: Option<Tensor<'w>>,
    n_in: usize,
    n_out: usize,
}

impl<'w> Linear<'w> {
    fn load(ws: &mut Weights<'w>, p: &str, n_in: usize, n_out: usize) -> Result<Self, WeightsError> {
        Ok(Self {
            w: ws.get(&format!("{p}.weight"), &[n_out, n_in])?,
            b: Some(ws.get(&format!("{p}.bias"), &[n_out])?),
            n_in,
            n_out,
        })
    }

    fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * self.n_out];
        linear(&mut out, x, m, self.n_in, self.w.as_slice(), self.n_out, self.b.as_ref().map(|b| b.as_slice()));
        out
    }
}

#[derive(Debug)]
struct Norm<'w> {
    g: Tensor<'w>,
    b: Tensor<'w>,
}

impl<'w> Norm<'w> {
    fn load(ws: &mut Weights<'w>, p: &str, d: usize) -> Result<Self, WeightsError> {
        Ok(Self { g: ws.get(&format!("{p}.weight"), &[d])?, b: ws.get(&format!("{p}.bias"), &[d])? })
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        layer_norm(&mut out, x, self.g.as_slice(), self.b.as_slice());
        out
    }
}

#[derive(Debug)]
struct Attention<'w> {
    q: Linear<'w>,
    k: Linear<'w>,
    v: Linear<'w>,
    o: Linear<'w>,
    heads: usize,
    head_dim: usize,
    scaling: f32,
}

impl<'w> Attention<'w> {
    fn load(ws: &mut Weights<'w>, p: &str, d: usize, heads: usize) -> Result<Self, WeightsError> {
        let head_dim = d / heads;
        Ok(Self {
            q: Linear::load(ws, &format!("{p}.q_proj"), d, d)?,
            k: Linear::load(ws, &format!("{p}.k_proj"), d, d)?,
            v: Linear::load(ws, &format!("{p}.v_proj"), d, d)?,
            o: Linear::load(ws, &format!("{p}.out_proj"), d, d)?,
            heads,
            head_dim,
            scaling: (head_dim as f32).powf(-0.5),
        })
    }

    fn query(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut q = self.q.forward(x, m);
        for v in &mut q {
            *v *= self.scaling;
        }
        q
    }
}

/// Multi-head attention of `tq` queries over `tk` keys (`q` already scaled), all `[t, d]`;
/// with `causal`, query `i` sees keys `0..=i`. Heads run in parallel.
fn attend(q: &[f32], k: &[f32], v: &[f32], tq: usize, tk: usize, heads: usize, causal: bool) -> Vec<f32> {
    let d = q.len() / tq.max(1);
    let hd = d / heads;
    let per_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let mut scores = vec![0.0f32; tq * tk];
            // scores[tq, tk] = q_h[tq, hd] · k_h[tk, hd]ᵀ
            matmul_strided(&mut scores, tk, &q[h * hd..], d, 1, &k[h * hd..], 1, d, tq, tk, hd);
            for (i, row) in scores.chunks_exact_mut(tk).enumerate() {
                if causal {
                    let visible = (i + 1).min(tk);
                    row[visible..].fill(f32::NEG_INFINITY);
                }
                softmax(row);
            }
            let mut out = vec![0.0f32; tq * hd];
            // out[tq, hd] = p[tq, tk] · v_h[tk, hd]
            matmul_strided(&mut out, hd, &scores, tk, 1, &v[h * hd..], d, 1, tq, hd, tk);
            out
        })
        .collect();
    let mut out = vec![0.0f32; tq * d];
    for (h, o) in per_head.iter().enumerate() {
        for i in 0..tq {
            out[i * d + h * hd..i * d + (h + 1) * hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
    out
}

#[derive(Debug)]
struct Ffn<'w> {
    fc1: Linear<'w>,
    fc2: Linear<'w>,
}

impl<'w> Ffn<'w> {
    fn load(ws: &mut Weights<'w>, p: &str, d: usize, f: usize) -> Result<Self, WeightsError> {
        Ok(Self {
            fc1: Linear::load(ws, &format!("{p}.fc1"), d, f)?,
            fc2: Linear::load(ws, &format!("{p}.fc2"), f, d)?,
        })
    }

    fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut h = self.fc1.forward(x, m);
        relu(&mut h);
        self.fc2.forward(&h, m)
    }
}

#[derive(Debug)]
struct EncoderLayer<'w> {
    attn_norm: Norm<'w>,
    attn: Attention<'w>,
    ffn_norm: Norm<'w>,
    ffn: Ffn<'w>,
}

#[derive(Debug)]
struct DecoderLayer<'w> {
    self_norm: Norm<'w>,
    self_attn: Attention<'w>,
    cross_norm: Norm<'w>,
    cross_attn: Attention<'w>,
    ffn_norm: Norm<'w>,
    ffn: Ffn<'w>,
}

#[derive(Debug)]
struct Conv<'w> {
    w: Tensor<'w>,
    b: Tensor<'w>,
    c_in: usize,
    c_out: usize,
    k: usize,
}

impl Conv<'_> {
    /// Conv1d (stride 2, padding k/2) over time-major `x[t, c_in]`, then GLU over channels:
    /// returns `[t_out, c_out/2]`.
    fn forward(&self, x: &[f32], t: usize) -> (Vec<f32>, usize) {
        let pad = self.k / 2;
        let t_out = (t + 2 * pad).saturating_sub(self.k) / 2 + 1;
        if t + 2 * pad < self.k {
            return (Vec::new(), 0);
        }
        // im2col: patch[o][c * k + j] = x[2o + j - pad][c], zero outside, matching the
        // `[c_out, c_in, k]` weight layout read as `[c_out, c_in * k]`.
        let width = self.c_in * self.k;
        let mut patches = vec![0.0f32; t_out * width];
        patches.par_chunks_exact_mut(width).enumerate().for_each(|(o, patch)| {
            for j in 0..self.k {
                let src = (2 * o + j) as isize - pad as isize;
                if src < 0 || src as usize >= t {
                    continue;
                }
                let row = &x[src as usize * self.c_in..(src as usize + 1) * self.c_in];
                for (c, &v) in row.iter().enumerate() {
                    patch[c * self.k + j] = v;
                }
            }
        });
        let mut y = vec![0.0f32; t_out * self.c_out];
        linear(&mut y, &patches, t_out, width, self.w.as_slice(), self.c_out, Some(self.b.as_slice()));
        let half = self.c_out / 2;
        let mut out = vec![0.0f32; t_out * half];
        for (o, row) in out.chunks_exact_mut(half).zip(y.chunks_exact(self.c_out)) {
            for i in 0..half {
                o[i] = row[i] * (1.0 / (1.0 + (-row[half + i]).exp()));
            }
        }
        (out, t_out)
    }
}

/// The decoder's self-attention keys and values for a batch of hypotheses.
#[derive(Clone, Debug)]
pub struct DecoderCache {
    batch: usize,
    len: usize,
    cap: usize,
    d: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl DecoderCache {
    /// Number of tokens already decoded.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn grow(&mut self) {
        let new_cap = (self.cap * 2).max(16);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut next = vec![0.0f32; self.batch * new_cap * self.d];
            for b in 0..self.batch {
                let n = self.len * self.d;
                next[b * new_cap * self.d..b * new_cap * self.d + n]
                    .copy_from_slice(&buf[b * self.cap * self.d..b * self.cap * self.d + n]);
            }
            *buf = next;
        }
        self.cap = new_cap;
    }

    /// Hypothesis `b` now continues hypothesis `src[b]` (beam search reordering).
    pub fn reorder(&mut self, src: &[usize]) {
        if src.iter().enumerate().all(|(b, &s)| b == s) {
            return;
        }
        let stride = self.cap * self.d;
        let n = self.len * self.d;
        let mut old = vec![0.0f32; self.batch * n];
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            for b in 0..self.batch {
                old[b * n..(b + 1) * n].copy_from_slice(&buf[b * stride..b * stride + n]);
            }
            for (b, &s) in src.iter().enumerate() {
                buf[b * stride..b * stride + n].copy_from_slice(&old[s * n..(s + 1) * n]);
            }
        }
    }
}

/// Cross-attention keys and values of one encoder output, per decoder layer.
#[derive(Debug)]
pub struct CrossKv {
    t_enc: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// The whole model.
#[derive(Debug)]
pub struct Speech2Text<'w> {
    pub config: Speech2TextConfig,
    convs: Vec<Conv<'w>>,
    enc_layers: Vec<EncoderLayer<'w>>,
    enc_norm: Norm<'w>,
    embed: Tensor<'w>,
    dec_layers: Vec<DecoderLayer<'w>>,
    dec_norm: Norm<'w>,
    lm_head: Option<Tensor<'w>>,
    /// What loading did: tensors borrowed, converted, unused.
    pub load_report: LoadReport,
}

impl<'w> Speech2Text<'w> {
    /// Builds the model over a safetensors buffer; f32 tensors aligned in it are borrowed.
    pub fn load(config: Speech2TextConfig, safetensors: &'w [u8]) -> Result<Self, WeightsError> {
        let mut ws = Weights::parse(safetensors)?;
        let c = &config;
        let d = c.d_model;
        // Check every name and shape up front so that the first error is the first tensor
        // in checkpoint order.
        for (name, shape) in expected_shapes(c) {
            ws.check(&name, &shape)?;
        }
        let mut convs = Vec::new();
        let mut c_in = c.input_dim();
        for (i, &k) in c.conv_kernel_sizes.iter().enumerate() {
            let c_out = if i + 1 < c.conv_kernel_sizes.len() { c.conv_channels } else { 2 * d };
            let p = format!("encoder.conv.conv_layers.{i}");
            convs.push(Conv {
                w: ws.get(&format!("{p}.weight"), &[c_out, c_in, k])?,
                b: ws.get(&format!("{p}.bias"), &[c_out])?,
                c_in,
                c_out,
                k,
            });
            c_in = c_out / 2;
        }
        let mut enc_layers = Vec::new();
        for l in 0..c.encoder_layers {
            let p = format!("encoder.layers.{l}");
            enc_layers.push(EncoderLayer {
                attn: Attention::load(&mut ws, &format!("{p}.self_attn"), d, c.encoder_attention_heads)?,
                attn_norm: Norm::load(&mut ws, &format!("{p}.self_attn_layer_norm"), d)?,
                ffn: Ffn::load(&mut ws, &p, d, c.encoder_ffn_dim)?,
                ffn_norm: Norm::load(&mut ws, &format!("{p}.final_layer_norm"), d)?,
            });
        }
        let enc_norm = Norm::load(&mut ws, "encoder.layer_norm", d)?;
        let embed = ws.get("decoder.embed_tokens.weight", &[c.vocab_size, d])?;
        let mut dec_layers = Vec::new();
        for l in 0..c.decoder_layers {
            let p = format!("decoder.layers.{l}");
            dec_layers.push(DecoderLayer {
                self_attn: Attention::load(&mut ws, &format!("{p}.self_attn"), d, c.decoder_attention_heads)?,
                self_norm: Norm::load(&mut ws, &format!("{p}.self_attn_layer_norm"), d)?,
                cross_attn: Attention::load(&mut ws, &format!("{p}.encoder_attn"), d, c.decoder_attention_heads)?,
                cross_norm: Norm::load(&mut ws, &format!("{p}.encoder_attn_layer_norm"), d)?,
                ffn: Ffn::load(&mut ws, &p, d, c.decoder_ffn_dim)?,
                ffn_norm: Norm::load(&mut ws, &format!("{p}.final_layer_norm"), d)?,
            });
        }
        let dec_norm = Norm::load(&mut ws, "decoder.layer_norm", d)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(ws.get("lm_head.weight", &lm_head_shape(c))?) };
        let load_report = ws.finish();
        Ok(Self { config, convs, enc_layers, enc_norm, embed, dec_layers, dec_norm, lm_head, load_report })
    }

    fn embed_scale(&self) -> f32 {
        if self.config.scale_embedding { (self.config.d_model as f32).sqrt() } else { 1.0 }
    }

    /// Encoder output `[t_enc, d_model]` of normalized features `[frames, bins]`.
    pub fn encode(&self, features: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        let bins = self.config.input_dim();
        if !features.len().is_multiple_of(bins) {
            return Err(ModelError::FeatureShape { got: features.len(), bins });
        }
        let frames = features.len() / bins;
        let mut x = features.to_vec();
        let mut t = frames;
        for conv in &self.convs {
            (x, t) = conv.forward(&x, t);
            if t == 0 {
                return Err(ModelError::TooShort { frames });
            }
        }
        let d = self.config.d_model;
        let scale = self.embed_scale();
        let pad = self.config.pad_token_id as usize;
        x.par_chunks_exact_mut(d).enumerate().for_each(|(i, row)| {
            let mut pos = vec![0.0f32; d];
            sinusoid_row(i + 1 + pad, pad, &mut pos);
            for (v, p) in row.iter_mut().zip(&pos) {
                *v = *v * scale + p;
            }
        });
        for layer in &self.enc_layers {
            let h = layer.attn_norm.forward(&x);
            let q = layer.attn.query(&h, t);
            let k = layer.attn.k.forward(&h, t);
            let v = layer.attn.v.forward(&h, t);
            let a = attend(&q, &k, &v, t, t, layer.attn.heads, false);
            add_assign(&mut x, &layer.attn.o.forward(&a, t));
            let h = layer.ffn_norm.forward(&x);
            add_assign(&mut x, &layer.ffn.forward(&h, t));
        }
        Ok((self.enc_norm.forward(&x), t))
    }

    /// Cross-attention keys and values of every decoder layer for one encoder output.
    pub fn cross_kv(&self, enc: &[f32], t_enc: usize) -> CrossKv {
        let (k, v) = self
            .dec_layers
            .iter()
            .map(|l| (l.cross_attn.k.forward(enc, t_enc), l.cross_attn.v.forward(enc, t_enc)))
            .unzip();
        CrossKv { t_enc, k, v }
    }

    pub fn new_cache(&self, batch: usize) -> DecoderCache {
        let n = self.dec_layers.len();
        DecoderCache { batch, len: 0, cap: 0, d: self.config.d_model, k: vec![Vec::new(); n], v: vec![Vec::new(); n] }
    }

    /// One decoding step for a batch of hypotheses, each given its newest token; returns
    /// logits `[batch, vocab]` and appends to the cache.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        cache: &mut DecoderCache,
        cross: &CrossKv,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let d = c.d_model;
        let bsz = tokens.len();
        assert_eq!(bsz, cache.batch, "decode_step: batch does not match the cache");
        let scale = self.embed_scale();
        let pad = c.pad_token_id as usize;
        let mut x = vec![0.0f32; bsz * d];
        let embed = self.embed.as_slice();
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            let t = tok as usize;
            if t >= c.vocab_size {
                return Err(ModelError::Token { id: tok, vocab: c.vocab_size });
            }
            let pos = if t == pad { pad } else { cache.len + 1 + pad };
            sinusoid_row(pos, pad, row);
            for (v, e) in row.iter_mut().zip(&embed[t * d..(t + 1) * d]) {
                *v += e * scale;
            }
        }
        if cache.len == cache.cap {
            cache.grow();
        }
        let (len, cap) = (cache.len, cache.cap);
        for (l, layer) in self.dec_layers.iter().enumerate() {
            // Causal self-attention over the cache plus this token.
            let h = layer.self_norm.forward(&x);
            let q = layer.self_attn.query(&h, bsz);
            let k = layer.self_attn.k.forward(&h, bsz);
            let v = layer.self_attn.v.forward(&h, bsz);
            for b in 0..bsz {
                let at = (b * cap + len) * d;
                cache.k[l][at..at + d].copy_from_slice(&k[b * d..(b + 1) * d]);
                cache.v[l][at..at + d].copy_from_slice(&v[b * d..(b + 1) * d]);
            }
            let heads = layer.self_attn.heads;
            let hd = layer.self_attn.head_dim;
            let mut a = vec![0.0f32; bsz * d];
            let (ck, cv) = (&cache.k[l], &cache.v[l]);
            a.par_chunks_exact_mut(d).enumerate().for_each(|(b, out)| {
                let keys = &ck[b * cap * d..(b * cap + len + 1) * d];
                let vals = &cv[b * cap * d..(b * cap + len + 1) * d];
                let mut p = vec![0.0f32; len + 1];
                for h in 0..heads {
                    let qh = &q[b * d + h * hd..b * d + (h + 1) * hd];
                    for (j, s) in p.iter_mut().enumerate() {
                        *s = qh.iter().zip(&keys[j * d + h * hd..j * d + (h + 1) * hd]).map(|(a, b)| a * b).sum();
                    }
                    softmax(&mut p);
                    let o = &mut out[h * hd..(h + 1) * hd];
                    for (j, &w) in p.iter().enumerate() {
                        for (ov, vv) in o.iter_mut().zip(&vals[j * d + h * hd..j * d + (h + 1) * hd]) {
                            *ov += w * vv;
                        }
                    }
                }
            });
            add_assign(&mut x, &layer.self_attn.o.forward(&a, bsz));
            // Cross-attention: the batch's queries against the shared encoder keys.
            let h = layer.cross_norm.forward(&x);
            let q = layer.cross_attn.query(&h, bsz);
            let a = attend(&q, &cross.k[l], &cross.v[l], bsz, cross.t_enc, layer.cross_attn.heads, false);
            add_assign(&mut x, &layer.cross_attn.o.forward(&a, bsz));
            let h = layer.ffn_norm.forward(&x);
            add_assign(&mut x, &layer.ffn.forward(&h, bsz));
        }
        cache.len += 1;
        let x = self.dec_norm.forward(&x);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0f32; bsz * c.vocab_size];
        tensor::linear(&mut logits, &x, bsz, d, head.as_slice(), c.vocab_size, None);
        Ok(logits)
    }

    /// Logits `[tokens.len(), vocab]` of a teacher-forced token sequence (starting with the
    /// decoder start token), computed step by step through the KV cache.
    pub fn forced_logits(&self, enc: &[f32], t_enc: usize, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let cross = self.cross_kv(enc, t_enc);
        let mut cache = self.new_cache(1);
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        for &t in tokens {
            out.extend(self.decode_step(&[t], &mut cache, &cross)?);
        }
        Ok(out)
    }
}
