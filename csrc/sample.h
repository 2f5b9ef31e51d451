// One position of the cached sampler: the sampling rule of pyinpaint.sampler.draw, fused with the
// code write and the codebook gather.
//
// For each row b of logits [n, k] (float32) and noise [n, k] (float32, Gumbel):
//   s_j   = logits[b, j]            scale_mode kScaleNone      (temperature 1)
//         = logits[b, j] / scale    scale_mode kScaleDivide    (IEEE float32 division)
//         = logits[b, j] * scale    scale_mode kScaleMultiply  (IEEE float32 product: torch's CUDA
//                                                               division by a CPU scalar)
//   top-k (0 < top_k < k): thr = the top_k-th largest s_j (with multiplicity; NaN ranks above +inf,
//         as torch.topk); every s_j < thr becomes -inf (ties with thr are kept; a NaN thr masks
//         nothing, a NaN s_j is never masked: both as `out < kth` in torch)
//   v_j   = s_j + noise[b, j]       (IEEE float32 addition)
//   code  = argmax_j v_j            (first index on ties; the first NaN wins, as torch.argmax)
//   codes_out[b * codes_stride] = code; emb_out[b, :] = codebook[code, :]
// The float32 operations are the reference's, in the same order, so the codes are bit-identical
// to pyinpaint.sampler.draw (the Python side picks scale_mode / scale by probing what torch does
// on the device). -inf logits are fine (-inf + finite noise = -inf). No fused multiply-add: the
// sources are compiled with -ffp-contract=off (CPU) and use __fdiv_rn/__fmul_rn/__fadd_rn (CUDA).
//
// No libtorch: plain host (CPU) or device (CUDA) pointers owned by torch tensors. logits and noise
// may be row-strided (row strides >= 0 elements, unit stride inside a row); codebook [k, d] and
// emb_out [n, d] are contiguous; codes_out is int64 with stride codes_stride >= 0 elements
// (e.g. the column p of a [n, positions] code map: pointer to [0, p], stride positions).
// Outputs must not overlap the inputs.
#pragma once

#include <cstdint>

namespace pyinpaint {

enum SampleScale : int { kScaleNone = 0, kScaleDivide = 1, kScaleMultiply = 2 };

// top_k: 0 or k = no top-k filtering; otherwise 1 <= top_k < k. Throws std::invalid_argument on
// bad sizes / modes.
void sample_step_cpu(const float* logits, int64_t logits_row_stride, const float* noise, int64_t noise_row_stride,
                     const float* codebook, int64_t n, int64_t k, int64_t d, int scale_mode, float scale,
                     int64_t top_k, int64_t* codes_out, int64_t codes_stride, float* emb_out);

#ifdef PYINPAINT_WITH_CUDA
// Largest k the CUDA kernel takes with top-k filtering on (the shaped row is staged in shared
// memory: k floats, plus the kernel's static shared memory, within the default 48 KiB). Without
// top-k any k < 2^31 - 256 works.
constexpr int64_t kSampleCudaMaxTopkK = 12000;

// Same contract, device pointers on CUDA device `device`. One block per row. Launches on `stream`
// (a cudaStream_t as an integer; 0 = legacy default stream) and does not synchronise. Throws
// std::runtime_error on a CUDA error (including a failed launch).
void sample_step_cuda(const float* logits, int64_t logits_row_stride, const float* noise, int64_t noise_row_stride,
                      const float* codebook, int64_t n, int64_t k, int64_t d, int scale_mode, float scale,
                      int64_t top_k, int64_t* codes_out, int64_t codes_stride, float* emb_out,
                      std::uintptr_t stream, int device);
#endif

}  // namespace pyinpaint
