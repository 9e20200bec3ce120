use mpm::cpu::gemm::{matmul, MatRef};
use std::time::Instant;
fn main() {
    for &(m, n, k) in &[
        (6272usize, 256usize, 576usize),
        (25088, 64, 64),
        (512, 512, 4608),
        (6272, 3311, 128),
    ] {
        let a = vec![1.0f32; m * k];
        let b = vec![1.0f32; k * n];
        let mut c = vec![0.0f32; m * n];
        matmul(MatRef::new(&a, m, k), MatRef::new(&b, k, n), &mut c, false);
        let t = Instant::now();
        let reps = 5;
        for _ in 0..reps {
            matmul(MatRef::new(&a, m, k), MatRef::t(&b, k, n), &mut c, false);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{m}x{n}x{k}: {:.1} GFLOP/s",
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}
