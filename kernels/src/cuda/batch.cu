// Batch assembly kernels (see batch.rs for the definition they implement). Compiled at run time with
// NVRTC: no headers, so the FP16 conversions are PTX `cvt` instructions and BF16 is integer rounding.
//
// Every kernel copies `n` segments; segment k is seg[3k] (source element offset), seg[3k+1]
// (destination element offset), seg[3k+2] (length). grid.y walks the segments, grid.x * block.x the
// elements of one segment.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((u >> 16) | 0x40u);  // NaN stays NaN (quiet bit set), as half::bf16::from_f32
    }
    return (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest, ties to even
}

__device__ __forceinline__ float bf16_to_f32(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}

#define IDENTITY(x) (x)

#define SEGMENTS(NAME, S, D, CONVERT)                                                              \
    extern "C" __global__ void NAME(const S* __restrict__ src, D* __restrict__ dst,               \
                                    const u64* __restrict__ seg, u32 n) {                         \
        for (u32 k = blockIdx.y; k < n; k += gridDim.y) {                                          \
            const u64 from = seg[3 * k], to = seg[3 * k + 1], len = seg[3 * k + 2];                \
            for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len;                      \
                 i += (u64)gridDim.x * blockDim.x) {                                               \
                dst[to + i] = CONVERT(src[from + i]);                                              \
            }                                                                                      \
        }                                                                                          \
    }

SEGMENTS(segments_copy1, u8, u8, IDENTITY)
SEGMENTS(segments_copy2, u16, u16, IDENTITY)
SEGMENTS(segments_copy4, u32, u32, IDENTITY)
SEGMENTS(segments_copy8, u64, u64, IDENTITY)
SEGMENTS(segments_f32_f16, float, u16, f32_to_f16)
SEGMENTS(segments_f32_bf16, float, u16, f32_to_bf16)
SEGMENTS(segments_f16_f32, u16, float, f16_to_f32)
SEGMENTS(segments_bf16_f32, u16, float, bf16_to_f32)
