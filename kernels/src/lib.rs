//! Accel's own compute kernels: what candle lacks or runs far from the hardware's speed on the shapes
//! real exported models use. Each kernel comes with a plain reference implementation that the tests
//! compare it with on random inputs (odd sizes, every padding/stride/dilation case); the reference is
//! the definition, the kernel is the fast way to compute it.
//!
//! The crate knows nothing of tensors, ONNX or candle: slices in, slices out, shapes as numbers. The
//! executor (accel's candle backend) decides when a kernel applies.

pub mod activation;
pub mod conv;
pub mod dense;
