//! Kaldi-compatible log-mel filter bank and utterance CMVN, as the Speech2Text feature
//! extractor computes them (`Speech2TextFeatureExtractor` with Kaldi's options): 25 ms frames
//! every 10 ms at 16 kHz, snip edges, DC removal, pre-emphasis 0.97, Povey window, 512-point
//! FFT, power spectrum, 80 triangular mel filters (Kaldi's mel scale, 20 Hz to Nyquist),
//! natural log floored at f32 epsilon; no dither. The waveform is scaled to 16-bit range first.
//!
//! Computed in f64 like transformers' numpy path, so it matches that path to ~1e-5 on
//! speech. Kaldi itself computes in f32; the two differ in near-silent bins of pure tones
//! (where the log of a tiny energy amplifies rounding), see `NOTES.md`.
//!
//! CMVN guard: digital silence (or any bin that is constant over the utterance) has standard
//! deviation 0, and transformers divides by it (NaN features, garbage transcript). Here a bin
//! whose standard deviation is below 1e-5 (fairseq's `UtteranceCMVN` floor of the variance,
//! 1e-10) is constant up to f32 rounding and is set to 0 (its mean-removed value) instead of
//! being divided. Bins with a larger deviation (all bins of real audio) are unaffected.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

pub const SAMPLE_RATE: usize = 16_000;
const FRAME_LEN: usize = 400;
const HOP: usize = 160;
const FFT_LEN: usize = 512;
const PREEMPH: f64 = 0.97;
/// f32 epsilon, Kaldi's log floor and transformers' `mel_floor`.
const LOG_FLOOR: f64 = 1.192_092_955_078_125e-7;
/// Floor of the per-bin standard deviation in CMVN (see the module docs).
pub const CMVN_STD_FLOOR: f64 = 1e-5;

/// Computes `num_bins`-bin log-mel features of 16 kHz audio in `[-1, 1)`.
#[derive(Clone)]
pub struct Fbank {
    num_bins: usize,
    window: Vec<f64>,
    /// Per mel bin: first FFT bin and weights.
    filters: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for Fbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fbank").field("num_bins", &self.num_bins).finish_non_exhaustive()
    }
}

fn mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

impl Fbank {
    pub fn new(num_bins: usize) -> Self {
        // Povey window: (0.5 - 0.5 cos(2πn/(N-1)))^0.85.
        let window = (0..FRAME_LEN)
            .map(|n| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / (FRAME_LEN as f64 - 1.0)).cos()).powf(0.85))
            .collect();
        let low = mel(20.0);
        let high = mel(SAMPLE_RATE as f64 / 2.0);
        let delta = (high - low) / (num_bins as f64 + 1.0);
        let bin_width = SAMPLE_RATE as f64 / FFT_LEN as f64;
        let n_fft_bins = FFT_LEN / 2 + 1;
        let filters = (0..num_bins)
            .map(|b| {
                let (left, center, right) =
                    (low + b as f64 * delta, low + (b as f64 + 1.0) * delta, low + (b as f64 + 2.0) * delta);
                let weights: Vec<(usize, f64)> = (0..n_fft_bins)
                    .filter_map(|i| {
                        let m = mel(bin_width * i as f64);
                        let w = ((m - left) / (center - left)).min((right - m) / (right - center));
                        (w > 0.0).then_some((i, w))
                    })
                    .collect();
                let first = weights.first().map(|&(i, _)| i).unwrap_or(0);
                (first, weights.into_iter().map(|(_, w)| w).collect())
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(FFT_LEN);
        Self { num_bins, window, filters, fft }
    }

    /// Number of frames Kaldi produces for `samples` samples (snip edges).
    pub fn num_frames(samples: usize) -> usize {
        if samples < FRAME_LEN { 0 } else { 1 + (samples - FRAME_LEN) / HOP }
    }

    /// Raw log-mel features, `[frames, num_bins]` row-major.
    pub fn compute(&self, audio: &[f32]) -> Vec<f32> {
        let frames = Self::num_frames(audio.len());
        let mut out = vec![0.0f32; frames * self.num_bins];
        let mut buf = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f64; FFT_LEN / 2 + 1];
        for (f, row) in out.chunks_exact_mut(self.num_bins).enumerate() {
            let frame = &audio[f * HOP..f * HOP + FRAME_LEN];
            // Kaldi compliance: 16-bit signed integer scale.
            for (b, &s) in buf.iter_mut().zip(frame) {
                *b = s as f64 * 32768.0;
            }
            let mean = buf[..FRAME_LEN].iter().sum::<f64>() / FRAME_LEN as f64;
            for b in &mut buf[..FRAME_LEN] {
                *b -= mean;
            }
            for i in (1..FRAME_LEN).rev() {
                buf[i] -= PREEMPH * buf[i - 1];
            }
            buf[0] *= 1.0 - PREEMPH;
            for (b, w) in buf.iter_mut().zip(&self.window) {
                *b *= w;
            }
            buf[FRAME_LEN..].fill(0.0);
            // Lengths come from the planner itself, so this cannot fail.
            if self.fft.process_with_scratch(&mut buf, &mut spec, &mut scratch).is_err() {
                unreachable!("FFT buffers are made by the plan");
            }
            for (p, c) in power.iter_mut().zip(&spec) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (o, (first, weights)) in row.iter_mut().zip(&self.filters) {
                let e: f64 = weights.iter().zip(&power[*first..]).map(|(w, p)| w * p).sum();
                *o = e.max(LOG_FLOOR).ln() as f32;
            }
        }
        out
    }
}

/// Utterance mean and variance normalization per bin (population std), with the silent-bin
/// guard described in the module docs.
///
/// The arithmetic is transformers' (`utterance_cmvn` over a float32 array in numpy): f32
/// sums accumulated frame by frame, mean subtracted, then the standard deviation of the
/// centred values. On stationary tones a bin's deviation can be as small as the rounding of
/// those f32 sums, so any other order (even a more accurate f64 one) moves such bins by O(1);
/// following numpy's order keeps the features equal to the reference there too.
pub fn utterance_cmvn(features: &mut [f32], num_bins: usize) {
    let frames = features.len() / num_bins;
    if frames == 0 {
        return;
    }
    let n = frames as f32;
    let column_mean = |x: &[f32]| {
        let mut sum = vec![0.0f32; num_bins];
        for row in x.chunks_exact(num_bins) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        sum.into_iter().map(|s| s / n).collect::<Vec<f32>>()
    };
    let mean = column_mean(features);
    for row in features.chunks_exact_mut(num_bins) {
        for (v, m) in row.iter_mut().zip(&mean) {
            *v -= m;
        }
    }
    // np.std: mean of the centred values, squared deviations from it, their mean, sqrt.
    let mean2 = column_mean(features);
    let mut var = vec![0.0f32; num_bins];
    for row in features.chunks_exact(num_bins) {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean2) {
            let d = v - m;
            *s += d * d;
        }
    }
    let std: Vec<f32> = var.iter().map(|s| (s / n).sqrt()).collect();
    for row in features.chunks_exact_mut(num_bins) {
        for (v, s) in row.iter_mut().zip(&std) {
            // A bin whose deviation is below the floor is constant up to rounding: its
            // centred values are rounding noise, and it becomes 0 rather than noise / ~0.
            *v = if (*s as f64) < CMVN_STD_FLOOR { 0.0 } else { *v / s };
        }
    }
}

/// Normalized model input features of 16 kHz audio: `[frames, num_bins]`.
pub fn features(audio: &[f32], num_bins: usize) -> Vec<f32> {
    let mut f = Fbank::new(num_bins).compute(audio);
    utterance_cmvn(&mut f, num_bins);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_snips_edges() {
        assert_eq!(Fbank::num_frames(399), 0);
        assert_eq!(Fbank::num_frames(400), 1);
        assert_eq!(Fbank::num_frames(16_000), 98);
    }

    #[test]
    fn a_tone_peaks_in_the_mel_bin_of_its_frequency() {
        let audio: Vec<f32> =
            (0..16_000).map(|i| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin()).collect();
        let f = Fbank::new(80).compute(&audio);
        let row = &f[40 * 80..41 * 80];
        let peak = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
        // 1 kHz is mel 1000.0; bins are spaced (mel(8000) - mel(20)) / 81 ≈ 34.4 apart from mel(20) ≈ 31.7.
        let expected = ((mel(1000.0) - mel(20.0)) / ((mel(8000.0) - mel(20.0)) / 81.0)).round() as usize - 1;
        assert!(peak.abs_diff(expected) <= 1, "peak {peak}, expected about {expected}");
    }

    #[test]
    fn silence_gives_zero_features_instead_of_nan() {
        let f = features(&vec![0.0; 16_000], 80);
        assert_eq!(f.len(), 98 * 80);
        assert!(f.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn cmvn_gives_zero_mean_unit_variance() {
        let mut f: Vec<f32> = (0..300).map(|i| (i % 7) as f32 * 1.5 + (i % 3) as f32).collect();
        utterance_cmvn(&mut f, 3);
        for b in 0..3 {
            let col: Vec<f64> = f.chunks_exact(3).map(|r| r[b] as f64).collect();
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "bin {b}: {mean} {var}");
        }
    }
}
