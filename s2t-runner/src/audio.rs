//! WAV input: integer PCM of 8, 16, 24 or 32 bits or 32-bit float, any channel count (mixed
//! down to mono by averaging), any sample rate (resampled to 16 kHz with rubato's FFT
//! resampler).

use std::io::Read;
use std::path::Path;

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};
use thiserror::Error;

use crate::fbank::SAMPLE_RATE;

#[derive(Debug, Error)]
pub enum AudioError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable WAV file: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: unsupported sample format {format} (supported: integer PCM of 8/16/24/32 bits, 32-bit float)")]
    Unsupported { path: String, format: String },
    #[error("{path} has no audio samples")]
    Empty { path: String },
    #[error("resampling {path} from {from} Hz to 16 kHz failed: {reason}")]
    Resample { path: String, from: u32, reason: String },
}

/// Source sample rates read: telephone to studio rates. Far-out rates are not audio and make
/// the resampler allocate without bound (found by fuzzing).
pub const MIN_SOURCE_RATE: u32 = 1_000;
pub const MAX_SOURCE_RATE: u32 = 384_000;
/// Largest magnitude of a float sample accepted (clipped audio can exceed 1 a little).
const MAX_FLOAT_SAMPLE: f32 = 64.0;

/// Decoded audio: 16 kHz mono samples in `[-1, 1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    /// Rate and channel count of the file.
    pub source_rate: u32,
    pub source_channels: u16,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }
}

pub fn read_wav_file(path: &Path) -> Result<Audio, AudioError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| AudioError::Open { path: name.clone(), source })?;
    read_wav(std::io::BufReader::new(file), &name)
}

/// Reads a WAV stream; `name` is used in error messages.
pub fn read_wav<R: Read>(reader: R, name: &str) -> Result<Audio, AudioError> {
    let corrupt = |e: hound::Error| match e {
        hound::Error::Unsupported => AudioError::Unsupported {
            path: name.into(),
            format: "(not PCM or IEEE float, or a WAV extension hound does not read)".into(),
        },
        hound::Error::IoError(io) => AudioError::Corrupt { path: name.into(), reason: io.to_string() },
        other => AudioError::Corrupt { path: name.into(), reason: other.to_string() },
    };
    let wav = hound::WavReader::new(reader).map_err(corrupt)?;
    let spec = wav.spec();
    let channels = spec.channels as usize;
    if channels == 0 || !(MIN_SOURCE_RATE..=MAX_SOURCE_RATE).contains(&spec.sample_rate) {
        return Err(AudioError::Corrupt {
            path: name.into(),
            reason: format!(
                "{} channels at {} Hz (supported: at least one channel, {MIN_SOURCE_RATE}-{MAX_SOURCE_RATE} Hz)",
                spec.channels, spec.sample_rate
            ),
        });
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => wav.into_samples::<f32>().collect::<Result<_, _>>().map_err(corrupt)?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            wav.into_samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<Result<_, _>>()
                .map_err(corrupt)?
        }
        (fmt, bits) => {
            return Err(AudioError::Unsupported {
                path: name.into(),
                format: format!("{fmt:?} with {bits} bits per sample"),
            });
        }
    };
    if !interleaved.len().is_multiple_of(channels) {
        return Err(AudioError::Corrupt {
            path: name.into(),
            reason: "sample count is not a multiple of the channel count".into(),
        });
    }
    let mono: Vec<f32> = if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|f| (f.iter().map(|&s| s as f64).sum::<f64>() / channels as f64) as f32)
            .collect()
    };
    if mono.is_empty() {
        return Err(AudioError::Empty { path: name.into() });
    }
    // Float WAVs hold [-1, 1] by convention; far larger or non-finite values are not audio
    // (and make the resampler fail on overflow).
    if let Some(bad) = mono.iter().find(|s| !s.is_finite() || s.abs() > MAX_FLOAT_SAMPLE) {
        return Err(AudioError::Corrupt { path: name.into(), reason: format!("sample value {bad} is not audio") });
    }
    let samples = if spec.sample_rate as usize == SAMPLE_RATE {
        mono
    } else {
        resample(&mono, spec.sample_rate).map_err(|reason| AudioError::Resample {
            path: name.into(),
            from: spec.sample_rate,
            reason,
        })?
    };
    Ok(Audio { samples, source_rate: spec.sample_rate, source_channels: spec.channels })
}

/// Resamples mono audio from `from` Hz to 16 kHz.
pub fn resample(mono: &[f32], from: u32) -> Result<Vec<f32>, String> {
    let input = vec![mono.iter().map(|&s| s as f64).collect::<Vec<f64>>()];
    let adapter = SequentialSliceOfVecs::new(&input, 1, mono.len()).map_err(|e| e.to_string())?;
    let mut rs = Fft::<f64>::new(from as usize, SAMPLE_RATE, 1024, 1, FixedSync::Input).map_err(|e| e.to_string())?;
    let out = rs.process_all(&adapter, mono.len(), None).map_err(|e| e.to_string())?;
    Ok(out.take_data().into_iter().map(|s| s as f32).collect())
}

/// Writes 16-bit PCM mono WAV bytes (for tests and fixtures).
pub fn wav_bytes_pcm16(samples: &[f32], rate: u32) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    // Writing to memory with a valid spec cannot fail.
    if let Ok(mut w) = hound::WavWriter::new(&mut cursor, spec) {
        for &s in samples {
            let _ = w.write_sample((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16);
        }
        let _ = w.finalize();
    }
    cursor.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(spec: hound::WavSpec, frames: &[Vec<f64>]) -> Vec<u8> {
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for frame in frames {
            for &s in frame {
                match (spec.sample_format, spec.bits_per_sample) {
                    (hound::SampleFormat::Float, _) => w.write_sample(s as f32).unwrap(),
                    (_, bits) => w.write_sample((s * (1i64 << (bits - 1)) as f64) as i32).unwrap(),
                }
            }
        }
        w.finalize().unwrap();
        cursor.into_inner()
    }

    fn spec(channels: u16, rate: u32, bits: u16, float: bool) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float { hound::SampleFormat::Float } else { hound::SampleFormat::Int },
        }
    }

    #[test]
    fn every_supported_format_decodes_to_the_same_mono_signal() {
        let frames: Vec<Vec<f64>> = (0..1600).map(|i| vec![0.25 * ((i % 50) as f64 / 50.0 - 0.5), 0.25]).collect();
        for (bits, float) in [(16, false), (24, false), (32, false), (32, true)] {
            let a = read_wav(&write(spec(2, 16_000, bits, float), &frames)[..], "x.wav").unwrap();
            assert_eq!(a.samples.len(), 1600);
            for (i, s) in a.samples.iter().enumerate() {
                let want = (frames[i][0] + frames[i][1]) / 2.0;
                assert!((*s as f64 - want).abs() < 1e-4, "{bits} bits float={float}: {s} vs {want}");
            }
        }
    }

    #[test]
    fn other_rates_are_resampled_to_16k_keeping_the_pitch() {
        let rate = 22_050u32;
        let frames: Vec<Vec<f64>> = (0..rate as usize)
            .map(|i| vec![0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin()])
            .collect();
        let a = read_wav(&write(spec(1, rate, 16, false), &frames)[..], "x.wav").unwrap();
        assert!((a.samples.len() as i64 - 16_000).abs() <= 2, "{}", a.samples.len());
        // Count zero crossings in the middle: 440 Hz gives ~880 per second.
        let mid = &a.samples[2000..14000];
        let crossings = mid.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        assert!((crossings as i64 - 660).abs() <= 4, "{crossings}");
    }

    #[test]
    fn corrupt_input_is_a_clear_error() {
        let e = read_wav(&b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk"[..], "bad.wav").unwrap_err();
        assert!(matches!(e, AudioError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("bad.wav"), "{e}");
        let e = read_wav(&b"not a wav at all"[..], "text.wav").unwrap_err();
        assert!(e.to_string().contains("not a readable WAV"), "{e}");
    }

    #[test]
    fn truncated_data_is_a_clear_error() {
        let bytes = write(spec(1, 16_000, 16, false), &vec![vec![0.1]; 1000]);
        let e = read_wav(&bytes[..bytes.len() - 501], "cut.wav").unwrap_err();
        assert!(matches!(e, AudioError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn an_unsupported_sample_format_is_named() {
        // A 64-bit float WAV (format tag 3, 64 bits): valid RIFF, unsupported here.
        let mut b = Vec::new();
        let data_len = 16u32;
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&3u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&16_000u32.to_le_bytes());
        b.extend_from_slice(&(16_000u32 * 8).to_le_bytes());
        b.extend_from_slice(&8u16.to_le_bytes());
        b.extend_from_slice(&64u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
        let e = read_wav(&b[..], "f64.wav").unwrap_err();
        assert!(matches!(e, AudioError::Unsupported { .. } | AudioError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("f64.wav"), "{e}");
    }

    #[test]
    fn pcm16_writer_round_trips() {
        let s: Vec<f32> = (0..100).map(|i| i as f32 / 200.0).collect();
        let a = read_wav(&wav_bytes_pcm16(&s, 16_000)[..], "x").unwrap();
        for (x, y) in a.samples.iter().zip(&s) {
            assert!((x - y).abs() < 1e-4);
        }
    }
}
