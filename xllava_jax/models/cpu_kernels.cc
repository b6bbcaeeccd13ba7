// XLA:CPU kernels (XLA FFI custom calls), built on first use by xllava_jax/models/cpu_kernels.py with -O3
// -march=native:
// - XllavaBf16Matvec: y[M, N] (float32) = x[M, K] (float32) @ w[layer, K, N] (bfloat16) for few rows M (decode).
//   Reads layer `layer` of the stacked weights in place, each weight once for all M rows, widening bf16 to
//   float32 in registers (XLA:CPU widens the whole bf16 operand in memory first); each thread streams its own
//   block of weight rows.
// - XllavaLoadInto: out = stack with out[layer] = a host matrix (a memory-mapped checkpoint tensor), copied or
//   transposed ([out, in] -> [in, out], blocked in two levels; XLA:CPU and NumPy transpose these matrices at
//   ~0.2-0.6 GB/s), in place (out aliases stack), reading the host memory once (jax.device_put of a mapped
//   tensor makes ~1.5 GB/s).
// Both split their work over XLA's intra-op thread pool (Parallel).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

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
constexpr int64_t kInner = 16;

template <typename T>
void TransposeRows(const T* src, T* dst, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
  for (int64_t rt = r0; rt < r1; rt += kOuter) {
    const int64_t rte = std::min(rt + kOuter, r1);
    for (int64_t ct = 0; ct < cols; ct += kOuter) {
      const int64_t cte = std::min(ct + kOuter, cols);
      for (int64_t rb = rt; rb < rte; rb += kInner) {
        const int64_t re = std::min(rb + kInner, rte);
        for (int64_t cb = ct; cb < cte; cb += kInner) {
          const int64_t ce = std::min(cb + kInner, cte);
          for (int64_t r = rb; r < re; ++r) {
            for (int64_t c = cb; c < ce; ++c) dst[c * rows + r] = src[r * cols + c];
          }
        }
      }
    }
  }
}

// out = stack with out[layer] = the host matrix at `address` ([R, C] row-major, transposed into out[layer] of
// [C, R] when `transpose`, else copied), read straight from host memory (a memory-mapped checkpoint) once.
ffi::Error LoadInto(ffi::ThreadPool pool, ffi::AnyBuffer stack, ffi::Buffer<ffi::U32> address,
                    ffi::Buffer<ffi::S32> layer, ffi::Result<ffi::AnyBuffer> out, bool transpose, bool stacked) {
  const auto od = out->dimensions();
  const int64_t rank = od.size();
  const int64_t layers = stacked ? od[0] : 1;
  if (rank != (stacked ? 3 : 2)) return ffi::Error::InvalidArgument("load into: expected [L, A, B] or [A, B]");
  const int32_t l = *layer.typed_data();
  if (l < 0 || l >= layers) return ffi::Error::InvalidArgument("load into: layer index out of range");
  const int64_t a = od[rank - 2], b = od[rank - 1];
  const int64_t bytes = ffi::ByteWidth(out->element_type());
  if (out->untyped_data() != stack.untyped_data()) {  // XLA did not alias: keep the other layers
    std::memcpy(out->untyped_data(), stack.untyped_data(), stack.size_bytes());
  }
  const uint32_t* half = address.typed_data();  // low, high 32 bits (JAX has no 64-bit integers by default)
  const char* src = reinterpret_cast<const char*>(static_cast<uintptr_t>(half[0]) | static_cast<uintptr_t>(half[1]) << 32);
  char* dst = reinterpret_cast<char*>(out->untyped_data()) + static_cast<int64_t>(l) * a * b * bytes;
  if (!transpose) {
    const int64_t chunks = (a * b * bytes + (8 << 20) - 1) / (8 << 20);
    Parallel(pool, chunks, [=](int64_t, int64_t c0, int64_t c1) {
      const int64_t lo = c0 * (8 << 20), hi = std::min(a * b * bytes, c1 * (8 << 20));
      if (hi > lo) std::memcpy(dst + lo, src + lo, hi - lo);
    });
    return ffi::Error::Success();
  }
  const int64_t rows = b, cols = a;  // the host matrix is [b, a]
  const int64_t blocks = (rows + kOuter - 1) / kOuter;
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const T* s = reinterpret_cast<const T*>(src);
    T* d = reinterpret_cast<T*>(dst);
    Parallel(pool, blocks, [=](int64_t, int64_t b0, int64_t b1) {
      TransposeRows(s, d, rows, cols, std::min(rows, b0 * kOuter), std::min(rows, b1 * kOuter));
    });
  };
  if (bytes == 2) {
    run(uint16_t{});
  } else if (bytes == 4) {
    run(uint32_t{});
  } else {
    return ffi::Error::InvalidArgument("load into: 2- or 4-byte elements only");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaLoadInto, LoadInto,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("transpose")
                                  .Attr<bool>("stacked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaBf16Matvec, Matvec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
