//! Decoding: greedy and beam search, following transformers' `generate` (5.x) for a batch of
//! one so that token ids match exactly.
//!
//! Beam search is transformers' vectorized algorithm: every step keeps the top
//! `2 × num_beams` continuations of all running beams (scores are running sums of f32
//! log-softmax); those among the first `num_beams` that end in EOS (or reach `max_length`)
//! become finished candidates scored `sum_logprobs / generated_len ^ length_penalty`; the best
//! `num_beams` continuations that did not finish keep running. The search stops when every
//! candidate hits a stopping criterion, when `early_stopping` is `true` and `num_beams`
//! hypotheses are finished, or when the early-stop heuristic says no running beam can beat
//! the worst finished one (`early_stopping` false: judged at the current length; `"never"`
//! with a positive length penalty: at `max_length`). Ties in top-k go to the lower index
//! (torch leaves tie order unspecified; with real-valued scores ties do not occur).

use crate::config::{EarlyStopping, EarlyStoppingWord};
use crate::model::{ModelError, Speech2Text};
use crate::tensor::log_softmax;

/// How to decode.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOptions {
    pub num_beams: usize,
    /// Maximum sequence length including the decoder start token.
    pub max_length: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
}

impl DecodeOptions {
    /// The settings of the model's config.
    pub fn from_config(model: &Speech2Text<'_>) -> Self {
        let c = &model.config;
        Self {
            num_beams: c.num_beams,
            max_length: c.max_length,
            length_penalty: c.length_penalty,
            early_stopping: c.early_stopping_mode(),
        }
    }
}

/// The generated token ids, starting with the decoder start token (as transformers returns
/// them), and the number of decoder steps run.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub tokens: Vec<u32>,
    pub steps: usize,
}

/// Decodes the encoder output `enc` (`[t_enc, d_model]`) with `opts`: greedy when
/// `num_beams` is 1, else beam search.
pub fn decode(model: &Speech2Text<'_>, enc: &[f32], t_enc: usize, opts: &DecodeOptions) -> Result<Decoded, ModelError> {
    if opts.num_beams <= 1 { greedy(model, enc, t_enc, opts.max_length) } else { beam_search(model, enc, t_enc, opts) }
}

/// Index of the first maximum.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

pub fn greedy(model: &Speech2Text<'_>, enc: &[f32], t_enc: usize, max_length: usize) -> Result<Decoded, ModelError> {
    let c = &model.config;
    let cross = model.cross_kv(enc, t_enc);
    let mut cache = model.new_cache(1);
    let mut tokens = vec![c.decoder_start_token_id];
    let mut steps = 0;
    while tokens.len() < max_length {
        let last = tokens[tokens.len() - 1];
        let logits = model.decode_step(&[last], &mut cache, &cross)?;
        steps += 1;
        let next = argmax(&logits) as u32;
        tokens.push(next);
        if next == c.eos_token_id {
            break;
        }
    }
    Ok(Decoded { tokens, steps })
}

/// Indices of the `k` largest values, largest first, ties to the lower index.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[derive(Clone, Debug)]
struct Candidate {
    seq: Vec<u32>,
    score: f32,
    finished: bool,
}

pub fn beam_search(
    model: &Speech2Text<'_>,
    enc: &[f32],
    t_enc: usize,
    opts: &DecodeOptions,
) -> Result<Decoded, ModelError> {
    let c = &model.config;
    let vocab = c.vocab_size;
    let nb = opts.num_beams;
    let keep = 2 * nb;
    let lp = opts.length_penalty;
    let early_true = opts.early_stopping == EarlyStopping::Flag(true);
    let never = opts.early_stopping == EarlyStopping::Word(EarlyStoppingWord::Never);
    let prompt_len = 1usize;
    let cross = model.cross_kv(enc, t_enc);
    let mut cache = model.new_cache(nb);
    let mut running: Vec<Vec<u32>> = vec![vec![c.decoder_start_token_id]; nb];
    let mut running_scores: Vec<f32> = (0..nb).map(|b| if b == 0 { 0.0 } else { -1e9 }).collect();
    let mut finished: Vec<Candidate> = vec![Candidate { seq: Vec::new(), score: -1e9, finished: false }; nb];
    let mut unsatisfied = true;
    let mut cur_len = prompt_len;
    let mut steps = 0;
    loop {
        let last: Vec<u32> = running.iter().map(|s| s[s.len() - 1]).collect();
        let mut logp = model.decode_step(&last, &mut cache, &cross)?;
        steps += 1;
        for (b, row) in logp.chunks_exact_mut(vocab).enumerate() {
            log_softmax(row);
            for v in row.iter_mut() {
                *v += running_scores[b];
            }
        }
        let top = top_k(&logp, keep);
        let cands: Vec<(usize, u32, f32)> = top.iter().map(|&i| (i / vocab, (i % vocab) as u32, logp[i])).collect();
        let hits: Vec<bool> =
            cands.iter().map(|&(_, tok, _)| tok == c.eos_token_id || cur_len + 1 >= opts.max_length).collect();

        // Beams that keep running: best `nb` continuations that did not finish.
        let running_log: Vec<f32> =
            cands.iter().zip(&hits).map(|(&(_, _, s), &h)| s + if h { -1.0e9 } else { 0.0 }).collect();
        let next = top_k(&running_log, nb);

        // Finished hypotheses: merge the previous ones with the candidates that just finished.
        let all_full = finished.iter().all(|f| f.finished) && early_true;
        let denom = ((cur_len + 1 - prompt_len) as f64).powf(lp as f64) as f32;
        let mut merged = finished.clone();
        for (i, (&(beam, tok, s), &h)) in cands.iter().zip(&hits).enumerate() {
            let did_finish = h && i < nb;
            let mut score = s / denom;
            if all_full {
                score += -1.0e9;
            }
            if !unsatisfied {
                score += -1.0e9;
            }
            if !did_finish {
                score += -1.0e9;
            }
            let mut seq = running[beam].clone();
            seq.push(tok);
            merged.push(Candidate { seq, score, finished: did_finish });
        }
        let merged_scores: Vec<f32> = merged.iter().map(|m| m.score).collect();
        finished = top_k(&merged_scores, nb).into_iter().map(|i| merged[i].clone()).collect();

        let src: Vec<usize> = next.iter().map(|&i| cands[i].0).collect();
        running = next
            .iter()
            .map(|&i| {
                let mut s = running[cands[i].0].clone();
                s.push(cands[i].1);
                s
            })
            .collect();
        running_scores = next.iter().map(|&i| running_log[i]).collect();
        cache.reorder(&src);

        cur_len += 1;
        let best_len = if never && lp > 0.0 { opts.max_length - prompt_len } else { cur_len - prompt_len };
        let best_possible = running_scores[0] / ((best_len as f64).powf(lp as f64) as f32);
        let min_finished = finished.iter().map(|f| f.score).fold(f32::INFINITY, f32::min);
        unsatisfied =
            unsatisfied && finished.iter().any(|f| best_possible > if f.finished { min_finished } else { -1.0e9 });
        let all_finished = finished.iter().all(|f| f.finished);
        let keep_going = unsatisfied && !(all_finished && early_true) && !hits.iter().all(|&h| h);
        if !keep_going {
            break;
        }
    }
    let best = finished.into_iter().next().map(|f| f.seq).unwrap_or_default();
    Ok(Decoded { tokens: best, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_sorts_descending_and_breaks_ties_low_index_first() {
        assert_eq!(top_k(&[1.0, 3.0, 2.0, 3.0], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[0.5], 3), vec![0]);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 5.0, 5.0, -1.0]), 1);
    }
}
