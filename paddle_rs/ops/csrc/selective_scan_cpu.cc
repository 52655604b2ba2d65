// Selective scan of Mamba v1 (rsmamba.md §3), fused CPU kernels for PaddlePaddle (custom operator).
//
// Channels-last, the layout of paddle_rs.ops.selective_scan.selective_scan_blc:
//   u, delta, z, out: [b, l, d]   B, C: [b, l, n]   A: [d, n]   D, delta_bias: [d]   (fp32, contiguous)
//
//   dp = delta + delta_bias;  dl = softplus(dp) (threshold 20) or dp
//   s_0 = 0;  s_t = exp(dl_t * A) * s_{t-1} + (dl_t * u_t) * B_t;  y_t = sum_n s_t[n] C_t[n]
//   out = (y + D u) * silu(z)          (no gate when has_z is false)
//
// Same per-step floating-point operations as the pure-Paddle chunked scan (selective_scan.py), except that
// exp / log1p / sigmoid are the vectorisable polynomials below (Cephes, <= 2 ulp) instead of the library
// functions, and the compiler may contract a*b+c into an FMA: fp32 rounding differences only.
//
// Work items are (batch, block of DB channels); the n state entries of DB channels live in L1. The forward
// keeps the state at the start of each chunk of `chunk` steps ([b, n_chunks, d, n]); the backward walks the
// chunks in reverse, recomputes the chunk's states from its start state and runs the adjoint recurrence
// g_t = dy_t C_t + exp(dl_{t+1} A) g_{t+1}. Linear in l, OpenMP over the work items; reductions over b / d
// (dA, dD, d_delta_bias, dB, dC) go through per-thread partial sums added in thread order (deterministic for a
// given thread count).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

constexpr int DB = 16;  // channels per work item (one AVX-512 / two AVX2 vectors)

// 16 float / int32 lanes (GCC vector extensions: lowered to whatever SIMD width the target has). Written with
// explicit vectors because GCC turns the clamps and selects of these polynomials into branches and then gives
// up auto-vectorising the loops.
typedef float V __attribute__((vector_size(4 * DB)));
typedef int32_t VI __attribute__((vector_size(4 * DB)));

inline V splat(float x) { return V{} + x; }
inline V vmin(V a, V b) { return a < b ? a : b; }
inline V vmax(V a, V b) { return a > b ? a : b; }
inline V ld(const float* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
inline void st(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }

// exp, Cephes expf polynomial with round-to-nearest range reduction (<= 1 ulp); 0 below -87.34 (end of the
// normal float range) instead of a denormal.
inline V vexp(V x) {
  const float lo = -87.3365447504f, magic = 12582912.0f;  // 1.5 * 2^23
  V xc = vmin(vmax(x, splat(lo)), splat(88.0f));
  V t = xc * 1.44269504088896341f + magic;
  VI n = (VI)t - (VI)splat(magic);
  V fn = t - magic;
  V r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  V p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  V y = p * r * r + r + 1.0f;
  V res = y * (V)((n + 127) << 23);
  return (V)((VI)res & (x >= lo));
}

// log for finite w >= 1, Cephes logf polynomial.
inline V vlog(V w) {
  VI i = (VI)w;
  VI e = ((i >> 23) & 0xff) - 126;
  V m = (V)((i & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  VI small = m < 0.707106781186547524f;     // all ones where true
  e += small;
  V x = (m + (V)((VI)m & small)) - 1.0f;    // 2m - 1 or m - 1
  V z = x * x;
  V y = splat(7.0376836292e-2f);
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  V fe = __builtin_convertvector(e, V);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  V r = x + y;
  return r + 0.693359375f * fe;
}

// softplus with threshold 20: x > 20 ? x : log1p(exp(x)); log1p(e) = log(w) - ((w - 1) - e) / w, w = 1 + e.
inline V vsoftplus(V x) {
  V e = vexp(vmin(x, splat(20.0f)));
  V w = 1.0f + e;
  V l = vlog(w) - ((w - 1.0f) - e) / w;
  return x > 20.0f ? x : l;
}

inline V vsigmoid(V x) { return 1.0f / (1.0f + vexp(-x)); }

inline float hsum(V v) {
  float a[DB];
  std::memcpy(a, &v, sizeof(V));
  float b[DB / 2];
  for (int j = 0; j < DB / 2; ++j) b[j] = a[j] + a[j + DB / 2];
  for (int j = 0; j < DB / 4; ++j) b[j] = b[j] + b[j + DB / 4];
  for (int j = 0; j < DB / 8; ++j) b[j] = b[j] + b[j + DB / 8];
  return b[0] + b[1];
}

struct Dims {
  int64_t nb, l, d, n, nc, nblk;
  int64_t T;
};

Dims dims_of(const paddle::Tensor& u, const paddle::Tensor& A, int chunk) {
  Dims s;
  s.nb = u.shape()[0]; s.l = u.shape()[1]; s.d = u.shape()[2]; s.n = A.shape()[1];
  s.T = chunk; s.nc = (s.l + chunk - 1) / chunk; s.nblk = (s.d + DB - 1) / DB;
  return s;
}

// DB channels from p (w <= DB valid, zeros in the padding lanes) / to p
inline V loadw(const float* p, int w) {
  if (w == DB) return ld(p);
  float a[DB] = {};
  std::memcpy(a, p, sizeof(float) * w);
  return ld(a);
}
inline void storew(float* p, V v, int w) {
  if (w == DB) return st(p, v);
  float a[DB];
  st(a, v);
  std::memcpy(p, a, sizeof(float) * w);
}

// per-block channel data, zero in the padding lanes
struct Block {
  int w;
  std::vector<V> A;  // [n] x DB lanes
  V D, bias;
  Block(const float* A_, const float* D_, const float* bias_, int64_t d, int64_t n, int64_t d0)
      : w(static_cast<int>(std::min<int64_t>(DB, d - d0))), A(n) {
    D = loadw(D_ + d0, w);
    bias = loadw(bias_ + d0, w);
    for (int64_t k = 0; k < n; ++k) {
      float a[DB] = {};
      for (int j = 0; j < w; ++j) a[j] = A_[(d0 + j) * n + k];
      A[k] = ld(a);
    }
  }
};

// state [n] x DB lanes <-> memory [DB channels][n] (the layout of `starts`, [b, n_chunks, d, n])
inline void save_state(float* dst, const V* h, int64_t n, int w) {
  for (int64_t k = 0; k < n; ++k) {
    float a[DB];
    st(a, h[k]);
    for (int j = 0; j < w; ++j) dst[j * n + k] = a[j];
  }
}
inline void load_state(V* h, const float* src, int64_t n, int w) {
  for (int64_t k = 0; k < n; ++k) {
    float a[DB] = {};
    for (int j = 0; j < w; ++j) a[j] = src[j * n + k];
    h[k] = ld(a);
  }
}

inline V silu(V z) { return z / (1.0f + vexp(-z)); }

}  // namespace

std::vector<paddle::Tensor> ScanForward(const paddle::Tensor& u, const paddle::Tensor& delta,
                                        const paddle::Tensor& A, const paddle::Tensor& B, const paddle::Tensor& C,
                                        const paddle::Tensor& D, const paddle::Tensor& z,
                                        const paddle::Tensor& bias, bool delta_softplus, bool has_z, int chunk,
                                        bool save_states) {
  PD_CHECK(u.is_cpu(), "selective_scan_cpu: CPU tensors only");
  PD_CHECK(u.dtype() == paddle::DataType::FLOAT32, "selective_scan_cpu: float32 only");
  const Dims s = dims_of(u, A, chunk);
  auto out = paddle::empty({s.nb, s.l, s.d}, paddle::DataType::FLOAT32, u.place());
  auto starts = paddle::empty({save_states ? s.nb : 1, save_states ? s.nc : 1, s.d, s.n},
                              paddle::DataType::FLOAT32, u.place());
  const float *pu = u.data<float>(), *pdl = delta.data<float>(), *pA = A.data<float>(), *pB = B.data<float>(),
              *pC = C.data<float>(), *pD = D.data<float>(), *pz = z.data<float>(), *pbias = bias.data<float>();
  float *po = out.data<float>(), *pst = starts.data<float>();
  const int64_t n = s.n, d = s.d, l = s.l;
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < s.nb * s.nblk; ++item) {
    const int64_t b = item / s.nblk, d0 = (item % s.nblk) * DB;
    const Block blk(pA, pD, pbias, d, n, d0);
    const int w = blk.w;
    std::vector<V> h(n, V{});
    for (int64_t t = 0; t < l; ++t) {
      const int64_t row = (b * l + t) * d + d0;
      if (save_states && t % s.T == 0) save_state(pst + ((b * s.nc + t / s.T) * d + d0) * n, h.data(), n, w);
      const V uu = loadw(pu + row, w);
      const V dp = loadw(pdl + row, w) + blk.bias;
      const V dl = delta_softplus ? vsoftplus(dp) : dp;
      const V du = dl * uu;
      const float *Bt = pB + (b * l + t) * n, *Ct = pC + (b * l + t) * n;
      V y{};
      for (int64_t k = 0; k < n; ++k) {
        h[k] = vexp(dl * blk.A[k]) * h[k] + du * Bt[k];
        y += h[k] * Ct[k];
      }
      y = y + uu * blk.D;
      if (has_z) y = y * silu(loadw(pz + row, w));
      storew(po + row, y, w);
    }
  }
  return {out, starts};
}

std::vector<paddle::Tensor> ScanBackward(const paddle::Tensor& u, const paddle::Tensor& delta,
                                         const paddle::Tensor& A, const paddle::Tensor& B, const paddle::Tensor& C,
                                         const paddle::Tensor& D, const paddle::Tensor& z,
                                         const paddle::Tensor& bias, const paddle::Tensor& starts,
                                         const paddle::Tensor& gout, bool delta_softplus, bool has_z, int chunk) {
  const Dims s = dims_of(u, A, chunk);
  const int64_t n = s.n, d = s.d, l = s.l, nb = s.nb, T = s.T;
  auto gu = paddle::empty({nb, l, d}, paddle::DataType::FLOAT32, u.place());
  auto gdelta = paddle::empty({nb, l, d}, paddle::DataType::FLOAT32, u.place());
  auto gz = paddle::empty({has_z ? nb : 1, has_z ? l : 1, d}, paddle::DataType::FLOAT32, u.place());
  auto gA = paddle::empty({d, n}, paddle::DataType::FLOAT32, u.place());
  auto gB = paddle::empty({nb, l, n}, paddle::DataType::FLOAT32, u.place());
  auto gC = paddle::empty({nb, l, n}, paddle::DataType::FLOAT32, u.place());
  auto gD = paddle::empty({d}, paddle::DataType::FLOAT32, u.place());
  auto gbias = paddle::empty({d}, paddle::DataType::FLOAT32, u.place());
  const float *pu = u.data<float>(), *pdl = delta.data<float>(), *pA = A.data<float>(), *pB = B.data<float>(),
              *pC = C.data<float>(), *pD = D.data<float>(), *pz = z.data<float>(), *pbias = bias.data<float>(),
              *pst = starts.data<float>(), *pg = gout.data<float>();
  float *pgu = gu.data<float>(), *pgdl = gdelta.data<float>(), *pgz = gz.data<float>();

  const int nthr = omp_get_max_threads();
  // per-thread partial sums: dB, dC [b, l, n]; dA [d, n]; dD, dbias [d]
  const int64_t szBC = nb * l * n, szA = d * n, tot = 2 * szBC + szA + 2 * d;
  std::vector<float> part(static_cast<size_t>(nthr) * tot, 0.f);

#pragma omp parallel num_threads(nthr)
  {
    float* myB = part.data() + static_cast<size_t>(omp_get_thread_num()) * tot;
    float *myC = myB + szBC, *myA = myC + szBC, *myD = myA + szA, *mybias = myD + d;
    std::vector<V> Hs(T * n), As(T * n), gnext(n), gAacc(n), h0(n), DL(T), DP(T), Y(T);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < nb * s.nblk; ++item) {
      const int64_t b = item / s.nblk, d0 = (item % s.nblk) * DB;
      const Block blk(pA, pD, pbias, d, n, d0);
      const int w = blk.w;
      std::fill(gnext.begin(), gnext.end(), V{});
      std::fill(gAacc.begin(), gAacc.end(), V{});
      V gDacc{}, gbacc{};
      for (int64_t c = s.nc - 1; c >= 0; --c) {
        const int64_t t0 = c * T, Tc = std::min<int64_t>(T, l - t0);
        load_state(h0.data(), pst + ((b * s.nc + c) * d + d0) * n, n, w);
        // recompute the chunk: decays, states, y
        for (int64_t i = 0; i < Tc; ++i) {
          const int64_t t = t0 + i, row = (b * l + t) * d + d0;
          const V uu = loadw(pu + row, w);
          const V dp = loadw(pdl + row, w) + blk.bias;
          const V dl = delta_softplus ? vsoftplus(dp) : dp;
          const V du = dl * uu;
          DP[i] = dp;
          DL[i] = dl;
          const float *Bt = pB + (b * l + t) * n, *Ct = pC + (b * l + t) * n;
          const V* hp = i ? &Hs[(i - 1) * n] : h0.data();
          V* hi = &Hs[i * n];
          V* ai = &As[i * n];
          V y{};
          for (int64_t k = 0; k < n; ++k) {
            ai[k] = vexp(dl * blk.A[k]);
            hi[k] = ai[k] * hp[k] + du * Bt[k];
            y += hi[k] * Ct[k];
          }
          Y[i] = y;
        }
        // adjoint, last step first
        for (int64_t i = Tc - 1; i >= 0; --i) {
          const int64_t t = t0 + i, row = (b * l + t) * d + d0;
          const V dl = DL[i], uu = loadw(pu + row, w), go = loadw(pg + row, w);
          const V du = dl * uu;
          V gy = go;
          if (has_z) {
            const V zz = loadw(pz + row, w);
            const V sz = vsigmoid(zz);
            storew(pgz + row, go * (Y[i] + uu * blk.D) * (sz * (1.0f + zz * (1.0f - sz))), w);
            gy = go * (zz * sz);
          }
          gDacc += gy * uu;
          V gdu{}, gdl{};
          const float *Bt = pB + (b * l + t) * n, *Ct = pC + (b * l + t) * n;
          float* gBt = myB + (b * l + t) * n;
          float* gCt = myC + (b * l + t) * n;
          const V* hi = &Hs[i * n];
          const V* hp = i ? &Hs[(i - 1) * n] : h0.data();
          const V* ai = &As[i * n];
          for (int64_t k = 0; k < n; ++k) {
            const V g = gy * Ct[k] + gnext[k];     // dL/ds_t
            gCt[k] += hsum(gy * hi[k]);
            gBt[k] += hsum(g * du);
            gdu += g * Bt[k];
            const V gx = g * hp[k] * ai[k];        // dL/d(dl_t A)
            gdl += gx * blk.A[k];
            gAacc[k] += gx * dl;
            gnext[k] = ai[k] * g;                  // dL/ds_{t-1} through the decay
          }
          V gd = gdl + gdu * uu;
          if (delta_softplus) gd = DP[i] > 20.0f ? gd : gd * vsigmoid(DP[i]);
          gbacc += gd;
          storew(pgdl + row, gd, w);
          storew(pgu + row, gdu * dl + gy * blk.D, w);
        }
      }
      float a[DB], bb[DB];
      st(a, gDacc);
      st(bb, gbacc);
      for (int j = 0; j < w; ++j) {
        myD[d0 + j] += a[j];
        mybias[d0 + j] += bb[j];
      }
      for (int64_t k = 0; k < n; ++k) {
        st(a, gAacc[k]);
        for (int j = 0; j < w; ++j) myA[(d0 + j) * n + k] += a[j];
      }
    }
  }
  // reduce the partial sums in thread order
  float* sum = part.data();
  for (int tid = 1; tid < nthr; ++tid) {
    const float* q = part.data() + static_cast<size_t>(tid) * tot;
    for (int64_t i = 0; i < tot; ++i) sum[i] += q[i];
  }
  std::memcpy(gB.data<float>(), sum, szBC * 4);
  std::memcpy(gC.data<float>(), sum + szBC, szBC * 4);
  std::memcpy(gA.data<float>(), sum + 2 * szBC, szA * 4);
  std::memcpy(gD.data<float>(), sum + 2 * szBC + szA, d * 4);
  std::memcpy(gbias.data<float>(), sum + 2 * szBC + szA + d, d * 4);
  return {gu, gdelta, gA, gB, gC, gD, gz, gbias};
}

std::vector<std::vector<int64_t>> ScanForwardShape(const std::vector<int64_t>& u, const std::vector<int64_t>& delta,
                                                   const std::vector<int64_t>& A, const std::vector<int64_t>& B,
                                                   const std::vector<int64_t>& C, const std::vector<int64_t>& D,
                                                   const std::vector<int64_t>& z, const std::vector<int64_t>& bias,
                                                   bool delta_softplus, bool has_z, int chunk, bool save_states) {
  int64_t nc = u[1] < 0 ? -1 : (u[1] + chunk - 1) / chunk;
  return {u, {save_states ? u[0] : 1, save_states ? nc : 1, u[2], A[1]}};
}

std::vector<paddle::DataType> ScanForwardDtype(const paddle::DataType& u, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::DataType&) {
  return {u, u};
}

PD_BUILD_OP(rs_selective_scan_fwd)
    .Inputs({"u", "delta", "A", "B", "C", "D", "z", "delta_bias"})
    .Outputs({"out", "starts"})
    .Attrs({"delta_softplus: bool", "has_z: bool", "chunk: int", "save_states: bool"})
    .SetKernelFn(PD_KERNEL(ScanForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ScanForwardShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ScanForwardDtype));

PD_BUILD_OP(rs_selective_scan_bwd)
    .Inputs({"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "starts", "gout"})
    .Outputs({"gu", "gdelta", "gA", "gB", "gC", "gD", "gz", "gdelta_bias"})
    .Attrs({"delta_softplus: bool", "has_z: bool", "chunk: int"})
    .SetKernelFn(PD_KERNEL(ScanBackward));
