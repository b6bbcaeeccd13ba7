// y[M, N] (float32) = x[M, K] (float32) @ w[layer, K, N] (bfloat16), for few rows M (decode), on XLA:CPU.
// Reads layer `layer` of the stacked weights in place, each weight once for all M rows, widening bf16 to float32
// in registers (XLA:CPU widens the whole bf16 operand in memory first). Columns are split over XLA's intra-op
// thread pool. Built on first use by xllava_jax/models/cpu_matvec.py with -O3 -march=native.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxRows = 16;
constexpr int64_t kRowBlock = 8;  // weight rows read per pass over the accumulators
constexpr int64_t kTile = 1024;  // columns per accumulator tile: kMaxRows x kTile floats stay in L1/L2

inline float Widen(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Columns [n0, n1) of y for all M rows.
void Columns(const float* x, const uint16_t* w, float* y, int64_t m, int64_t k, int64_t n, int64_t n0,
             int64_t n1) {
  float acc[kMaxRows][kTile];
  for (int64_t c0 = n0; c0 < n1; c0 += kTile) {
    const int64_t width = std::min(kTile, n1 - c0);
    for (int64_t r = 0; r < m; ++r) std::fill(acc[r], acc[r] + width, 0.0f);
    int64_t i = 0;
    for (; i + kRowBlock <= k; i += kRowBlock) {  // kRowBlock weight rows per pass over the accumulators
      const uint16_t* row = w + i * n + c0;
      for (int64_t r = 0; r < m; ++r) {
        const float* xr = x + r * k + i;
        float* a = acc[r];
#pragma GCC ivdep
        for (int64_t j = 0; j < width; ++j) {
          float s = a[j];
          for (int64_t b = 0; b < kRowBlock; ++b) s += xr[b] * Widen(row[b * n + j]);
          a[j] = s;
        }
      }
    }
    for (; i < k; ++i) {
      const uint16_t* row = w + i * n + c0;
      for (int64_t r = 0; r < m; ++r) {
        const float xi = x[r * k + i];
        float* a = acc[r];
#pragma GCC ivdep
        for (int64_t j = 0; j < width; ++j) a[j] += xi * Widen(row[j]);
      }
    }
    for (int64_t r = 0; r < m; ++r) std::memcpy(y + r * n + c0, acc[r], width * sizeof(float));
  }
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

  // Parts of whole tiles, one per thread, claimed from a shared counter by the pool's tasks and by the caller,
  // which then waits only for parts already being computed: no deadlock when the pool's threads are all busy
  // (XLA may run independent custom calls at once). Late tasks find no part left; the state they touch is shared.
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), tiles));
  const int64_t per = (tiles + parts - 1) / parts * kTile;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };
  auto state = std::make_shared<State>();
  auto work = [=] {
    for (int64_t p; (p = state->next.fetch_add(1)) < parts;) {
      Columns(xp, wp, yp, m, k, n, std::min(n, p * per), std::min(n, (p + 1) * per));
      state->finished.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t p = 1; p < parts; ++p) pool.Schedule(decltype(work)(work));
  work();
  while (state->finished.load(std::memory_order_acquire) < parts) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XllavaBf16Matvec, Matvec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
