//! Target `wav`: `s2t_runner::audio::read_wav`, the runner's WAV reader (integer PCM of
//! 8/16/24/32 bits or 32-bit float, any channel count mixed down, any rate resampled to
//! 16 kHz). The input is the file.
//!
//! Properties: nothing panics; a file that reads has at least one sample and a nonzero rate
//! and channel count; at 16 kHz no resampling happens (one sample per frame of the file);
//! integer PCM gives samples in `[-1, 1]`; a file written by `wav_bytes_pcm16` reads back.

use s2t_runner::audio::{self, AudioError};

pub fn run(data: &[u8]) {
    match audio::read_wav(std::io::Cursor::new(data), "fuzz.wav") {
        Ok(a) => {
            assert!(!a.samples.is_empty());
            assert!(a.source_rate > 0 && a.source_channels > 0);
            let pcm_int = data.len() >= 36 && u16::from_le_bytes([data[20], data[21]]) == 1;
            if a.source_rate == 16_000 && pcm_int {
                assert!(a.samples.iter().all(|s| (-1.0..=1.0).contains(s)), "PCM sample out of range");
            }
        }
        Err(
            AudioError::Corrupt { .. }
            | AudioError::Unsupported { .. }
            | AudioError::Empty { .. }
            | AudioError::Resample { .. },
        ) => {}
        Err(e @ AudioError::Open { .. }) => panic!("reading from memory cannot fail to open: {e}"),
    }
}

/// Small WAV files, for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let tone: Vec<f32> = (0..400).map(|i| (i as f32 * 0.07).sin() * 0.5).collect();
    let at_16k = audio::wav_bytes_pcm16(&tone, 16_000);
    let back = audio::read_wav(std::io::Cursor::new(&at_16k), "seed").expect("a seed reads");
    assert_eq!(back.samples.len(), tone.len());
    // 8 kHz (resampled), stereo 24-bit and float, written by hand: RIFF header + fmt + data.
    let wav = |channels: u16, rate: u32, bits: u16, format: u16, data: &[u8]| -> Vec<u8> {
        let block = channels * bits / 8;
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&format.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    };
    let stereo24: Vec<u8> = (0..60u8).flat_map(|i| [i, i.wrapping_mul(3), 0x10]).collect();
    let float: Vec<u8> = tone.iter().take(64).flat_map(|s| s.to_le_bytes()).collect();
    vec![
        at_16k.clone(),
        audio::wav_bytes_pcm16(&tone[..100], 8_000),
        wav(2, 16_000, 24, 1, &stereo24),
        wav(1, 22_050, 32, 3, &float),
        wav(1, 16_000, 8, 1, &[0, 64, 128, 192, 255]),
        at_16k[..50].to_vec(),
    ]
}
