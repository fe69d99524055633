// One step of the NV-DC particle filter (Bayes update + partial soft resampling with the
// Scibior-Wood factor + Liu-West move + clip), forward and backward, as XLA FFI handlers for
// the CPU. The reference is the JAX code of agents/particle_filter.py (bayes_update,
// maybe_resample with sw_order="qsensoropt") with the Ramsey likelihood of
// envs/bayesian_magnetometry.ramsey_probability for one unknown (omega, d = 1); the tests of
// tests/agents/test_pf_native.py compare both directions with it. Python side and the reasons
// for this kernel: agents/pf_native.py.
//
// Layout: every array has leading "filter" dimensions (flattened here to B) and, for the
// per-particle arrays, a last dimension N. Filters are independent; they are shared out over
// XLA's intra-op thread pool.
//
// Forward, per filter b (inputs x, w: (B, N); key_idx, key_jit: (B, 2) uint32, the first and
// third of split(resampling key, 3) as particle_filter.resample_noise uses them; tau, phase,
// decay, y: (B,); allowed: (B,) bool):
//   allowed == 0: the filter is copied (the step was not taken).
//   Bayes: L_j = 0.5 (1 + (y decay) cos(x_j tau + phase)); a = w L; w2 = a / sum a if sum a > 0
//     else w (an outlier outcome is ignored).
//   moments of (x, w2): mu, var; resample iff enabled and 1 / sum w2^2 < threshold N.
//   Only then are the random numbers drawn: u = uniform(key_idx, (N,)), z = normal(key_jit,
//   (N,)), jax.random's values (see "random numbers" below).
//   soft draw: q = alpha w2 + (1 - alpha)/N; idx_k = #{j: cdf_j <= u_k cdf_N} (capped at N-1);
//     r_k = w2[idx_k] / q[idx_k]; new weights r / sum r if valid (finite, positive), else the
//     hard fallback: idx from the cdf of w2 with the same u, weights 1/N.
//   Liu-West: x'_k = (beta x[idx_k] + (1 - beta) mu) + scale (z_k sqrt(var)), clipped to
//     [low, high]. The Scibior-Wood factor q_i / sg(q_i) is 1 in value; it acts in backward.
//   Outputs xo, wo (B, N), mo = sum wo xo, vo = sum wo (xo - mo)^2 (B,), idx (B, N) int32,
//   flags (B,) int32: bit 0 resampled, bit 1 soft draw valid, bit 2 Bayes ok, bit 3 allowed.
// Backward: the vector-Jacobian product of (xo, wo, mo, vo) with respect to (x, w, tau, phase,
//   decay), the indices and the noise held fixed (no gradient through a discrete draw); it
//   recomputes xo, wo and the normals from the inputs, idx and flags.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Flag : int32_t { kNeed = 1, kValid = 2, kOk = 4, kAllowed = 8 };

template <typename T>
struct Params {
  T alpha, c0, beta, omb, scale, thr_n, low, high, inv_n;
  bool sw, enabled;
  int64_t n;
};

// ---------------------------------------------------------------- cos and sin
// float32: physics/trig.cos_sin_f32 operation for operation (Cody-Waite reduction with pi/2 in
// three parts, Cephes' minimax polynomials; round half to even as jnp.round); compiled without
// FMA contraction so the roundings are the same. float64: the C library.
inline void cos_sin(float x, float* c, float* s) {
  const float P1 = 1.5703125f, P2 = 4.837512969970703125e-4f, P3 = 7.54978995489188216e-8f;
  const float TWO_OVER_PI = static_cast<float>(2.0 / M_PI);
  const float S0 = -1.6666654611e-1f, S1 = 8.3321608736e-3f, S2 = -1.9515295891e-4f;
  const float C0 = 4.166664568298827e-2f, C1 = -1.388731625493765e-3f, C2 = 2.443315711809948e-5f;
  float k = std::nearbyint(x * TWO_OVER_PI);
  float r = ((x - k * P1) - k * P2) - k * P3;
  float z = r * r;
  float sin_r = r + r * z * (S0 + z * (S1 + z * S2));
  float cos_r = 1.0f - 0.5f * z + z * z * (C0 + z * (C1 + z * C2));
  int32_t q = static_cast<int32_t>(k) & 3;
  bool swap = (q & 1) == 1;
  float cc = swap ? sin_r : cos_r;
  float ss = swap ? cos_r : sin_r;
  *c = (q == 1 || q == 2) ? -cc : cc;
  *s = (q >= 2) ? -ss : ss;
}

inline void cos_sin(double x, double* c, double* s) {
  *c = std::cos(x);
  *s = std::sin(x);
}

// ---------------------------------------------------------------- inverse-CDF search
// idx_k = min(#{j: cdf_j <= t_k}, N - 1), t_k = u_k * cdf[N-1], exactly as the JAX search.
// A guide table: f(t) = bucket of t among N equal buckets of [0, total] is monotone in t (a
// product by a positive constant rounds monotonically), so f(cdf_j) is sorted in j, and every j
// with f(cdf_j) < f(t) has cdf_j < t: the count is start[f(t)] = #{j: f(cdf_j) < f(t)} plus
// a short scan over the bucket's own entries. Built from a histogram of f(cdf_j) and a prefix
// sum, without data-dependent branches; the scan takes three branch-free steps (the soft draw's
// increments are >= (1 - alpha)/N of the total, so a bucket holds at most two or three
// entries) and loops only if a bucket holds more. cdf has n + 3 entries, the last three +inf.
template <typename T>
void search(T* cdf, const T* u, int64_t n, int32_t* idx, int32_t* start) {
  const T total = cdf[n - 1];
  cdf[n] = cdf[n + 1] = cdf[n + 2] = std::numeric_limits<T>::infinity();
  if (!(total > 0) || !std::isfinite(total)) {  // degenerate: plain binary search
    for (int64_t k = 0; k < n; ++k) {
      const T t = u[k] * total;
      int64_t j = std::upper_bound(cdf, cdf + n, t) - cdf;
      idx[k] = static_cast<int32_t>(std::min<int64_t>(j, n - 1));
    }
    return;
  }
  const T g = static_cast<T>(n) / total;
  const T top = static_cast<T>(n - 1);
  auto bucket = [g, top](T t) -> int32_t {
    T v = t * g;
    v = v < top ? (v >= 0 ? v : T(0)) : top;  // NaN -> top
    return static_cast<int32_t>(v);
  };
  for (int64_t b = 0; b <= n; ++b) start[b] = 0;
  for (int64_t j = 0; j < n; ++j) start[bucket(cdf[j]) + 1] += 1;
  for (int64_t b = 1; b <= n; ++b) start[b] += start[b - 1];
  const T* __restrict c = cdf;
  const int32_t* __restrict st = start;
  int32_t* __restrict out = idx;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {  // vectorised: gathers of start and cdf
    const T t = u[k] * total;
    int32_t i = st[bucket(t)];
    i += c[i] <= t ? 1 : 0;
    i += c[i] <= t ? 1 : 0;
    i += c[i] <= t ? 1 : 0;
    out[k] = i;
  }
  for (int64_t k = 0; k < n; ++k) {
    const T t = u[k] * total;
    int64_t i = out[k];
    while (c[i] <= t) ++i;  // only when a bucket holds more than three entries
    out[k] = static_cast<int32_t>(std::min<int64_t>(i, n - 1));
  }
}

// ---------------------------------------------------------------- random numbers
// jax.random.uniform / jax.random.normal of a raw uint32[2] Threefry key, for shape (N,) or
// (N, 1) (physics/prng.py): Threefry-2x32 (20 rounds) of the counter (0, i); float32 takes
// bits = y0 ^ y1, float64 (y0 << 32) | y1; the mantissa trick gives [0, 1). The uniforms are
// the same bits as JAX's. The normals are sqrt(2) erfinv(v), v uniform on [nextafter(-1, 0), 1);
// erfinv is Giles' single-precision approximation (the one XLA uses for float32) with its own
// vectorisable log, or for float64 that approximation refined by Newton steps on erf/erfc:
// within a few units in the last place of XLA's erf_inv (tests/agents/test_pf_native.py).
inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

inline void threefry(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t* y0, uint32_t* y1) {
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  static const int rot[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  uint32_t x0 = c0 + ks[0], x1 = c1 + ks[1];
  for (int i = 0; i < 5; ++i) {
    for (int j = 0; j < 4; ++j) {
      x0 += x1;
      x1 = rotl(x1, rot[i % 2][j]) ^ x0;
    }
    x0 += ks[(i + 1) % 3];
    x1 += ks[(i + 2) % 3] + static_cast<uint32_t>(i + 1);
  }
  *y0 = x0;
  *y1 = x1;
}

inline float unit(uint32_t y0, uint32_t y1, float) {
  uint32_t bits = ((y0 ^ y1) >> 9) | 0x3f800000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f - 1.0f;
}

inline double unit(uint32_t y0, uint32_t y1, double) {
  uint64_t bits = (((static_cast<uint64_t>(y0) << 32) | y1) >> 12) | 0x3ff0000000000000ull;
  double f;
  std::memcpy(&f, &bits, 8);
  return f - 1.0;
}

template <typename T>
void uniforms(const uint32_t* key, int64_t n, T* out) {
  const uint32_t k0 = key[0], k1 = key[1];
  for (int64_t i = 0; i < n; ++i) {
    uint32_t y0, y1;
    threefry(k0, k1, 0u, static_cast<uint32_t>(i), &y0, &y1);
    out[i] = unit(y0, y1, T(0));
  }
}

// log x for normal positive float32 (Cephes logf): mantissa in [sqrt(1/2), sqrt(2)), polynomial.
inline float log_f32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xff) - 126;
  uint32_t mbits = (bits & 0x007fffffu) | 0x3f000000u;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &mbits, 4);
  const bool small = m < 0.707106781186547524f;
  e -= small ? 1 : 0;
  float f = small ? (m + m) - 1.0f : m - 1.0f;
  float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return (f + y) + 0.693359375f * fe;
}

// Giles (2010), "Approximating the erfinv function", single precision; x in (-1, 1). As XLA,
// w = -log1p(-x x): the rounding of x x sets w's error near |x| = 1 (z ~ 3.8: ~1e-5), and the
// tests compare with XLA's normals; 1 - x x is exact there, log1p = log.
inline float erfinv_f32(float x) {
  // both branches, then a select: the loop over particles vectorises
  const float w = -log_f32(1.0f - x * x);
  const float wa = w - 2.5f;
  float pa = 2.81022636e-08f;
  pa = 3.43273939e-07f + pa * wa;
  pa = -3.5233877e-06f + pa * wa;
  pa = -4.39150654e-06f + pa * wa;
  pa = 0.00021858087f + pa * wa;
  pa = -0.00125372503f + pa * wa;
  pa = -0.00417768164f + pa * wa;
  pa = 0.246640727f + pa * wa;
  pa = 1.50140941f + pa * wa;
  const float wb = std::sqrt(w) - 3.0f;
  float pb = -0.000200214257f;
  pb = 0.000100950558f + pb * wb;
  pb = 0.00134934322f + pb * wb;
  pb = -0.00367342844f + pb * wb;
  pb = 0.00573950773f + pb * wb;
  pb = -0.0076224613f + pb * wb;
  pb = 0.00943887047f + pb * wb;
  pb = 1.00167406f + pb * wb;
  pb = 2.83297682f + pb * wb;
  return (w < 5.0f ? pa : pb) * x;
}

inline double erfinv_f64(double x) {
  const double a = std::fabs(x);
  double w = -std::log((1.0 - a) * (1.0 + a));
  double z;
  if (w < 5.0) {  // Giles' single-precision fit as the starting point, then Newton
    w = w - 2.5;
    double p = 2.81022636e-08;
    for (double c : {3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                     -0.00417768164, 0.246640727, 1.50140941})
      p = c + p * w;
    z = p * a;
  } else {
    w = std::sqrt(w) - 3.0;
    double p = -0.000200214257;
    for (double c : {0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                     0.00943887047, 1.00167406, 2.83297682})
      p = c + p * w;
    z = p * a;
  }
  const double two_over_sqrt_pi = 1.1283791670955126;
  for (int it = 0; it < 3; ++it) {  // erf(z) - a, from erfc where a is near 1 (1 - a is exact)
    double r = a < 0.5 ? std::erf(z) - a : (1.0 - a) - std::erfc(z);
    z -= r / (two_over_sqrt_pi * std::exp(-z * z));
  }
  return std::copysign(z, x);
}

inline float erfinv(float x) { return erfinv_f32(x); }
inline double erfinv(double x) { return erfinv_f64(x); }

template <typename T>
void normals(const uint32_t* key, int64_t n, T* out) {
  const T lo = std::nextafter(T(-1), T(0));
  const T range = T(1) - lo;
  uniforms(key, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = std::max(lo, out[i] * range + lo);
  const T sqrt2 = static_cast<T>(1.4142135623730951);
  for (int64_t i = 0; i < n; ++i) out[i] = sqrt2 * erfinv(out[i]);
}

template <typename T>
struct Scratch {
  std::vector<T> w2, cdf, r, q, c, s, gw2, gq, u, z, xo, wo, xn;
  std::vector<int32_t> start;
  void resize(int64_t n) {
    if (static_cast<int64_t>(w2.size()) == n + 3) return;
    for (auto* v : {&w2, &cdf, &r, &q, &c, &s, &gw2, &gq, &u, &z, &xo, &wo, &xn}) v->assign(n + 3, T(0));
    start.assign(n + 1, 0);
  }
};

template <typename T>
Scratch<T>& scratch(int64_t n) {
  thread_local Scratch<T> s;
  s.resize(n);
  return s;
}

template <typename T>
inline void moments(const T* w, const T* x, int64_t n, T* mu, T* var) {
  T m = 0;
#pragma omp simd reduction(+ : m)
  for (int64_t j = 0; j < n; ++j) m += w[j] * x[j];
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < n; ++j) {
    T d = x[j] - m;
    v += w[j] * (d * d);
  }
  *mu = m;
  *var = v;
}

// Bayes update into s.w2 (and s.c, s.s with KeepTrig); returns the normaliser (ok iff > 0).
template <bool KeepTrig, typename T>
inline T bayes(const Params<T>& p, const T* __restrict x, const T* __restrict w, T tau, T phase, T yd,
               Scratch<T>& s) {
  const int64_t n = p.n;
  T* __restrict w2 = s.w2.data();
  T* __restrict cs = s.c.data();
  T* __restrict sn_out = s.s.data();
  T total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    T c, sn;
    cos_sin(x[j] * tau + phase, &c, &sn);
    if (KeepTrig) {
      cs[j] = c;
      sn_out[j] = sn;
    }
    T a = w[j] * (T(0.5) * (T(1) + yd * c));
    w2[j] = a;
    total += a;
  }
  if (total > 0) {
    for (int64_t j = 0; j < n; ++j) w2[j] = w2[j] / total;
  } else {
    std::memcpy(w2, w, n * sizeof(T));
  }
  return total;
}

// The soft draw (and its fallback) from w2: fills idx, s.q (q_i), s.r (the new weights before
// the Scibior-Wood factor, i.e. r / sum r or 1/N); returns whether the soft draw was valid.
template <typename T>
bool draw(const Params<T>& p, const T* u, Scratch<T>& s, int32_t* idx) {
  const int64_t n = p.n;
  const T* w2 = s.w2.data();
  T* cdf = s.cdf.data();
  T acc = 0;
  for (int64_t j = 0; j < n; ++j) {
    acc += p.alpha * w2[j] + p.c0;
    cdf[j] = acc;
  }
  search(cdf, u, n, idx, s.start.data());
  T tn = 0;
  int32_t bad = 0;
  {
    const int32_t* __restrict ix = idx;
    T* __restrict qv = s.q.data();
    T* __restrict rv = s.r.data();
#pragma omp simd reduction(+ : tn, bad)
    for (int64_t k = 0; k < n; ++k) {
      T wi = w2[ix[k]];
      T qi = p.alpha * wi + p.c0;
      T r = wi / qi;
      qv[k] = qi;
      rv[k] = r;
      tn += r;
      bad += std::isfinite(r) ? 0 : 1;
    }
  }
  bool valid = std::isfinite(tn) && tn > 0 && bad == 0;
  if (valid) {
    for (int64_t k = 0; k < n; ++k) s.r[k] = s.r[k] / tn;
  } else {
    acc = 0;
    for (int64_t j = 0; j < n; ++j) {
      acc += w2[j];
      cdf[j] = acc;
    }
    search(cdf, u, n, idx, s.start.data());
    for (int64_t k = 0; k < n; ++k) {
      s.q[k] = w2[idx[k]];
      s.r[k] = p.inv_n;
    }
  }
  return valid;
}

// q > 0 and finite (NaN fails both comparisons)
template <typename T>
inline bool sw_ok(T q) {
  return q > 0 && q <= std::numeric_limits<T>::max();
}

template <typename T>
inline bool resample_needed(const Params<T>& p, const T* w2) {
  if (!p.enabled) return false;
  T s2 = 0;
#pragma omp simd reduction(+ : s2)
  for (int64_t j = 0; j < p.n; ++j) s2 += w2[j] * w2[j];
  return T(1) / s2 < p.thr_n;
}

// The Liu-West move of particle x_idx (before the clip to [low, high]), shift = (1 - beta) mu:
// forward_one and backward_one's recomputation must give the same value.
template <typename T>
inline T liu_west(const Params<T>& p, T x_idx, T shift, T z, T root) {
  return (p.beta * x_idx + shift) + p.scale * (z * root);
}

template <typename T>
inline T clip(const Params<T>& p, T x) {
  return std::min(std::max(x, p.low), p.high);
}

template <typename T>
void forward_one(const Params<T>& p, const T* x, const T* w, const uint32_t* key_idx,
                 const uint32_t* key_jit, T tau, T phase, T decay, T y, bool allowed, T* xo, T* wo,
                 T* mo, T* vo, int32_t* idx, int32_t* flags) {
  const int64_t n = p.n;
  int32_t f = 0;
  if (!allowed) {
    std::memcpy(xo, x, n * sizeof(T));
    std::memcpy(wo, w, n * sizeof(T));
    std::memset(idx, 0, n * sizeof(int32_t));
  } else {
    f |= kAllowed;
    Scratch<T>& s = scratch<T>(n);
    T total = bayes<false>(p, x, w, tau, phase, y * decay, s);
    if (total > 0) f |= kOk;
    const T* w2 = s.w2.data();
    if (!resample_needed(p, w2)) {
      std::memcpy(xo, x, n * sizeof(T));
      std::memcpy(wo, w2, n * sizeof(T));
      std::memset(idx, 0, n * sizeof(int32_t));
    } else {
      f |= kNeed;
      T mu, var;
      moments(w2, x, n, &mu, &var);
      uniforms(key_idx, n, s.u.data());
      normals(key_jit, n, s.z.data());
      if (draw(p, s.u.data(), s, idx)) f |= kValid;
      const T root = var > 0 ? std::sqrt(var) : T(0);
      const T shift = p.omb * mu;
      const T* __restrict z = s.z.data();
      const T* __restrict rv = s.r.data();
      const int32_t* __restrict ix = idx;
      T* __restrict xo_ = xo;
      T* __restrict wo_ = wo;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        xo_[k] = clip(p, liu_west(p, x[ix[k]], shift, z[k], root));
        wo_[k] = rv[k];
      }
    }
  }
  moments(wo, xo, n, mo, vo);
  *flags = f;
}

// d max(min(x, high)... as jnp.clip = minimum(maximum(x, low), high): ties share the gradient.
template <typename T>
inline T clip_grad(T x, T low, T high) {
  T a = x > low ? T(1) : (x == low ? T(0.5) : T(0));
  T m = std::max(x, low);
  T b = m < high ? T(1) : (m == high ? T(0.5) : T(0));
  return a * b;
}

// The vector-Jacobian product of one filter's step. The outputs xo, wo are recomputed here
// from the inputs, the stored indices and the regenerated normals (not kept from the forward
// pass: they are the next step's inputs, and keeping both doubled the stored arrays).
template <typename T>
void backward_one(const Params<T>& p, const T* x, const T* w, const uint32_t* key_jit, T tau, T phase,
                  T decay, T y, T mo, const int32_t* idx, int32_t flags, const T* gxo_in,
                  const T* gwo_in, T gmo, T gvo, T* gx, T* gw, T* gtau, T* gphase, T* gdecay) {
  const int64_t n = p.n;
  Scratch<T>& s = scratch<T>(n);
  *gtau = 0;
  *gphase = 0;
  *gdecay = 0;
  const bool allowed = flags & kAllowed, need = flags & kNeed, valid = flags & kValid;
  const T yd = y * decay;
  T total = 0;
  if (allowed) total = bayes<true>(p, x, w, tau, phase, yd, s);
  const T* w2 = s.w2.data();
  // recompute the outputs
  const T *xo, *wo;
  T mu = 0, var = 0, root = 0, tn = 0;
  T* r = s.r.data();
  T* qv = s.q.data();
  if (!allowed) {
    xo = x;
    wo = w;
  } else if (!need) {
    xo = x;
    wo = w2;
  } else {
    moments(w2, x, n, &mu, &var);
    normals(key_jit, n, s.z.data());
    root = var > 0 ? std::sqrt(var) : T(0);
    const T shift = p.omb * mu;
    const T* __restrict z = s.z.data();
    const int32_t* __restrict ix = idx;
    T* __restrict xn_ = s.xn.data();
    T* __restrict xo_ = s.xo.data();
    T* __restrict r_ = r;
    T* __restrict q_ = qv;
#pragma omp simd reduction(+ : tn)
    for (int64_t k = 0; k < n; ++k) {
      T xn = liu_west(p, x[ix[k]], shift, z[k], root);
      xn_[k] = xn;
      xo_[k] = clip(p, xn);
      T wi = w2[ix[k]];
      T qi = valid ? p.alpha * wi + p.c0 : wi;
      T rk = valid ? wi / qi : p.inv_n;
      r_[k] = rk;
      q_[k] = qi;
      tn += rk;
    }
    T* __restrict wo_ = s.wo.data();
    for (int64_t k = 0; k < n; ++k) wo_[k] = valid ? r_[k] / tn : p.inv_n;
    xo = s.xo.data();
    wo = s.wo.data();
  }
  // the output moments: mo = sum wo xo, vo = sum wo (xo - mo)^2
  T* gxo = s.cdf.data();  // total cotangents of xo and wo
  T* gwo = s.gq.data();
  T dsum = 0;
#pragma omp simd reduction(+ : dsum)
  for (int64_t k = 0; k < n; ++k) dsum += wo[k] * (xo[k] - mo);
  const T gm = gmo + gvo * (T(-2) * dsum);
  for (int64_t k = 0; k < n; ++k) {
    T d = xo[k] - mo;
    gwo[k] = gwo_in[k] + gm * xo[k] + gvo * (d * d);
    gxo[k] = gxo_in[k] + gm * wo[k] + gvo * (T(2) * wo[k] * d);
  }
  if (!allowed) {
    std::memcpy(gx, gxo, n * sizeof(T));
    std::memcpy(gw, gwo, n * sizeof(T));
    return;
  }
  T* gw2 = s.gw2.data();
  if (!need) {
    std::memcpy(gx, gxo, n * sizeof(T));
    std::memcpy(gw2, gwo, n * sizeof(T));
  } else {
    std::memset(gx, 0, n * sizeof(T));
    std::memset(gw2, 0, n * sizeof(T));
    const T* __restrict z = s.z.data();
    const T* __restrict xn_ = s.xn.data();
    const T* __restrict gxo_ = gxo;
    T* __restrict tmp = s.u.data();  // the contributions, then one scalar scatter
    T gmu = 0, groot = 0;
    // Liu-West move and clip
#pragma omp simd reduction(+ : gmu, groot)
    for (int64_t k = 0; k < n; ++k) {
      T g = gxo_[k] * clip_grad(xn_[k], p.low, p.high);
      tmp[k] = p.beta * g;
      gmu += g;
      groot += z[k] * g;
    }
    for (int64_t k = 0; k < n; ++k) gx[idx[k]] += tmp[k];
    gmu *= p.omb;
    groot *= p.scale;
    const T gvar = var > 0 ? groot * (T(0.5) / root) : T(0);
    // weights (the Scibior-Wood factor q_i / sg(q_i) adds g_wo nw / q_i to g_q)
    const T* __restrict gwo_ = gwo;
    const T* __restrict wo_ = wo;
    const T* __restrict q_ = qv;
    const T* __restrict r_ = r;
    if (valid) {
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t k = 0; k < n; ++k) dot += gwo_[k] * wo_[k];
      const T inv_tn = T(1) / tn;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        T qi = q_[k];
        T iq = T(1) / qi;
        T g_qi = (p.sw && sw_ok(qi)) ? gwo_[k] * wo_[k] * iq : T(0);
        T gr = (gwo_[k] - dot) * inv_tn;
        T g_wi = gr * iq;
        g_qi -= gr * r_[k] * iq;
        tmp[k] = g_wi + p.alpha * g_qi;
      }
    } else {
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        T qi = q_[k];
        tmp[k] = (p.sw && sw_ok(qi)) ? gwo_[k] * p.inv_n / qi : T(0);
      }
    }
    for (int64_t k = 0; k < n; ++k) gw2[idx[k]] += tmp[k];
    // pre-resampling moments mu = sum w2 x, var = sum w2 (x - mu)^2
    T dsum2 = 0;
#pragma omp simd reduction(+ : dsum2)
    for (int64_t j = 0; j < n; ++j) dsum2 += w2[j] * (x[j] - mu);
    const T gm2 = gmu + gvar * (T(-2) * dsum2);
    for (int64_t j = 0; j < n; ++j) {
      T d = x[j] - mu;
      gw2[j] += gm2 * x[j] + gvar * (d * d);
      gx[j] += gm2 * w2[j] + gvar * (T(2) * w2[j] * d);
    }
  }
  // Bayes update
  if (total > 0) {
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += gw2[j] * w2[j];
    T gd = 0, gt = 0, gp = 0;
    const T* __restrict cs = s.c.data();
    const T* __restrict ss = s.s.data();
#pragma omp simd reduction(+ : gd, gt, gp)
    for (int64_t j = 0; j < n; ++j) {
      T ga = (gw2[j] - dot) / total;
      T c = cs[j];
      T lik = T(0.5) * (T(1) + yd * c);
      gw[j] = ga * lik;
      T gl = ga * w[j];
      T gc = T(0.5) * gl * yd;
      gd += T(0.5) * gl * y * c;
      T garg = -ss[j] * gc;
      gx[j] += garg * tau;
      gt += garg * x[j];
      gp += garg;
    }
    *gtau = gt;
    *gphase = gp;
    *gdecay = gd;
  } else {
    std::memcpy(gw, gw2, n * sizeof(T));
  }
}

// ---------------------------------------------------------------- threads
// Filters are handed out in chunks from an atomic counter; the calling thread works too and
// waits only for chunks already claimed, so the call finishes even if no pool thread runs.
struct Shared {
  std::atomic<int64_t> next{0}, done{0};
};

template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t n, int64_t grain, const F& body) {
  int64_t threads = pool.num_threads();
  int64_t chunks = (n + grain - 1) / grain;
  if (threads <= 1 || chunks <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  auto shared = std::make_shared<Shared>();
  auto work = [shared, chunks, grain, n, &body]() {
    for (;;) {
      int64_t c = shared->next.fetch_add(1);
      if (c >= chunks) return;
      int64_t hi = std::min(n, (c + 1) * grain);
      for (int64_t i = c * grain; i < hi; ++i) body(i);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(threads, chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    // a helper that starts after every chunk is claimed returns at once without touching body
    pool.Schedule([work]() { work(); });
  }
  work();
  while (shared->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

template <typename T>
Params<T> make_params(double alpha, double beta, double threshold, double low, double high,
                      double scale, bool sw, bool enabled, int64_t n) {
  Params<T> p;
  p.alpha = static_cast<T>(alpha);
  p.c0 = static_cast<T>((1.0 - alpha) / static_cast<double>(n));
  p.beta = static_cast<T>(beta);
  p.omb = static_cast<T>(1.0 - beta);
  p.scale = static_cast<T>(scale);
  p.thr_n = static_cast<T>(threshold * static_cast<double>(n));
  p.low = static_cast<T>(low);
  p.high = static_cast<T>(high);
  p.inv_n = static_cast<T>(1.0 / static_cast<double>(n));
  p.sw = sw;
  p.enabled = enabled;
  p.n = n;
  return p;
}

// Whether every buffer holds count elements.
template <typename... Bufs>
bool per_filter(int64_t count, const Bufs&... bufs) {
  return ((static_cast<int64_t>(bufs.element_count()) == count) && ...);
}

template <ffi::DataType DT>
ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> w,
                       ffi::Buffer<ffi::U32> key_idx, ffi::Buffer<ffi::U32> key_jit, ffi::Buffer<DT> tau,
                       ffi::Buffer<DT> phase, ffi::Buffer<DT> decay, ffi::Buffer<DT> y,
                       ffi::Buffer<ffi::PRED> allowed, ffi::ResultBuffer<DT> xo, ffi::ResultBuffer<DT> wo,
                       ffi::ResultBuffer<DT> mo, ffi::ResultBuffer<DT> vo, ffi::ResultBuffer<ffi::S32> idx,
                       ffi::ResultBuffer<ffi::S32> flags, double alpha, double beta, double threshold,
                       double low, double high, double scale, bool sw, bool enabled) {
  using T = ffi::NativeType<DT>;
  auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("pf_step: x must have a particle axis");
  const int64_t n = dims.back();
  if (n < 1 || n >= (int64_t(1) << 31)) return ffi::Error::InvalidArgument("pf_step: bad particle count");
  const int64_t b = static_cast<int64_t>(x.element_count()) / n;
  if (!per_filter(b * n, w)) return ffi::Error::InvalidArgument("pf_step: x and w differ in size");
  if (!per_filter(2 * b, key_idx, key_jit))
    return ffi::Error::InvalidArgument("pf_step: keys must be (..., 2) per filter");
  if (!per_filter(b, tau, phase, decay, y))
    return ffi::Error::InvalidArgument("pf_step: per-filter inputs differ in size");
  if (!per_filter(b, allowed)) return ffi::Error::InvalidArgument("pf_step: allowed has the wrong size");
  const Params<T> p = make_params<T>(alpha, beta, threshold, low, high, scale, sw, enabled, n);
  const T *px = x.typed_data(), *pw = w.typed_data();
  const uint32_t *pki = key_idx.typed_data(), *pkj = key_jit.typed_data();
  const T *ptau = tau.typed_data(), *pph = phase.typed_data(), *pd = decay.typed_data();
  const T* py = y.typed_data();
  const bool* pa = allowed.typed_data();
  T *pxo = xo->typed_data(), *pwo = wo->typed_data(), *pmo = mo->typed_data(), *pvo = vo->typed_data();
  int32_t *pidx = idx->typed_data(), *pf = flags->typed_data();
  parallel_for(pool, b, 8, [&](int64_t i) {
    const int64_t o = i * n;
    forward_one(p, px + o, pw + o, pki + 2 * i, pkj + 2 * i, ptau[i], pph[i], pd[i], py[i], pa[i], pxo + o,
                pwo + o, pmo + i, pvo + i, pidx + o, pf + i);
  });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> w,
                        ffi::Buffer<ffi::U32> key_jit, ffi::Buffer<DT> tau, ffi::Buffer<DT> phase,
                        ffi::Buffer<DT> decay, ffi::Buffer<DT> y, ffi::Buffer<DT> mo,
                        ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> flags, ffi::Buffer<DT> gxo,
                        ffi::Buffer<DT> gwo, ffi::Buffer<DT> gmo, ffi::Buffer<DT> gvo,
                        ffi::ResultBuffer<DT> gx, ffi::ResultBuffer<DT> gw, ffi::ResultBuffer<DT> gtau,
                        ffi::ResultBuffer<DT> gphase, ffi::ResultBuffer<DT> gdecay, double alpha,
                        double beta, double threshold, double low, double high, double scale, bool sw,
                        bool enabled) {
  using T = ffi::NativeType<DT>;
  auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("pf_step_bwd: x must have a particle axis");
  const int64_t n = dims.back();
  if (n < 1 || n >= (int64_t(1) << 31)) return ffi::Error::InvalidArgument("pf_step_bwd: bad particle count");
  const int64_t b = static_cast<int64_t>(x.element_count()) / n;
  if (!per_filter(b * n, w, gxo, gwo))
    return ffi::Error::InvalidArgument("pf_step_bwd: per-particle inputs differ in size");
  if (!per_filter(b * n, idx) || !per_filter(b, flags) || !per_filter(2 * b, key_jit))
    return ffi::Error::InvalidArgument("pf_step_bwd: idx, flags or key has the wrong size");
  if (!per_filter(b, tau, phase, decay, y, mo, gmo, gvo))
    return ffi::Error::InvalidArgument("pf_step_bwd: per-filter inputs differ in size");
  const Params<T> p = make_params<T>(alpha, beta, threshold, low, high, scale, sw, enabled, n);
  const T *px = x.typed_data(), *pw = w.typed_data();
  const uint32_t* pkj = key_jit.typed_data();
  const T *ptau = tau.typed_data(), *pph = phase.typed_data(), *pd = decay.typed_data();
  const T *py = y.typed_data(), *pmo = mo.typed_data();
  const int32_t *pidx = idx.typed_data(), *pf = flags.typed_data();
  const T *pgxo = gxo.typed_data(), *pgwo = gwo.typed_data(), *pgmo = gmo.typed_data(),
          *pgvo = gvo.typed_data();
  T *pgx = gx->typed_data(), *pgw = gw->typed_data(), *pgt = gtau->typed_data(),
    *pgp = gphase->typed_data(), *pgd = gdecay->typed_data();
  parallel_for(pool, b, 8, [&](int64_t i) {
    const int64_t o = i * n;
    backward_one(p, px + o, pw + o, pkj + 2 * i, ptau[i], pph[i], pd[i], py[i], pmo[i], pidx + o, pf[i],
                 pgxo + o, pgwo + o, pgmo[i], pgvo[i], pgx + o, pgw + o, pgt + i, pgp + i, pgd + i);
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- the loop form
// model_aware_pf's training loop (stop_gradient_input) keeps every measurement's filter in
// stacks X, W (lead..., T + 1, B, N) and the drawn indices in IDX (lead..., T, B, N), and the
// outputs alias the inputs (input_output_aliases): step t reads slot t and writes slot t + 1
// (and IDX slot t) in place, so neither the loop's carry nor the stored residuals are copied
// per measurement, and the backward step reads the slots it needs where they are. Per-filter
// inputs are (lead..., B); t has one entry, or one per lead index (vmapped). lead: vmapped
// dimensions, one independent loop each. The steps are forward_one and backward_one.
struct Loop {
  int64_t lead = 0, slots = 0, b = 0, n = 0;
  std::vector<int64_t> t;  // the slot each lead index reads
};

template <typename Buf>
std::string loop_shape(const Buf& stack, Loop* l) {
  auto dims = stack.dimensions();
  if (dims.size() < 3) return "the stacks must be (..., T + 1, B, N)";
  l->n = dims[dims.size() - 1];
  l->b = dims[dims.size() - 2];
  l->slots = dims[dims.size() - 3];
  l->lead = 1;
  for (size_t i = 0; i + 3 < dims.size(); ++i) l->lead *= dims[i];
  if (l->n < 1 || l->n >= (int64_t(1) << 31) || l->b < 1 || l->slots < 2) return "bad stack sizes";
  return "";
}

template <typename TBuf>
std::string loop_step(const TBuf& t, Loop* l) {
  const int64_t c = static_cast<int64_t>(t.element_count());
  if (c != 1 && c != l->lead) return "t must have one entry or one per vmapped index";
  l->t.resize(l->lead);
  for (int64_t s = 0; s < l->lead; ++s) {
    const int64_t v = t.typed_data()[c == 1 ? 0 : s];
    if (v < 0 || v >= l->slots - 1) return "t is outside [0, T)";
    l->t[s] = v;
  }
  return "";
}

// The stacks with slot 0 set to (x0, w0); the other slots are left for the loop to write.
template <ffi::DataType DT>
ffi::Error LoopInitImpl(ffi::Buffer<DT> x0, ffi::Buffer<DT> w0, ffi::ResultBuffer<DT> xs,
                        ffi::ResultBuffer<DT> ws, ffi::ResultBuffer<ffi::S32> idx) {
  using T = ffi::NativeType<DT>;
  Loop l;
  std::string e = loop_shape(*xs, &l);
  if (!e.empty()) return ffi::Error::InvalidArgument("pf_loop_init: " + e);
  const int64_t row = l.b * l.n;
  if (!per_filter(l.lead * row, x0, w0) || !per_filter(l.lead * l.slots * row, *ws) ||
      !per_filter(l.lead * (l.slots - 1) * row, *idx))
    return ffi::Error::InvalidArgument("pf_loop_init: x0, w0 and the stacks differ in size");
  for (int64_t s = 0; s < l.lead; ++s) {
    std::memcpy(xs->typed_data() + s * l.slots * row, x0.typed_data() + s * row, row * sizeof(T));
    std::memcpy(ws->typed_data() + s * l.slots * row, w0.typed_data() + s * row, row * sizeof(T));
  }
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error LoopFwdImpl(ffi::ThreadPool pool, ffi::Buffer<DT> xs, ffi::Buffer<DT> ws,
                       ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> t, ffi::Buffer<ffi::U32> key_idx,
                       ffi::Buffer<ffi::U32> key_jit, ffi::Buffer<DT> tau, ffi::Buffer<DT> phase,
                       ffi::Buffer<DT> decay, ffi::Buffer<DT> y, ffi::Buffer<ffi::PRED> allowed,
                       ffi::ResultBuffer<DT> xs_out, ffi::ResultBuffer<DT> ws_out,
                       ffi::ResultBuffer<ffi::S32> idx_out, ffi::ResultBuffer<DT> mo, ffi::ResultBuffer<DT> vo,
                       ffi::ResultBuffer<ffi::S32> flags, double alpha, double beta, double threshold,
                       double low, double high, double scale, bool sw, bool enabled) {
  using T = ffi::NativeType<DT>;
  Loop l;
  std::string e = loop_shape(xs, &l);
  if (e.empty()) e = loop_step(t, &l);
  if (!e.empty()) return ffi::Error::InvalidArgument("pf_loop_forward: " + e);
  const int64_t nb = l.lead * l.b, row = l.b * l.n;
  if (!per_filter(l.lead * l.slots * row, ws, *xs_out, *ws_out) ||
      !per_filter(l.lead * (l.slots - 1) * row, idx, *idx_out) || !per_filter(2 * nb, key_idx, key_jit) ||
      !per_filter(nb, tau, phase, decay, y, allowed, *mo, *vo, *flags))
    return ffi::Error::InvalidArgument("pf_loop_forward: the stacks and per-filter inputs differ in size");
  if (xs_out->typed_data() != xs.typed_data() || ws_out->typed_data() != ws.typed_data() ||
      idx_out->typed_data() != idx.typed_data())
    return ffi::Error::InvalidArgument("pf_loop_forward: the stacks must be aliased to the outputs");
  const Params<T> p = make_params<T>(alpha, beta, threshold, low, high, scale, sw, enabled, l.n);
  T* px = xs_out->typed_data();
  T* pw = ws_out->typed_data();
  int32_t* pidx = idx_out->typed_data();
  const uint32_t *pki = key_idx.typed_data(), *pkj = key_jit.typed_data();
  const T *ptau = tau.typed_data(), *pph = phase.typed_data(), *pd = decay.typed_data(), *py = y.typed_data();
  const bool* pa = allowed.typed_data();
  T *pmo = mo->typed_data(), *pvo = vo->typed_data();
  int32_t* pf = flags->typed_data();
  parallel_for(pool, nb, 8, [&](int64_t i) {
    const int64_t s = i / l.b, j = i % l.b, slot = l.t[s];
    const int64_t in = ((s * l.slots + slot) * l.b + j) * l.n, out = in + row;
    int32_t* ix = pidx + ((s * (l.slots - 1) + slot) * l.b + j) * l.n;
    forward_one(p, px + in, pw + in, pki + 2 * i, pkj + 2 * i, ptau[i], pph[i], pd[i], py[i], pa[i], px + out,
                pw + out, pmo + i, pvo + i, ix, pf + i);
  });
  return ffi::Error::Success();
}

// The backward step t: gx, gw (the cotangents of slot t + 1's filter in, of slot t's out)
// are updated in place (backward_one reads its cotangent inputs before writing).
template <ffi::DataType DT>
ffi::Error LoopBwdImpl(ffi::ThreadPool pool, ffi::Buffer<DT> xs, ffi::Buffer<DT> ws, ffi::Buffer<ffi::S32> idx,
                       ffi::Buffer<ffi::S32> t, ffi::Buffer<ffi::U32> key_jit, ffi::Buffer<DT> tau,
                       ffi::Buffer<DT> phase, ffi::Buffer<DT> decay, ffi::Buffer<DT> y, ffi::Buffer<DT> mo,
                       ffi::Buffer<ffi::S32> flags, ffi::Buffer<DT> gxo, ffi::Buffer<DT> gwo,
                       ffi::Buffer<DT> gmo, ffi::Buffer<DT> gvo, ffi::ResultBuffer<DT> gx,
                       ffi::ResultBuffer<DT> gw, ffi::ResultBuffer<DT> gtau, ffi::ResultBuffer<DT> gphase,
                       ffi::ResultBuffer<DT> gdecay, double alpha, double beta, double threshold,
                       double low, double high, double scale, bool sw, bool enabled) {
  using T = ffi::NativeType<DT>;
  Loop l;
  std::string e = loop_shape(xs, &l);
  if (e.empty()) e = loop_step(t, &l);
  if (!e.empty()) return ffi::Error::InvalidArgument("pf_loop_backward: " + e);
  const int64_t nb = l.lead * l.b, row = l.b * l.n;
  if (!per_filter(l.lead * l.slots * row, ws) || !per_filter(l.lead * (l.slots - 1) * row, idx) ||
      !per_filter(nb * l.n, gxo, gwo, *gx, *gw) || !per_filter(2 * nb, key_jit) ||
      !per_filter(nb, tau, phase, decay, y, mo, flags, gmo, gvo, *gtau, *gphase, *gdecay))
    return ffi::Error::InvalidArgument("pf_loop_backward: the stacks and per-filter inputs differ in size");
  const Params<T> p = make_params<T>(alpha, beta, threshold, low, high, scale, sw, enabled, l.n);
  const T *px = xs.typed_data(), *pw = ws.typed_data();
  const int32_t *pidx = idx.typed_data(), *pf = flags.typed_data();
  const uint32_t* pkj = key_jit.typed_data();
  const T *ptau = tau.typed_data(), *pph = phase.typed_data(), *pd = decay.typed_data();
  const T *py = y.typed_data(), *pmo = mo.typed_data();
  const T *pgxo = gxo.typed_data(), *pgwo = gwo.typed_data(), *pgmo = gmo.typed_data(), *pgvo = gvo.typed_data();
  T *pgx = gx->typed_data(), *pgw = gw->typed_data(), *pgt = gtau->typed_data(), *pgp = gphase->typed_data(),
    *pgd = gdecay->typed_data();
  parallel_for(pool, nb, 8, [&](int64_t i) {
    const int64_t s = i / l.b, j = i % l.b, slot = l.t[s];
    const int64_t in = ((s * l.slots + slot) * l.b + j) * l.n, o = i * l.n;
    const int32_t* ix = pidx + ((s * (l.slots - 1) + slot) * l.b + j) * l.n;
    backward_one(p, px + in, pw + in, pkj + 2 * i, ptau[i], pph[i], pd[i], py[i], pmo[i], ix, pf[i], pgxo + o,
                 pgwo + o, pgmo[i], pgvo[i], pgx + o, pgw + o, pgt + i, pgp + i, pgd + i);
  });
  return ffi::Error::Success();
}

// A test hook: the normals the kernel draws for a key (..., 2) -> (..., N).
template <ffi::DataType DT>
ffi::Error NormalsImpl(ffi::Buffer<ffi::U32> key, ffi::ResultBuffer<DT> out) {
  using T = ffi::NativeType<DT>;
  auto dims = out->dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("normals: out must have a last axis");
  const int64_t n = dims.back();
  const int64_t b = static_cast<int64_t>(out->element_count()) / n;
  if (static_cast<int64_t>(key.element_count()) != 2 * b)
    return ffi::Error::InvalidArgument("normals: keys must be (..., 2)");
  for (int64_t i = 0; i < b; ++i) normals(key.typed_data() + 2 * i, n, out->typed_data() + i * n);
  return ffi::Error::Success();
}

#define QSM_ATTRS                      \
  .Attr<double>("alpha")               \
      .Attr<double>("beta")            \
      .Attr<double>("threshold")       \
      .Attr<double>("low")             \
      .Attr<double>("high")            \
      .Attr<double>("scale")           \
      .Attr<bool>("scibior_wood")      \
      .Attr<bool>("enabled")

#define QSM_FORWARD(NAME, DT)                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, ForwardImpl<DT>,                \
                                ffi::Ffi::Bind()                      \
                                    .Ctx<ffi::ThreadPool>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::U32>>()     \
                                    .Arg<ffi::Buffer<ffi::U32>>()     \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::PRED>>()    \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<ffi::S32>>()     \
                                    .Ret<ffi::Buffer<ffi::S32>>() QSM_ATTRS);

#define QSM_BACKWARD(NAME, DT)                                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, BackwardImpl<DT>,               \
                                ffi::Ffi::Bind()                      \
                                    .Ctx<ffi::ThreadPool>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::U32>>()     \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>() QSM_ATTRS);

#define QSM_NORMALS(NAME, DT)                                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, NormalsImpl<DT>,                            \
                                ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::U32>>().Ret<ffi::Buffer<DT>>());

#define QSM_LOOP_INIT(NAME, DT)                                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, LoopInitImpl<DT>,                            \
                                ffi::Ffi::Bind()                                   \
                                    .Arg<ffi::Buffer<DT>>()                        \
                                    .Arg<ffi::Buffer<DT>>()                        \
                                    .Ret<ffi::Buffer<DT>>()                        \
                                    .Ret<ffi::Buffer<DT>>()                        \
                                    .Ret<ffi::Buffer<ffi::S32>>());

#define QSM_LOOP_FORWARD(NAME, DT)                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, LoopFwdImpl<DT>,                \
                                ffi::Ffi::Bind()                      \
                                    .Ctx<ffi::ThreadPool>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<ffi::U32>>()     \
                                    .Arg<ffi::Buffer<ffi::U32>>()     \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::PRED>>()    \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<ffi::S32>>()     \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<ffi::S32>>() QSM_ATTRS);

#define QSM_LOOP_BACKWARD(NAME, DT)                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, LoopBwdImpl<DT>,                \
                                ffi::Ffi::Bind()                      \
                                    .Ctx<ffi::ThreadPool>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<ffi::U32>>()     \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<ffi::S32>>()     \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Arg<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>()           \
                                    .Ret<ffi::Buffer<DT>>() QSM_ATTRS);

}  // namespace

QSM_FORWARD(QsmPfStepF32, ffi::F32)
QSM_FORWARD(QsmPfStepF64, ffi::F64)
QSM_BACKWARD(QsmPfStepBwdF32, ffi::F32)
QSM_BACKWARD(QsmPfStepBwdF64, ffi::F64)
QSM_NORMALS(QsmNormalsF32, ffi::F32)
QSM_NORMALS(QsmNormalsF64, ffi::F64)
QSM_LOOP_INIT(QsmPfLoopInitF32, ffi::F32)
QSM_LOOP_INIT(QsmPfLoopInitF64, ffi::F64)
QSM_LOOP_FORWARD(QsmPfLoopFwdF32, ffi::F32)
QSM_LOOP_FORWARD(QsmPfLoopFwdF64, ffi::F64)
QSM_LOOP_BACKWARD(QsmPfLoopBwdF32, ffi::F32)
QSM_LOOP_BACKWARD(QsmPfLoopBwdF64, ffi::F64)
