// CUDA sampling step (float32). See sample.h for the contract.
//
// One block of kThreads threads per row (sample). Thread t handles codes t, t + kThreads, ...
//  1. Top-k on (0 < top_k < k): the shaped row goes to shared memory; each element counts how many
//     elements rank strictly above it and how many do not rank below it (NaN above +inf, as
//     torch.topk). The element with above < top_k <= not_below is the top_k-th largest value (an
//     element at sorted position top_k - 1 always qualifies; every qualifying element has that
//     same value up to the sign of zero, which no comparison sees); the lowest such index is taken
//     with atomicMin so the threshold is well defined. O(k^2 / kThreads) comparisons: a few
//     microseconds at k = 512, exact by construction, no sorting network to get wrong.
//  2. Each thread keeps the best (value, index) over its codes (in increasing index order), then a
//     warp shuffle and a shared-memory pass over the warps reduce with `better` (larger wins, the
//     first NaN wins, ties to the lowest index: torch.argmax's rule), a total order, so the
//     reduction order does not matter.
//  3. Thread 0 writes the code; the block copies the codebook row into emb_out.
// Arithmetic: __fdiv_rn / __fmul_rn / __fadd_rn, IEEE round-to-nearest and never contracted into an
// FMA whatever nvcc's --fmad setting, so each shaped and noisy value is bit-identical to torch's.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "cuda_util.h"
#include "sample.h"

namespace pyinpaint {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
static_assert(kThreads % 32 == 0 && kWarps <= 32, "the last reduction runs in one warp");

__device__ __forceinline__ float shape(float x, int mode, float scale) {
  if (mode == kScaleDivide) return __fdiv_rn(x, scale);
  if (mode == kScaleMultiply) return __fmul_rn(x, scale);
  return x;
}

// a ranks strictly above b in torch.topk's order: NaN above everything, then by value.
__device__ __forceinline__ bool ranks_above(float a, float b) { return (isnan(a) && !isnan(b)) || a > b; }

// (a, ia) is a strictly better argmax candidate than (b, ib).
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  const bool a_nan = isnan(a), b_nan = isnan(b);
  if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
  return a > b || (a == b && ia < ib);
}

__device__ __forceinline__ void shuffle_best(float& best, int& best_i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (better(ov, oi, best, best_i)) {
      best = ov;
      best_i = oi;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    sample_step_kernel(const float* __restrict__ logits, int64_t ls, const float* __restrict__ noise, int64_t ns,
                       const float* __restrict__ codebook, int k, int d, int scale_mode, float scale, int top_k,
                       int64_t* __restrict__ codes_out, int64_t cs, float* __restrict__ emb_out) {
  extern __shared__ float shaped_s[];  // k floats, with top-k on only
  __shared__ float red_v[kWarps];
  __shared__ int red_i[kWarps];
  __shared__ int thr_idx_s;
  __shared__ int code_s;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row = blockIdx.x;
  const float* lg = logits + row * ls;
  const float* nz = noise + row * ns;
  const bool topk = top_k > 0 && top_k < k;
  const float neg_inf = -__int_as_float(0x7f800000);

  // 1. The top-k threshold.
  float thr = 0.f;
  if (topk) {
    for (int j = tid; j < k; j += kThreads) shaped_s[j] = shape(lg[j], scale_mode, scale);
    if (tid == 0) thr_idx_s = k;
    __syncthreads();
    for (int i = tid; i < k; i += kThreads) {
      const float v = shaped_s[i];
      int above = 0, not_below = 0;
      for (int j = 0; j < k; ++j) {
        const float u = shaped_s[j];
        above += ranks_above(u, v) ? 1 : 0;
        not_below += ranks_above(v, u) ? 0 : 1;
      }
      if (above < top_k && top_k <= not_below) atomicMin(&thr_idx_s, i);
    }
    __syncthreads();
    thr = shaped_s[thr_idx_s];
  }

  // 2. Mask, add the noise, argmax. The sentinel (-inf, INT_MAX) loses to every real element.
  float best = neg_inf;
  int best_i = INT_MAX;
  for (int j = tid; j < k; j += kThreads) {
    float s = topk ? shaped_s[j] : shape(lg[j], scale_mode, scale);
    if (topk && s < thr) s = neg_inf;
    const float v = __fadd_rn(s, nz[j]);
    if (better(v, j, best, best_i)) {
      best = v;
      best_i = j;
    }
  }
  shuffle_best(best, best_i);
  if (lane == 0) {
    red_v[warp] = best;
    red_i[warp] = best_i;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < kWarps ? red_v[lane] : neg_inf;
    best_i = lane < kWarps ? red_i[lane] : INT_MAX;
    shuffle_best(best, best_i);
    if (lane == 0) {
      code_s = best_i;
      codes_out[row * cs] = best_i;
    }
  }
  __syncthreads();

  // 3. Gather the embedding.
  const float* src = codebook + static_cast<int64_t>(code_s) * d;
  float* dst = emb_out + row * d;
  for (int j = tid; j < d; j += kThreads) dst[j] = src[j];
}

constexpr const char* kOp = "pyinpaint._C.sample_step_cuda";

void check(cudaError_t err, const char* what) { cuda_check(err, kOp, what); }

}  // namespace

void sample_step_cuda(const float* logits, int64_t logits_row_stride, const float* noise, int64_t noise_row_stride,
                      const float* codebook, int64_t n, int64_t k, int64_t d, int scale_mode, float scale,
                      int64_t top_k, int64_t* codes_out, int64_t codes_stride, float* emb_out,
                      std::uintptr_t stream, int device) {
  if (n < 0 || k < 1 || d < 1) throw std::invalid_argument("sample_step_cuda: need n >= 0, k >= 1, d >= 1");
  if (k > INT_MAX - kThreads || d > INT_MAX) throw std::invalid_argument("sample_step_cuda: k or d too large");
  if (n > INT_MAX) throw std::invalid_argument("sample_step_cuda: too many rows (one block per row)");
  if (logits_row_stride < 0 || noise_row_stride < 0 || codes_stride < 0)
    throw std::invalid_argument("sample_step_cuda: strides must be >= 0");
  if (top_k < 0 || top_k > k) throw std::invalid_argument("sample_step_cuda: need 0 <= top_k <= k");
  const bool topk = top_k > 0 && top_k < k;
  if (topk && k > kSampleCudaMaxTopkK)
    throw std::invalid_argument("sample_step_cuda: top-k filtering takes at most 12000 codes");
  if (scale_mode != kScaleNone && scale_mode != kScaleDivide && scale_mode != kScaleMultiply)
    throw std::invalid_argument("sample_step_cuda: unknown scale_mode");
  if (n == 0) return;
  if (!logits || !noise || !codebook || !codes_out || !emb_out)
    throw std::invalid_argument("sample_step_cuda: null pointer");

  CudaDeviceGuard guard(device, kOp);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const size_t smem = topk ? static_cast<size_t>(k) * sizeof(float) : 0;
  (void)cudaGetLastError();  // a stale error of an earlier call must not be reported as this launch's
  sample_step_kernel<<<static_cast<unsigned>(n), kThreads, smem, s>>>(
      logits, logits_row_stride, noise, noise_row_stride, codebook, static_cast<int>(k), static_cast<int>(d),
      scale_mode, scale, static_cast<int>(top_k), codes_out, codes_stride, emb_out);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace pyinpaint
