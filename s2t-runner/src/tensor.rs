//! The tensor layer: weights are `&[f32]` slices borrowed from the mapping they live in
//! (a store object or a mapped file), never copied; activations are plain `Vec<f32>`.
//!
//! Matrix products go through the `gemm` crate, which takes arbitrary row and column strides,
//! so `x · Wᵀ` reads PyTorch's `[out, in]` weight layout in place and attention reads each head
//! as a strided view of the projections, without transposing or gathering anything.
//!
//! Why not candle: candle 0.11 copies every tensor into its own `Vec` on load, which defeats
//! the zero-copy store. Why `gemm` over `matrixmultiply`: see `BENCHMARKS.md` (measured on the
//! shapes of this model; `gemm` is faster on both the encoder's and the decoder's shapes).

use std::borrow::Cow;

use rayon::prelude::*;

/// A weight tensor: borrowed from the mapping when it is f32 and aligned there, else owned
/// (converted once at load).
#[derive(Debug)]
pub struct Tensor<'w> {
    pub data: Cow<'w, [f32]>,
    pub shape: Vec<usize>,
}

impl<'w> Tensor<'w> {
    pub fn borrowed(data: &'w [f32], shape: Vec<usize>) -> Self {
        Self { data: Cow::Borrowed(data), shape }
    }

    pub fn owned(data: Vec<f32>, shape: Vec<usize>) -> Self {
        Self { data: Cow::Owned(data), shape }
    }

    pub fn is_borrowed(&self) -> bool {
        matches!(self.data, Cow::Borrowed(_))
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 18;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (+ `bias[n]`), all row-major and contiguous.
pub fn linear(out: &mut [f32], x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) {
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n, "linear: shapes do not match");
    if let Some(b) = bias {
        assert!(b.len() >= n, "linear: bias too short");
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
    } else if (2..=FEW_ROWS).contains(&m) {
        few_rows_linear(out, x, m, k, w, n);
    } else {
        // SAFETY: the asserts above keep every index the strides reach inside `out`, `x` and
        // `w` (dst m×n with row stride n, lhs m×k row stride k, rhs k×n read as `w`
        // transposed: element (i, j) at j*k + i < n*k), and `out` does not alias the inputs
        // (it is a `&mut`).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism(m * n * k),
            );
        }
    }
    if let Some(b) = bias {
        for row in out[..m * n].chunks_exact_mut(n) {
            for (o, &bb) in row.iter_mut().zip(b) {
                *o += bb;
            }
        }
    }
}

/// Up to this many rows (decoder steps: one row per beam), products use the row-parallel
/// kernel below: it streams each weight row once for all rows of `x`, without packing, and
/// splits the weight rows across threads. `gemm` packs the weights on every call, which
/// halves the bandwidth on these memory-bound shapes (see `examples/matmul_bench.rs`).
const FEW_ROWS: usize = 8;

fn few_rows_linear(out: &mut [f32], x: &[f32], m: usize, k: usize, w: &[f32], n: usize) {
    const ROWS_PER_TASK: usize = 64;
    let mut out_t = vec![0.0f32; n * m];
    let avx2 = avx2_available();
    out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(c, chunk)| {
        let j0 = c * ROWS_PER_TASK;
        for (jj, o) in chunk.chunks_exact_mut(m).enumerate() {
            let row = &w[(j0 + jj) * k..(j0 + jj + 1) * k];
            if avx2 {
                // SAFETY: `avx2_available` checked at run time that the CPU has AVX2.
                unsafe { dots_avx2(x, m, k, row, o) }
            } else {
                dots(x, m, k, row, o)
            }
        }
    });
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            out[i * n + j] = v;
        }
    }
}

fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `o[i] = x[i, :] · row` for the `m <= FEW_ROWS` rows of `x`, eight lanes at a time.
#[inline(always)]
fn dots(x: &[f32], m: usize, k: usize, row: &[f32], o: &mut [f32]) {
    let mut acc = [[0.0f32; 8]; FEW_ROWS];
    let body = k / 8 * 8;
    for l in (0..body).step_by(8) {
        let wv: &[f32; 8] = row[l..l + 8].try_into().unwrap_or(&[0.0; 8]);
        for (i, a) in acc.iter_mut().enumerate().take(m) {
            let xv: &[f32; 8] = x[i * k + l..i * k + l + 8].try_into().unwrap_or(&[0.0; 8]);
            for lane in 0..8 {
                a[lane] += xv[lane] * wv[lane];
            }
        }
    }
    for i in 0..m {
        let mut s: f32 = acc[i].iter().sum();
        for l in body..k {
            s += x[i * k + l] * row[l];
        }
        o[i] = s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_avx2(x: &[f32], m: usize, k: usize, row: &[f32], o: &mut [f32]) {
    dots(x, m, k, row, o)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dots_avx2(x: &[f32], m: usize, k: usize, row: &[f32], o: &mut [f32]) {
    dots(x, m, k, row, o)
}

fn parallelism(work: usize) -> gemm::Parallelism {
    if work >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Strided product `dst[m, n] = lhs[m, k] · rhs[k, n]` with explicit strides (in elements).
/// Used for attention heads, which are column blocks of the projections.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(dst.len() > last(dst_rs, 1, m, n), "matmul_strided: dst too short");
    if k == 0 {
        for i in 0..m {
            dst[i * dst_rs..i * dst_rs + n].fill(0.0);
        }
        return;
    }
    assert!(lhs.len() > last(lhs_rs, lhs_cs, m, k), "matmul_strided: lhs too short");
    assert!(rhs.len() > last(rhs_rs, rhs_cs, k, n), "matmul_strided: rhs too short");
    // SAFETY: the asserts bound the furthest element each operand's strides reach; `dst` is a
    // unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// LayerNorm over rows of width `gamma.len()`, eps 1e-5 (PyTorch's default).
pub fn layer_norm(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32]) {
    let d = gamma.len();
    out.par_chunks_exact_mut(d).zip(x.par_chunks_exact(d)).for_each(|(o, row)| {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for i in 0..d {
            o[i] = (((row[i] as f64 - mean) * inv) as f32) * gamma[i] + beta[i];
        }
    });
}

/// In-place softmax of one row.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// In-place log-softmax of one row (as `torch.log_softmax`: `x - max - log(sum(exp(x - max)))`).
pub fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let lse = sum.ln();
    for v in row.iter_mut() {
        *v = *v - max - lse;
    }
}

pub fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// Adds `b` to `a` element-wise.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

/// Row `pos` of fairseq's sinusoidal table as transformers computes it for Speech2Text:
/// `[sin(pos·f_0..) | cos(pos·f_0..)]` with `f_i = exp(-i·ln(10000)/(half-1))` in f32, and the
/// padding row (`pos == padding_idx`) all zeros. `dim` must be even (the config checks it).
pub fn sinusoid_row(pos: usize, padding_idx: usize, out: &mut [f32]) {
    let dim = out.len();
    if pos == padding_idx {
        out.fill(0.0);
        return;
    }
    let half = dim / 2;
    let step = if half > 1 { (10000f64.ln() / (half as f64 - 1.0)) as f32 } else { 0.0 };
    for i in 0..half {
        let freq = (i as f32 * -step).exp();
        let arg = pos as f32 * freq;
        out[i] = (arg as f64).sin() as f32;
        out[half + i] = (arg as f64).cos() as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn linear_matches_the_naive_product_serial_and_parallel() {
        for (m, k, n) in [(1, 3, 2), (5, 64, 33), (70, 200, 90)] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let b = data(n, 3);
            let mut out = vec![0.0; m * n];
            linear(&mut out, &x, m, k, &w, n, Some(&b));
            let mut want = naive(&x, m, k, &w, n);
            for r in want.chunks_mut(n) {
                add_assign(r, &b);
            }
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn strided_product_reads_a_column_block() {
        // lhs: 2x4 matrix, take columns 2..4 as a 2x2; rhs 2x2 identity in a 2x4 with stride 4.
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let rhs = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let mut dst = [0.0; 4];
        matmul_strided(&mut dst, 2, &lhs[2..], 4, 1, &rhs[2..], 4, 1, 2, 2, 2);
        assert_eq!(dst, [3.0, 4.0, 7.0, 8.0]);
    }

    #[test]
    fn sinusoids_are_sin_then_cos_and_the_padding_row_is_zero() {
        let mut row = vec![0.0; 8];
        sinusoid_row(2, 1, &mut row);
        assert!((row[0] - 2f32.sin()).abs() < 1e-6);
        assert!((row[4] - 2f32.cos()).abs() < 1e-6);
        sinusoid_row(1, 1, &mut row);
        assert!(row.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn log_softmax_normalizes() {
        let mut r = vec![1.0, 2.0, 3.0];
        log_softmax(&mut r);
        let s: f32 = r.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}
