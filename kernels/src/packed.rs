//! Matrix products whose right-hand side is constant (a layer's weights), packed once at load as
//! MLAS packs them: the `[k, n]` matrix is cut into panels of [`NR`] columns, each stored `k` rows
//! of `NR` contiguous floats (the last one zero-padded), with the bias padded alongside. A product
//! then streams each panel once per block of rows, with the block's accumulators in registers,
//! the bias as their starting value, and nothing packed per call. At the shapes encoders and MLPs
//! run on a CPU (a few to a few hundred rows), the `gemm` crate behind candle spends a sixth of its
//! time packing both sides on every call.
//!
//! The vector kernels are written with intrinsics (AVX-512F, or AVX2 and FMA): the accumulators
//! must stay in registers, which LLVM does not manage for the same loops over arrays.
//!
//! One thread: the server runs one executor thread per instance, and products big enough to gain
//! from more go through candle's GEMM when more threads are allowed.

/// Columns per panel: two AVX-512 registers, four AVX2 ones.
pub const NR: usize = 32;

/// A `[k, n]` right-hand side (and an optional bias `[n]`), packed.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// `ceil(n / NR)` panels of `k * NR` floats.
    panels: Vec<f32>,
    /// `ceil(n / NR) * NR` floats: the bias, or zeros.
    bias: Vec<f32>,
}

impl PackedB {
    /// Packs `b` (row-major `[k, n]`) and `bias` (`[n]`). `None` when the lengths do not match.
    pub fn new(b: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> Option<PackedB> {
        if b.len() != k.checked_mul(n)? || bias.is_some_and(|x| x.len() != n) {
            return None;
        }
        let count = n.div_ceil(NR);
        let mut panels = vec![0f32; count * k * NR];
        for p in 0..count {
            let cols = NR.min(n - p * NR);
            let panel = &mut panels[p * k * NR..][..k * NR];
            for kk in 0..k {
                panel[kk * NR..kk * NR + cols].copy_from_slice(&b[kk * n + p * NR..][..cols]);
            }
        }
        let mut padded = vec![0f32; count * NR];
        if let Some(bias) = bias {
            padded[..n].copy_from_slice(bias);
        }
        Some(PackedB {
            k,
            n,
            panels,
            bias: padded,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes the packed matrix holds.
    pub fn bytes(&self) -> usize {
        (self.panels.len() + self.bias.len()) * 4
    }

    /// Whether this CPU runs [`PackedB::matmul`] with vector registers (AVX-512, or AVX2 and
    /// FMA); elsewhere it is a plain loop, and callers should keep their own GEMM.
    pub fn fast() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            (crate::simd::allowed(crate::simd::AVX512) && std::is_x86_feature_detected!("avx512f"))
                || (crate::simd::allowed(crate::simd::AVX2)
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `a [m, k] · B + bias` into `c [m, n]` (both row-major). Panics when the lengths are not
    /// `m * k` and `m * n` (callers check shapes first).
    pub fn matmul(&self, a: &[f32], m: usize, c: &mut [f32]) {
        assert_eq!(a.len(), m * self.k, "lhs length");
        assert_eq!(c.len(), m * self.n, "output length");
        #[cfg(target_arch = "x86_64")]
        {
            if crate::simd::allowed(crate::simd::AVX512) && std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F; the lengths were checked above.
                return unsafe { x86::product512(self, a, m, c) };
            }
            if crate::simd::allowed(crate::simd::AVX2)
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA; the lengths were checked above.
                return unsafe { x86::product256(self, a, m, c) };
            }
        }
        let (k, n) = (self.k, self.n);
        for i in 0..m {
            for j in 0..n {
                let (panel, lane) = (j / NR, j % NR);
                let b = &self.panels[panel * k * NR..];
                let mut s = self.bias[j];
                for kk in 0..k {
                    s += a[i * k + kk] * b[kk * NR + lane];
                }
                c[i * n + j] = s;
            }
        }
    }
}

/// The vector kernels: per panel, blocks of `R` rows whose `R x NR` accumulators stay in registers
/// across the whole `k`, started at the bias; one broadcast of `a` per row and step.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{NR, PackedB};

    /// Calls `$tile::<R>` for every block of rows of every panel, the rows left over (fewer than
    /// `R`, at most 5) in one smaller block.
    macro_rules! sweep {
        ($p:expr, $a:expr, $m:expr, $c:expr, $tile:ident, $r:literal) => {{
            let (p, a, m, c) = ($p, $a, $m, $c);
            let (k, n) = (p.k, p.n);
            for panel in 0..n.div_ceil(NR) {
                let b = p.panels.as_ptr().add(panel * k * NR);
                let bias = p.bias.as_ptr().add(panel * NR);
                let col = panel * NR;
                let cols = NR.min(n - col);
                let mut row = 0;
                while row + $r <= m {
                    $tile::<$r>(
                        a.as_ptr().add(row * k),
                        k,
                        b,
                        bias,
                        c.as_mut_ptr().add(row * n + col),
                        n,
                        cols,
                    );
                    row += $r;
                }
                let (a_at, c_at) = (a.as_ptr().add(row * k), c.as_mut_ptr().add(row * n + col));
                match m - row {
                    0 => {}
                    1 => $tile::<1>(a_at, k, b, bias, c_at, n, cols),
                    2 => $tile::<2>(a_at, k, b, bias, c_at, n, cols),
                    3 => $tile::<3>(a_at, k, b, bias, c_at, n, cols),
                    4 => $tile::<4>(a_at, k, b, bias, c_at, n, cols),
                    _ => $tile::<5>(a_at, k, b, bias, c_at, n, cols),
                }
            }
        }};
    }

    /// # Safety
    /// AVX-512F; `a` holds `m * p.k` floats and `c` `m * p.n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product512(p: &PackedB, a: &[f32], m: usize, c: &mut [f32]) {
        unsafe { sweep!(p, a, m, c, tile512, 6) }
    }

    /// # Safety
    /// AVX2 and FMA; as [`product512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product256(p: &PackedB, a: &[f32], m: usize, c: &mut [f32]) {
        unsafe { sweep!(p, a, m, c, tile256, 3) }
    }

    /// # Safety
    /// `a` holds `R` rows of `k`, `b` `k * NR` floats, `bias` `NR`, and `c` `R` rows of `ldc`
    /// with `cols` writable from its start.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile512<const R: usize>(
        a: *const f32,
        k: usize,
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        unsafe {
            let mut lo = [_mm512_loadu_ps(bias); R];
            let mut hi = [_mm512_loadu_ps(bias.add(16)); R];
            for kk in 0..k {
                let w0 = _mm512_loadu_ps(b.add(kk * NR));
                let w1 = _mm512_loadu_ps(b.add(kk * NR + 16));
                for r in 0..R {
                    let x = _mm512_set1_ps(*a.add(r * k + kk));
                    lo[r] = _mm512_fmadd_ps(x, w0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(x, w1, hi[r]);
                }
            }
            let m0: __mmask16 = if cols >= 16 { 0xffff } else { (1u16 << cols) - 1 };
            let m1: __mmask16 = if cols >= 32 {
                0xffff
            } else if cols > 16 {
                (1u16 << (cols - 16)) - 1
            } else {
                0
            };
            for r in 0..R {
                _mm512_mask_storeu_ps(c.add(r * ldc), m0, lo[r]);
                _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, hi[r]);
            }
        }
    }

    /// # Safety
    /// As [`tile512`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile256<const R: usize>(
        a: *const f32,
        k: usize,
        b: *const f32,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            for row in acc.iter_mut() {
                for (q, v) in row.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(bias.add(q * 8));
                }
            }
            for kk in 0..k {
                let w = [
                    _mm256_loadu_ps(b.add(kk * NR)),
                    _mm256_loadu_ps(b.add(kk * NR + 8)),
                    _mm256_loadu_ps(b.add(kk * NR + 16)),
                    _mm256_loadu_ps(b.add(kk * NR + 24)),
                ];
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.add(r * k + kk));
                    for (v, wq) in row.iter_mut().zip(&w) {
                        *v = _mm256_fmadd_ps(x, *wq, *v);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                if cols == NR {
                    for (q, v) in row.iter().enumerate() {
                        _mm256_storeu_ps(c.add(r * ldc + q * 8), *v);
                    }
                } else {
                    let mut tmp = [0f32; NR];
                    for (q, v) in row.iter().enumerate() {
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(q * 8), *v);
                    }
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), c.add(r * ldc), cols);
                }
            }
        }
    }
}

/// The definition: `a [m, k] · b [k, n] + bias`, in f64.
pub fn matmul_reference(a: &[f32], b: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |x| f64::from(x[j]));
            for kk in 0..k {
                s += f64::from(a[i * k + kk]) * f64::from(b[kk * n + j]);
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::Rng;

    #[test]
    fn packed_products_match_the_reference_at_every_level_and_odd_shape() {
        crate::simd::each_level(|level| {
            for &(m, k, n) in &[
                (1, 1, 1),
                (1, 256, 1024),
                (7, 33, 65),
                (6, 384, 32),
                (13, 5, 31),
                (64, 384, 1536),
                (5, 17, 96),
                (11, 64, 33),
                (2, 8, 40),
                (9, 12, 64),
                (10, 3, 7),
                (8, 256, 1024),
            ] {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
                let a = rng.values(m * k);
                let b = rng.values(k * n);
                let bias = rng.values(n);
                for bias in [None, Some(&bias[..])] {
                    let packed = PackedB::new(&b, k, n, bias).expect("shapes");
                    assert_eq!(packed.bytes(), (n.div_ceil(NR) * (k + 1) * NR) * 4);
                    let mut c = vec![f32::NAN; m * n];
                    packed.matmul(&a, m, &mut c);
                    let want = matmul_reference(&a, &b, bias, m, k, n);
                    for (i, (g, w)) in c.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
                        assert!((g - w).abs() <= tol, "level {level} {m}x{k}x{n} at {i}: {g} vs {w}");
                    }
                }
            }
        });
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        assert!(PackedB::new(&[0.0; 6], 2, 2, None).is_none());
        assert!(PackedB::new(&[0.0; 4], 2, 2, Some(&[0.0; 3])).is_none());
        assert!(PackedB::new(&[0.0; 4], 2, 2, Some(&[0.0; 2])).is_some());
    }
}
