//! The attack kernels (kernels/pgd_step.cu, attack_rows.cu, fab_step.cu, square_rows.cu) and
//! the focal-loss kernels, run by the host emulator (tests/emu) and compared with the CPU
//! backend: the checks `cuda_parity` makes on a GPU, here on every machine. The emulator runs
//! the kernels' own source with their launch shapes (copied from `src/cuda/ops.rs`), barrier
//! by barrier, cluster barriers and distributed shared memory included; it does not reproduce
//! the GPU's FMA contraction or math-library ulps, so value checks keep the GPU tests' bounds.

mod attack_refs;
mod emu;

use attack_refs::{pgd_l1_ref, pgd_ref, square_cases, square_linf_case};
use emu::{kernels, Buf};
use mpm::cuda::launch::Args;
use mpm::tensor::Tensor;
use rand::{RngExt, SeedableRng};

const GUARD: f32 = -7.25e30;

fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// bf16 bits through `half`, the host's one conversion path (round to nearest even).
fn f32_to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

fn bf16_to_f32(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// The kernels' bf16 `store` (kernels/common.cuh, through `cast_f32_bf16`) against the bit
/// table PyTorch's `.to(torch.bfloat16)` made (tests/fixtures/io/half_rounding.tsv: ties,
/// subnormals, infinities, overflow, NaNs) and against the host path: the two sides of every
/// upload / download round to the same bits.
#[test]
fn bf16_store_matches_pytorch_and_host() {
    let Some(lib) = kernels("elementwise.cu") else {
        return;
    };
    let text = include_str!("fixtures/io/half_rounding.tsv");
    let rows: Vec<(u32, u16)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            let f = u32::from_str_radix(c[0], 16).expect("f32 bits");
            (f, u16::from_str_radix(c[1], 16).expect("bf16 bits"))
        })
        .collect();
    assert!(rows.len() > 100, "fixture has {} rows", rows.len());
    let x: Vec<f32> = rows.iter().map(|r| f32::from_bits(r.0)).collect();
    let mut bx = Buf::new(&x, GUARD);
    let mut by = Buf::filled(x.len(), 0x1234u16, 0x7f7f);
    let args = Args::new()
        .push(bx.ptr())
        .push(by.ptr())
        .push(x.len() as u64);
    let blocks = mpm::cuda::launch::grid_for(x.len());
    lib.launch("cast_f32_bf16", (blocks, 1, 1), 256, 0, args)
        .unwrap_or_else(|e| panic!("{e}"));
    bx.get("x");
    let host = mpm::io::elements::to_bf16(&x);
    let nan = |b: u16| b & 0x7f80 == 0x7f80 && b & 0x7f != 0;
    for ((r, &k), h) in rows.iter().zip(by.get("y")).zip(&host) {
        if nan(r.1) {
            // PyTorch's CPU cast writes 0xffff for every NaN; a NaN is all that counts.
            assert!(nan(k), "{:08x}: kernel {k:04x} is not a NaN", r.0);
        } else {
            assert_eq!(k, r.1, "kernel store of f32 bits {:08x}", r.0);
        }
        // Kernel and host agree bit for bit, NaN payloads included.
        assert_eq!(k, h.to_bits(), "kernel vs host for f32 bits {:08x}", r.0);
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Which PGD kernel `pgd_rows` (src/cuda/ops.rs) launches, and how.
#[derive(Clone, Copy, Debug)]
enum PgdKernel {
    Linf,
    Linf4,
    L2Block,
    L2Cluster,
    L1Block,
    L1Cluster,
}

/// Runs one PGD step kernel on host buffers, as `pgd_rows` launches it on a GPU.
fn pgd_emulated(
    k: PgdKernel,
    x: &[f32],
    x0: &[f32],
    g: &[f32],
    eps: &[f32],
    step: &[f32],
    topk: &[f32],
) -> Option<Vec<f32>> {
    let lib = kernels("pgd_step.cu")?;
    let n = eps.len();
    let d = x.len() / n;
    let (mut bx, mut bx0, mut bg) = (Buf::new(x, GUARD), Buf::new(x0, GUARD), Buf::new(g, GUARD));
    let mut es = Buf::new(&[eps, step, topk].concat(), GUARD);
    let ep = es.ptr();
    let (sp, kp) = (ep + 4 * n as u64, ep + 8 * n as u64);
    let mut out = Buf::filled(x.len(), f32::NAN, GUARD);
    let args = Args::new()
        .push(out.ptr())
        .push(bx.ptr())
        .push(bx0.ptr())
        .push(bg.ptr())
        .push(ep)
        .push(sp);
    let grid = |blocks: usize| ((blocks.div_ceil(256).clamp(1, 1 << 16)) as u32, 1, 1);
    let r = match k {
        PgdKernel::Linf4 => lib.launch(
            "pgd_linf4_f32",
            grid(x.len() / 4),
            256,
            0,
            args.push((d / 4) as u32).push((x.len() / 4) as u64),
        ),
        PgdKernel::Linf => lib.launch(
            "pgd_linf_f32",
            grid(x.len()),
            256,
            0,
            args.push(d as u32).push(x.len() as u64),
        ),
        PgdKernel::L2Block => {
            lib.launch("pgd_l2_f32", (n as u32, 1, 1), 1024, 0, args.push(d as u32))
        }
        PgdKernel::L2Cluster => lib.launch(
            "pgd_l2_cl_f32",
            ((n * 8) as u32, 1, 1),
            1024,
            0,
            args.push((d / 4) as u32),
        ),
        PgdKernel::L1Block => lib.launch(
            "pgd_l1_f32",
            (n as u32, 1, 1),
            1024,
            0,
            args.push(kp).push(d as u32),
        ),
        PgdKernel::L1Cluster => lib.launch(
            "pgd_l1_cl_f32",
            ((n * 8) as u32, 1, 1),
            1024,
            0,
            args.push(kp).push((d / 4) as u32),
        ),
    };
    r.unwrap_or_else(|e| panic!("{k:?}: {e}"));
    for (b, w) in [(&bx, "x"), (&bx0, "x0"), (&bg, "g")] {
        b.get(w);
    }
    es.get("eps/step/topk");
    Some(out.get(&format!("{k:?} out")).to_vec())
}

/// The projected step kernels against the CPU references `cuda_parity::pgd_step_kernels`
/// uses, every variant: l-inf (scalar and float4), l2 and l1 with one block per sample and
/// with one 8-block cluster per sample (distributed shared memory), on a sample size that
/// spreads over the cluster's blocks unevenly.
#[test]
fn pgd_step_kernels_emulated() {
    pgd_small_images();
    pgd_cluster_at_224px();
}

/// The cluster kernels at the size they are chosen for: one 224x224x3 sample, 37,632 float4
/// over 8 blocks of 1024 threads (4,704 per block: every thread holds up to 5).
fn pgd_cluster_at_224px() {
    let len = 224 * 224 * 3;
    let x0 = rand_vec(len, 50, 0.0, 1.0);
    let x = rand_vec(len, 51, 0.0, 1.0);
    let g = rand_vec(len, 52, -1.0, 1.0);
    let (eps, step) = ([0.5f32], [0.25f32]);
    let want = pgd_ref(&x, &x0, &g, &eps, &step, true);
    let Some(got) = pgd_emulated(PgdKernel::L2Cluster, &x, &x0, &g, &eps, &step, &[]) else {
        return;
    };
    let e = max_abs_diff(&got, &want);
    println!("L2Cluster 224 px: max |emulated - cpu| {e:.2e}");
    assert!(e <= 1e-5, "L2Cluster 224 px: {e}");
    let (e1, s1, k) = ([len as f32 * 0.01], [1.0f32], [0.05f32]);
    let want = pgd_l1_ref(&x, &x0, &g, &e1, &s1, k[0]);
    let got = pgd_emulated(PgdKernel::L1Cluster, &x, &x0, &g, &e1, &s1, &k).unwrap();
    let e = max_abs_diff(&got, &want);
    let l1: f32 = got.iter().zip(&x0).map(|(a, b)| (a - b).abs()).sum();
    println!(
        "L1Cluster 224 px: max |emulated - cpu| {e:.2e}, ||delta||_1 {l1} (eps {})",
        e1[0]
    );
    assert!(e <= 1e-5, "L1Cluster 224 px: {e}");
    assert!(l1 <= e1[0] * 1.001);
}

fn pgd_small_images() {
    // 3 samples of 40x40x3: D = 4800, D/4 = 1200 float4 over 8 blocks (150 each).
    let shape = [3usize, 40, 40, 3];
    let len: usize = shape.iter().product();
    let d = len / 3;
    let x0 = rand_vec(len, 40, 0.0, 1.0);
    let x = rand_vec(len, 41, 0.0, 1.0);
    let mut g = rand_vec(len, 42, -1.0, 1.0);
    g.iter_mut().step_by(9).for_each(|v| *v = 0.0);
    let eps = [4.0 / 255.0, 8.0 / 255.0, 0.5];
    let step = [2.0 / 255.0, 4.0 / 255.0, 0.25];
    let want = pgd_ref(&x, &x0, &g, &eps, &step, false);
    for k in [PgdKernel::Linf, PgdKernel::Linf4] {
        let Some(got) = pgd_emulated(k, &x, &x0, &g, &eps, &step, &[]) else {
            return;
        };
        assert_eq!(
            got, want,
            "{k:?}: the l-inf step is elementwise, so bit-identical"
        );
    }
    let want = pgd_ref(&x, &x0, &g, &eps, &step, true);
    for k in [PgdKernel::L2Block, PgdKernel::L2Cluster] {
        let got = pgd_emulated(k, &x, &x0, &g, &eps, &step, &[]).unwrap();
        let e = max_abs_diff(&got, &want);
        println!("{k:?}: max |emulated - cpu| {e:.2e}");
        assert!(e <= 1e-5, "{k:?}: max |emulated - cpu| = {e}");
    }
    // L1: x far from x0 (the projection cuts hard), and x = x0 with budgets that the step
    // alone does or does not use up; per-sample top-k fractions, 0 included (one coordinate).
    let big = d as f32 * 0.01;
    for (what, xs, e1, s1, topk) in [
        (
            "far",
            &x,
            [2.0f32, big, 0.1],
            [1.0f32, 1.0, 1.0],
            [0.05f32, 0.2, 0.0],
        ),
        (
            "from x0",
            &x0,
            [2.0, big, 1e3],
            [1.0, 3.0, 0.5],
            [0.05, 1.0, 0.01],
        ),
    ] {
        for k in [PgdKernel::L1Block, PgdKernel::L1Cluster] {
            let got = pgd_emulated(k, xs, &x0, &g, &e1, &s1, &topk).unwrap();
            for n in 0..3 {
                let r = n * d..(n + 1) * d;
                let want = pgd_l1_ref(
                    &xs[r.clone()],
                    &x0[r.clone()],
                    &g[r.clone()],
                    &e1[n..n + 1],
                    &s1[n..n + 1],
                    topk[n],
                );
                let e = max_abs_diff(&got[r.clone()], &want);
                let l1: f32 = r.clone().map(|i| (got[i] - x0[i]).abs()).sum();
                println!(
                    "{k:?} {what} sample {n}: max |emulated - cpu| {e:.2e}, ||delta||_1 {l1} \
                     (eps {})",
                    e1[n]
                );
                assert!(
                    e <= 1e-5,
                    "{k:?} {what} sample {n}: max |emulated - cpu| = {e}"
                );
                assert!(
                    l1 <= e1[n] * 1.001 + 1e-5,
                    "{k:?} {what} sample {n}: l1 {l1}"
                );
                assert!(got[r].iter().all(|v| (0.0..=1.0).contains(v)));
            }
        }
    }
}

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape, v).unwrap()
}

/// Relative L2 distance of `a` from `b`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((*x - *y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// The kernels of `file` with buffers: input slices become guarded host buffers, outputs are
/// NaN-filled; `launch` runs `name` and returns every output after checking all guards.
struct Launch {
    bufs: Vec<Buf<f32>>,
    outs: Vec<usize>,
}

impl Launch {
    fn new() -> Self {
        Launch {
            bufs: Vec::new(),
            outs: Vec::new(),
        }
    }
    fn input(&mut self, v: &[f32]) -> u64 {
        self.bufs.push(Buf::new(v, GUARD));
        self.bufs.last_mut().unwrap().ptr()
    }
    fn output(&mut self, len: usize) -> u64 {
        self.outs.push(self.bufs.len());
        self.bufs.push(Buf::filled(len, f32::NAN, GUARD));
        self.bufs.last_mut().unwrap().ptr()
    }
    /// A copy of `v` the kernel may write into (in-place kernels).
    fn inout(&mut self, v: &[f32]) -> u64 {
        self.outs.push(self.bufs.len());
        self.input(v)
    }
    fn u32s(&mut self, v: &[u32]) -> u64 {
        self.input(&v.iter().map(|b| f32::from_bits(*b)).collect::<Vec<_>>())
    }
    /// `run` as `ops.rs`'s `run1` launches: a grid-stride loop of 256-thread blocks over `n`.
    fn run1(&self, file: &str, name: &str, n: usize, args: Args) -> Option<Vec<Vec<f32>>> {
        self.run(file, name, grid1(n), 256, 0, args)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        file: &str,
        name: &str,
        grid: u32,
        block: u32,
        dyn_smem: u32,
        args: Args,
    ) -> Option<Vec<Vec<f32>>> {
        let lib = kernels(file)?;
        lib.launch(name, (grid, 1, 1), block, dyn_smem, args)
            .unwrap_or_else(|e| panic!("{e}"));
        for (i, b) in self.bufs.iter().enumerate() {
            b.get(&format!("{name} buffer {i}"));
        }
        Some(
            self.outs
                .iter()
                .map(|&i| self.bufs[i].get(name).to_vec())
                .collect(),
        )
    }
}

/// Blocks for a grid-stride loop of 256 threads over `n` elements (`launch::grid_for`).
fn grid1(n: usize) -> u32 {
    mpm::cuda::launch::grid_for(n)
}

/// attack_rows.cu (APGD's l-inf and l2 steps, Square's l-inf candidates, the row copy, the
/// per-row L0 count) against the CPU twins in `attack::resident`, as `cuda_parity::
/// attack_row_kernels` and `apgd_l1_step_and_row_l0_kernels` check them on a GPU.
#[test]
fn attack_row_kernels_emulated() {
    use mpm::attack::resident::{apgd_step, copy_rows, row_l0, square_linf_candidates};
    use mpm::attack::Norm;
    let shape = [5usize, 11, 9, 3];
    let len: usize = shape.iter().product();
    let (n, d) = (shape[0], len / shape[0]);
    let x = rand_vec(len, 23, 0.0, 1.0);
    let best = rand_vec(len, 24, 0.0, 1.0);
    let old = rand_vec(len, 25, 0.0, 1.0);
    let mut gv = rand_vec(len, 26, -1.0, 1.0);
    gv.iter_mut().step_by(7).for_each(|v| *v = 0.0);
    let steps = [0.01f32, 0.03, 0.0, 0.02, 0.05];
    let (xt, bt, ot, gt) = (
        tensor(&shape, x.clone()),
        tensor(&shape, best.clone()),
        tensor(&shape, old.clone()),
        tensor(&shape, gv.clone()),
    );
    // APGD steps: out, x_adv, x_old, grad, x0, steps, eps, momentum, d (+ total for l-inf).
    for (norm, eps) in [(Norm::Linf, 8.0f32 / 255.0), (Norm::L2, 0.5)] {
        let want = apgd_step(norm, &bt, &ot, &gt, &xt, &steps, eps, 0.75).unwrap();
        let mut l = Launch::new();
        let args = Args::new()
            .push(l.output(len))
            .push(l.input(&best))
            .push(l.input(&old))
            .push(l.input(&gv))
            .push(l.input(&x))
            .push(l.input(&steps))
            .push(eps)
            .push(0.75f32)
            .push(d as u32);
        let got = if norm == Norm::L2 {
            l.run(
                "attack_rows.cu",
                "apgd_l2_step_f32",
                n as u32,
                1024,
                0,
                args,
            )
        } else {
            let a = args.push(len as u64);
            l.run1("attack_rows.cu", "apgd_linf_step_f32", len, a)
        };
        let Some(got) = got else { return };
        if norm == Norm::Linf {
            assert_eq!(
                got[0],
                want.data(),
                "apgd l-inf step: bit-identical to the CPU"
            );
        } else {
            let e = rel_l2(&got[0], want.data());
            println!("apgd l2 step: rel L2 {e:.2e}");
            assert!(e <= 1e-6, "apgd l2 step: rel L2 {e:.3e}");
        }
    }
    // Square l-inf candidates, windows at the border.
    let p = square_linf_case();
    let eps = 8.0 / 255.0;
    let want = square_linf_candidates(&bt, &xt, &p, eps).unwrap();
    let mut meta: Vec<u32> = [&p.rows[..], &p.vh, &p.vw].concat();
    meta.extend(p.signs.iter().map(|v| v.to_bits()));
    let na = p.rows.len();
    let total = na * d;
    let mut l = Launch::new();
    let args = Args::new()
        .push(l.output(total))
        .push(l.input(&best))
        .push(l.input(&x))
        .push(l.u32s(&meta))
        .push(na as u32)
        .push(shape[1] as u32)
        .push(shape[2] as u32)
        .push(shape[3] as u32)
        .push(p.s)
        .push(eps)
        .push(total as u64);
    let got = l
        .run1("attack_rows.cu", "square_linf_cand_f32", total, args)
        .unwrap();
    assert_eq!(got[0], want.data(), "square l-inf candidates");
    // Row copy (into a copy of dst, as the launcher does).
    let pairs = [3u32, 2, 0, 0];
    let want_rows = copy_rows(&bt, &want, &pairs).unwrap();
    let mut l = Launch::new();
    let np = pairs.len() / 2;
    let args = Args::new()
        .push(l.inout(&best))
        .push(l.input(want.data()))
        .push(l.u32s(&pairs))
        .push(d as u32)
        .push((np * d) as u64);
    let got = l
        .run1("attack_rows.cu", "copy_rows_f32", np * d, args)
        .unwrap();
    assert_eq!(got[0], want_rows.data(), "copy_rows");
    // L0 per row: exact counts, rows with nothing changed included.
    let mut moved = best.clone();
    moved[..d].copy_from_slice(&x[..d]);
    moved[3 * d..3 * d + 10].copy_from_slice(&x[3 * d..3 * d + 10]);
    let want = row_l0(&tensor(&shape, moved.clone()), &xt).unwrap();
    let mut l = Launch::new();
    let args = Args::new()
        .push(l.output(n))
        .push(l.input(&moved))
        .push(l.input(&x))
        .push(d as u32);
    let got = l
        .run("attack_rows.cu", "row_l0_f32", n as u32, 256, 0, args)
        .unwrap();
    assert_eq!(got[0], want, "row_l0");
    println!("attack rows: l-inf step, square candidates, copy_rows, row_l0 bit-identical");
}

/// fab_step.cu against the CPU twins (`attack::resident::{fab_step, row_dist, shrink_rows}`),
/// as `cuda_parity::fab_row_kernels` checks them on a GPU: every norm, a row with a zero
/// gradient and one whose boundary is out of reach, on a small image and on one large enough
/// that the l1 radix select needs all its passes.
#[test]
fn fab_row_kernels_emulated() {
    use mpm::attack::fab::FabConfig;
    use mpm::attack::resident::{fab_step, row_dist, shrink_rows};
    use mpm::attack::Norm;
    for (shape, seed) in [([4usize, 11, 9, 3], 70u64), ([4, 48, 40, 3], 80)] {
        let len: usize = shape.iter().product();
        let (n, d) = (shape[0], len / shape[0]);
        let im2 = rand_vec(len, seed, 0.0, 1.0);
        let x1 = rand_vec(len, seed + 1, 0.0, 1.0);
        let mut wv = rand_vec(len, seed + 2, -1.0, 1.0);
        wv.iter_mut().step_by(6).for_each(|v| *v = 0.0);
        wv[..d].iter_mut().for_each(|v| *v = 0.0); // row 0: no gradient
        let df = [0.7f32, -1.3, 2.0, 1e6]; // row 3: out of reach
        let (x1t, im2t, wt) = (
            tensor(&shape, x1.clone()),
            tensor(&shape, im2.clone()),
            tensor(&shape, wv.clone()),
        );
        for (code, norm) in [(0u32, Norm::Linf), (1, Norm::L2), (2, Norm::L1)] {
            let cfg = FabConfig::standard(norm, 0.1, 0);
            let want = fab_step(&x1t, &im2t, &wt, &df, &cfg).unwrap();
            let mut l = Launch::new();
            let args = Args::new()
                .push(l.output(len))
                .push(l.input(&x1))
                .push(l.input(&im2))
                .push(l.input(&wv))
                .push(l.input(&df))
                .push(code)
                .push(cfg.eta)
                .push(cfg.alpha_max)
                .push(d as u32);
            let Some(got) = l.run("fab_step.cu", "fab_step_f32", n as u32, 1024, 0, args) else {
                return;
            };
            let e = rel_l2(&got[0], want.data());
            let m = max_abs_diff(&got[0], want.data());
            println!("fab_step {norm} {shape:?}: rel L2 {e:.2e}, max abs {m:.2e}");
            assert!(e <= 1e-4, "fab_step {norm} {shape:?}: rel L2 {e:.3e}");
            let rd = row_dist(&x1t, &im2t, norm).unwrap();
            let mut l = Launch::new();
            let args = Args::new()
                .push(l.output(n))
                .push(l.input(&x1))
                .push(l.input(&im2))
                .push(code)
                .push(d as u32);
            let got = l
                .run("fab_step.cu", "row_dist_f32", n as u32, 256, 0, args)
                .unwrap();
            for (g, c) in got[0].iter().zip(&rd) {
                assert!(
                    (g - c).abs() <= 1e-5 * c.abs(),
                    "row_dist {norm}: {got:?} vs {rd:?}"
                );
            }
        }
        let rows = [3u32, 1];
        let want = shrink_rows(&x1t, &im2t, &rows, 0.9).unwrap();
        let mut l = Launch::new();
        let total = rows.len() * d;
        let args = Args::new()
            .push(l.inout(&x1))
            .push(l.input(&im2))
            .push(l.u32s(&rows))
            .push(0.9f32)
            .push(d as u32)
            .push(total as u64);
        let got = l
            .run1("fab_step.cu", "shrink_rows_f32", total, args)
            .unwrap();
        assert_eq!(got[0], want.data(), "shrink_rows");
    }
}

/// square_rows.cu (Square's l2 / l1 candidates) against the CPU twin, as
/// `cuda_parity::square_l2l1_candidate_kernels` checks it on a GPU: windows at the border,
/// overlapping and identical ones, both profile orientations.
#[test]
fn square_l2l1_candidate_kernels_emulated() {
    use mpm::attack::resident::square_l2l1_candidates;
    use mpm::attack::Norm;
    use mpm::cuda::ops::square_l2l1_meta;
    for (shape, s, seed) in [([5usize, 11, 9, 3], 5u32, 70u64), ([3, 40, 36, 3], 13, 71)] {
        let len: usize = shape.iter().product();
        let (n, h, w, c) = (shape[0], shape[1] as u32, shape[2] as u32, shape[3]);
        let d = len / n;
        let x = rand_vec(len, seed, 0.0, 1.0);
        let noise = rand_vec(len, seed + 1, -0.2, 0.2);
        let best: Vec<f32> = x
            .iter()
            .zip(&noise)
            .map(|(a, b)| (a + b).clamp(0.0, 1.0))
            .collect();
        let (xt, bt) = (tensor(&shape, x.clone()), tensor(&shape, best.clone()));
        for (norm, eps, p) in square_cases(shape, s) {
            let want = square_l2l1_candidates(&bt, &xt, &p, norm, eps).unwrap();
            let meta = square_l2l1_meta(
                &p.rows,
                [&p.vh1, &p.vw1, &p.vh2, &p.vw2],
                &p.transpose,
                &p.signs,
                &p.profile,
            );
            let na = p.rows.len();
            let mut l = Launch::new();
            let args = Args::new()
                .push(l.output(na * d))
                .push(l.input(&best))
                .push(l.input(&x))
                .push(l.u32s(&meta))
                .push(na as u32)
                .push(h)
                .push(w)
                .push(c as u32)
                .push(s)
                .push(eps);
            let name = if norm == Norm::L1 {
                "square_l1_cand_f32"
            } else {
                "square_l2_cand_f32"
            };
            let Some(got) = l.run("square_rows.cu", name, na as u32, 1024, 0, args) else {
                return;
            };
            let got = &got[0];
            let same = got.iter().zip(want.data()).filter(|(a, b)| a == b).count();
            let m = max_abs_diff(got, want.data());
            let what = format!("square {norm} {shape:?} s {s} eps {eps}");
            println!(
                "{what}: {same} of {} values bit-identical, max abs diff {m:.2e}",
                got.len()
            );
            assert!(m <= 1e-5, "{what}: max |emulated - cpu| = {m}");
            assert!(got.iter().all(|v| (0.0..=1.0).contains(v)), "{what}: box");
        }
    }
}

/// focal_loss.cu, both kernels (shared-memory staging with grouped loads; register staging),
/// f32 and bf16 storage, against `cpu::focal_loss`: S = 3,311 (the paper's, where the grouped
/// loads and the tail both run) and a small S, zero-weight image included.
#[test]
fn focal_loss_kernels_emulated() {
    for (s, ppi, seed) in [(3311usize, 3usize, 90u64), (37, 4, 91)] {
        let weights = [1.0f32, 0.0, 0.5];
        let pixels = weights.len() * ppi;
        let z = rand_vec(pixels * s, seed, -4.0, 4.0);
        let mut t = rand_vec(pixels * s, seed + 1, 0.0, 1.0);
        for r in t.chunks_mut(s) {
            let sum: f32 = r.iter().sum();
            r.iter_mut().for_each(|v| *v /= sum);
        }
        let gamma = 2.0f32;
        let inv_total = 1.0 / pixels as f32;
        for bf16 in [false, true] {
            let round = |v: &[f32]| -> Vec<f32> {
                if bf16 {
                    v.iter().map(|x| bf16_to_f32(f32_to_bf16(*x))).collect()
                } else {
                    v.to_vec()
                }
            };
            let (zr, tr) = (round(&z), round(&t));
            let (want_loss, want_dz) =
                mpm::cpu::focal_loss::focal_loss(&zr, &tr, &weights, ppi, s, gamma);
            for regs in [false, true] {
                let name = format!(
                    "focal_loss_{}{}",
                    if regs { "regs_" } else { "" },
                    if bf16 { "bf16" } else { "f32" }
                );
                let Some(lib) = kernels("focal_loss.cu") else {
                    return;
                };
                let mut w = Buf::new(&weights, GUARD);
                let mut pl = Buf::filled(pixels, f32::NAN, GUARD);
                let shared = if regs { 0 } else { (2 * s * 4) as u32 };
                let dz: Vec<f32> = if bf16 {
                    let b = |v: &[f32]| v.iter().map(|x| f32_to_bf16(*x)).collect::<Vec<u16>>();
                    let (mut zb, mut tb) = (Buf::new(&b(&z), 0x7f7f), Buf::new(&b(&t), 0x7f7f));
                    let mut dzb = Buf::filled(z.len(), 0x7fc0u16, 0x7f7f);
                    let a = Args::new().push(zb.ptr()).push(tb.ptr());
                    let a = a.push(w.ptr()).push(dzb.ptr());
                    let a = a.push(pl.ptr()).push(s as u32).push(ppi as u32);
                    let a = a.push(gamma).push(inv_total);
                    lib.launch(&name, (pixels as u32, 1, 1), 128, shared, a)
                        .unwrap_or_else(|e| panic!("{e}"));
                    zb.get("z");
                    tb.get("t");
                    dzb.get(&name).iter().map(|v| bf16_to_f32(*v)).collect()
                } else {
                    let (mut zb, mut tb) = (Buf::new(&z, GUARD), Buf::new(&t, GUARD));
                    let mut dzb = Buf::filled(z.len(), f32::NAN, GUARD);
                    let a = Args::new().push(zb.ptr()).push(tb.ptr());
                    let a = a.push(w.ptr()).push(dzb.ptr());
                    let a = a.push(pl.ptr()).push(s as u32).push(ppi as u32);
                    let a = a.push(gamma).push(inv_total);
                    lib.launch(&name, (pixels as u32, 1, 1), 128, shared, a)
                        .unwrap_or_else(|e| panic!("{e}"));
                    zb.get("z");
                    tb.get("t");
                    dzb.get(&name).to_vec()
                };
                w.get("weights");
                let loss: f64 =
                    pl.get("pixel loss").iter().map(|v| *v as f64).sum::<f64>() * inv_total as f64;
                let el = ((loss - want_loss as f64) / want_loss as f64).abs();
                let ed = rel_l2(&dz, &want_dz);
                println!("{name} S {s}: loss rel {el:.2e}, dz rel L2 {ed:.2e}");
                let tol = if bf16 { 2e-2 } else { 1e-5 };
                assert!(
                    el <= 1e-5 && ed <= tol,
                    "{name} S {s}: loss rel {el:.3e}, dz {ed:.3e}"
                );
            }
        }
    }
}

/// optim.cu (SGD with momentum / Nesterov and weight decay, first step and later ones; the
/// EMA update) against `train::optim::Sgd::step` and `train::ema::update` on the CPU: every
/// product and sum is rounded separately on both sides, so the bits must agree. These kernels
/// have no GPU test of their own (`train_gpu` checks whole runs).
#[test]
fn optimiser_kernels_emulated() {
    use mpm::nn::{Kind, ParamStore, TorchTensor};
    use mpm::train::optim::{Sgd, SgdConfig};
    use std::collections::BTreeMap;
    let n = 1000;
    let w0 = rand_vec(n, 100, -1.0, 1.0);
    let grads = [rand_vec(n, 101, -1.0, 1.0), rand_vec(n, 102, -1.0, 1.0)];
    let (lr, wd) = (0.1f32, 5e-5f32);
    for (momentum, nesterov) in [(0.9f32, true), (0.9, false), (0.0, false)] {
        let cfg = SgdConfig {
            momentum,
            weight_decay: wd,
            nesterov,
        };
        let mut store = ParamStore::new();
        let t = TorchTensor {
            shape: vec![10, 100],
            data: w0.clone(),
        };
        store.insert("fc.weight", Kind::Param, t).unwrap();
        let mut sgd = Sgd::new(cfg);
        let (mut w, mut buf): (Vec<f32>, Option<Vec<f32>>) = (w0.clone(), None);
        for (step, g) in grads.iter().enumerate() {
            let gt = tensor(&[10, 100], g.clone());
            sgd.step(
                &mut store,
                &BTreeMap::from([("fc.weight".to_string(), gt)]),
                lr as f64,
            )
            .unwrap();
            let mut l = Launch::new();
            let first = buf.is_none();
            let bp = match &buf {
                Some(b) => l.input(b),
                None => 0,
            };
            let args = Args::new().push(l.input(&w)).push(l.input(g)).push(bp);
            let args = args
                .push(l.output(n))
                .push(if momentum != 0.0 { l.output(n) } else { 0 });
            let args = args.push(lr).push(momentum).push(wd);
            let args = args
                .push(i32::from(first))
                .push(i32::from(nesterov))
                .push(n as u64);
            let Some(out) = l.run1("optim.cu", "sgd_nesterov_f32", n, args) else {
                return;
            };
            w = out[0].clone();
            if momentum != 0.0 {
                buf = Some(out[1].clone());
            }
            let want = store.get("fc.weight").unwrap().tensor.data().to_vec();
            assert_eq!(
                w, want,
                "sgd momentum {momentum} nesterov {nesterov} step {step}"
            );
        }
    }
    // EMA: decay and 1 - decay (rounded from f64, as the caller passes it).
    let decay = 0.9998f64;
    let (ema, model) = (rand_vec(n, 103, -1.0, 1.0), rand_vec(n, 104, -1.0, 1.0));
    let want: Vec<f32> = ema
        .iter()
        .zip(&model)
        .map(|(e, m)| decay as f32 * e + (1.0 - decay) as f32 * m)
        .collect();
    let mut es = ParamStore::new();
    let mut ms = ParamStore::new();
    let tt = |d: &[f32]| TorchTensor {
        shape: vec![n],
        data: d.to_vec(),
    };
    es.insert("w", Kind::Param, tt(&ema)).unwrap();
    ms.insert("w", Kind::Param, tt(&model)).unwrap();
    mpm::train::ema::update(&mut es, &ms, decay).unwrap();
    assert_eq!(es.get("w").unwrap().tensor.data(), want, "the CPU EMA rule");
    let mut l = Launch::new();
    let args = Args::new()
        .push(l.input(&ema))
        .push(l.input(&model))
        .push(l.output(n));
    let args = args
        .push(decay as f32)
        .push((1.0 - decay) as f32)
        .push(n as u64);
    let out = l.run1("optim.cu", "ema_update_f32", n, args).unwrap();
    assert_eq!(out[0], want, "ema_update");
}

/// `Launch` over raw f64 buffers (the reductions' partials): `len` f64 slots as 2*len f32.
fn f64_slots(l: &mut Launch, len: usize) -> u64 {
    l.input(&vec![0.0f32; 2 * len])
}

/// A NoGrad tape run of `f` on CPU inputs: the forward value.
fn cpu_forward(
    inputs: &[Tensor],
    f: impl Fn(&mut mpm::autograd::Tape, &[mpm::autograd::Var]) -> mpm::Result<mpm::autograd::Var>,
) -> Tensor {
    use mpm::autograd::{GradMode, Tape};
    let mut t = Tape::new(GradMode::NoGrad);
    let vs: Vec<_> = inputs.iter().map(|x| t.input(x.clone(), false)).collect();
    let y = f(&mut t, &vs).unwrap();
    t.value(y).clone()
}

/// conv_gelu.cu: BN folded into the weights (`bn_fold`), the fused implicit-GEMM convolution
/// with the BN shift and GELU / ReLU in its epilogue (`conv_bn_act`, f32 and bf16 input, the
/// pre-activation output too), and the epilogue alone (`shift_act`), against the CPU's
/// convolution -> eval-mode BN -> activation, on the shapes `cuda_parity` uses (output
/// channels that are not a multiple of the 64-wide tile, strides, 1x1 and 7x7 pads).
#[test]
fn conv_bn_act_kernels_emulated() {
    use mpm::ops::{self, BatchNormMode, Conv2dParams};
    let (n, h, w, c) = (2usize, 9usize, 9usize, 8usize);
    let x = rand_vec(n * h * w * c, 45, -1.0, 1.0);
    for (name, o, k, stride, pad) in [
        ("3x3 s1", 70usize, 3usize, 1usize, 1usize),
        ("3x3 s2", 6, 3, 2, 1),
        ("1x1", 130, 1, 1, 0),
        ("7x7 s2 p3", 4, 7, 2, 3),
    ] {
        let wt = rand_vec(o * k * k * c, 46, -0.3, 0.3);
        let gamma = rand_vec(o, 47, 0.5, 1.5);
        let beta = rand_vec(o, 48, -0.5, 0.5);
        let rm = rand_vec(o, 49, -0.2, 0.2);
        let rv = rand_vec(o, 50, 0.5, 1.5);
        let eps = 1e-5f32;
        // Fold.
        let mut l = Launch::new();
        let args = Args::new()
            .push(l.input(&wt))
            .push(l.input(&gamma))
            .push(l.input(&beta))
            .push(l.input(&rm))
            .push(l.input(&rv))
            .push(l.output(wt.len()))
            .push(l.output(o))
            .push(o as u32)
            .push((k * k * c) as u32)
            .push(eps);
        let Some(folded) = l.run1("conv_gelu.cu", "bn_fold", wt.len(), args) else {
            return;
        };
        let (wf, shift) = (&folded[0], &folded[1]);
        for oc in 0..o {
            let s = gamma[oc] / (rv[oc] + eps).sqrt();
            let want = beta[oc] - rm[oc] * s;
            assert!(
                (shift[oc] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "bn_fold shift {oc}"
            );
        }
        let p = Conv2dParams::new(stride, pad);
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let m = n * oh * ow;
        let params: [u32; 12] = [n, h, w, c, o, k, k, stride, pad, 1, oh, ow].map(|v| v as u32);
        for bf16 in [false, true] {
            let xin: Vec<f32> = if bf16 {
                x.iter().map(|v| bf16_to_f32(f32_to_bf16(*v))).collect()
            } else {
                x.clone()
            };
            for (act, code) in [("gelu", 1u32), ("relu", 2)] {
                let pre = cpu_forward(
                    &[
                        tensor(&[n, h, w, c], xin.clone()),
                        tensor(&[o, k, k, c], wt.clone()),
                        tensor(&[o], gamma.clone()),
                        tensor(&[o], beta.clone()),
                    ],
                    |t, v| {
                        let y = ops::conv2d(t, v[0], v[1], None, p)?;
                        let (mut a, mut b) = (tensor(&[o], rm.clone()), tensor(&[o], rv.clone()));
                        ops::batch_norm(t, y, v[2], v[3], &mut a, &mut b, BatchNormMode::Eval, eps)
                    },
                );
                let want_y = cpu_forward(std::slice::from_ref(&pre), |t, v| {
                    if code == 1 {
                        ops::try_gelu(t, v[0])
                    } else {
                        ops::try_relu(t, v[0])
                    }
                });
                let (gy, gpre) = if bf16 {
                    let xb: Vec<u16> = x.iter().map(|v| f32_to_bf16(*v)).collect();
                    let mut xbuf = Buf::new(&xb, 0x7f7f);
                    let mut y = Buf::filled(m * o, 0x7fc0u16, 0x7f7f);
                    let mut pr = Buf::filled(m * o, 0x7fc0u16, 0x7f7f);
                    let (mut wb, mut sb) = (Buf::new(wf, GUARD), Buf::new(shift, GUARD));
                    let args = Args::new()
                        .push(xbuf.ptr())
                        .push(wb.ptr())
                        .push(sb.ptr())
                        .push(y.ptr())
                        .push(pr.ptr())
                        .push(params)
                        .push(code);
                    let lib = kernels("conv_gelu.cu").unwrap();
                    let grid = (m.div_ceil(64) as u32, o.div_ceil(64) as u32, 1);
                    lib.launch("conv_bn_act_bf16", grid, 256, 0, args)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let f = |b: &Buf<u16>, w: &str| -> Vec<f32> {
                        b.get(w).iter().map(|v| bf16_to_f32(*v)).collect()
                    };
                    wb.get("wf");
                    sb.get("shift");
                    xbuf.get("x");
                    (f(&y, "y"), f(&pr, "pre"))
                } else {
                    let mut l = Launch::new();
                    let args = Args::new()
                        .push(l.input(&x))
                        .push(l.input(wf))
                        .push(l.input(shift))
                        .push(l.output(m * o))
                        .push(l.output(m * o))
                        .push(params)
                        .push(code);
                    let lib = kernels("conv_gelu.cu").unwrap();
                    let grid = (m.div_ceil(64) as u32, o.div_ceil(64) as u32, 1);
                    lib.launch("conv_bn_act_f32", grid, 256, 0, args)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let outs: Vec<Vec<f32>> = l
                        .outs
                        .iter()
                        .map(|&i| l.bufs[i].get("conv").to_vec())
                        .collect();
                    (outs[0].clone(), outs[1].clone())
                };
                let tol = if bf16 { 2e-2 } else { 1e-5 };
                let (ey, ep) = (rel_l2(&gy, want_y.data()), rel_l2(&gpre, pre.data()));
                println!("conv_bn_act {name} bf16 {bf16} {act}: y rel L2 {ey:.2e}, pre {ep:.2e}");
                assert!(
                    ey <= tol && ep <= tol,
                    "conv_bn_act {name} bf16 {bf16} {act}"
                );
                // The epilogue alone on the CPU's conv output (the cuDNN path's second half).
                if !bf16 {
                    let z = cpu_forward(
                        &[
                            tensor(&[n, h, w, c], x.clone()),
                            tensor(&[o, k, k, c], wf.clone()),
                        ],
                        |t, v| ops::conv2d(t, v[0], v[1], None, p),
                    );
                    let mut l = Launch::new();
                    let args = Args::new()
                        .push(l.input(z.data()))
                        .push(l.output(m * o))
                        .push(l.output(m * o))
                        .push(l.input(shift))
                        .push((m * o) as u64)
                        .push(o as u32)
                        .push(code);
                    let outs = l
                        .run1("conv_gelu.cu", "shift_act_f32", m * o, args)
                        .unwrap();
                    let e = rel_l2(&outs[0], want_y.data());
                    assert!(e <= 1e-5, "shift_act {name} {act}: rel L2 {e:.3e}");
                }
            }
        }
    }
}

/// bn_gelu.cu with reduce.cu's column sums: the training-mode BN + activation forward (batch
/// statistics in f64 over row chunks, running statistics updated, invstd) and its backward
/// (f64 partial sums of dpre and dpre * xhat per chunk, then dx), as `ops::batch_norm_act`
/// runs them on a GPU, against the CPU tape's forward and gradients; M not a multiple of the
/// 256-row chunk, C not a multiple of the 128-thread column block.
#[test]
fn batch_norm_act_kernels_emulated() {
    use mpm::autograd::{GradMode, Tape};
    use mpm::nn::Act;
    use mpm::ops::{self, BatchNormMode};
    let (n, h, w, c) = (3usize, 13usize, 11usize, 133usize);
    let m = n * h * w;
    let len = m * c;
    let x = rand_vec(len, 60, -2.0, 2.0);
    let gamma = rand_vec(c, 61, 0.5, 1.5);
    let beta = rand_vec(c, 62, -0.5, 0.5);
    let dy = rand_vec(len, 63, -1.0, 1.0);
    let (rm0, rv0) = (rand_vec(c, 64, -0.2, 0.2), rand_vec(c, 65, 0.5, 1.5));
    let (momentum, eps) = (0.1f32, 1e-5f32);
    for (act, code) in [(None, 0u32), (Some(Act::Gelu), 1), (Some(Act::Relu), 2)] {
        // CPU: forward, running statistics, gradients.
        let mut t = Tape::new(GradMode::Full);
        let xv = t.input(tensor(&[n, h, w, c], x.clone()), true);
        let gv = t.input(tensor(&[c], gamma.clone()), true);
        let bv = t.input(tensor(&[c], beta.clone()), true);
        let (mut rm, mut rv) = (tensor(&[c], rm0.clone()), tensor(&[c], rv0.clone()));
        let mode = BatchNormMode::Train { momentum };
        let y = ops::batch_norm_act(&mut t, xv, gv, bv, &mut rm, &mut rv, mode, eps, act).unwrap();
        let want_y = t.value(y).clone();
        let g = t
            .backward_with(y, tensor(&[n, h, w, c], dy.clone()))
            .unwrap();
        let (want_dx, want_dg, want_db) =
            (g.get(xv).unwrap(), g.get(gv).unwrap(), g.get(bv).unwrap());
        // Emulated: mean, variance about it (col_partial / col_finish), bn_finalize, bn_apply.
        let chunks = m.div_ceil(256);
        let cx = c.div_ceil(128) as u32;
        let col = |center: Option<&[f32]>, power: u32| -> Option<Vec<f32>> {
            let mut l = Launch::new();
            let part = f64_slots(&mut l, chunks * c);
            let cp = center.map_or(0, |v| l.input(v));
            let a = Args::new()
                .push(l.input(&x))
                .push(cp)
                .push(m as u32)
                .push(c as u32);
            let a = a.push(256u32).push(power).push(part);
            let lib = kernels("reduce.cu")?;
            lib.launch("col_partial_f32", (cx, chunks as u32, 1), 128, 0, a)
                .unwrap_or_else(|e| panic!("{e}"));
            let out = l.output(c);
            let a = Args::new().push(part).push(chunks as u32).push(c as u32);
            let a = a.push(1.0 / m as f64).push(out);
            lib.launch("col_finish", (cx, 1, 1), 128, 0, a)
                .unwrap_or_else(|e| panic!("{e}"));
            Some(l.bufs[*l.outs.last().unwrap()].get("col_finish").to_vec())
        };
        let Some(mean) = col(None, 1) else { return };
        let var = col(Some(&mean), 2).unwrap();
        let mut l = Launch::new();
        let (rmp, rvp) = (l.inout(&rm0), l.inout(&rv0));
        let args = Args::new()
            .push(l.input(&mean))
            .push(l.input(&var))
            .push(rmp)
            .push(rvp)
            .push(l.output(c))
            .push(c as u32)
            .push(momentum)
            .push(m as f32 / (m as f32 - 1.0))
            .push(eps)
            .push(1u32);
        let fin = l
            .run("bn_gelu.cu", "bn_finalize", cx, 128, 0, args)
            .unwrap();
        let (new_rm, new_rv, invstd) = (&fin[0], &fin[1], &fin[2]);
        assert!(rel_l2(new_rm, rm.data()) <= 1e-6, "running mean");
        assert!(rel_l2(new_rv, rv.data()) <= 1e-6, "running var");
        let mut l = Launch::new();
        let args = Args::new()
            .push(l.input(&x))
            .push(l.output(len))
            .push(l.input(&mean))
            .push(l.input(invstd))
            .push(l.input(&gamma))
            .push(l.input(&beta))
            .push(len as u64)
            .push(c as u32)
            .push(code);
        let yk = l.run1("bn_gelu.cu", "bn_apply_f32", len, args).unwrap();
        let ey = rel_l2(&yk[0], want_y.data());
        // Backward: per-chunk partials (grid: column blocks x row chunks), two column
        // finishes, then dx.
        let lib = kernels("bn_gelu.cu").unwrap();
        let mut l = Launch::new();
        let part = f64_slots(&mut l, 2 * chunks * c);
        let args = Args::new()
            .push(l.input(&x))
            .push(l.input(&dy))
            .push(l.input(&mean))
            .push(l.input(invstd))
            .push(l.input(&gamma))
            .push(l.input(&beta))
            .push(m as u32)
            .push(c as u32)
            .push(256u32)
            .push(code)
            .push(chunks as u32)
            .push(part);
        lib.launch("bn_bwd_partial_f32", (cx, chunks as u32, 1), 128, 0, args)
            .unwrap_or_else(|e| panic!("{e}"));
        let reduce = kernels("reduce.cu").unwrap();
        let s1 = l.output(c);
        let s2 = l.output(c);
        for (src, dst) in [(part, s1), (part + (chunks * c * 8) as u64, s2)] {
            let a = Args::new().push(src).push(chunks as u32).push(c as u32);
            reduce
                .launch("col_finish", (cx, 1, 1), 128, 0, a.push(1.0f64).push(dst))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let args = Args::new()
            .push(l.input(&x))
            .push(l.input(&dy))
            .push(l.output(len))
            .push(l.input(&mean))
            .push(l.input(invstd))
            .push(l.input(&gamma))
            .push(l.input(&beta))
            .push(s1)
            .push(s2)
            .push(len as u64)
            .push(m as u32)
            .push(c as u32)
            .push(1u32)
            .push(code);
        let outs = l.run1("bn_gelu.cu", "bn_bwd_input_f32", len, args).unwrap();
        let (db, dg, dx) = (&outs[0], &outs[1], &outs[2]);
        let (ex, eg, eb) = (
            rel_l2(dx, want_dx.data()),
            rel_l2(dg, want_dg.data()),
            rel_l2(db, want_db.data()),
        );
        println!("bn {act:?}: y {ey:.2e}, dx {ex:.2e}, dgamma {eg:.2e}, dbeta {eb:.2e}");
        assert!(
            ey <= 1e-5 && ex <= 1e-4 && eg <= 1e-4 && eb <= 1e-4,
            "bn {act:?}"
        );
    }
}

/// mask_targets.cu: the label map to 28x28 soft targets by nearest resize and label smoothing,
/// and to 14x14 / 7x7 through the bilinear taps on the base grid (f32 and bf16 storage), against
/// the CPU reference `cuda_parity::mask_targets_kernel` uses (nearest one-hot, then the
/// engine's bilinear resize); labels >= S are counted.
#[test]
fn mask_target_kernels_emulated() {
    use mpm::ops;
    let (n, h, w, s, base) = (2usize, 37usize, 45usize, 13usize, 28usize);
    let mut labels: Vec<u16> = rand_vec(n * h * w, 22, 0.0, s as f32)
        .iter()
        .map(|v| *v as u16)
        .collect();
    let (smoothing, off) = (0.1f32, 0.1f32 / s as f32);
    let on = 1.0 - smoothing + off;
    let near = |d: usize, i: usize, o: usize| {
        ((d as f32 * (i as f32 / o as f32)).floor() as usize).min(i - 1)
    };
    let mut want = vec![off; n * base * base * s];
    for b in 0..n {
        for y in 0..base {
            for x in 0..base {
                let l = labels[(b * h + near(y, h, base)) * w + near(x, w, base)] as usize;
                want[((b * base + y) * base + x) * s + l] = on;
            }
        }
    }
    let base_t = tensor(&[n, base, base, s], want.clone());
    for bf16 in [false, true] {
        let sfx = if bf16 { "bf16" } else { "f32" };
        let Some(lib) = kernels("mask_targets.cu") else {
            return;
        };
        let mut lab = Buf::new(&labels, 0xfff0);
        let mut bad = Buf::new(&[0u32], 0xdead_beef);
        // Output buffers as raw 32-bit words (bf16 pairs in the bf16 case).
        let run = |name: &str, out_len: usize, extra: Vec<u32>| -> Vec<f32> {
            let words = if bf16 { out_len.div_ceil(2) } else { out_len };
            let mut out = Buf::filled(words, 0x7fc0_7fc0u32, 0x7f7f_7f7f);
            let mut lab = Buf::new(&labels, 0xfff0);
            let mut a = Args::new().push(lab.ptr()).push(out.ptr());
            for v in [h as u32, w as u32, base as u32, base as u32] {
                a = a.push(v);
            }
            for v in extra {
                a = a.push(v);
            }
            let a = a.push(on).push(off);
            let blocks = (out_len / s) as u32;
            lib.launch(name, (blocks, 1, 1), 128, 0, a)
                .unwrap_or_else(|e| panic!("{e}"));
            lab.get("labels");
            let v = out.get(name);
            if bf16 {
                v.iter()
                    .flat_map(|p| [bf16_to_f32(*p as u16), bf16_to_f32((*p >> 16) as u16)])
                    .take(out_len)
                    .collect()
            } else {
                v.iter().map(|b| f32::from_bits(*b)).collect()
            }
        };
        // Nearest level (its launch also takes the bad-label counter).
        let words = if bf16 {
            want.len().div_ceil(2)
        } else {
            want.len()
        };
        let mut out = Buf::filled(words, 0x7fc0_7fc0u32, 0x7f7f_7f7f);
        let mut a = Args::new().push(lab.ptr()).push(out.ptr());
        for v in [h, w, base, base, s].map(|v| v as u32) {
            a = a.push(v);
        }
        let a = a.push(on).push(off).push(bad.ptr());
        lib.launch(
            &format!("mask_nearest_{sfx}"),
            ((n * base * base) as u32, 1, 1),
            128,
            0,
            a,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<f32> = if bf16 {
            out.get("nearest")
                .iter()
                .flat_map(|p| [bf16_to_f32(*p as u16), bf16_to_f32((*p >> 16) as u16)])
                .collect()
        } else {
            out.get("nearest")
                .iter()
                .map(|b| f32::from_bits(*b))
                .collect()
        };
        let tol = if bf16 { 4e-3 } else { 1e-6 };
        let e = rel_l2(&got, &want);
        assert!(e <= tol, "mask_nearest_{sfx}: rel L2 {e:.3e}");
        assert_eq!(bad.get("bad")[0], 0, "no label is >= S");
        lab.get("labels");
        for o in [14usize, 7] {
            let got = run(
                &format!("mask_bilinear_{sfx}"),
                n * o * o * s,
                vec![o as u32, o as u32, s as u32],
            );
            let want = cpu_forward(std::slice::from_ref(&base_t), |t, v| {
                ops::resize_bilinear(t, v[0], o, o)
            });
            let e = rel_l2(&got, want.data());
            println!("mask {o}x{o} {sfx}: rel L2 {e:.2e}");
            assert!(e <= tol, "mask_bilinear_{sfx} {o}x{o}: rel L2 {e:.3e}");
        }
    }
    // A label >= S is counted (and treated as absent).
    labels[0] = s as u16;
    let Some(lib) = kernels("mask_targets.cu") else {
        return;
    };
    let mut lab = Buf::new(&labels, 0xfff0);
    let mut bad = Buf::new(&[0u32], 0xdead_beef);
    let mut out = Buf::filled(n * base * base * s, f32::NAN, GUARD);
    let mut a = Args::new().push(lab.ptr()).push(out.ptr());
    for v in [h, w, base, base, s].map(|v| v as u32) {
        a = a.push(v);
    }
    let a = a.push(on).push(off).push(bad.ptr());
    lib.launch(
        "mask_nearest_f32",
        ((n * base * base) as u32, 1, 1),
        128,
        0,
        a,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bad.get("bad")[0],
        1,
        "the label map's pixel (0, 0) feeds one base pixel"
    );
    out.get("nearest");
}

/// Forward value and input gradient (for output gradient `dy`) of a one-input op on the CPU.
fn cpu_fwd_bwd(
    x: &Tensor,
    dy: &[f32],
    f: impl Fn(&mut mpm::autograd::Tape, mpm::autograd::Var) -> mpm::Result<mpm::autograd::Var>,
) -> (Tensor, Tensor) {
    use mpm::autograd::{GradMode, Tape};
    let mut t = Tape::new(GradMode::Full);
    let v = t.input(x.clone(), true);
    let y = f(&mut t, v).unwrap();
    let shape = t.value(y).shape().to_vec();
    let g = t.backward_with(y, tensor(&shape, dy.to_vec())).unwrap();
    (t.value(y).clone(), g.get(v).unwrap().clone())
}

/// The remaining f32 kernels against the CPU: softmax_xent.cu (softmax / log-softmax rows and
/// backward, soft-target cross-entropy rows, summed by reduce.cu's sum_partial / sum_finish),
/// elementwise.cu (GELU and ReLU forward and backward, axpby, scale), pool.cu (max pool with
/// argmax and its backward, adaptive average pool and backward) and resize.cu (bilinear
/// forward and its atomic scatter backward); shapes with ragged blocks.
#[test]
fn row_pool_resize_elementwise_kernels_emulated() {
    use mpm::cpu::softmax_xent as sx;
    use mpm::ops;
    let (rows, cols) = (7usize, 1000usize);
    let z = rand_vec(rows * cols, 110, -5.0, 5.0);
    let dy = rand_vec(rows * cols, 111, -1.0, 1.0);
    let close = |what: &str, got: &[f32], want: &[f32], tol: f64| {
        let e = rel_l2(got, want);
        println!("{what}: rel L2 {e:.2e}");
        assert!(e <= tol, "{what}: rel L2 {e:.3e}");
    };
    for log in [0u32, 1] {
        let mut l = Launch::new();
        let a = Args::new()
            .push(l.input(&z))
            .push(l.output(z.len()))
            .push(cols as u32)
            .push(log);
        let Some(y) = l.run(
            "softmax_xent.cu",
            "softmax_rows_f32",
            rows as u32,
            256,
            0,
            a,
        ) else {
            return;
        };
        let want = if log == 1 {
            sx::log_softmax(&z, cols)
        } else {
            sx::softmax(&z, cols)
        };
        close(&format!("softmax_rows log {log}"), &y[0], &want, 1e-6);
    }
    let y = sx::softmax(&z, cols);
    let mut l = Launch::new();
    let a = Args::new()
        .push(l.input(&y))
        .push(l.input(&dy))
        .push(l.output(z.len()));
    let got = l
        .run(
            "softmax_xent.cu",
            "softmax_bwd_rows_f32",
            rows as u32,
            256,
            0,
            a.push(cols as u32),
        )
        .unwrap();
    close(
        "softmax_bwd_rows",
        &got[0],
        &sx::softmax_backward(&y, &dy, cols),
        1e-5,
    );
    // Soft-target CE: per-row losses, then the deterministic two-stage sum.
    let mut t = rand_vec(rows * cols, 112, 0.0, 1.0);
    for r in t.chunks_mut(cols) {
        let s: f32 = r.iter().sum();
        r.iter_mut().for_each(|v| *v /= s);
    }
    let (want_loss, want_dz) = sx::soft_cross_entropy(&z, &t, cols);
    let mut l = Launch::new();
    let a = Args::new()
        .push(l.input(&z))
        .push(l.input(&t))
        .push(l.output(z.len()));
    let a = a
        .push(l.output(rows))
        .push(cols as u32)
        .push(1.0f32 / rows as f32);
    let got = l
        .run(
            "softmax_xent.cu",
            "soft_xent_rows_f32",
            rows as u32,
            256,
            0,
            a,
        )
        .unwrap();
    close("soft_xent_rows dz", &got[0], &want_dz, 1e-5);
    let blocks = grid1(rows).min(1024);
    let mut l = Launch::new();
    let part = f64_slots(&mut l, blocks as usize);
    let a = Args::new()
        .push(l.input(&got[1]))
        .push(part)
        .push(rows as u64);
    kernels("reduce.cu")
        .unwrap()
        .launch("sum_partial_f32", (blocks, 1, 1), 256, 0, a)
        .unwrap_or_else(|e| panic!("{e}"));
    let a = Args::new()
        .push(part)
        .push(blocks)
        .push(1.0f32 / rows as f32)
        .push(l.output(1));
    let loss = l.run("reduce.cu", "sum_finish", 1, 256, 0, a).unwrap();
    let el = ((loss[0][0] - want_loss) / want_loss).abs();
    assert!(
        el <= 1e-6,
        "soft cross-entropy loss: {} vs {want_loss}",
        loss[0][0]
    );
    // Elementwise.
    let n = 3001;
    let x = rand_vec(n, 113, -4.0, 4.0);
    let g = rand_vec(n, 114, -1.0, 1.0);
    let xt = tensor(&[n], x.clone());
    for (kind, f) in [
        (
            "gelu",
            ops::try_gelu
                as fn(
                    &mut mpm::autograd::Tape,
                    mpm::autograd::Var,
                ) -> mpm::Result<mpm::autograd::Var>,
        ),
        ("relu", ops::try_relu),
    ] {
        let (want_y, want_dx) = cpu_fwd_bwd(&xt, &g, f);
        let mut l = Launch::new();
        let a = Args::new()
            .push(l.input(&x))
            .push(l.output(n))
            .push(n as u64);
        let y = l
            .run1("elementwise.cu", &format!("{kind}_fwd_f32"), n, a)
            .unwrap();
        close(&format!("{kind} fwd"), &y[0], want_y.data(), 1e-6);
        let mut l = Launch::new();
        let a = Args::new()
            .push(l.input(&x))
            .push(l.input(&g))
            .push(l.output(n))
            .push(n as u64);
        let dx = l
            .run1("elementwise.cu", &format!("{kind}_bwd_f32"), n, a)
            .unwrap();
        close(&format!("{kind} bwd"), &dx[0], want_dx.data(), 1e-6);
    }
    let mut l = Launch::new();
    let a = Args::new()
        .push(l.input(&x))
        .push(l.input(&g))
        .push(l.output(n));
    let got = l
        .run1(
            "elementwise.cu",
            "axpby_f32",
            n,
            a.push(0.5f32).push(-2.0f32).push(n as u64),
        )
        .unwrap();
    let want: Vec<f32> = x.iter().zip(&g).map(|(a, b)| 0.5 * a + -2.0 * b).collect();
    close("axpby", &got[0], &want, 1e-7);
    let mut l = Launch::new();
    let a = Args::new()
        .push(l.input(&x))
        .push(l.output(n))
        .push(0.25f32)
        .push(n as u64);
    let got = l.run1("elementwise.cu", "scale_f32", n, a).unwrap();
    assert_eq!(
        got[0],
        x.iter().map(|v| v * 0.25).collect::<Vec<_>>(),
        "scale"
    );
    // Pools and the bilinear resize, (N, H, W, C) = (2, 9, 11, 5).
    let (nn, h, w, c) = (2usize, 9usize, 11usize, 5usize);
    let img = rand_vec(nn * h * w * c, 115, -1.0, 1.0);
    let it = tensor(&[nn, h, w, c], img.clone());
    let (k, s, p) = (3usize, 2usize, 1usize);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let dyp = rand_vec(nn * oh * ow * c, 116, -1.0, 1.0);
    let (want_y, want_dx) = cpu_fwd_bwd(&it, &dyp, |t, v| ops::max_pool2d(t, v, k, s, p));
    let dims = [nn, h, w, c, k, s, p, oh, ow].map(|v| v as u32);
    let mut l = Launch::new();
    let mut a = Args::new()
        .push(l.input(&img))
        .push(l.output(want_y.numel()))
        .push(l.output(want_y.numel()));
    for d in dims {
        a = a.push(d);
    }
    let fwd = l
        .run1("pool.cu", "maxpool_fwd_f32", want_y.numel(), a)
        .unwrap();
    assert_eq!(fwd[0], want_y.data(), "maxpool fwd");
    let mut l = Launch::new();
    let mut a = Args::new()
        .push(l.input(&dyp))
        .push(l.input(&fwd[1]))
        .push(l.output(img.len()));
    for d in dims {
        a = a.push(d);
    }
    let dx = l.run1("pool.cu", "maxpool_bwd_f32", img.len(), a).unwrap();
    close("maxpool bwd", &dx[0], want_dx.data(), 1e-6);
    for (oh, ow) in [(1usize, 1usize), (4, 3)] {
        let dims = [nn, h, w, c, oh, ow].map(|v| v as u32);
        let (file, names) = ("pool.cu", ["avgpool_fwd_f32", "avgpool_bwd_f32"]);
        check_fwd_bwd(file, names, &it, &dims, false, |t, v| {
            ops::adaptive_avg_pool2d(t, v, oh, ow)
        });
        let (rh, rw) = (oh * 3 + 1, ow * 2 + 5);
        let dims = [nn, h, w, c, rh, rw].map(|v| v as u32);
        let names = ["bilinear_fwd_f32", "bilinear_bwd_f32"];
        check_fwd_bwd("resize.cu", names, &it, &dims, true, |t, v| {
            ops::resize_bilinear(t, v, rh, rw)
        });
    }
}

/// A forward kernel `names[0](x, y, dims...)` and its backward `names[1](dy, dx, dims...)`
/// (grid-stride launches; `scatter`: dx starts at zero and the kernel adds into it, one thread
/// per dy element) against the CPU op `f`'s value and input gradient, to 1e-5.
fn check_fwd_bwd(
    file: &str,
    names: [&str; 2],
    x: &Tensor,
    dims: &[u32],
    scatter: bool,
    f: impl Fn(&mut mpm::autograd::Tape, mpm::autograd::Var) -> mpm::Result<mpm::autograd::Var>,
) {
    let probe = cpu_forward(std::slice::from_ref(x), |t, v| f(t, v[0]));
    let dy = rand_vec(probe.numel(), 117, -1.0, 1.0);
    let (want_y, want_dx) = cpu_fwd_bwd(x, &dy, f);
    let mut l = Launch::new();
    let mut a = Args::new()
        .push(l.input(x.data()))
        .push(l.output(want_y.numel()));
    for d in dims {
        a = a.push(*d);
    }
    let y = l.run1(file, names[0], want_y.numel(), a).unwrap();
    let mut l = Launch::new();
    let dx_ptr = if scatter {
        l.inout(&vec![0.0f32; x.numel()])
    } else {
        l.output(x.numel())
    };
    let mut a = Args::new().push(l.input(&dy)).push(dx_ptr);
    for d in dims {
        a = a.push(*d);
    }
    let threads = if scatter { dy.len() } else { x.numel() };
    let dx = l.run1(file, names[1], threads, a).unwrap();
    for (what, got, want) in [(names[0], &y[0], &want_y), (names[1], &dx[0], &want_dx)] {
        let e = rel_l2(got, want.data());
        println!("{what} {dims:?}: rel L2 {e:.2e}");
        assert!(e <= 1e-5, "{what} {dims:?}: rel L2 {e:.3e}");
    }
}
