// CPU nearest-codebook search (float32). See vq.h for the contract.
//
// Layout: the codebook is repacked once per call into blocks of C codes, each block stored as
// [d][C] (codes past k are zero), so the micro-kernel is a tiny GEMM: for every dimension j it
// broadcasts z[r][j] for R rows and multiplies it into one contiguous row of C codes, keeping the
// R x C dot products in registers. Each loaded code row is reused by R rows and each z value by C
// codes. Distances and the running argmin are then updated once per block, with no [n, k]
// distance matrix ever written to memory.
//
// The micro-kernel is written with GCC/Clang generic vectors (vector_size: plain C++ operators,
// no intrinsics) and compiled three times: baseline (SSE2 on x86-64, what -O3 gives without
// -march), AVX2+FMA and AVX-512, through target attributes; the variant is chosen at run time
// from the CPU's features (or forced by name, for tests). Other architectures get the baseline
// build only (e.g. NEON on aarch64). No OpenMP: rows are split over std::threads when the work
// is large enough.
//
// Determinism: every dot product is summed over j in order 0..d-1, whatever the code's position in
// its block, so equal codebook rows give bit-identical distances and the lowest index wins.
#include "vq.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace pyinpaint {
namespace {

#if defined(__GNUC__) || defined(__clang__)
#define PI_UNROLL _Pragma("GCC unroll 64")
#define PI_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define PI_UNROLL
#define PI_NO_UNROLL
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define PI_X86_DISPATCH 1
#endif

// a is a strictly better (distance, index) candidate than b: smaller distance, NaN counting as the
// smallest (torch.argmin propagates NaN), ties to the lower index.
inline bool better(float a, int64_t ia, float b, int64_t ib) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
  return a < b || (a == b && ia < ib);
}

struct Args {
  const float* z;
  int64_t zs;           // row stride of z, elements
  const float* packed;  // [kp / C][d][C]
  const float* normp;   // [kp], zero past k (never selected: masked)
  const float* codebook;
  int64_t k, d;
  int64_t* idx_out;
  float* emb_out;
};

// Vectors of W float32 / int32 lanes (GCC/Clang vector extensions; lowered to whatever the
// enclosing function's target supports).
template <int W>
struct Vec {
  typedef float f __attribute__((vector_size(W * sizeof(float))));
  typedef int32_t i __attribute__((vector_size(W * sizeof(int32_t))));
};

// The micro-kernel over rows [row0, row1): tiles of R rows x NV vectors of W codes (C = NV * W
// codes per block). Its body is a macro, instantiated below once per SIMD target, rather than one
// always_inline template called from three target functions: GCC lowers a function's generic
// vector comparisons for that function's own target, so in a baseline-compiled helper the
// 512-bit compares of the argmin update get scalarised (7x slower even when inlined into an
// AVX-512 function). Comments inside are /* */ because of the line continuations.
#define PI_SEARCH_ROWS_BODY                                                                                 \
  static_assert(R > 0 && NV > 0 && W > 0, "tile sizes");                                                    \
  typedef typename Vec<W>::f vf;                                                                            \
  typedef typename Vec<W>::i vi;                                                                            \
  constexpr int C = NV * W;                                                                                 \
  const int64_t d = a.d, k = a.k;                                                                           \
  const int64_t kp = (k + C - 1) / C * C;                                                                   \
                                                                                                            \
  vi lane;  /* 0, 1, ..., W - 1 */                                                                          \
  for (int l = 0; l < W; ++l) lane[l] = l;                                                                  \
                                                                                                            \
  for (int64_t r0 = row0; r0 < row1; r0 += R) {                                                             \
    const int nr = static_cast<int>(std::min<int64_t>(R, row1 - r0));                                       \
    /* A partial tile repeats its last row; the extra results are discarded. */                             \
    const float* zr[R];                                                                                     \
    PI_UNROLL for (int r = 0; r < R; ++r) zr[r] = a.z + (r0 + std::min(r, nr - 1)) * a.zs;                  \
                                                                                                            \
    float zz[R];                                                                                            \
    for (int r = 0; r < R; ++r) {                                                                           \
      float s = 0.f;                                                                                        \
      for (int64_t j = 0; j < d; ++j) s += zr[r][j] * zr[r][j];                                             \
      zz[r] = s;                                                                                            \
    }                                                                                                       \
                                                                                                            \
    vf best[R][NV];                                                                                         \
    vi bidx[R][NV];                                                                                         \
    PI_UNROLL for (int r = 0; r < R; ++r) {                                                                 \
      PI_UNROLL for (int v = 0; v < NV; ++v) {                                                              \
        best[r][v] = vf{} + std::numeric_limits<float>::infinity();                                         \
        bidx[r][v] = vi{};                                                                                  \
      }                                                                                                     \
    }                                                                                                       \
                                                                                                            \
    for (int64_t kb = 0; kb < kp; kb += C) {                                                                \
      const float* pb = a.packed + kb * d;                                                                  \
      vf acc[R][NV];                                                                                        \
      PI_UNROLL for (int r = 0; r < R; ++r) {                                                               \
        PI_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = vf{};                                            \
      }                                                                                                     \
      for (int64_t j = 0; j < d; ++j) {                                                                     \
        vf e[NV];                                                                                           \
        PI_UNROLL for (int v = 0; v < NV; ++v) std::memcpy(&e[v], pb + j * C + v * W, sizeof(vf));          \
        PI_UNROLL for (int r = 0; r < R; ++r) {                                                             \
          const float zv = zr[r][j];                                                                        \
          PI_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] += e[v] * zv;                                    \
        }                                                                                                   \
      }                                                                                                     \
      PI_UNROLL for (int v = 0; v < NV; ++v) {                                                              \
        const vi code = lane + static_cast<int32_t>(kb + v * W);                                            \
        const vi valid = code < static_cast<int32_t>(k);  /* padding codes are never selected */            \
        vf nb;                                                                                              \
        std::memcpy(&nb, a.normp + kb + v * W, sizeof(vf));                                                 \
        PI_UNROLL for (int r = 0; r < R; ++r) {                                                             \
          /* Same association as the reference: (|z|^2 - 2 z.e) + |e|^2. */                                 \
          const vf dist = (zz[r] - 2.0f * acc[r][v]) + nb;                                                  \
          const vf b = best[r][v];                                                                          \
          /* Codes in a lane come in increasing order: strict '<' keeps the lowest index on ties; */        \
          /* a NaN distance replaces a non-NaN best (torch.argmin propagates NaN). */                       \
          const vi upd = valid & ((dist < b) | ((dist != dist) & (b == b)));                                \
          best[r][v] = upd ? dist : b;                                                                      \
          bidx[r][v] = upd ? code : bidx[r][v];                                                             \
        }                                                                                                   \
      }                                                                                                     \
    }                                                                                                       \
                                                                                                            \
    for (int r = 0; r < nr; ++r) {                                                                          \
      /* Fold the NV vectors lane-wise (full comparison: a lane of vector v may hold a lower index */       \
      /* than the same lane of vector 0), then the W lanes in a short scalar loop kept rolled (an */        \
      /* unrolled one is large enough to thrash the instruction cache with 512-bit vectors). */             \
      vf bd = best[r][0];                                                                                   \
      vi bi = bidx[r][0];                                                                                   \
      PI_UNROLL for (int v = 1; v < NV; ++v) {                                                              \
        const vf d1 = best[r][v];                                                                           \
        const vi i1 = bidx[r][v];                                                                           \
        const vi take = (d1 < bd) | ((d1 == bd) & (i1 < bi)) | ((d1 != d1) & ((bd == bd) | (i1 < bi)));     \
        bd = take ? d1 : bd;                                                                                \
        bi = take ? i1 : bi;                                                                                \
      }                                                                                                     \
      float bl[W];                                                                                          \
      int32_t il[W];                                                                                        \
      std::memcpy(bl, &bd, sizeof(bl));                                                                     \
      std::memcpy(il, &bi, sizeof(il));                                                                     \
      float dmin = bl[0];                                                                                   \
      int64_t imin = il[0];                                                                                 \
      PI_NO_UNROLL for (int l = 1; l < W; ++l) {                                                            \
        if (better(bl[l], il[l], dmin, imin)) {                                                             \
          dmin = bl[l];                                                                                     \
          imin = il[l];                                                                                     \
        }                                                                                                   \
      }                                                                                                     \
      a.idx_out[r0 + r] = imin;                                                                             \
      std::memcpy(a.emb_out + (r0 + r) * d, a.codebook + imin * d, static_cast<size_t>(d) * sizeof(float)); \
    }                                                                                                       \
  }

#define PI_DEFINE_SEARCH_ROWS(NAME, ATTR)                                         \
  template <int R, int NV, int W>                                                 \
  ATTR void NAME(const Args& a, int64_t row0, int64_t row1) { PI_SEARCH_ROWS_BODY }

// The builds of the micro-kernel, R rows x NV vectors of W float32 accumulators (measured on a
// Zen-class CPU with AVX-512, single thread, N=8192 K=512 D=64: 2.9 / 4.9 / 12.9 ms).
// AVX-512: 8 x 2 zmm = 16 of 32 registers; AVX2: 6 x 2 ymm = 12 of 16; SSE2: 6 x 2 xmm = 12 of 16.
constexpr int kRows512 = 8, kVecs512 = 2, kCodes512 = kVecs512 * 16;
constexpr int kRows256 = 6, kVecs256 = 2, kCodes256 = kVecs256 * 8;
constexpr int kRowsBase = 6, kVecsBase = 2, kCodesBase = kVecsBase * 4;

PI_DEFINE_SEARCH_ROWS(search_rows_base_t, )

void search_rows_base(const Args& a, int64_t row0, int64_t row1) {
  search_rows_base_t<kRowsBase, kVecsBase, 4>(a, row0, row1);
}

#ifdef PI_X86_DISPATCH
#if defined(__clang__)
#define PI_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define PI_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#endif
#define PI_TARGET_AVX2 __attribute__((target("avx2,fma")))

PI_DEFINE_SEARCH_ROWS(search_rows_avx512_t, PI_TARGET_AVX512)
PI_DEFINE_SEARCH_ROWS(search_rows_avx2_t, PI_TARGET_AVX2)

PI_TARGET_AVX512 void search_rows_avx512(const Args& a, int64_t row0, int64_t row1) {
  search_rows_avx512_t<kRows512, kVecs512, 16>(a, row0, row1);
}
PI_TARGET_AVX2 void search_rows_avx2(const Args& a, int64_t row0, int64_t row1) {
  search_rows_avx2_t<kRows256, kVecs256, 8>(a, row0, row1);
}
#endif

struct Variant {
  const char* name;
  int rows, codes;
  void (*fn)(const Args&, int64_t, int64_t);
};

// The variants this CPU can run, best first.
std::vector<Variant> runnable_variants() {
  std::vector<Variant> out;
#ifdef PI_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    out.push_back({"avx512", kRows512, kCodes512, &search_rows_avx512});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back({"avx2", kRows256, kCodes256, &search_rows_avx2});
#endif
  out.push_back({"baseline", kRowsBase, kCodesBase, &search_rows_base});
  return out;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = runnable_variants();
  return v;
}

const Variant& variant(const char* isa) {
  const auto& all = variants();
  if (isa == nullptr || *isa == '\0') return all.front();
  for (const auto& v : all)
    if (std::strcmp(v.name, isa) == 0) return v;
  throw std::invalid_argument(std::string("nearest_code_cpu: SIMD variant '") + isa +
                              "' is unknown or not supported by this CPU");
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

std::unique_ptr<float[], FreeDeleter> alloc_floats(int64_t count) {
  const size_t bytes = (static_cast<size_t>(count) * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<float[], FreeDeleter>(static_cast<float*>(p));
}

// Below this many multiply-adds per thread, starting a thread costs more than it saves (a thread
// start + join measured 50-100 us here; 8 M MAC is about 90 us of AVX-512 work).
constexpr int64_t kMinMacPerThread = int64_t(1) << 23;

}  // namespace

const char* nearest_code_cpu_isa() { return variant(nullptr).name; }

std::vector<std::string> nearest_code_cpu_isas() {
  std::vector<std::string> out;
  for (const auto& v : variants()) out.emplace_back(v.name);
  return out;
}

void nearest_code_cpu(const float* z, int64_t z_row_stride, const float* codebook, const float* norms,
                      int64_t* idx_out, float* emb_out, int64_t n, int64_t k, int64_t d,
                      int num_threads, const char* isa) {
  if (n < 0 || k < 1 || d < 1) throw std::invalid_argument("nearest_code_cpu: need n >= 0, k >= 1, d >= 1");
  if (k > std::numeric_limits<int32_t>::max() - 64)  // indices are int32 in the kernel, blocks of <= 64
    throw std::invalid_argument("nearest_code_cpu: codebook has more than 2^31 - 65 codes");
  if (z_row_stride < 0) throw std::invalid_argument("nearest_code_cpu: z_row_stride must be >= 0");
  if (n == 0) return;
  if (!z || !codebook || !norms || !idx_out || !emb_out)
    throw std::invalid_argument("nearest_code_cpu: null pointer");

  const Variant& v = variant(isa);
  const int C = v.codes;
  const int64_t kp = (k + C - 1) / C * C;

  auto packed = alloc_floats(kp * d);
  auto normp = alloc_floats(kp);
  for (int64_t kb = 0; kb < kp; kb += C) {
    float* pb = packed.get() + kb * d;
    for (int c = 0; c < C; ++c) {
      const int64_t code = kb + c;
      if (code < k) {
        const float* src = codebook + code * d;
        for (int64_t j = 0; j < d; ++j) pb[j * C + c] = src[j];
        normp[code] = norms[code];
      } else {
        for (int64_t j = 0; j < d; ++j) pb[j * C + c] = 0.f;
        normp[code] = 0.f;
      }
    }
  }

  const Args args{z, z_row_stride, packed.get(), normp.get(), codebook, k, d, idx_out, emb_out};

  // Threads: at most num_threads, at least kMinMacPerThread of work each, whole row tiles each.
  int64_t max_threads = num_threads > 0 ? num_threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  max_threads = std::max<int64_t>(1, std::min<int64_t>(max_threads, 256));
  const int64_t tiles = (n + v.rows - 1) / v.rows;
  const double mac = static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(d);
  int64_t nt = static_cast<int64_t>(std::min<double>(static_cast<double>(max_threads), mac / kMinMacPerThread));
  nt = std::max<int64_t>(1, std::min<int64_t>(nt, tiles));

  auto chunk = [&](int64_t t, int64_t& lo, int64_t& hi) {
    lo = std::min(n, (tiles * t / nt) * v.rows);
    hi = std::min(n, (tiles * (t + 1) / nt) * v.rows);
  };
  if (nt == 1) {
    v.fn(args, 0, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(nt - 1));
  for (int64_t t = 1; t < nt; ++t) {
    int64_t lo, hi;
    chunk(t, lo, hi);
    try {
      pool.emplace_back(v.fn, std::cref(args), lo, hi);
    } catch (const std::system_error&) {
      v.fn(args, lo, hi);  // could not start a thread: do this chunk here
    }
  }
  int64_t lo, hi;
  chunk(0, lo, hi);
  v.fn(args, lo, hi);
  for (auto& th : pool) th.join();
}

}  // namespace pyinpaint
