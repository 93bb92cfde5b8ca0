//! Matrix-product kernels on this model's shapes (`cargo run --release --example matmul_bench`):
//! the `gemm` crate, `matrixmultiply`, and the row-parallel dot-product kernel used for the
//! decoder's few-row products. Prints GFLOP/s and effective weight bandwidth.

use std::time::Instant;

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let shapes = [
        ("encoder fc1 (250x512 · 512x2048)", 250, 512, 2048),
        ("encoder conv2 (250x2560 · 2560x1024)", 250, 2560, 1024),
        ("decoder fc1, 5 beams (5x512 · 512x2048)", 5, 512, 2048),
        ("decoder lm head, 5 beams (5x512 · 512x10000)", 5, 512, 10000),
        ("decoder fc1, greedy (1x512 · 512x2048)", 1, 512, 2048),
    ];
    println!("{:<48} {:>12} {:>12} {:>12}", "shape", "gemm", "matrixmult.", "s2t linear");
    for (name, m, k, n) in shapes {
        let x = data(m * k);
        let w = data(n * k);
        let mut out = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let g = time(|| {
            // SAFETY: shapes match the buffers (m×k, n×k read transposed, m×n).
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
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                )
            }
        });
        let mm = time(|| {
            // SAFETY: as above.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    x.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        });
        let ours = time(|| s2t_runner::tensor::linear(&mut out, &x, m, k, &w, n, None));
        let fmt = |s: f64| format!("{:.1} GF/s", flops / s / 1e9);
        println!(
            "{:<48} {:>12} {:>12} {:>12}   (s2t linear reads weights at {:.1} GB/s)",
            name,
            fmt(g),
            fmt(mm),
            fmt(ours),
            (n * k * 4) as f64 / ours / 1e9
        );
    }
}
