//! Target `safetensors_header`: `s2t_runner::weights`, which reads `model.safetensors` in
//! place. The first input byte places the file 0..7 bytes past an 8-byte boundary (aligned
//! f32 tensors are borrowed, the rest converted); the rest is the file.
//!
//! Properties: nothing panics; for a file that parses, every tensor it lists can be asked
//! for with its own shape and comes back with exactly as many values as the shape says (f32
//! borrowed or converted, f16/bf16 widened, f64 narrowed) or as an unsupported dtype; a
//! wrong shape and a missing name are errors that name the tensor; the model's own tensor
//! checks (`Weights::check`, what loading does first) answer without a panic; the load
//! report accounts for every tensor (borrowed, converted, asked for but refused, unused).

use s2t_runner::config::{Preset, Speech2TextConfig};
use s2t_runner::weights::{self, Weights, WeightsError};

/// Tensors of one file the harness asks for by name.
const TENSOR_LIMIT: usize = 64;

/// A copy of `data` starting `offset` bytes past an 8-byte boundary: the buffer and where
/// the copy is in it.
fn placed(data: &[u8], offset: usize) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut buf = vec![0u8; data.len() + 16];
    let start = buf.as_ptr().align_offset(8) + offset;
    buf[start..start + data.len()].copy_from_slice(data);
    (buf, start..start + data.len())
}

pub fn run(data: &[u8]) {
    let Some((&offset, file)) = data.split_first() else { return };
    let (buf, range) = placed(file, usize::from(offset % 8));
    let bytes = &buf[range];

    let Ok(listing) = Weights::parse(bytes) else { return };
    let names = listing.finish().unused;
    let mut w = Weights::parse(bytes).expect("parsed once, parses again");
    let (mut taken, mut refused) = (0, 0);
    for name in names.iter().take(TENSOR_LIMIT) {
        assert!(w.contains(name), "listed tensor {name:?} is not found");
        // Ask with a shape it cannot have, learn the real one from the error.
        let shape = match w.get(name, &[usize::MAX]) {
            Err(WeightsError::Shape { name: n, found, .. }) => {
                assert!(n.ends_with(name.as_str()) || name.ends_with(n.as_str()), "{n:?} for {name:?}");
                found
            }
            Err(WeightsError::Dtype { .. }) => continue,
            other => panic!("a [usize::MAX] shape for {name:?} answered {other:?}"),
        };
        match w.get(name, &shape) {
            Ok(t) => {
                let want = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).expect("shape product");
                assert_eq!(t.as_slice().len(), want, "{name:?} of shape {shape:?}");
                taken += 1;
            }
            // Asked for, so not unused, but not convertible.
            Err(WeightsError::Dtype { .. }) => refused += 1,
            Err(e) => panic!("{name:?} with its own shape {shape:?}: {e}"),
        }
    }
    assert!(matches!(w.get("no.such.tensor.anywhere", &[1]), Err(WeightsError::Missing { .. })));
    // What loading checks first, for a few of the model's tensors.
    let cfg = Speech2TextConfig::preset(Preset::Tiny);
    for (name, shape) in weights::expected_shapes(&cfg).iter().take(4) {
        let _ = w.check(name, shape);
    }
    let report = w.finish();
    assert_eq!(report.borrowed_tensors + report.converted.len(), taken);
    assert_eq!(report.unused.len() + taken + refused, names.len());
}

/// Small safetensors files, for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let f32_file = weights::serialize_f32(&[
        ("model.encoder.layer_norm.weight".into(), vec![4], vec![1.0, 2.0, 3.0, 4.0]),
        ("model.x".into(), vec![2, 3], vec![0.5; 6]),
        ("lm_head.weight".into(), vec![0, 3], vec![]),
    ])
    .expect("serialize");
    // f16, bf16, f64 and an unsupported dtype, written by hand.
    let header = r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},"d":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},"i":{"dtype":"I32","shape":[1],"data_offsets":[16,20]},"__metadata__":{"format":"pt"}}"#;
    let mut mixed = (header.len() as u64).to_le_bytes().to_vec();
    mixed.extend_from_slice(header.as_bytes());
    mixed.extend_from_slice(&[0x00, 0x3c, 0x00, 0xc0, 0x80, 0x3f, 0x00, 0x40]);
    mixed.extend_from_slice(&1.5f64.to_le_bytes());
    mixed.extend_from_slice(&7i32.to_le_bytes());
    vec![
        [vec![0], f32_file.clone()].concat(),
        [vec![1], f32_file.clone()].concat(),
        [vec![0], mixed].concat(),
        // Truncated, and a header length past the end.
        [vec![0], f32_file[..f32_file.len() - 3].to_vec()].concat(),
        [vec![0], u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(),
    ]
}
