// Nearest-codebook search, the op behind vector quantisation.
//
// For each row z_i of z [n, d] and a codebook [k, d] (row j = code j) with precomputed float32
// norms [k] (|e_j|^2), compute dist_j = (|z_i|^2 - 2 z_i.e_j) + |e_j|^2 in float32 and write
// idx_out[i] = argmin_j dist_j (ties -> lowest index; a NaN distance counts as the minimum, as in
// torch.argmin) and emb_out[i, :] = codebook[idx_out[i], :].
//
// No libtorch: every pointer is plain host (CPU) or device (CUDA) memory owned by a torch tensor on
// the Python side. z may be row-strided (z_row_stride >= 0 elements between rows, unit stride
// inside a row; rows may overlap, z is only read); codebook, norms and the outputs are contiguous
// and the outputs do not overlap the inputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pyinpaint {

// float32 only. num_threads <= 0: std::thread::hardware_concurrency(). Threads are only used
// when there is enough work to pay for them. isa: nullptr or "" picks the best SIMD variant this
// CPU runs; a name from nearest_code_cpu_isas() forces that one (tests, benchmarks).
void nearest_code_cpu(const float* z, int64_t z_row_stride, const float* codebook, const float* norms,
                      int64_t* idx_out, float* emb_out, int64_t n, int64_t k, int64_t d,
                      int num_threads, const char* isa = nullptr);

// Name of the SIMD variant the CPU op uses by default on this machine ("avx512", "avx2",
// "baseline"), and all the variants this CPU can run, best first.
const char* nearest_code_cpu_isa();
std::vector<std::string> nearest_code_cpu_isas();

#ifdef PYINPAINT_WITH_CUDA
enum VqDtype : int { kVqFloat32 = 0, kVqFloat16 = 1 };

// z, codebook and emb_out are of the same dtype (dtype_code: VqDtype); norms float32, idx_out
// int64; all device pointers on CUDA device `device`. Launches on `stream` (a cudaStream_t as an
// integer; 0 = legacy default stream) and does not synchronise. Throws std::runtime_error on a
// CUDA error (including a failed launch).
void nearest_code_cuda(const void* z, int64_t z_row_stride, const void* codebook, const float* norms,
                       int64_t* idx_out, void* emb_out, int64_t n, int64_t k, int64_t d, int dtype_code,
                       std::uintptr_t stream, int device);

// Empty string when the CUDA runtime linked into the module can talk to the driver and sees at
// least one device, otherwise the reason (e.g. "CUDA driver version is insufficient ...").
std::string cuda_runtime_error();
#endif

}  // namespace pyinpaint
