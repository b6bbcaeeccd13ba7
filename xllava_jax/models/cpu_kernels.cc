// XLA:CPU kernels (XLA FFI custom calls), built on first use by xllava_jax/models/cpu_kernels.py with -O3
// -march=native:
// - XllavaBf16Matvec: y[M, N] (float32) = x[M, K] (float32) @ w[layer, K, N] (bfloat16) for few rows M (decode).
//   Reads layer `layer` of the stacked weights in place, each weight once for all M rows, widening bf16 to
//   float32 in registers (XLA:CPU widens the whole bf16 operand in memory first); each thread streams its own
//   block of weight rows.
// - XllavaLoadStack: a fresh stacked leaf out[l] = host matrix l (memory-mapped checkpoint tensors), each copied
//   or transposed ([out, in] -> [in, out], blocked in two levels; XLA:CPU and NumPy transpose these matrices at
//   ~0.2-0.6 GB/s), reading the host memory once (jax.device_put of a mapped tensor makes ~1.5 GB/s), dropping
//   each layer's mapped pages (and, asked, its cached pages) once copied.
// Both split their work over XLA's intra-op thread pool (Parallel).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxRows = 16;
constexpr int64_t kRowBlock = 8;  // weight rows read per pass over the accumulators

inline float Widen(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// acc[M, N] = x[:, k0:k1] @ w[k0:k1, :]: weight rows [k0, k1) streamed in order (one sequential read per thread,
// 22 GB/s on 2 cores at 4096 x 11008 against 13 for splitting the columns), kRowBlock rows per pass over acc.
void Rows(const float* x, const uint16_t* w, float* acc, int64_t m, int64_t k, int64_t n, int64_t k0, int64_t k1) {
  std::fill(acc, acc + m * n, 0.0f);
  int64_t i = k0;
  for (; i + kRowBlock <= k1; i += kRowBlock) {
    const uint16_t* row = w + i * n;
    for (int64_t r = 0; r < m; ++r) {
      const float* xr = x + r * k + i;
      float* a = acc + r * n;
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) {
        float s = a[j];
        for (int64_t b = 0; b < kRowBlock; ++b) s += xr[b] * Widen(row[b * n + j]);
        a[j] = s;
      }
    }
  }
  for (; i < k1; ++i) {
    const uint16_t* row = w + i * n;
    for (int64_t r = 0; r < m; ++r) {
      const float xi = x[r * k + i];
      float* a = acc + r * n;
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) a[j] += xi * Widen(row[j]);
    }
  }
}

// The number of parts Parallel splits `count` items into: one per thread of XLA's pool.
int64_t Parts(ffi::ThreadPool& pool, int64_t count) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), count));
}

// Runs body(part, begin, end) over [0, count) in Parts() contiguous parts. Parts are claimed from a
// shared counter by the pool's tasks and by the caller, which then waits only for parts already being computed:
// no deadlock when the pool's threads are all busy (XLA may run independent custom calls at once). Late tasks
// find no part left; the state they touch is shared.
template <typename Body>
void Parallel(ffi::ThreadPool& pool, int64_t count, Body body) {
  const int64_t parts = Parts(pool, count);
  const int64_t per = (count + parts - 1) / parts;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };
  auto state = std::make_shared<State>();
  auto work = [=] {
    for (int64_t p; (p = state->next.fetch_add(1)) < parts;) {
      body(p, std::min(count, p * per), std::min(count, (p + 1) * per));
      state->finished.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t p = 1; p < parts; ++p) pool.Schedule(decltype(work)(work));
  work();
  while (state->finished.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

ffi::Error Matvec(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                  ffi::Buffer<ffi::S32> layer, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || xd[1] != wd[1]) {
    return ffi::Error::InvalidArgument("bf16 matvec: expected x [M, K] and w [L, K, N]");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[2], layers = wd[0];
  if (m > kMaxRows) return ffi::Error::InvalidArgument("bf16 matvec: more rows than kMaxRows");
  const int32_t l = *layer.typed_data();
  if (l < 0 || l >= layers) return ffi::Error::InvalidArgument("bf16 matvec: layer index out of range");
  const float* xp = x.typed_data();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.untyped_data()) + static_cast<int64_t>(l) * k * n;
  float* yp = y->typed_data();

  // each part sums its own block of weight rows into its own accumulators; the parts' sums are added after
  const int64_t blocks = (k + kRowBlock - 1) / kRowBlock;
  std::vector<float> partial((Parts(pool, blocks) - 1) * m * n);
  Parallel(pool, blocks, [=, &partial](int64_t part, int64_t b0, int64_t b1) {
    float* acc = part == 0 ? yp : partial.data() + (part - 1) * m * n;
    Rows(xp, wp, acc, m, k, n, std::min(k, b0 * kRowBlock), std::min(k, b1 * kRowBlock));
  });
  for (size_t i = 0; i < partial.size(); ++i) yp[i % (m * n)] += partial[i];
  return ffi::Error::Success();
}

// dst[c * rows + r] = src[r * cols + c] for rows [r0, r1) of src: kOuter-square tiles (TLB- and L2-sized) of
// kInner-square blocks (L1-sized), reading rows of a block contiguously (2.6 GB/s a thread at 11008 x 4096 bf16,
// against 0.6-1.5 for one level of blocking).
constexpr int64_t kOuter = 256;
constexpr int64_t kInner = 32;

// out[j] = column c + j of the 8 x 8 block of 16-bit src at (r, c): three rounds of unpacks.
inline void Transpose8x8(const uint16_t* src, int64_t cols, int64_t r, int64_t c, __m128i out[8]) {
  __m128i a[8], t[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (r + i) * cols + c));
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
    t[i + 4] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // h: columns 0-3, then 4-7
    const __m128i* u = t + 4 * h;
    const __m128i p0 = _mm_unpacklo_epi32(u[0], u[1]), p1 = _mm_unpackhi_epi32(u[0], u[1]);
    const __m128i p2 = _mm_unpacklo_epi32(u[2], u[3]), p3 = _mm_unpackhi_epi32(u[2], u[3]);
    out[4 * h] = _mm_unpacklo_epi64(p0, p2);
    out[4 * h + 1] = _mm_unpackhi_epi64(p0, p2);
    out[4 * h + 2] = _mm_unpacklo_epi64(p1, p3);
    out[4 * h + 3] = _mm_unpackhi_epi64(p1, p3);
  }
}

// dst rows c..c+7, columns r..r+8*kLines-1 = the transposed 16-bit src block at (r, c): each dst row gets a whole
// 64-byte line at once, written past the caches when aligned (the output is read only later; no read for
// ownership of lines that are overwritten whole).
constexpr int kLines = 4;
inline void TransposeLines(const uint16_t* src, uint16_t* dst, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  __m128i out[kLines][8];
  for (int q = 0; q < kLines; ++q) Transpose8x8(src, cols, r + 8 * q, c, out[q]);
  for (int j = 0; j < 8; ++j) {
    __m128i* line = reinterpret_cast<__m128i*>(dst + (c + j) * rows + r);
    const bool aligned = (reinterpret_cast<uintptr_t>(line) & 63) == 0;
    for (int q = 0; q < kLines; ++q) {
      if (aligned) {
        _mm_stream_si128(line + q, out[q][j]);
      } else {
        _mm_storeu_si128(line + q, out[q][j]);
      }
    }
  }
}

template <typename T>
void TransposeBlock(const T* src, T* dst, int64_t rows, int64_t cols, int64_t rb, int64_t re, int64_t cb,
                    int64_t ce) {
  int64_t r = rb;
  if constexpr (sizeof(T) == 2) {
    for (; r + 8 * kLines <= re; r += 8 * kLines) {
      int64_t c = cb;
      for (; c + 8 <= ce; c += 8) TransposeLines(src, dst, rows, cols, r, c);
      for (; c < ce; ++c) {
        for (int64_t i = r; i < r + 8 * kLines; ++i) dst[c * rows + i] = src[i * cols + c];
      }
    }
  }
  for (; r < re; ++r) {
    for (int64_t c = cb; c < ce; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

template <typename T>
void TransposeRows(const T* src, T* dst, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
  for (int64_t rt = r0; rt < r1; rt += kOuter) {
    const int64_t rte = std::min(rt + kOuter, r1);
    for (int64_t ct = 0; ct < cols; ct += kOuter) {
      const int64_t cte = std::min(ct + kOuter, cols);
      for (int64_t rb = rt; rb < rte; rb += kInner) {
        for (int64_t cb = ct; cb < cte; cb += kInner) {
          TransposeBlock(src, dst, rows, cols, rb, std::min(rb + kInner, rte), cb, std::min(cb + kInner, cte));
        }
      }
    }
  }
  _mm_sfence();  // this thread's streamed stores land before it reports its part done
}

// A host address passed as two uint32 halves (JAX has no 64-bit integers by default).
const char* Address(const uint32_t* half) {
  return reinterpret_cast<const char*>(static_cast<uintptr_t>(half[0]) | static_cast<uintptr_t>(half[1]) << 32);
}

// madvise(`advice`) over the whole pages holding [p, p + n).
void Advise(const char* p, int64_t n, int advice) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  madvise(reinterpret_cast<void*>(lo), reinterpret_cast<uintptr_t>(p) + n - lo, advice);
}

// Maps the pages holding [p, p + n) in one call (MADV_POPULATE_WRITE / _READ, Linux 5.14) instead of a page fault
// each; advice only.
void Populate(const char* p, int64_t n, bool write) { Advise(p, n, write ? 23 : 22); }

// What LoadStack does with each layer's host pages once copied (the host memory must be a read-only file mapping
// for anything but kKeep: anonymous memory would read back as zeros).
enum Release : int32_t { kKeep = 0, kUnmap = 1, kEvict = 2 };

// Drops this process's mapping of the pages holding [p, p + n); with kEvict, first reclaims them from the page
// cache too (MADV_PAGEOUT, Linux 5.4; pages other processes map stay). The data stays in the file.
void Release(const char* p, int64_t n, int32_t how) {
  if (how == kEvict) Advise(p, n, MADV_PAGEOUT);
  if (how != kKeep) Advise(p, n, MADV_DONTNEED);
}

// out[l] = the host matrix at addresses[l] for every layer l of out ([L, A, B], or [A, B] with one address): each
// [B, A] row-major host matrix transposed when `transpose`, else an [A, B] one copied. The output is fresh
// (nothing to zero first) and the host memory is read once; each layer's host pages are then released as
// `release` (a Release) says.
ffi::Error LoadStack(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> addresses, ffi::Result<ffi::AnyBuffer> out,
                     bool transpose, int32_t release) {
  const auto od = out->dimensions();
  const int64_t rank = od.size();
  const int64_t layers = rank == 3 ? od[0] : 1;
  if (rank != 2 && rank != 3) return ffi::Error::InvalidArgument("load stack: expected [L, A, B] or [A, B]");
  if (addresses.element_count() != 2 * layers) return ffi::Error::InvalidArgument("load stack: one address a layer");
  const int64_t a = od[rank - 2], b = od[rank - 1];
  const int64_t bytes = ffi::ByteWidth(out->element_type());
  if (bytes != 2 && bytes != 4) return ffi::Error::InvalidArgument("load stack: 2- or 4-byte elements only");
  const int64_t slot = a * b * bytes;
  char* base = reinterpret_cast<char*>(out->untyped_data());
  for (int64_t l = 0; l < layers; ++l) {
    const char* src = Address(addresses.typed_data() + 2 * l);
    char* dst = base + l * slot;
    const int64_t pieces = Parts(pool, slot >> 20);  // each thread maps a piece of the output, then of the input
    Parallel(pool, 2 * pieces, [=](int64_t, int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t begin = slot * (p / 2) / pieces, end = slot * (p / 2 + 1) / pieces;
        Populate((p % 2 ? src : dst) + begin, end - begin, p % 2 == 0);
      }
    });
    if (!transpose) {
      const int64_t chunk = 8 << 20;
      Parallel(pool, (slot + chunk - 1) / chunk, [=](int64_t, int64_t c0, int64_t c1) {
        const int64_t lo = c0 * chunk, hi = std::min(slot, c1 * chunk);
        if (hi > lo) std::memcpy(dst + lo, src + lo, hi - lo);
      });
    } else {
      const int64_t rows = b, cols = a;  // the host matrix is [b, a]
      auto run = [&](auto zero) {
        using T = decltype(zero);
        const T* s = reinterpret_cast<const T*>(src);
        T* d = reinterpret_cast<T*>(dst);
        Parallel(pool, (rows + kOuter - 1) / kOuter, [=](int64_t, int64_t b0, int64_t b1) {
          TransposeRows(s, d, rows, cols, std::min(rows, b0 * kOuter), std::min(rows, b1 * kOuter));
        });
      };
      if (bytes == 2) {
        run(uint16_t{});
      } else {
        run(uint32_t{});
      }
    }
    Release(src, slot, release);
  }
  return ffi::Error::Success();
}


#ifdef __AVX512BF16__
// bf16 GEMM (prefill): y[M, N] (float32) = x[M, K] @ w[layer, K, N] (both bfloat16) with AVX512-BF16 dot products
// (vdpbf16ps: two bf16 products per float32 lane), reading the stacked weights in place. Each thread owns blocks
// of kNC columns; a block's weights are packed kKC rows at a time into panels of kNR columns whose row pairs are
// interleaved (the operand layout vdpbf16ps wants), then kMR x kNR tiles of y accumulate in registers.
constexpr int64_t kMR = 12;
constexpr int64_t kNR = 32;
constexpr int64_t kNC = 128;
constexpr int64_t kKC = 4096;  // even: only the last depth block may hold an odd row

// panel[p][0:64] = for columns c..c+31 of rows (k0 + 2p, k0 + 2p + 1) of w: (w[2p][c], w[2p+1][c], ...) for
// columns 0-15, then 16-31; rows and columns past the block are zeros.
void Pack(const uint16_t* w, int64_t ldw, int64_t kc, int64_t nc, uint16_t* packed) {
  const int64_t pairs = (kc + 1) / 2, panels = (nc + kNR - 1) / kNR;
  alignas(64) uint16_t lo[32], hi[32];
  for (int i = 0; i < 16; ++i) {
    lo[2 * i] = i, lo[2 * i + 1] = 32 + i, hi[2 * i] = 16 + i, hi[2 * i + 1] = 48 + i;
  }
  const __m512i idx_lo = _mm512_load_si512(lo), idx_hi = _mm512_load_si512(hi);
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* r0 = w + 2 * p * ldw;
    const bool second = 2 * p + 1 < kc;
    for (int64_t j = 0; j < panels; ++j) {
      const int64_t cols = std::min(kNR, nc - j * kNR);
      const __mmask32 mask = cols == 32 ? ~__mmask32{0} : (__mmask32{1} << cols) - 1;
      const __m512i a = _mm512_maskz_loadu_epi16(mask, r0 + j * kNR);
      const __m512i b = second ? _mm512_maskz_loadu_epi16(mask, r0 + ldw + j * kNR) : _mm512_setzero_si512();
      uint16_t* out = packed + (j * pairs + p) * 2 * kNR;
      _mm512_storeu_si512(out, _mm512_permutex2var_epi16(a, idx_lo, b));
      _mm512_storeu_si512(out + kNR, _mm512_permutex2var_epi16(a, idx_hi, b));
    }
  }
}

// xp[(block * pairs + p) * kMR + r] = (x[row][2p], x[row][2p + 1]) as one 32-bit pair, row = block * kMR + r, for
// blocks [b0, b1): each kMR-row block's pairs one after another (a tile then reads them in order, instead of kMR
// rows K apart, which alias in L1 when K is a multiple of 2048); zeros past row m and column k.
void PackRows(const uint16_t* x, int64_t m, int64_t k, int64_t b0, int64_t b1, uint32_t* xp) {
  const int64_t pairs = (k + 1) / 2;
  for (int64_t block = b0; block < b1; ++block) {
    uint32_t* out = xp + block * pairs * kMR;
    for (int64_t r = 0; r < kMR; ++r) {
      const int64_t row = block * kMR + r;
      const uint16_t* in = x + row * k;
      for (int64_t p = 0; p < pairs; ++p) {
        const uint32_t lo = row < m ? in[2 * p] : 0, hi = row < m && 2 * p + 1 < k ? in[2 * p + 1] : 0;
        out[p * kMR + r] = lo | hi << 16;
      }
    }
  }
}

// y[0:MR, 0:cols] (+)= the packed x pairs (kMR per pair) @ one packed panel, over `pairs` row pairs.
template <int MR>
void Tile(const uint32_t* xp, const uint16_t* panel, int64_t pairs, float* y, int64_t ldy, int64_t cols,
          bool accumulate) {
  const __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16{1} << cols) - 1;
  const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16{1} << (cols - 16)) - 1;
  __m512 acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = accumulate ? _mm512_maskz_loadu_ps(m0, y + r * ldy) : _mm512_setzero_ps();
    acc[r][1] = accumulate ? _mm512_maskz_loadu_ps(m1, y + r * ldy + 16) : _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(panel + p * 2 * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(panel + p * 2 * kNR + kNR);
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[p * kMR + r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
  }
}

template <int... R>
void TileRows(int rows, std::integer_sequence<int, R...>, const uint32_t* xp, const uint16_t* panel, int64_t pairs,
              float* y, int64_t ldy, int64_t cols, bool accumulate) {
  ((rows == R + 1 ? Tile<R + 1>(xp, panel, pairs, y, ldy, cols, accumulate) : void()), ...);
}

inline __mmask16 Lanes(int64_t count) { return count >= 16 ? 0xFFFF : (__mmask16{1} << count) - 1; }

// Pack's panels from the rows of a matrix whose rows are runs of bf16 pairs (w [N, K] of Linear weights, keys
// [S, D]): packed[(j * pairs + p) * kNR + c] = pair p0 + p of row n0 + j * kNR + c, for rows [n0, n0 + nc) (zeros
// past nc), `ldw` words between rows; 16 rows' pair at a time by one gather.
void PackFromRows(const uint32_t* w, int64_t ldw, int64_t n0, int64_t nc, int64_t p0, int64_t pairs,
                  uint32_t* packed) {
  const __m512i stride = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(static_cast<int>(ldw)));
  for (int64_t j = 0; j * kNR < nc; ++j) {
    for (int h = 0; h < 2; ++h) {
      const int64_t first = j * kNR + 16 * h;
      const __mmask16 lanes = Lanes(std::max<int64_t>(0, nc - first));
      const uint32_t* base = w + (n0 + first) * ldw + p0;
      uint32_t* out = packed + j * pairs * kNR + 16 * h;
      for (int64_t p = 0; p < pairs; ++p) {
        const __m512i v = lanes ? _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, stride, base + p, 4)
                                : _mm512_setzero_si512();
        _mm512_storeu_si512(out + p * kNR, v);
      }
    }
  }
}

// y[M, N] (float32) = x[M, K] (bf16) @ the weights, whose Pack-layout panels for columns [n0, n0 + nc) and depth
// [k0, k0 + kc) pack(n0, nc, k0, kc, panels) writes: each thread owns blocks of kNC columns, packs them kKC deep
// and runs kMR x kNR tiles over them.
template <typename PackPanels>
void PackedGemm(ffi::ThreadPool& pool, const uint16_t* x16, int64_t m, int64_t k, int64_t n, float* yp,
                PackPanels pack) {
  const int64_t row_blocks = (m + kMR - 1) / kMR, pairs = (k + 1) / 2;
  std::vector<uint32_t> xp(row_blocks * pairs * kMR);
  Parallel(pool, row_blocks, [&](int64_t, int64_t b0, int64_t b1) { PackRows(x16, m, k, b0, b1, xp.data()); });
  Parallel(pool, (n + kNC - 1) / kNC, [=, &xp](int64_t, int64_t b0, int64_t b1) {
    thread_local std::vector<uint16_t> packed;
    packed.resize(kKC * kNC + 2 * kNR);
    for (int64_t block = b0; block < b1; ++block) {
      const int64_t n0 = block * kNC, nc = std::min(kNC, n - n0);
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0), kpairs = (kc + 1) / 2;
        pack(n0, nc, k0, kc, packed.data());
        for (int64_t rb = 0; rb < row_blocks; ++rb) {
          const int rows = static_cast<int>(std::min(kMR, m - rb * kMR));
          const uint32_t* xb = xp.data() + (rb * pairs + k0 / 2) * kMR;
          for (int64_t j = 0; j * kNR < nc; ++j) {
            TileRows(rows, std::make_integer_sequence<int, kMR>{}, xb, packed.data() + j * kpairs * 2 * kNR, kpairs,
                     yp + rb * kMR * n + n0 + j * kNR, n, std::min(kNR, nc - j * kNR), k0 > 0);
          }
        }
      }
    }
  });
}

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::Buffer<ffi::S32> layer,
                ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || xd[1] != wd[1]) {
    return ffi::Error::InvalidArgument("bf16 gemm: expected x [M, K] and w [L, K, N]");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[2];
  const int32_t l = *layer.typed_data();
  if (l < 0 || l >= wd[0]) return ffi::Error::InvalidArgument("bf16 gemm: layer index out of range");
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.untyped_data()) + static_cast<int64_t>(l) * k * n;
  PackedGemm(pool, reinterpret_cast<const uint16_t*>(x.untyped_data()), m, k, n, y->typed_data(),
             [=](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint16_t* panels) {
               Pack(wp + k0 * n + n0, n, kc, nc, panels);
             });
  return ffi::Error::Success();
}

// y[M, N] (float32) = x[M, K] @ w^T for bf16 x and a bf16 matrix w [N, K] read in place from a host address (a
// memory-mapped checkpoint tensor in its file's Linear [out, in] layout; K even). Rows of x and of w are both runs
// of bf16 pairs along K, the operand layout vdpbf16ps wants:
// - few rows (M <= kMaxRows, decode): each thread streams its own block of w rows, kDotRows at a time, and takes
//   their dot products with every x row;
// - more rows (prefill): the GEMM's tiles over panels gathered from kNR rows of w (PackFromRows).
constexpr int64_t kDotRows = 4;

// y[r, n0:n1] = x[r] . w[n] for the M rows of x, over w rows [n0, n1).
void Dots(const uint16_t* x, const uint16_t* w, float* y, int64_t m, int64_t k, int64_t n, int64_t n0, int64_t n1) {
  for (int64_t j = n0; j < n1; j += kDotRows) {
    const int rows = static_cast<int>(std::min(kDotRows, n1 - j));
    for (int64_t r = 0; r < m; ++r) {
      __m512 acc[kDotRows];
      for (int i = 0; i < kDotRows; ++i) acc[i] = _mm512_setzero_ps();
      for (int64_t c = 0; c < k; c += 32) {
        const __mmask32 lanes = k - c >= 32 ? ~__mmask32{0} : (__mmask32{1} << (k - c)) - 1;
        const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(lanes, x + r * k + c);
        for (int i = 0; i < rows; ++i) {
          acc[i] = _mm512_dpbf16_ps(acc[i], a, (__m512bh)_mm512_maskz_loadu_epi16(lanes, w + (j + i) * k + c));
        }
      }
      for (int i = 0; i < rows; ++i) y[r * n + j + i] = _mm512_reduce_add_ps(acc[i]);
    }
  }
}

ffi::Error MappedProduct(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::U32> address,
                         ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || yd[0] != xd[0] || xd[1] % 2 || address.element_count() != 2) {
    return ffi::Error::InvalidArgument("mapped bf16 product: expected x [M, K] (K even), one address, y [M, N]");
  }
  const int64_t m = xd[0], k = xd[1], n = yd[1];
  const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x.untyped_data());
  const uint16_t* w = reinterpret_cast<const uint16_t*>(Address(address.typed_data()));
  float* yp = y->typed_data();
  if (m <= kMaxRows) {
    Parallel(pool, (n + kDotRows - 1) / kDotRows, [=](int64_t, int64_t b0, int64_t b1) {
      Dots(x16, w, yp, m, k, n, std::min(n, b0 * kDotRows), std::min(n, b1 * kDotRows));
    });
    return ffi::Error::Success();
  }
  const uint32_t* w32 = reinterpret_cast<const uint32_t*>(w);
  PackedGemm(pool, x16, m, k, n, yp, [=](int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint16_t* panels) {
    PackFromRows(w32, k / 2, n0, nc, k0 / 2, kc / 2, reinterpret_cast<uint32_t*>(panels));
  });
  return ffi::Error::Success();
}

// e^x lane by lane for x <= 0 (softmax's shifted logits), within 2 ulp (Cephes' expf polynomial); x below -104
// (e^x under float32's least denormal, as masked logits are) gives 0.
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // x - n ln 2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f}) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  }
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// One past the last key any of `rows` mask rows attends; `keys` when a row attends none (softmax then averages
// every value, as over the full row).
int64_t KeyLimit(const bool* mask, int64_t ld, int64_t rows, int64_t keys) {
  int64_t limit = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool* row = mask + r * ld;
    int64_t end = keys;
    while (end >= 64 && !_mm512_test_epi8_mask(_mm512_loadu_si512(row + end - 64), _mm512_set1_epi8(1))) end -= 64;
    while (end > 0 && !row[end - 1]) --end;
    if (end == 0) return keys;
    limit = std::max(limit, end);
  }
  return limit;
}

// Scores s[0:n) -> softmax(scale * s) as bf16 (round to nearest even), masked entries (mask 0) first set to -0.7 x
// float32's max as cpu_attention does; probs[n] = 0 so an odd n pairs with zero.
void SoftmaxRow(float* s, const bool* mask, int64_t n, float scale, uint16_t* probs) {
  const __m512 masked = _mm512_set1_ps(-0.7f * std::numeric_limits<float>::max());
  __m512 top = masked;
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 lanes = Lanes(n - c);
    const __mmask16 keep = _mm_mask_test_epi8_mask(lanes, _mm_maskz_loadu_epi8(lanes, mask + c), _mm_set1_epi8(1));
    const __m512 x = _mm512_mask_blend_ps(keep, masked,
                                          _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, s + c), _mm512_set1_ps(scale)));
    _mm512_mask_storeu_ps(s + c, lanes, x);
    top = _mm512_mask_max_ps(top, lanes, top, x);
  }
  const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 lanes = Lanes(n - c);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + c), shift));
    _mm512_mask_storeu_ps(s + c, lanes, e);
    total = _mm512_mask_add_ps(total, lanes, total, e);
  }
  const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 lanes = Lanes(n - c);
    const __m256bh p = _mm512_cvtneps_pbh(_mm512_div_ps(_mm512_maskz_loadu_ps(lanes, s + c), sum));
    _mm256_mask_storeu_epi16(probs + c, lanes, (__m256i)p);
  }
  probs[n] = 0;
}

// Attention for prefill: out[b, t, h] (float32) = softmax(scale * q[b, t, h] . k[b, :, h / g] where mask[b, h, t])
// @ v[b, :, h / g] for bf16 q [B, T, N, D], k and v [B, S, K, D] (g = N / K query heads a key head, D even) and a
// boolean mask [B|1, N|1, T, S]. The products run through Tile as in the GEMM, and the scores of kMR query rows
// stay in a thread's cache: no [B, N, T, S] logits in memory, and keys past the last one a row block attends
// (the causal future) are skipped, their probabilities being exactly 0.
constexpr int64_t kChunk = 8 * kMR;  // query rows a task

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                     ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::PRED> mask, ffi::ResultBuffer<ffi::F32> out,
                     float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || md.size() != 4 || vd.size() != 4 || !std::equal(kd.begin(), kd.end(),
      vd.begin()) || kd[0] != qd[0] ||
      kd[3] != qd[3] || qd[3] % 2 || kd[2] == 0 || qd[2] % kd[2] || (md[0] != 1 && md[0] != qd[0]) ||
      (md[1] != 1 && md[1] != qd[2]) || md[2] != qd[1] || md[3] != kd[1]) {
    return ffi::Error::InvalidArgument("bf16 attention: expected q [B, T, N, D], k and v [B, S, K, D] (N a multiple "
                                       "of K, D even) and mask [B|1, N|1, T, S]");
  }
  const int64_t batch = qd[0], t = qd[1], heads = qd[2], d = qd[3], s = kd[1], kv = kd[2];
  const int64_t group = heads / kv, dpairs = d / 2, spairs = (s + 1) / 2;
  const int64_t key_words = (s + kNR - 1) / kNR * kNR * dpairs, value_words = (d + kNR - 1) / kNR * spairs * kNR;
  const uint32_t* q32 = reinterpret_cast<const uint32_t*>(q.untyped_data());
  const uint32_t* k32 = reinterpret_cast<const uint32_t*>(k.untyped_data());
  const uint16_t* v16 = reinterpret_cast<const uint16_t*>(v.untyped_data());
  const bool* m = mask.typed_data();
  float* o = out->typed_data();
  thread_local std::vector<uint32_t> packed;  // every key head's keys, then values (this caller's; reused)
  packed.resize(batch * kv * (key_words + value_words));
  uint32_t* keys = packed.data();
  uint32_t* values = keys + batch * kv * key_words;
  Parallel(pool, batch * kv, [=](int64_t, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / kv, h = i % kv;
      PackFromRows(k32 + (b * s * kv + h) * dpairs, kv * dpairs, 0, s, 0, dpairs, keys + i * key_words);
      Pack(v16 + (b * s * kv + h) * d, kv * d, s, d, reinterpret_cast<uint16_t*>(values + i * value_words));
    }
  });
  const int64_t chunks = (t + kChunk - 1) / kChunk;
  Parallel(pool, batch * heads * chunks, [=](int64_t, int64_t i0, int64_t i1) {
    const int64_t width = (s + kNR - 1) / kNR * kNR;
    thread_local std::vector<float> scores;
    thread_local std::vector<uint16_t> probs;
    thread_local std::vector<uint32_t> rows_q, rows_p;
    scores.resize(kMR * width), probs.resize(kMR * (width + 2)), rows_q.resize(dpairs * kMR);
    rows_p.resize(spairs * kMR);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (heads * chunks), h = i / chunks % heads, c = i % chunks, pair = b * kv + h / group;
      const bool* mh = m + ((md[0] == 1 ? 0 : b) * md[1] + (md[1] == 1 ? 0 : h)) * t * s;
      for (int64_t t0 = c * kChunk; t0 < std::min(t, (c + 1) * kChunk); t0 += kMR) {
        const int rows = static_cast<int>(std::min(kMR, t - t0));
        const int64_t limit = KeyLimit(mh + t0 * s, s, rows, s), lpairs = (limit + 1) / 2;
        for (int r = 0; r < rows; ++r) {
          const uint32_t* row = q32 + ((b * t + t0 + r) * heads + h) * dpairs;
          for (int64_t p = 0; p < dpairs; ++p) rows_q[p * kMR + r] = row[p];
        }
        for (int64_t j = 0; j * kNR < limit; ++j) {
          TileRows(rows, std::make_integer_sequence<int, kMR>{}, rows_q.data(),
                   reinterpret_cast<const uint16_t*>(keys + pair * key_words + j * dpairs * kNR), dpairs,
                   scores.data() + j * kNR, width, std::min(kNR, limit - j * kNR), false);
        }
        for (int r = 0; r < rows; ++r) {
          uint16_t* p16 = probs.data() + r * (width + 2);
          SoftmaxRow(scores.data() + r * width, mh + (t0 + r) * s, limit, scale, p16);
          const uint32_t* p32 = reinterpret_cast<const uint32_t*>(p16);
          for (int64_t p = 0; p < lpairs; ++p) rows_p[p * kMR + r] = p32[p];
        }
        for (int64_t j = 0; j * kNR < d; ++j) {
          TileRows(rows, std::make_integer_sequence<int, kMR>{}, rows_p.data(),
                   reinterpret_cast<const uint16_t*>(values + pair * value_words) + j * spairs * 2 * kNR, lpairs,
                   o + ((b * t + t0) * heads + h) * d + j * kNR, heads * d, std::min(kNR, d - j * kNR), false);
        }
      }
    }
  });
  return ffi::Error::Success();
}
#else
ffi::Error Gemm(ffi::ThreadPool, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::S32>,
                ffi::ResultBuffer<ffi::F32>) {
  return ffi::Error::InvalidArgument("bf16 gemm: this CPU has no AVX512-BF16 (cpu_kernels.gemm_available)");
}
ffi::Error Attention(ffi::ThreadPool, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>,
                     ffi::Buffer<ffi::PRED>, ffi::ResultBuffer<ffi::F32>, float) {
  return ffi::Error::InvalidArgument("bf16 attention: this CPU has no AVX512-BF16 (cpu_kernels.gemm_available)");
}
ffi::Error MappedProduct(ffi::ThreadPool, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::U32>, ffi::ResultBuffer<ffi::F32>) {
  return ffi::Error::InvalidArgument("mapped bf16 product: this CPU has no AVX512-BF16 (cpu_kernels.gemm_available)");
}
#endif

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaLoadStack, LoadStack,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("transpose")
                                  .Attr<int32_t>("release"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaBf16Matvec, Matvec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaBf16Gemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaBf16Attention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaMappedProduct, MappedProduct,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
