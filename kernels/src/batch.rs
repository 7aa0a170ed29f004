//! Batch assembly at the device boundary: the rows of N requests gathered into one contiguous batch,
//! a batch's output split back into per-request parts, and FP32 <-> FP16/BF16 conversion on the way.
//! One operation covers all three: copy a list of [`Segment`]s from one buffer to another, converting
//! each element by a [`Cast`]. This module is the CPU definition; `cuda` runs the same operation as
//! NVRTC kernels on the GPU, and the tests there compare the two bit for bit.

use half::{bf16, f16};

/// A run of `len` elements copied from `src` (an element offset in the source) to `dst` (an element
/// offset in the destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

/// How each element is carried from source to destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cast {
    /// Bytes as they are, in elements of 1, 2, 4 or 8 bytes (any datatype of that width).
    Copy1,
    Copy2,
    Copy4,
    Copy8,
    /// IEEE round-to-nearest-even, as `half::f16::from_f32`.
    F32ToF16,
    /// Round-to-nearest-even, NaN kept NaN, as `half::bf16::from_f32`.
    F32ToBf16,
    F16ToF32,
    Bf16ToF32,
}

impl Cast {
    pub const ALL: [Cast; 8] = [
        Cast::Copy1,
        Cast::Copy2,
        Cast::Copy4,
        Cast::Copy8,
        Cast::F32ToF16,
        Cast::F32ToBf16,
        Cast::F16ToF32,
        Cast::Bf16ToF32,
    ];

    /// Bytes of one source element.
    pub fn src_size(self) -> usize {
        match self {
            Cast::Copy1 => 1,
            Cast::Copy2 | Cast::F16ToF32 | Cast::Bf16ToF32 => 2,
            Cast::Copy4 | Cast::F32ToF16 | Cast::F32ToBf16 => 4,
            Cast::Copy8 => 8,
        }
    }

    /// Bytes of one destination element.
    pub fn dst_size(self) -> usize {
        match self {
            Cast::Copy1 => 1,
            Cast::Copy2 | Cast::F32ToF16 | Cast::F32ToBf16 => 2,
            Cast::Copy4 | Cast::F16ToF32 | Cast::Bf16ToF32 => 4,
            Cast::Copy8 => 8,
        }
    }

    /// The plain copy for elements of `size` bytes.
    pub fn copy(size: usize) -> Option<Cast> {
        match size {
            1 => Some(Cast::Copy1),
            2 => Some(Cast::Copy2),
            4 => Some(Cast::Copy4),
            8 => Some(Cast::Copy8),
            _ => None,
        }
    }

    /// The name of this cast's kernel in the CUDA source.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Cast::Copy1 => "segments_copy1",
            Cast::Copy2 => "segments_copy2",
            Cast::Copy4 => "segments_copy4",
            Cast::Copy8 => "segments_copy8",
            Cast::F32ToF16 => "segments_f32_f16",
            Cast::F32ToBf16 => "segments_f32_bf16",
            Cast::F16ToF32 => "segments_f16_f32",
            Cast::Bf16ToF32 => "segments_bf16_f32",
        }
    }
}

/// Why a list of segments cannot be copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// A segment reads or writes past the end of its buffer (or its end overflows).
    OutOfBounds { segment: usize },
    /// Two segments write the same destination element: the result would depend on their order.
    Overlap { first: usize, second: usize },
    /// A buffer's byte length is not a whole number of elements.
    Misaligned,
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::OutOfBounds { segment } => write!(f, "segment {segment} is out of its buffer's bounds"),
            SegmentError::Overlap { first, second } => {
                write!(f, "segments {first} and {second} write the same destination elements")
            }
            SegmentError::Misaligned => write!(f, "a buffer is not a whole number of elements"),
        }
    }
}

impl std::error::Error for SegmentError {}

/// Segments that pack `rows` (each `(source offset, length)`, in elements) one after another from
/// destination offset 0: a gather.
pub fn gather(rows: &[(usize, usize)]) -> Vec<Segment> {
    let mut dst = 0;
    rows.iter()
        .map(|&(src, len)| {
            let s = Segment { src, dst, len };
            dst += len;
            s
        })
        .collect()
}

/// Segments that split a packed source, from offset 0, into `parts` (each `(destination offset,
/// length)`, in elements): a scatter.
pub fn scatter(parts: &[(usize, usize)]) -> Vec<Segment> {
    let mut src = 0;
    parts
        .iter()
        .map(|&(dst, len)| {
            let s = Segment { src, dst, len };
            src += len;
            s
        })
        .collect()
}

/// Checks that every segment lies inside buffers of `src_len` and `dst_len` elements and that no two
/// write the same destination element.
pub fn check(segments: &[Segment], src_len: usize, dst_len: usize) -> Result<(), SegmentError> {
    for (i, s) in segments.iter().enumerate() {
        let in_bounds = |offset: usize, len: usize| offset.checked_add(s.len).is_some_and(|end| end <= len);
        if !in_bounds(s.src, src_len) || !in_bounds(s.dst, dst_len) {
            return Err(SegmentError::OutOfBounds { segment: i });
        }
    }
    let mut order: Vec<usize> = (0..segments.len()).filter(|&i| segments[i].len > 0).collect();
    order.sort_by_key(|&i| segments[i].dst);
    for pair in order.windows(2) {
        let (a, b) = (segments[pair[0]], segments[pair[1]]);
        if a.dst + a.len > b.dst {
            return Err(SegmentError::Overlap {
                first: pair[0].min(pair[1]),
                second: pair[0].max(pair[1]),
            });
        }
    }
    Ok(())
}

/// The reference: copies every segment from `src` to `dst` (bytes, read as `cast`'s elements,
/// little-endian), converting each element.
pub fn copy_segments(cast: Cast, src: &[u8], dst: &mut [u8], segments: &[Segment]) -> Result<(), SegmentError> {
    let (ss, ds) = (cast.src_size(), cast.dst_size());
    if !src.len().is_multiple_of(ss) || !dst.len().is_multiple_of(ds) {
        return Err(SegmentError::Misaligned);
    }
    check(segments, src.len() / ss, dst.len() / ds)?;
    for s in segments {
        let from = &src[s.src * ss..(s.src + s.len) * ss];
        let to = &mut dst[s.dst * ds..(s.dst + s.len) * ds];
        match cast {
            Cast::Copy1 | Cast::Copy2 | Cast::Copy4 | Cast::Copy8 => to.copy_from_slice(from),
            Cast::F32ToF16 => convert::<4, 2>(from, to, |b| f16::from_f32(f32::from_le_bytes(b)).to_le_bytes()),
            Cast::F32ToBf16 => convert::<4, 2>(from, to, |b| bf16::from_f32(f32::from_le_bytes(b)).to_le_bytes()),
            Cast::F16ToF32 => convert::<2, 4>(from, to, |b| f16::from_le_bytes(b).to_f32().to_le_bytes()),
            Cast::Bf16ToF32 => convert::<2, 4>(from, to, |b| bf16::from_le_bytes(b).to_f32().to_le_bytes()),
        }
    }
    Ok(())
}

fn convert<const S: usize, const D: usize>(from: &[u8], to: &mut [u8], f: impl Fn([u8; S]) -> [u8; D]) {
    for (x, y) in from.chunks_exact(S).zip(to.chunks_exact_mut(D)) {
        let mut b = [0u8; S];
        b.copy_from_slice(x);
        y.copy_from_slice(&f(b));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::conv::tests::Rng;

    /// Random source bytes for `cast`: for float sources, mostly ordinary values with the specials
    /// (zeros, infinities, NaN, subnormals, values that round to infinity) mixed in.
    pub(crate) fn random_source(cast: Cast, elements: usize, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::with_capacity(elements * cast.src_size());
        for _ in 0..elements {
            let pick = rng.below(16);
            match cast {
                Cast::F32ToF16 | Cast::F32ToBf16 => {
                    let v = match pick {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => -0.0,
                        3 => 1.0e-6 * (rng.below(1000) as f32 - 500.0),
                        4 => 65520.0,
                        5 => f32::from_bits(rng.next() as u32),
                        _ => (rng.below(2_000_001) as f32 - 1_000_000.0) / 997.0,
                    };
                    out.extend_from_slice(&v.to_le_bytes());
                }
                _ => {
                    let bytes = rng.next().to_le_bytes();
                    out.extend_from_slice(&bytes[..cast.src_size()]);
                }
            }
        }
        out
    }

    /// A random gather or scatter over odd sizes and unaligned offsets: (segments, src elements, dst
    /// elements).
    pub(crate) fn random_segments(rng: &mut Rng) -> (Vec<Segment>, usize, usize) {
        let n = 1 + rng.below(9);
        let rows: Vec<(usize, usize)> = (0..n).map(|_| (rng.below(37), rng.below(300))).collect();
        let mut spaced = Vec::new();
        let mut offset = 0;
        for &(gap, len) in &rows {
            offset += gap;
            spaced.push((offset, len));
            offset += len;
        }
        let packed: usize = rows.iter().map(|r| r.1).sum();
        if rng.below(2) == 0 {
            (gather(&spaced), offset + rng.below(5), packed + rng.below(5))
        } else {
            (scatter(&spaced), packed + rng.below(5), offset + rng.below(5))
        }
    }

    #[test]
    fn gather_and_scatter_are_inverse() {
        let mut rng = Rng(7);
        for _ in 0..50 {
            let n = 1 + rng.below(6);
            let mut parts = Vec::new();
            let mut offset = 0;
            for _ in 0..n {
                offset += rng.below(5);
                let len = rng.below(20);
                parts.push((offset, len));
                offset += len;
            }
            let spaced: Vec<u8> = (0..offset).map(|i| (i * 31 % 251) as u8).collect();
            let packed_len: usize = parts.iter().map(|p| p.1).sum();
            let mut packed = vec![0u8; packed_len];
            copy_segments(Cast::Copy1, &spaced, &mut packed, &gather(&parts)).expect("gather");
            let mut back = vec![0u8; offset];
            copy_segments(Cast::Copy1, &packed, &mut back, &scatter(&parts)).expect("scatter");
            for &(o, l) in &parts {
                assert_eq!(&back[o..o + l], &spaced[o..o + l]);
            }
        }
    }

    #[test]
    fn conversions_match_the_half_crate() {
        let mut rng = Rng(99);
        for cast in [Cast::F32ToF16, Cast::F32ToBf16] {
            let src = random_source(cast, 1000, &mut rng);
            let mut dst = vec![0u8; 2000];
            copy_segments(cast, &src, &mut dst, &gather(&[(0, 1000)])).expect("copy");
            for (x, y) in src.chunks_exact(4).zip(dst.chunks_exact(2)) {
                let v = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                let got = u16::from_le_bytes([y[0], y[1]]);
                let want = match cast {
                    Cast::F32ToF16 => f16::from_f32(v).to_bits(),
                    _ => bf16::from_f32(v).to_bits(),
                };
                assert_eq!(got, want, "{cast:?} of {v}");
            }
            // And back: every finite half value survives the round trip exactly.
            let back_cast = if cast == Cast::F32ToF16 {
                Cast::F16ToF32
            } else {
                Cast::Bf16ToF32
            };
            let mut back = vec![0u8; 4000];
            copy_segments(back_cast, &dst, &mut back, &gather(&[(0, 1000)])).expect("back");
            let mut again = vec![0u8; 2000];
            copy_segments(cast, &back, &mut again, &gather(&[(0, 1000)])).expect("again");
            for (a, b) in dst.chunks_exact(2).zip(again.chunks_exact(2)) {
                let (a, b) = (u16::from_le_bytes([a[0], a[1]]), u16::from_le_bytes([b[0], b[1]]));
                let nan = |h: u16| match cast {
                    Cast::F32ToF16 => f16::from_bits(h).is_nan(),
                    _ => bf16::from_bits(h).is_nan(),
                };
                assert!(a == b || (nan(a) && nan(b)), "{a:#x} -> {b:#x}");
            }
        }
    }

    #[test]
    fn bad_segments_are_errors_not_panics() {
        let src = [0u8; 16];
        let mut dst = [0u8; 16];
        let out = |s: Segment| copy_segments(Cast::Copy4, &src, &mut [0u8; 16], &[s]);
        assert_eq!(
            out(Segment { src: 3, dst: 0, len: 2 }),
            Err(SegmentError::OutOfBounds { segment: 0 })
        );
        assert_eq!(
            out(Segment { src: 0, dst: 3, len: 2 }),
            Err(SegmentError::OutOfBounds { segment: 0 })
        );
        assert_eq!(
            out(Segment {
                src: usize::MAX,
                dst: 0,
                len: 2
            }),
            Err(SegmentError::OutOfBounds { segment: 0 })
        );
        let overlap = [Segment { src: 0, dst: 0, len: 2 }, Segment { src: 2, dst: 1, len: 2 }];
        assert_eq!(
            copy_segments(Cast::Copy4, &src, &mut dst, &overlap),
            Err(SegmentError::Overlap { first: 0, second: 1 })
        );
        assert_eq!(
            copy_segments(Cast::Copy4, &src[..15], &mut dst, &[]),
            Err(SegmentError::Misaligned)
        );
        // Empty segments are fine anywhere inside the buffer, and a well-formed list passes.
        let ok = [Segment { src: 4, dst: 4, len: 0 }, Segment { src: 0, dst: 0, len: 4 }];
        assert_eq!(copy_segments(Cast::Copy4, &src, &mut dst, &ok), Ok(()));
    }

    #[test]
    fn random_segment_lists_are_well_formed() {
        let mut rng = Rng(3);
        for _ in 0..200 {
            let (segs, src, dst) = random_segments(&mut rng);
            check(&segs, src, dst).expect("generated lists are valid");
        }
    }
}
