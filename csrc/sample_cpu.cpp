// CPU sampling step (float32). See sample.h for the contract.
//
// Per row: the shaped logits (scaled, or read in place at temperature 1) and, with top-k on, the
// top_k-th largest of them found by std::nth_element on a copy; then one pass masks, adds the noise,
// stores the sums and keeps a lane-wise running maximum and NaN flag (GCC/Clang generic vectors of
// 4 floats: SSE2 on x86-64, NEON on aarch64); the code
// is the first index holding a NaN if there is one (torch.argmax propagates NaN), else the first
// index holding the maximum. No threads: at the sampler's shapes (a handful of rows of 512 codes)
// the whole call takes about 0.2 us per row of 512 codes, 0.7 us with top-k (nth_element dominates).
//
// Bit-identity with the PyTorch rule needs the same float32 operations in the same order: one
// rounding for the scaling, one for the addition. This file is compiled with -ffp-contract=off
// (CMakeLists.txt) so that no compiler fuses them into a multiply-add, and the scaled value is
// rounded to float32 (stored in the scratch row) before the addition. The maximum is only compared,
// never computed, so the order of the lane-wise search does not matter: equal values are equal
// whichever lane saw them, and the index comes from a scan in index order.
#include "sample.h"

#include <algorithm>
#include <functional>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

namespace pyinpaint {
namespace {

inline bool is_nan(float x) { return x != x; }

// a ranks strictly above b in torch.topk's order: NaN above everything, then by value (a strict weak
// order, as std::nth_element needs; plain `>` is not one when NaNs are present).
inline bool ranks_above(float a, float b) { return (is_nan(a) && !is_nan(b)) || a > b; }

// 4 floats: the baseline's native width (SSE2, NEON). Wider generic vectors are scalarised by GCC on a
// baseline target (their comparisons especially: 7x slower here), see vq_cpu.cpp.
constexpr int W = 4;
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// v[j] = (s[j] < thr ? -inf : s[j]) + nz[j] (the mask with kTopk only) for j < k, written to v; returns
// argmax_j v[j] with torch.argmax's rule: the first NaN if any, else the first index of the maximum.
template <bool kTopk>
int64_t noisy_argmax(const float* s, const float* nz, int64_t k, float thr, float* v) {
  vf vmax = vf{} + kNegInf;
  vi vnan = vi{};
  int64_t j = 0;
  for (; j + W <= k; j += W) {
    vf a, n;
    std::memcpy(&a, s + j, sizeof(vf));
    std::memcpy(&n, nz + j, sizeof(vf));
    if (kTopk) a = a < thr ? vf{} + kNegInf : a;
    const vf x = a + n;
    std::memcpy(v + j, &x, sizeof(vf));
    vnan |= x != x;
    vmax = x > vmax ? x : vmax;
  }
  float m = kNegInf;
  bool any_nan = false;
  for (int l = 0; l < W; ++l) {
    any_nan |= vnan[l] != 0;
    if (vmax[l] > m) m = vmax[l];
  }
  for (; j < k; ++j) {
    const float x = ((kTopk && s[j] < thr) ? kNegInf : s[j]) + nz[j];
    v[j] = x;
    any_nan |= is_nan(x);
    if (x > m) m = x;
  }
  if (any_nan) {
    for (j = 0; j < k; ++j)
      if (is_nan(v[j])) return j;
  }
  for (j = 0; j < k; ++j)
    if (v[j] == m) return j;
  return 0;  // unreachable: m is one of the v[j] (all -inf included)
}

}  // namespace

void sample_step_cpu(const float* logits, int64_t logits_row_stride, const float* noise, int64_t noise_row_stride,
                     const float* codebook, int64_t n, int64_t k, int64_t d, int scale_mode, float scale,
                     int64_t top_k, int64_t* codes_out, int64_t codes_stride, float* emb_out) {
  if (n < 0 || k < 1 || d < 1) throw std::invalid_argument("sample_step_cpu: need n >= 0, k >= 1, d >= 1");
  if (logits_row_stride < 0 || noise_row_stride < 0 || codes_stride < 0)
    throw std::invalid_argument("sample_step_cpu: strides must be >= 0");
  if (top_k < 0 || top_k > k) throw std::invalid_argument("sample_step_cpu: need 0 <= top_k <= k");
  if (scale_mode != kScaleNone && scale_mode != kScaleDivide && scale_mode != kScaleMultiply)
    throw std::invalid_argument("sample_step_cpu: unknown scale_mode");
  if (n == 0) return;
  if (!logits || !noise || !codebook || !codes_out || !emb_out)
    throw std::invalid_argument("sample_step_cpu: null pointer");

  const bool topk = top_k > 0 && top_k < k;
  std::vector<float> scratch(static_cast<size_t>(topk ? 3 * k : 2 * k));
  float* scaled = scratch.data();
  float* noisy = scaled + k;
  float* work = noisy + k;

  for (int64_t r = 0; r < n; ++r) {
    const float* lg = logits + r * logits_row_stride;
    const float* nz = noise + r * noise_row_stride;

    // The scaling: one IEEE float32 operation per element (none at temperature 1).
    const float* s = lg;
    if (scale_mode == kScaleDivide) {
      for (int64_t j = 0; j < k; ++j) scaled[j] = lg[j] / scale;
      s = scaled;
    } else if (scale_mode == kScaleMultiply) {
      for (int64_t j = 0; j < k; ++j) scaled[j] = lg[j] * scale;
      s = scaled;
    }

    int64_t code;
    if (topk) {
      // The top_k-th largest shaped value, ties counted (as torch.topk(...).values[..., -1]).
      bool has_nan = false;
      for (int64_t j = 0; j < k; ++j) {
        work[j] = s[j];
        has_nan |= is_nan(s[j]);
      }
      if (has_nan)
        std::nth_element(work, work + (top_k - 1), work + k, ranks_above);
      else  // the same order without NaNs, cheaper to compare
        std::nth_element(work, work + (top_k - 1), work + k, std::greater<float>());
      code = noisy_argmax<true>(s, nz, k, work[top_k - 1], noisy);
    } else {
      code = noisy_argmax<false>(s, nz, k, 0.f, noisy);
    }

    codes_out[r * codes_stride] = code;
    std::memcpy(emb_out + r * d, codebook + code * d, static_cast<size_t>(d) * sizeof(float));
  }
}

}  // namespace pyinpaint
