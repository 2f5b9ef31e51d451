// CUDA nearest-codebook search (float32 / float16 z and codebook, float32 arithmetic). See vq.h.
//
// One block of 256 threads per tile of kTileN = 64 rows. The block walks the codebook in tiles of
// kTileK = 64 codes; for each code tile it walks d in chunks of kTileD = 16, staging the z chunk
// and the code chunk in shared memory (as float32, transposed, padded against bank conflicts).
// Thread (ty, tx) of the 16 x 16 grid accumulates the 4 x 4 dot products of rows ty + 16 i and codes
// tx + 16 q in registers, then turns them into distances and keeps a running (distance, index)
// minimum per row. The 16 threads that share a row (one half-warp) finish with a warp-shuffle
// argmin. Ties go to the lowest index and a NaN distance counts as the minimum, as in torch.argmin.
//
// Every dot product is summed over d in order 0..d-1 with fmaf, whatever the code's position, so
// equal codebook rows give bit-identical distances and the lowest index wins.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "cuda_util.h"
#include "vq.h"

namespace pyinpaint {
namespace {

constexpr int kTileN = 64;   // rows per block
constexpr int kTileK = 64;   // codes per shared-memory tile
constexpr int kTileD = 16;   // dimensions per shared-memory chunk
constexpr int kThreadsX = 16;
constexpr int kThreadsY = 16;
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kRowsPerThread = kTileN / kThreadsY;   // 4
constexpr int kCodesPerThread = kTileK / kThreadsX;  // 4
constexpr int kWarps = kThreads / 32;
static_assert(kTileN % kThreadsY == 0 && kTileK % kThreadsX == 0, "tiles");
static_assert(kThreadsX == 16, "the shuffle argmin reduces over a half-warp of 16 lanes");
static_assert(kTileD * kTileN % kThreads == 0 && kTileD * kTileK % kThreads == 0, "staging");

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// (a, ia) is a strictly better candidate than (b, ib).
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  const bool a_nan = isnan(a), b_nan = isnan(b);
  if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
  return a < b || (a == b && ia < ib);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    nearest_code_kernel(const T* __restrict__ z, int64_t zs, const T* __restrict__ cb,
                        const float* __restrict__ norms, int64_t* __restrict__ idx_out,
                        T* __restrict__ emb_out, int64_t n, int k, int d) {
  __shared__ float z_s[kTileD][kTileN + 1];
  __shared__ float c_s[kTileD][kTileK + 1];
  __shared__ float zz_s[kTileN];
  __shared__ int idx_s[kTileN];

  const int tid = threadIdx.x;
  const int tx = tid % kThreadsX, ty = tid / kThreadsX;
  const int warp = tid / 32, lane = tid % 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int rows = static_cast<int>(min(static_cast<int64_t>(kTileN), n - row0));

  // |z|^2 per row, one warp per row.
  for (int r = warp; r < kTileN; r += kWarps) {
    float s = 0.f;
    if (r < rows) {
      const T* zr = z + (row0 + r) * zs;
      for (int j = lane; j < d; j += 32) {
        const float v = to_float(zr[j]);
        s = fmaf(v, v, s);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) zz_s[r] = s;
  }
  __syncthreads();

  float zz[kRowsPerThread];
  float best[kRowsPerThread];
  int bidx[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    zz[i] = zz_s[ty + kThreadsY * i];
    best[i] = __int_as_float(0x7f800000);  // +inf
    bidx[i] = 0;
  }

  for (int k0 = 0; k0 < k; k0 += kTileK) {
    float acc[kRowsPerThread][kCodesPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
      for (int q = 0; q < kCodesPerThread; ++q) acc[i][q] = 0.f;

    for (int d0 = 0; d0 < d; d0 += kTileD) {
      __syncthreads();  // everyone is done with the previous chunk
#pragma unroll
      for (int m = 0; m < kTileN * kTileD / kThreads; ++m) {
        const int e = tid + m * kThreads;
        const int r = e / kTileD, j = e % kTileD;
        float v = 0.f;
        if (r < rows && d0 + j < d) v = to_float(z[(row0 + r) * zs + d0 + j]);
        z_s[j][r] = v;
      }
#pragma unroll
      for (int m = 0; m < kTileK * kTileD / kThreads; ++m) {
        const int e = tid + m * kThreads;
        const int c = e / kTileD, j = e % kTileD;
        float v = 0.f;
        if (k0 + c < k && d0 + j < d) v = to_float(cb[static_cast<int64_t>(k0 + c) * d + d0 + j]);
        c_s[j][c] = v;
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kTileD; ++j) {
        float zv[kRowsPerThread], cv[kCodesPerThread];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) zv[i] = z_s[j][ty + kThreadsY * i];
#pragma unroll
        for (int q = 0; q < kCodesPerThread; ++q) cv[q] = c_s[j][tx + kThreadsX * q];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
          for (int q = 0; q < kCodesPerThread; ++q) acc[i][q] = fmaf(zv[i], cv[q], acc[i][q]);
      }
    }

    // This thread's codes come in increasing order (q, then k0): a strict '<' keeps the lowest
    // index on ties.
#pragma unroll
    for (int q = 0; q < kCodesPerThread; ++q) {
      const int code = k0 + tx + kThreadsX * q;
      if (code < k) {
        const float en = norms[code];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          // Same association as the reference: (|z|^2 - 2 z.e) + |e|^2.
          const float dist = __fadd_rn(__fsub_rn(zz[i], 2.0f * acc[i][q]), en);
          if (dist < best[i] || (isnan(dist) && !isnan(best[i]))) {
            best[i] = dist;
            bidx[i] = code;
          }
        }
      }
    }
  }

  // Argmin over the 16 lanes (one half-warp) that share each row.
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    float bd = best[i];
    int bi = bidx[i];
#pragma unroll
    for (int off = kThreadsX / 2; off > 0; off >>= 1) {
      const float od = __shfl_xor_sync(0xffffffffu, bd, off);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
      if (better(od, oi, bd, bi)) {
        bd = od;
        bi = oi;
      }
    }
    if (tx == 0) idx_s[ty + kThreadsY * i] = bi;
  }
  __syncthreads();

  for (int r = tid; r < rows; r += kThreads) idx_out[row0 + r] = idx_s[r];
  // Gather, one warp per row.
  for (int r = warp; r < rows; r += kWarps) {
    const T* src = cb + static_cast<int64_t>(idx_s[r]) * d;
    T* dst = emb_out + (row0 + r) * d;
    for (int j = lane; j < d; j += 32) dst[j] = src[j];
  }
}

constexpr const char* kOp = "pyinpaint._C.nearest_code_cuda";

void check(cudaError_t err, const char* what) { cuda_check(err, kOp, what); }

template <typename T>
void launch(const void* z, int64_t zs, const void* cb, const float* norms, int64_t* idx_out, void* emb_out,
            int64_t n, int64_t k, int64_t d, cudaStream_t stream) {
  const int64_t blocks = (n + kTileN - 1) / kTileN;
  nearest_code_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(z), zs, static_cast<const T*>(cb), norms, idx_out, static_cast<T*>(emb_out), n,
      static_cast<int>(k), static_cast<int>(d));
}

}  // namespace

void nearest_code_cuda(const void* z, int64_t z_row_stride, const void* codebook, const float* norms,
                       int64_t* idx_out, void* emb_out, int64_t n, int64_t k, int64_t d, int dtype_code,
                       std::uintptr_t stream, int device) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (n < 0 || k < 1 || d < 1) throw std::invalid_argument("nearest_code_cuda: need n >= 0, k >= 1, d >= 1");
  if (k > kIntMax - kTileK || d > kIntMax)
    throw std::invalid_argument("nearest_code_cuda: codebook too large (k and d must be < 2^31 - 64)");
  if ((n + kTileN - 1) / kTileN > kIntMax) throw std::invalid_argument("nearest_code_cuda: too many rows");
  if (z_row_stride < 0) throw std::invalid_argument("nearest_code_cuda: z_row_stride must be >= 0");
  if (dtype_code != kVqFloat32 && dtype_code != kVqFloat16)
    throw std::invalid_argument("nearest_code_cuda: dtype_code must be DTYPE_FLOAT32 or DTYPE_FLOAT16");
  if (n == 0) return;
  if (!z || !codebook || !norms || !idx_out || !emb_out) throw std::invalid_argument("nearest_code_cuda: null pointer");

  CudaDeviceGuard guard(device, kOp);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // a stale error of an earlier call must not be reported as this launch's
  if (dtype_code == kVqFloat32)
    launch<float>(z, z_row_stride, codebook, norms, idx_out, emb_out, n, k, d, s);
  else
    launch<__half>(z, z_row_stride, codebook, norms, idx_out, emb_out, n, k, d, s);
  check(cudaGetLastError(), "kernel launch");
}

std::string cuda_runtime_error() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device is visible";
  return std::string();
}

}  // namespace pyinpaint
