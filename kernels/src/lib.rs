//! Accel's own compute kernels: what candle lacks or runs far from the hardware's speed on the shapes
//! real exported models use. Each kernel comes with a plain reference implementation that the tests
//! compare it with on random inputs (odd sizes, every padding/stride/dilation case); the reference is
//! the definition, the kernel is the fast way to compute it.
//!
//! The crate knows nothing of tensors, ONNX or candle: slices in, slices out, shapes as numbers. The
//! executor (accel's candle backend) decides when a kernel applies.

/// Defines `fn $name` that runs `$imp` compiled for AVX-512 or else AVX2 and FMA when the CPU has
/// them, and for the baseline target otherwise (x86-64's baseline is SSE2: 4 lanes where AVX2 has 8
/// and AVX-512 16). `$imp` must be
/// `#[inline(always)]` so that its body is compiled inside the feature-enabled wrapper. Rust never
/// contracts `a * b + c` into a fused multiply-add on its own, so both versions round identically.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn widest($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if $crate::simd::allowed($crate::simd::AVX512)
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features `widest` was compiled for.
                    return unsafe { widest($($arg),*) };
                }
                if $crate::simd::allowed($crate::simd::AVX2)
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `fast` was compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

/// Which instruction sets the kernels may use on the current thread, so that the tests run every
/// version on a machine that has them all.
pub mod simd {
    use std::cell::Cell;

    pub const BASELINE: u8 = 0;
    pub const AVX2: u8 = 1;
    pub const AVX512: u8 = 2;

    thread_local! {
        static CAP: Cell<u8> = const { Cell::new(u8::MAX) };
    }

    /// Caps the instruction sets this thread's kernel calls use (all by default).
    pub fn set_cap(level: u8) {
        CAP.with(|c| c.set(level));
    }

    /// This thread's cap (to hand on to threads a kernel spawns).
    pub fn cap() -> u8 {
        CAP.with(Cell::get)
    }

    pub fn allowed(level: u8) -> bool {
        CAP.with(|c| c.get() >= level)
    }

    /// Runs `f` once per level, capped to it.
    #[cfg(test)]
    pub(crate) fn each_level(mut f: impl FnMut(u8)) {
        for level in [BASELINE, AVX2, AVX512] {
            set_cap(level);
            f(level);
        }
        set_cap(u8::MAX);
    }
}

pub mod activation;
pub mod attention;
pub mod batch;
pub mod conv;
pub mod dense;
pub mod direct;
pub mod elementwise;
pub mod packed;
pub mod pool;
pub mod resize;
pub mod transpose;

#[cfg(feature = "cuda")]
pub mod cuda;
