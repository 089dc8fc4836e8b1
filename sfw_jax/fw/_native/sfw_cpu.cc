// Fused SFW step front half for one float32 leaf on the CPU (XLA FFI custom call).
//
// Inputs: g[n], m_prev[n], x[n] (float32), count (int32 scalar), mu (float32 scalar).
// Attributes: k (int64, 1 <= k <= n), radius (float32).
// Outputs: m[n] (may alias m_prev), t (float32 scalar), cut (int32 scalar),
//          sq (float32[2] = {||m||^2, ||v - x||^2}).
//
//   m     = g                              if count == 0
//         = mu * m_prev + (1 - mu) * g     otherwise   (float32; as XLA:CPU computes it: one
//                                                       fma where the CPU has FMA)
//   top k of |m| (ties: lower flat index first) as (t, cut): the selected entries are
//         |m_i| > t, or |m_i| == t and i <= cut; cut = n when #(|m| >= t) == k
//   v_i   = -radius where m_i > 0, +radius where m_i <= 0, on the selection; 0 elsewhere
//   sq    = { sum m_i^2, sum (v_i - x_i)^2 }  (float32 terms; sums of 64 terms per lane in
//                                              float32, then float64; rounded to float32)
//
// Values compare as XLA:CPU compares them: denormals are flushed (FTZ + DAZ are set while the
// kernel runs, so m is bitwise the XLA loop's m, and a subnormal |m_i| ties with 0).
// Non-negative floats order as their bit patterns (the *key* of |m_i|).
//
// One pass over (g, m_prev, x). Before it, m is computed at s strided sample positions and a
// key bracket [lo, hi] is read off the sample around its (1 - k/n) quantile (+-4.5 standard
// deviations of the sample rank). The pass writes m and sums, per entry: m^2; (v - x)^2 if
// key > hi (on the selection whatever t is); x^2 if key < lo (off it); entries inside the
// bracket are copied aside (key, index, x, v). If the k-th largest key lies in the bracket
// (#above < k <= #above + #inside: checked), the k1-th largest of the copies
// (std::nth_element, ties by lower index) gives t and cut, and their sums finish sq. Otherwise
// (rare) every entry is copied aside in a second pass and selected the same way.
//
// The pass runs over fixed parts of the array (claimed by the calling thread and XLA's
// intra-op thread pool); every part sums into its own 16 lanes and the parts are
// added in order, so the result does not depend on the number of threads.

#include <algorithm>
#include <functional>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SFW_X86 1
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
constexpr int64_t kPart = 1 << 16;  // entries per part (a multiple of kLanes)
constexpr int kMaxParts = 64;

struct FlushDenormals {
#ifdef SFW_X86
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

inline uint32_t key_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  b &= 0x7fffffffu;
  return b < 0x00800000u ? 0u : b;  // subnormals (and -0) tie with +0
}

inline float momentum(bool first, float mu, float om, float mp, float g) {
  if (first) return g;
#ifdef __FMA__
  // XLA:CPU contracts mu * m_prev + ((1 - mu) * g) into one fma where the CPU has it
  return std::fmaf(mu, mp, om * g);
#else
  return mu * mp + om * g;
#endif
}

struct Candidate {
  uint32_t key;
  int32_t index;
  float x;
  float v;
};

struct Params {
  const float* g;
  const float* mp;
  const float* x;
  float* m;
  int64_t n;
  bool first;
  float mu, om, r;
  uint32_t lo, hi;  // bracket of keys (inclusive)
};

struct PartResult {
  double acc_m[kLanes];
  double acc_d[kLanes];
  int64_t above;
  std::vector<Candidate> cand;
};

// Sums: every lane adds its float32 terms for kFlush blocks of 16 entries, then into its float64
// lane (and once more after the last whole block and after the tail). The scalar path (tails,
// CPUs without AVX-512) is written to follow the same order; on AVX-512 machines only the
// tails take it, so its equality with the vector path on whole parts is not tested.
constexpr int kFlush = 64;

struct FloatLanes {
  float m[kLanes] = {0};
  float d[kLanes] = {0};
  void flush(PartResult& out) {
    for (int l = 0; l < kLanes; ++l) {
      out.acc_m[l] += static_cast<double>(m[l]);
      out.acc_d[l] += static_cast<double>(d[l]);
      m[l] = 0.0f;
      d[l] = 0.0f;
    }
  }
};

// One entry of the pass (scalar path).
inline void one(const Params& p, int64_t i, int lane, FloatLanes& f, PartResult& out) {
  const float mi = momentum(p.first, p.mu, p.om, p.mp[i], p.g[i]);
  p.m[i] = mi;
  f.m[lane] += mi * mi;
  const uint32_t key = key_of(mi);
  const float xi = p.x[i];
  const float v = mi > 0.0f ? -p.r : p.r;
  if (key > p.hi) {
    const float d = v - xi;
    f.d[lane] += d * d;
    ++out.above;
  } else if (key < p.lo) {
    f.d[lane] += xi * xi;
  } else {
    f.d[lane] += 0.0f;
    out.cand.push_back({key, static_cast<int32_t>(i), xi, v});
  }
}

void run_part(const Params& p, int64_t begin, int64_t end, PartResult& out) {
  std::fill(out.acc_m, out.acc_m + kLanes, 0.0);
  std::fill(out.acc_d, out.acc_d + kLanes, 0.0);
  out.above = 0;
  out.cand.clear();
  FloatLanes f;
  int64_t i = begin;
  int blocks = 0;
#ifdef __AVX512F__
  const __m512 vmu = _mm512_set1_ps(p.mu), vom = _mm512_set1_ps(p.om);
  const __m512 vpos = _mm512_set1_ps(p.r), vneg = _mm512_set1_ps(-p.r), zero = _mm512_setzero_ps();
  const __m512i absmask = _mm512_set1_epi32(0x7fffffff), minnorm = _mm512_set1_epi32(0x00800000);
  const __m512i vlo = _mm512_set1_epi32(static_cast<int>(p.lo));
  const __m512i vhi = _mm512_set1_epi32(static_cast<int>(p.hi));
  __m512 fm = _mm512_setzero_ps(), fd = _mm512_setzero_ps();
  alignas(64) uint32_t keys[kLanes];
  alignas(64) float xs[kLanes], vs[kLanes];
  auto flush = [&] {
    _mm512_store_ps(f.m, fm);
    _mm512_store_ps(f.d, fd);
    f.flush(out);
    fm = _mm512_setzero_ps();
    fd = _mm512_setzero_ps();
  };
  for (; i + kLanes <= end; i += kLanes) {
    const __m512 g = _mm512_loadu_ps(p.g + i);
    __m512 m;
    if (p.first) {
      m = g;
    } else {
      const __m512 mp = _mm512_loadu_ps(p.mp + i);
#ifdef __FMA__
      m = _mm512_fmadd_ps(vmu, mp, _mm512_mul_ps(vom, g));
#else
      m = _mm512_add_ps(_mm512_mul_ps(vmu, mp), _mm512_mul_ps(vom, g));
#endif
    }
    _mm512_storeu_ps(p.m + i, m);
    fm = _mm512_add_ps(fm, _mm512_mul_ps(m, m));
    __m512i key = _mm512_and_si512(_mm512_castps_si512(m), absmask);
    key = _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(key, minnorm), key);
    const __mmask16 above = _mm512_cmpgt_epu32_mask(key, vhi);
    const __mmask16 below = _mm512_cmplt_epu32_mask(key, vlo);
    const __m512 x = _mm512_loadu_ps(p.x + i);
    const __m512 v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m, zero, _CMP_GT_OQ), vpos, vneg);
    // above: v - x; below: x; inside the bracket: 0
    __m512 d = _mm512_maskz_mov_ps(below, x);
    d = _mm512_mask_sub_ps(d, above, v, x);
    fd = _mm512_add_ps(fd, _mm512_mul_ps(d, d));
    out.above += __builtin_popcount(above);
    unsigned inside = static_cast<unsigned>(static_cast<__mmask16>(~(above | below)));
    if (inside) {
      _mm512_store_si512(keys, key);
      _mm512_store_ps(xs, x);
      _mm512_store_ps(vs, v);
      while (inside) {
        const int j = __builtin_ctz(inside);
        inside &= inside - 1;
        out.cand.push_back({keys[j], static_cast<int32_t>(i + j), xs[j], vs[j]});
      }
    }
    if (++blocks == kFlush) {
      flush();
      blocks = 0;
    }
  }
  flush();
  blocks = 0;
#endif
  for (; i + kLanes <= end; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) one(p, i + j, j, f, out);
    if (++blocks == kFlush) {
      f.flush(out);
      blocks = 0;
    }
  }
  f.flush(out);
  for (int j = 0; i < end; ++i, ++j) one(p, i, j, f, out);
  f.flush(out);
}

double sum_lanes(const double* a, int n) {  // fixed pairwise order
  if (n == 1) return a[0];
  return sum_lanes(a, n / 2) + sum_lanes(a + n / 2, n - n / 2);
}


// The k-th largest key of `cand` (ties: lower index first; cand is in index order) as
// (t_key, cut) in the format above, `n` the leaf's size. Histograms of 2048 bins over the
// span of the keys narrow the list to the bin holding the k-th, until <= 64 entries (sorted)
// or one key remain.
void select_kth(const std::vector<Candidate>& cand, int64_t k, int64_t n, uint32_t& t_key,
                int64_t& cut) {
  thread_local std::vector<Candidate> buf[2];
  thread_local std::vector<uint32_t> hist;
  hist.resize(2048);
  const Candidate* list = cand.data();
  size_t size = cand.size();
  int which = 0;
  for (;;) {
    uint32_t lo = 0xffffffffu, hi = 0;
    for (size_t j = 0; j < size; ++j) {
      lo = std::min(lo, list[j].key);
      hi = std::max(hi, list[j].key);
    }
    if (lo == hi) {  // all equal to t: the first k are on the selection
      t_key = lo;
      cut = k == static_cast<int64_t>(size) ? n : list[k - 1].index;
      return;
    }
    if (size <= 64) {
      uint64_t packed[64];  // key desc, then index asc
      for (size_t j = 0; j < size; ++j)
        packed[j] = (uint64_t{list[j].key} << 32) | (0xffffffffu - static_cast<uint32_t>(list[j].index));
      std::sort(packed, packed + size, std::greater<uint64_t>());
      t_key = static_cast<uint32_t>(packed[k - 1] >> 32);
      int64_t taken = 0, ties = 0;
      int32_t last = -1;
      for (size_t j = 0; j < size; ++j) {
        if (static_cast<uint32_t>(packed[j] >> 32) != t_key) continue;
        ++ties;
        if (static_cast<int64_t>(j) < k) {
          ++taken;
          last = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(packed[j]));
        }
      }
      cut = taken == ties ? n : last;
      return;
    }
    const uint32_t span = hi - lo;
    int shift = 0;
    while ((span >> shift) >= 2048u) ++shift;
    std::fill(hist.begin(), hist.end(), 0u);
    for (size_t j = 0; j < size; ++j) ++hist[(list[j].key - lo) >> shift];
    int64_t above = 0;
    uint32_t b = (span >> shift);
    for (;; --b) {
      if (above + hist[b] >= k) break;
      above += hist[b];
    }
    std::vector<Candidate>& next = buf[which];
    which ^= 1;
    next.clear();
    next.reserve(hist[b]);
    for (size_t j = 0; j < size; ++j)
      if (((list[j].key - lo) >> shift) == b) next.push_back(list[j]);
    list = next.data();
    size = next.size();
    k -= above;
  }
}

struct Shared {
  Params p;
  int parts;
  int64_t part_len;
  PartResult* results;
  std::atomic<int> next{0};
  std::atomic<int> done{0};

  void work() {
    for (int q; (q = next.fetch_add(1, std::memory_order_relaxed)) < parts;) {
      const int64_t b = q * part_len, e = std::min(p.n, b + part_len);
      run_part(p, b, e, results[q]);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error SfwSelectF32Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                            ffi::Buffer<ffi::F32> m_prev, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::S32> count, ffi::Buffer<ffi::F32> mu_buf,
                            int64_t k, float radius, ffi::ResultBuffer<ffi::F32> m_out,
                            ffi::ResultBuffer<ffi::F32> t_out,
                            ffi::ResultBuffer<ffi::S32> cut_out,
                            ffi::ResultBuffer<ffi::F32> sq_out) {
  const int64_t n = static_cast<int64_t>(g.element_count());
  if (m_prev.element_count() != g.element_count() || x.element_count() != g.element_count() ||
      m_out->element_count() != g.element_count()) {
    return ffi::Error::InvalidArgument("sfw_select_f32: g, m_prev, x and m must have one size");
  }
  if (k < 1 || k > n || n >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument("sfw_select_f32: need 1 <= k <= n < 2**31");
  }
  FlushDenormals flush;
  auto sh = std::make_shared<Shared>();
  Params& p = sh->p;
  p.g = g.typed_data();
  p.mp = m_prev.typed_data();
  p.x = x.typed_data();
  p.m = m_out->typed_data();
  p.n = n;
  p.first = count.typed_data()[0] == 0;
  p.mu = mu_buf.typed_data()[0];
  p.om = 1.0f - p.mu;
  p.r = radius;

  // key bracket from a strided sample of m
  const int64_t s = std::min<int64_t>(n, std::max<int64_t>(1024, n / 128));
  thread_local std::vector<uint32_t> sample;
  sample.resize(s);
  for (int64_t j = 0; j < s; ++j) {
    const int64_t i = j * n / s;
    sample[j] = key_of(momentum(p.first, p.mu, p.om, p.mp[i], p.g[i]));
  }
  const double q = static_cast<double>(k) / n;  // rank of the k-th largest, from the top
  const double half = 4.5 * std::sqrt(s * q * (1.0 - q)) + 2.0;
  const int64_t r_hi = static_cast<int64_t>(std::floor(q * s - half));  // 0-based from the top
  const int64_t r_lo = static_cast<int64_t>(std::ceil(q * s + half));
  auto desc = [](uint32_t a, uint32_t b) { return a > b; };
  int64_t top = s;  // sample[0, top) holds the top entries once r_lo is placed
  if (r_lo >= s) {
    p.lo = 0;
  } else {
    std::nth_element(sample.begin(), sample.begin() + r_lo, sample.end(), desc);
    p.lo = sample[r_lo];
    top = r_lo;
  }
  if (r_hi < 0) {
    p.hi = 0xffffffffu;
  } else {
    std::nth_element(sample.begin(), sample.begin() + r_hi, sample.begin() + top, desc);
    p.hi = sample[r_hi];
  }

  // the pass, over parts claimed by this thread and the pool's
  sh->part_len = std::max<int64_t>(kPart, (n + kMaxParts - 1) / kMaxParts / kLanes * kLanes);
  sh->parts = static_cast<int>((n + sh->part_len - 1) / sh->part_len);
  thread_local std::vector<PartResult> part_results;  // kept: no page faults per call
  if (static_cast<int>(part_results.size()) < sh->parts) part_results.resize(sh->parts);
  sh->results = part_results.data();
  const int helpers =
      static_cast<int>(std::min<int64_t>(sh->parts - 1, pool.num_threads() - 1));
  for (int w = 0; w < helpers; ++w) {
    pool.Schedule([sh] {
      FlushDenormals flush_here;
      sh->work();
    });
  }
  sh->work();
  while (sh->done.load(std::memory_order_acquire) < sh->parts) std::this_thread::yield();

  double acc_m[kLanes] = {0}, acc_d[kLanes] = {0};
  int64_t above = 0;
  thread_local std::vector<Candidate> cand;
  cand.clear();
  for (int part = 0; part < sh->parts; ++part) {
    const PartResult& r = sh->results[part];
    for (int l = 0; l < kLanes; ++l) {
      acc_m[l] += r.acc_m[l];
      acc_d[l] += r.acc_d[l];
    }
    above += r.above;
    cand.insert(cand.end(), r.cand.begin(), r.cand.end());
  }
  double sq_d = sum_lanes(acc_d, kLanes);
  if (!(above < k && k <= above + static_cast<int64_t>(cand.size()))) {
    // bracket missed (rare): every entry is a candidate
    above = 0;
    sq_d = 0.0;
    cand.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const float mi = p.m[i];
      cand[i] = {key_of(mi), static_cast<int32_t>(i), p.x[i], mi > 0.0f ? -p.r : p.r};
    }
  }
  const int64_t k1 = k - above;  // 1 <= k1 <= cand.size()

  uint32_t t_key;
  int64_t cut;
  select_kth(cand, k1, n, t_key, cut);

  // the entries of the bracket: (v - x)^2 on the selection, x^2 off it (lanes as the pass)
  PartResult& rest = sh->results[0];  // reused for its lanes; its candidates are merged
  std::fill(rest.acc_m, rest.acc_m + kLanes, 0.0);
  std::fill(rest.acc_d, rest.acc_d + kLanes, 0.0);
  FloatLanes f;
  const size_t nc = cand.size();
  for (size_t c0 = 0; c0 < nc; c0 += kLanes * kFlush) {
    const size_t c1 = std::min(nc, c0 + kLanes * kFlush);
    for (size_t c = c0; c < c1; ++c) {
      const Candidate& e = cand[c];
      const bool on = (e.key > t_key) | ((e.key == t_key) & (e.index <= cut));
      const float dv = e.v - e.x;
      const float d = on ? dv : e.x;
      f.d[c % kLanes] += d * d;
    }
    f.flush(rest);
  }
  sq_d += sum_lanes(rest.acc_d, kLanes);

  float t;
  std::memcpy(&t, &t_key, sizeof t);
  t_out->typed_data()[0] = t;
  cut_out->typed_data()[0] = static_cast<int32_t>(cut);
  sq_out->typed_data()[0] = static_cast<float>(sum_lanes(acc_m, kLanes));
  sq_out->typed_data()[1] = static_cast<float>(sq_d);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SfwSelectF32, SfwSelectF32Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m_prev
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::S32>>()  // count
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mu
                                  .Attr<int64_t>("k")
                                  .Attr<float>("radius")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // m
                                  .Ret<ffi::Buffer<ffi::F32>>()   // t
                                  .Ret<ffi::Buffer<ffi::S32>>()   // cut
                                  .Ret<ffi::Buffer<ffi::F32>>());  // sq
