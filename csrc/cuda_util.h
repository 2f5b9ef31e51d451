// Small CUDA runtime helpers shared by the extension's .cu files.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pyinpaint {

// Throws std::runtime_error "<op>: <what> failed: <name>: <description>" unless err is cudaSuccess.
inline void cuda_check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(op) + ": " + what + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}

// Makes `device` current for the duration of a call and restores the previous one.
class CudaDeviceGuard {
 public:
  CudaDeviceGuard(int device, const char* op) {
    cuda_check(cudaGetDevice(&prev_), op, "cudaGetDevice");
    if (prev_ != device) {
      cuda_check(cudaSetDevice(device), op, "cudaSetDevice");
      switched_ = true;
    }
  }
  ~CudaDeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

}  // namespace pyinpaint
