// pybind11 bindings of pyinpaint._C. The only file that talks to Python.
//
// Pointers arrive as integers (tensor.data_ptr()), sizes and strides as integers; the caller
// (pyinpaint.kernels._ext) validates the tensors, owns the memory and keeps it alive. The GIL is
// released around the work.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "sample.h"
#include "vq.h"

namespace py = pybind11;

namespace {

template <typename T>
T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyinpaint native ops (no libtorch: raw pointers from torch tensors)";
#ifdef PYINPAINT_WITH_CUDA
  m.def("has_cuda", []() { return true; });
#else
  m.def("has_cuda", []() { return false; });
#endif

  m.def(
      "nearest_code_cpu",
      [](std::uintptr_t z, int64_t z_row_stride, std::uintptr_t codebook, std::uintptr_t norms,
         std::uintptr_t idx_out, std::uintptr_t emb_out, int64_t n, int64_t k, int64_t d, int num_threads,
         const std::string& isa) {
        py::gil_scoped_release nogil;
        pyinpaint::nearest_code_cpu(as_ptr<const float>(z), z_row_stride, as_ptr<const float>(codebook),
                                    as_ptr<const float>(norms), as_ptr<int64_t>(idx_out), as_ptr<float>(emb_out),
                                    n, k, d, num_threads, isa.c_str());
      },
      py::arg("z_ptr"), py::arg("z_row_stride"), py::arg("codebook_ptr"), py::arg("norms_ptr"),
      py::arg("idx_out_ptr"), py::arg("emb_out_ptr"), py::arg("n"), py::arg("k"), py::arg("d"),
      py::arg("num_threads") = 0, py::arg("isa") = "",
      "Nearest code per row, float32 on the CPU. z [n, d] (row stride z_row_stride elements, unit "
      "stride within a row), codebook [k, d] and norms [k] contiguous float32; writes idx_out [n] "
      "int64 and emb_out [n, d] float32. num_threads <= 0: all hardware threads. isa: '' for the "
      "best SIMD variant, or one of cpu_isas().");

  m.def("cpu_isa", &pyinpaint::nearest_code_cpu_isa,
        "SIMD variant nearest_code_cpu uses by default on this CPU (avx512, avx2 or baseline).");
  m.def("cpu_isas", &pyinpaint::nearest_code_cpu_isas, "SIMD variants this CPU can run, best first.");

  m.attr("SCALE_NONE") = static_cast<int>(pyinpaint::kScaleNone);
  m.attr("SCALE_DIVIDE") = static_cast<int>(pyinpaint::kScaleDivide);
  m.attr("SCALE_MULTIPLY") = static_cast<int>(pyinpaint::kScaleMultiply);
  m.def(
      "sample_step_cpu",
      [](std::uintptr_t logits, int64_t logits_row_stride, std::uintptr_t noise, int64_t noise_row_stride,
         std::uintptr_t codebook, int64_t n, int64_t k, int64_t d, int scale_mode, float scale, int64_t top_k,
         std::uintptr_t codes_out, int64_t codes_stride, std::uintptr_t emb_out) {
        py::gil_scoped_release nogil;
        pyinpaint::sample_step_cpu(as_ptr<const float>(logits), logits_row_stride, as_ptr<const float>(noise),
                                   noise_row_stride, as_ptr<const float>(codebook), n, k, d, scale_mode, scale, top_k,
                                   as_ptr<int64_t>(codes_out), codes_stride, as_ptr<float>(emb_out));
      },
      py::arg("logits_ptr"), py::arg("logits_row_stride"), py::arg("noise_ptr"), py::arg("noise_row_stride"),
      py::arg("codebook_ptr"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("scale_mode"), py::arg("scale"),
      py::arg("top_k"), py::arg("codes_out_ptr"), py::arg("codes_stride"), py::arg("emb_out_ptr"),
      "One sampling step on the CPU, float32: shaped = logits (SCALE_NONE), logits / scale (SCALE_DIVIDE) or "
      "logits * scale (SCALE_MULTIPLY); top-k mask (0 < top_k < k); argmax(shaped + noise), first index on "
      "ties; writes codes_out[b * codes_stride] (int64) and emb_out [n, d] = codebook rows. logits and noise "
      "[n, k] row-strided (unit stride within a row), codebook [k, d] contiguous.");

#ifdef PYINPAINT_WITH_CUDA
  m.attr("DTYPE_FLOAT32") = static_cast<int>(pyinpaint::kVqFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(pyinpaint::kVqFloat16);
  m.def(
      "nearest_code_cuda",
      [](std::uintptr_t z, int64_t z_row_stride, std::uintptr_t codebook, std::uintptr_t norms,
         std::uintptr_t idx_out, std::uintptr_t emb_out, int64_t n, int64_t k, int64_t d, int dtype_code,
         std::uintptr_t stream, int device) {
        py::gil_scoped_release nogil;
        pyinpaint::nearest_code_cuda(as_ptr<const void>(z), z_row_stride, as_ptr<const void>(codebook),
                                     as_ptr<const float>(norms), as_ptr<int64_t>(idx_out), as_ptr<void>(emb_out),
                                     n, k, d, dtype_code, stream, device);
      },
      py::arg("z_ptr"), py::arg("z_row_stride"), py::arg("codebook_ptr"), py::arg("norms_ptr"),
      py::arg("idx_out_ptr"), py::arg("emb_out_ptr"), py::arg("n"), py::arg("k"), py::arg("d"),
      py::arg("dtype_code"), py::arg("stream"), py::arg("device"),
      "Nearest code per row on a CUDA device: z and codebook (and emb_out) of dtype dtype_code "
      "(DTYPE_FLOAT32 or DTYPE_FLOAT16), norms float32, idx_out int64. Launched on `stream` "
      "(cudaStream_t as an integer) of CUDA device `device`; asynchronous.");
  m.attr("SAMPLE_CUDA_MAX_TOPK_K") = pyinpaint::kSampleCudaMaxTopkK;
  m.def(
      "sample_step_cuda",
      [](std::uintptr_t logits, int64_t logits_row_stride, std::uintptr_t noise, int64_t noise_row_stride,
         std::uintptr_t codebook, int64_t n, int64_t k, int64_t d, int scale_mode, float scale, int64_t top_k,
         std::uintptr_t codes_out, int64_t codes_stride, std::uintptr_t emb_out, std::uintptr_t stream, int device) {
        py::gil_scoped_release nogil;
        pyinpaint::sample_step_cuda(as_ptr<const float>(logits), logits_row_stride, as_ptr<const float>(noise),
                                    noise_row_stride, as_ptr<const float>(codebook), n, k, d, scale_mode, scale,
                                    top_k, as_ptr<int64_t>(codes_out), codes_stride, as_ptr<float>(emb_out), stream,
                                    device);
      },
      py::arg("logits_ptr"), py::arg("logits_row_stride"), py::arg("noise_ptr"), py::arg("noise_row_stride"),
      py::arg("codebook_ptr"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("scale_mode"), py::arg("scale"),
      py::arg("top_k"), py::arg("codes_out_ptr"), py::arg("codes_stride"), py::arg("emb_out_ptr"),
      py::arg("stream"), py::arg("device"),
      "sample_step_cpu on a CUDA device (one block per row; top-k needs k <= SAMPLE_CUDA_MAX_TOPK_K). "
      "Launched on `stream` (cudaStream_t as an integer) of CUDA device `device`; asynchronous.");
  m.def("cuda_runtime_error", &pyinpaint::cuda_runtime_error,
        "'' when the CUDA runtime inside the module works with this driver and sees a device, "
        "else the reason.");
#endif
}
