//! Accel's own compute kernels: what candle lacks or runs far from the hardware's speed on the shapes
//! real exported models use. Each kernel comes with a plain reference implementation that the tests
//! compare it with on random inputs (odd sizes, every padding/stride/dilation case); the reference is
//! the definition, the kernel is the fast way to compute it.
//!
//! The crate knows nothing of tensors, ONNX or candle: slices in, slices out, shapes as numbers. The
//! executor (accel's candle backend) decides when a kernel applies.

/// Defines `fn $name` that runs `$imp` compiled for AVX2 and FMA when the CPU has them, and for the
/// baseline target otherwise (x86-64's baseline is SSE2: 4 lanes where AVX2 has 8). `$imp` must be
/// `#[inline(always)]` so that its body is compiled inside the feature-enabled wrapper. Rust never
/// contracts `a * b + c` into a fused multiply-add on its own, so both versions round identically.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `fast` was compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

pub mod activation;
pub mod conv;
pub mod dense;
pub mod elementwise;
pub mod transpose;
