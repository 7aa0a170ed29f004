// Depthwise 2-D convolution, FP32, NCHW (see conv.rs for the definition): one thread per output
// element. candle runs a depthwise convolution as one convolution per channel; on a GPU that is a
// launch (and an im2col) per channel.

extern "C" __global__ void depthwise_conv2d_f32(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, u32 batch, u32 channels, u32 multiplier, u32 height, u32 width,
    u32 out_h, u32 out_w, u32 kernel_h, u32 kernel_w, u32 stride_h, u32 stride_w,
    u32 dilation_h, u32 dilation_w, u32 pad_top, u32 pad_left, u32 has_bias) {
    const u64 total = (u64)batch * channels * multiplier * out_h * out_w;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (u64)gridDim.x * blockDim.x) {
        const u32 ox = (u32)(i % out_w);
        const u32 oy = (u32)((i / out_w) % out_h);
        const u64 plane = i / ((u64)out_w * out_h);
        const u32 oc = (u32)(plane % ((u64)channels * multiplier));
        const u32 b = (u32)(plane / ((u64)channels * multiplier));
        const u32 ic = oc / multiplier;
        const float* in = x + ((u64)b * channels + ic) * height * width;
        const float* taps = w + (u64)oc * kernel_h * kernel_w;
        float acc = has_bias ? bias[oc] : 0.0f;
        for (u32 ky = 0; ky < kernel_h; ++ky) {
            const long long iy = (long long)oy * stride_h + (long long)ky * dilation_h - pad_top;
            if (iy < 0 || iy >= height) continue;
            for (u32 kx = 0; kx < kernel_w; ++kx) {
                const long long ix = (long long)ox * stride_w + (long long)kx * dilation_w - pad_left;
                if (ix < 0 || ix >= width) continue;
                acc += taps[ky * kernel_w + kx] * in[iy * width + ix];
            }
        }
        y[i] = acc;
    }
}
