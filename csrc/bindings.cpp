// pybind11 bindings of pyinpaint._C. The only file that talks to Python.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyinpaint native ops (no libtorch: raw pointers from torch tensors)";
#ifdef PYINPAINT_WITH_CUDA
  m.def("has_cuda", []() { return true; });
#else
  m.def("has_cuda", []() { return false; });
#endif
}
