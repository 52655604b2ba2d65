// Dygraph CPU (fp32) operators for Paddle whose own kernels are slow there: softmax, GELU / SiLU / ReLU, LayerNorm
// and eval-mode BatchNorm on oneDNN, a fully connected layer on Paddle's own GEMM with a fast bias gradient, and a
// dense transpose on a oneDNN reorder. Each is a custom operator with its gradient operator registered here
// (eval BatchNorm aside, which has none), so Paddle's autograd engine runs the backward (paddle.grad with respect
// to any subset of the inputs works, unlike with a PyLayer). Used through paddle_rs.ops.act, paddle_rs.ops.linear
// and paddle_rs.ops.layout, which explain why they exist.
//
//   rs_softmax(x [..., C]) -> out                       softmax over the last axis (oneDNN softmax_accurate)
//     grad: (out, out@GRAD) -> x@GRAD
//   rs_eltwise(x; alg) -> out                           alg 0: GELU (erf), 1: SiLU (x * sigmoid(x)), 2: ReLU
//     grad: (x, out@GRAD) -> x@GRAD
//   rs_layer_norm(x [..., C], weight [C], bias [C]; epsilon) -> y, mean [rows], variance [rows]
//     grad: (x, weight, bias, mean, variance, y@GRAD) -> x@GRAD, weight@GRAD, bias@GRAD (oneDNN counts the
//     shift among the backward's inputs, although the gradients do not depend on it)
//   rs_linear(x [..., K], weight [K, N], bias [N]) -> y [..., N]     y = bias + x @ weight (Paddle's addmm)
//     grad: (x, weight, y@GRAD) -> x@GRAD (GEMM), weight@GRAD (GEMM), bias@GRAD (column_sum below)
//   rs_batch_norm_infer(x [N, C, ...], mean, variance, weight, bias [C]; epsilon) -> y = x * alpha + beta per
//     channel (torch's alpha, beta; a oneDNN binary op); no gradient op: used only where none is needed
//   rs_permute(x; perm) -> out = transpose(x, perm), dense      (oneDNN reorder from a strided view of x)
//     grad: (out@GRAD; perm) -> x@GRAD = transpose(out@GRAD, inverse(perm))
//
// A backward computes every input's gradient, needed or not (a custom kernel is not told which are). Every
// tensor is viewed as plain row-major ([rows, C] or flat); inputs are made contiguous first, so no layout
// reorders are involved (rs_permute aside, which is one). Primitive descriptors and primitives are cached per
// (op, shape, algorithm, epsilon), reorders per (dims, strides), in maps guarded by a mutex (dropped when
// full). Engine, memory wrapping, threads and the header / library version rules: onednn_common.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "onednn_common.h"

namespace {

using namespace rs_onednn;  // NOLINT: memory, tag, dims, f32, cpu_engine, wrap, Workspace, scratchpad

enum Op : int { kSoftmax = 0, kEltwise = 1, kLayerNorm = 2, kBatchNorm = 3 };

// op, rows, cols, inner (batch norm: [N, C, inner]; 1 otherwise), algorithm (eltwise), epsilon bits (norms)
using Key = std::tuple<int, int64_t, int64_t, int64_t, int, uint32_t>;

struct Entry {
  memory::desc md, stat_md, wb_md;
  dnnl::primitive fwd, bwd;
  dnnl::primitive_desc fwd_pd, bwd_pd;
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::algorithm eltwise_alg(int alg) {
  PD_CHECK(alg >= 0 && alg <= 2, "rs_eltwise: alg must be 0 (GELU, erf), 1 (SiLU) or 2 (ReLU), got ", alg);
  return alg == 0 ? dnnl::algorithm::eltwise_gelu_erf
                  : alg == 1 ? dnnl::algorithm::eltwise_swish : dnnl::algorithm::eltwise_relu;
}

std::shared_ptr<Entry> make_entry(const Key& k) {
  auto& eng = cpu_engine();
  const auto [op, rows, cols, inner, alg, eps_bits] = k;
  auto e = std::make_shared<Entry>();
  const auto attr = user_scratchpad();
  if (op == kSoftmax) {
    e->md = memory::desc({rows, cols}, f32, tag::ab);
    auto fpd = dnnl::softmax_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
                                                     dnnl::algorithm::softmax_accurate, e->md, e->md, 1, attr);
    auto bpd = dnnl::softmax_backward::primitive_desc(eng, dnnl::algorithm::softmax_accurate, e->md, e->md, e->md,
                                                      1, fpd, attr);
    e->fwd = dnnl::softmax_forward(fpd);
    e->bwd = dnnl::softmax_backward(bpd);
    e->fwd_pd = fpd;
    e->bwd_pd = bpd;
  } else if (op == kEltwise) {
    e->md = memory::desc({rows * cols}, f32, tag::a);
    const float alpha = alg == 1 ? 1.f : 0.f;  // swish: x * sigmoid(alpha * x); relu: alpha * x for x <= 0
    auto fpd = dnnl::eltwise_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, eltwise_alg(alg),
                                                     e->md, e->md, alpha, 0.f, attr);
    auto bpd = dnnl::eltwise_backward::primitive_desc(eng, eltwise_alg(alg), e->md, e->md, e->md, alpha, 0.f, fpd,
                                                      attr);
    e->fwd = dnnl::eltwise_forward(fpd);
    e->bwd = dnnl::eltwise_backward(bpd);
    e->fwd_pd = fpd;
    e->bwd_pd = bpd;
  } else if (op == kBatchNorm) {   // y = x * alpha[c] + beta[c]: a binary multiply with a binary-add post-op
    e->md = memory::desc({rows, cols, inner}, f32, tag::abc);
    e->wb_md = memory::desc({1, cols, 1}, f32, tag::abc);
    dnnl::post_ops po;
    po.append_binary(dnnl::algorithm::binary_add, e->wb_md);
    auto battr = user_scratchpad();
    battr.set_post_ops(po);
    auto fpd = dnnl::binary::primitive_desc(eng, dnnl::algorithm::binary_mul, e->md, e->wb_md, e->md, battr);
    e->fwd = dnnl::binary(fpd);
    e->fwd_pd = fpd;
  } else {
    float eps;
    std::memcpy(&eps, &eps_bits, sizeof(eps));
    e->md = memory::desc({rows, cols}, f32, tag::ab);
    e->stat_md = memory::desc({rows}, f32, tag::a);
    e->wb_md = memory::desc({cols}, f32, tag::a);
    const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    auto fpd = dnnl::layer_normalization_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, e->md,
                                                                 e->md, e->stat_md, eps, flags, attr);
    auto bpd = dnnl::layer_normalization_backward::primitive_desc(eng, dnnl::prop_kind::backward, e->md, e->md,
                                                                  e->md, e->stat_md, eps, flags, fpd, attr);
    e->fwd = dnnl::layer_normalization_forward(fpd);
    e->bwd = dnnl::layer_normalization_backward(bpd);
    e->fwd_pd = fpd;
    e->bwd_pd = bpd;
  }
  return e;
}

constexpr size_t kMaxEntries = 1024;

// The entry for k from a map guarded by a mutex, built by make(k) on a miss; the map is dropped when full
// (entries in use survive through their shared_ptr). One map per (K, V).
template <class K, class V>
std::shared_ptr<V> cached(const K& k, std::shared_ptr<V> (*make)(const K&)) {
  static std::mutex mu;
  static std::map<K, std::shared_ptr<V>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it == cache.end()) {
    if (cache.size() >= kMaxEntries) cache.clear();
    it = cache.emplace(k, make(k)).first;
  }
  return it->second;
}

std::shared_ptr<Entry> get_entry(const Key& k) { return cached(k, make_entry); }

paddle::Tensor checked(const paddle::Tensor& t, const char* op) {
  PD_CHECK(t.is_cpu(), op, ": CPU tensors only");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, op, ": float32 only");
  return t.is_contiguous() ? t : t.contiguous();
}

// rows x cols of a tensor viewed as [-1, last dim]
std::pair<int64_t, int64_t> rows_cols(const paddle::Tensor& x, const char* op) {
  PD_CHECK(!x.shape().empty() && x.numel() > 0, op, ": a non-empty tensor of rank >= 1 expected");
  const int64_t cols = x.shape().back();
  return {x.numel() / cols, cols};
}

void run(const dnnl::primitive& p, const dnnl::primitive_desc& pd, std::unordered_map<int, memory> args,
         const paddle::Place& place) {
  Workspace ws(place);
  if (bytes_of(pd.scratchpad_desc()) > 0) args.emplace(DNNL_ARG_SCRATCHPAD, scratchpad(pd, ws));
  dnnl::stream s(cpu_engine());
  p.execute(s, args);
  s.wait();
}

// out[n] = sum over the M rows of g[m, n] (row-major [M, N]), summed like torch's CPU sum over dim 0 (its
// multi_row_sum in aten/src/ATen/native/cpu/SumKernel.cpp): rows are added in chunks of 2^p (p = max(4,
// ceil(log2 M) / 4)) into a 4-level cascade, so only partial sums of similar size meet (error ~ log M ulp,
// where Paddle's reduction adds the rows one after the other). Columns are independent, which lets the compiler
// vectorise across them; torch's result for a column does not depend on its vector width either.
void column_sum(const float* g, int64_t M, int64_t N, float* out) {
  constexpr int kLevels = 4;
  const int64_t ceil_log2 = M <= 2 ? 1 : 64 - __builtin_clzll(static_cast<uint64_t>(M - 1));
  const int64_t power = std::max<int64_t>(4, ceil_log2 / kLevels);
  const int64_t step = int64_t(1) << power, mask = step - 1;
  std::vector<float> acc(kLevels * N, 0.f);
  float* a0 = acc.data();
  int64_t i = 0;
  while (i + step <= M) {
    for (int64_t j = 0; j < step; ++j, ++i) {
      const float* row = g + i * N;
      for (int64_t n = 0; n < N; ++n) a0[n] += row[n];
    }
    for (int l = 1; l < kLevels; ++l) {
      float* lo = acc.data() + (l - 1) * N;
      float* hi = acc.data() + l * N;
      for (int64_t n = 0; n < N; ++n) {
        hi[n] += lo[n];
        lo[n] = 0.f;
      }
      if ((i & (mask << (l * power))) != 0) break;
    }
  }
  for (; i < M; ++i) {
    const float* row = g + i * N;
    for (int64_t n = 0; n < N; ++n) a0[n] += row[n];
  }
  for (int l = 1; l < kLevels; ++l) {
    const float* al = acc.data() + l * N;
    for (int64_t n = 0; n < N; ++n) a0[n] += al[n];
  }
  std::copy(a0, a0 + N, out);
}

// ---- rs_permute ----------------------------------------------------------------------------------------------
// out = transpose(x, perm), dense. Paddle's transpose kernel (Eigen, one thread) and copies of its strided views
// are slow on CPU; a oneDNN reorder (jit, on Paddle's threads) from x viewed with permuted strides into a dense
// buffer runs at torch's copy speed or faster. Output axes that stay adjacent in x are merged and size-1 axes
// dropped first, so the reorder sees as few dimensions as possible. A pure copy: the result is exact.

using PermKey = std::pair<dims, dims>;  // merged output dims, their strides in x

struct PermEntry {
  memory::desc src, dst;
  dnnl::reorder prim;
};

std::shared_ptr<PermEntry> make_reorder(const PermKey& k) {
  auto e = std::make_shared<PermEntry>();
  dims dense(k.first.size());
  for (size_t i = dense.size(), n = 1; i-- > 0;) {
    dense[i] = static_cast<int64_t>(n);
    n *= k.first[i];
  }
  e->src = memory::desc(k.first, f32, k.second);
  e->dst = memory::desc(k.first, f32, dense);
  e->prim = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), e->src, cpu_engine(), e->dst));
  return e;
}

std::shared_ptr<PermEntry> get_reorder(const PermKey& k) { return cached(k, make_reorder); }

// perm is an int vector: shape functions cannot take int64 vector attributes (Paddle reads them as input shapes)
std::vector<int> checked_perm(const std::vector<int>& perm, size_t ndim, const char* op) {
  PD_CHECK(perm.size() == ndim, op, ": perm has ", perm.size(), " entries for a tensor of rank ", ndim);
  std::vector<bool> seen(ndim, false);
  for (int p : perm) {
    PD_CHECK(p >= 0 && p < static_cast<int>(ndim) && !seen[p], op, ": perm is not a permutation of 0..",
             ndim - 1);
    seen[p] = true;
  }
  return perm;
}

paddle::Tensor permute(const paddle::Tensor& x_in, const std::vector<int>& perm_in, const char* op) {
  const auto x = checked(x_in, op);
  const auto& shape = x.shape();
  const auto perm = checked_perm(perm_in, shape.size(), op);
  const size_t n = shape.size();
  std::vector<int64_t> stride(n), out_shape(n);
  for (size_t i = n, s = 1; i-- > 0;) {
    stride[i] = static_cast<int64_t>(s);
    s *= shape[i];
  }
  dims d, st;   // merged: output axis k joins the previous one when it follows it in x
  for (size_t k = 0; k < n; ++k) {
    out_shape[k] = shape[perm[k]];
    const int64_t size = shape[perm[k]], str = stride[perm[k]];
    if (size == 1) continue;
    if (!d.empty() && st.back() == str * size) {
      d.back() *= size;
      st.back() = str;
    } else {
      d.push_back(size);
      st.push_back(str);
    }
  }
  auto out = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  if (x.numel() == 0) return out;
  if (d.size() <= 1) {   // the order of the elements does not change
    std::memcpy(out.data<float>(), x.data<float>(), x.numel() * sizeof(float));
    return out;
  }
  const auto e = get_reorder({d, st});
  dnnl::stream s(cpu_engine());
  e->prim.execute(s, {{DNNL_ARG_FROM, wrap(e->src, x.data<float>())}, {DNNL_ARG_TO, wrap(e->dst, out.data<float>())}});
  s.wait();
  return out;
}

std::vector<int> inverse(const std::vector<int>& perm) {
  std::vector<int> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[perm[i]] = static_cast<int>(i);
  return inv;
}

uint32_t float_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

}  // namespace

std::vector<paddle::Tensor> SoftmaxForward(const paddle::Tensor& x_in) {
  const auto x = checked(x_in, "rs_softmax");
  const auto [rows, cols] = rows_cols(x, "rs_softmax");
  const auto e = get_entry({kSoftmax, rows, cols, 1, 0, 0});
  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  run(e->fwd, e->fwd_pd, {{DNNL_ARG_SRC, wrap(e->md, x.data<float>())}, {DNNL_ARG_DST, wrap(e->md, out.data<float>())}},
      x.place());
  return {out};
}

std::vector<paddle::Tensor> SoftmaxBackward(const paddle::Tensor& out_in, const paddle::Tensor& gout_in) {
  const auto out = checked(out_in, "rs_softmax_grad"), gout = checked(gout_in, "rs_softmax_grad");
  PD_CHECK(out.shape() == gout.shape(), "rs_softmax_grad: out and its gradient differ in shape");
  const auto [rows, cols] = rows_cols(out, "rs_softmax_grad");
  const auto e = get_entry({kSoftmax, rows, cols, 1, 0, 0});
  auto gx = paddle::empty(out.shape(), paddle::DataType::FLOAT32, out.place());
  run(e->bwd, e->bwd_pd,
      {{DNNL_ARG_DST, wrap(e->md, out.data<float>())}, {DNNL_ARG_DIFF_DST, wrap(e->md, gout.data<float>())},
       {DNNL_ARG_DIFF_SRC, wrap(e->md, gx.data<float>())}},
      out.place());
  return {gx};
}

std::vector<paddle::Tensor> EltwiseForward(const paddle::Tensor& x_in, int alg) {
  const auto x = checked(x_in, "rs_eltwise");
  PD_CHECK(x.numel() > 0, "rs_eltwise: empty tensor");
  const auto e = get_entry({kEltwise, x.numel(), 1, 1, alg, 0});
  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  run(e->fwd, e->fwd_pd, {{DNNL_ARG_SRC, wrap(e->md, x.data<float>())}, {DNNL_ARG_DST, wrap(e->md, out.data<float>())}},
      x.place());
  return {out};
}

std::vector<paddle::Tensor> EltwiseBackward(const paddle::Tensor& x_in, const paddle::Tensor& gout_in, int alg) {
  const auto x = checked(x_in, "rs_eltwise_grad"), gout = checked(gout_in, "rs_eltwise_grad");
  PD_CHECK(x.shape() == gout.shape(), "rs_eltwise_grad: x and the output gradient differ in shape");
  const auto e = get_entry({kEltwise, x.numel(), 1, 1, alg, 0});
  auto gx = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  run(e->bwd, e->bwd_pd,
      {{DNNL_ARG_SRC, wrap(e->md, x.data<float>())}, {DNNL_ARG_DIFF_DST, wrap(e->md, gout.data<float>())},
       {DNNL_ARG_DIFF_SRC, wrap(e->md, gx.data<float>())}},
      x.place());
  return {gx};
}

std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                             const paddle::Tensor& b_in, float epsilon) {
  const auto x = checked(x_in, "rs_layer_norm"), w = checked(w_in, "rs_layer_norm"),
             b = checked(b_in, "rs_layer_norm");
  const auto [rows, cols] = rows_cols(x, "rs_layer_norm");
  PD_CHECK(w.numel() == cols && b.numel() == cols, "rs_layer_norm: weight and bias need ", cols, " elements");
  const auto e = get_entry({kLayerNorm, rows, cols, 1, 0, float_bits(epsilon)});
  const auto place = x.place();
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, place);
  auto mean = paddle::empty({rows}, paddle::DataType::FLOAT32, place);
  auto var = paddle::empty({rows}, paddle::DataType::FLOAT32, place);
  run(e->fwd, e->fwd_pd,
      {{DNNL_ARG_SRC, wrap(e->md, x.data<float>())}, {DNNL_ARG_DST, wrap(e->md, y.data<float>())},
       {DNNL_ARG_SCALE, wrap(e->wb_md, w.data<float>())}, {DNNL_ARG_SHIFT, wrap(e->wb_md, b.data<float>())},
       {DNNL_ARG_MEAN, wrap(e->stat_md, mean.data<float>())}, {DNNL_ARG_VARIANCE, wrap(e->stat_md, var.data<float>())}},
      place);
  return {y, mean, var};
}

std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                              const paddle::Tensor& b_in, const paddle::Tensor& mean,
                                              const paddle::Tensor& var, const paddle::Tensor& gy_in, float epsilon) {
  const auto x = checked(x_in, "rs_layer_norm_grad"), w = checked(w_in, "rs_layer_norm_grad"),
             b = checked(b_in, "rs_layer_norm_grad"), gy = checked(gy_in, "rs_layer_norm_grad");
  PD_CHECK(x.shape() == gy.shape(), "rs_layer_norm_grad: x and the output gradient differ in shape");
  const auto [rows, cols] = rows_cols(x, "rs_layer_norm_grad");
  const auto e = get_entry({kLayerNorm, rows, cols, 1, 0, float_bits(epsilon)});
  const auto place = x.place();
  auto gx = paddle::empty(x.shape(), paddle::DataType::FLOAT32, place);
  auto gw = paddle::empty({cols}, paddle::DataType::FLOAT32, place);
  auto gb = paddle::empty({cols}, paddle::DataType::FLOAT32, place);
  run(e->bwd, e->bwd_pd,
      {{DNNL_ARG_SRC, wrap(e->md, x.data<float>())}, {DNNL_ARG_DIFF_DST, wrap(e->md, gy.data<float>())},
       {DNNL_ARG_SCALE, wrap(e->wb_md, w.data<float>())}, {DNNL_ARG_SHIFT, wrap(e->wb_md, b.data<float>())},
       {DNNL_ARG_MEAN, wrap(e->stat_md, mean.data<float>())}, {DNNL_ARG_VARIANCE, wrap(e->stat_md, var.data<float>())}, {DNNL_ARG_DIFF_SRC, wrap(e->md, gx.data<float>())},
       {DNNL_ARG_DIFF_SCALE, wrap(e->wb_md, gw.data<float>())}, {DNNL_ARG_DIFF_SHIFT, wrap(e->wb_md, gb.data<float>())}},
      place);
  return {gx, gw, gb};
}

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                          const paddle::Tensor& b_in) {
  const auto x = checked(x_in, "rs_linear"), w = checked(w_in, "rs_linear"), b = checked(b_in, "rs_linear");
  PD_CHECK(w.shape().size() == 2 && !x.shape().empty() && x.shape().back() == w.shape()[0],
           "rs_linear: x [..., K] and weight [K, N] expected");
  const int64_t K = w.shape()[0], N = w.shape()[1];
  PD_CHECK(b.numel() == N, "rs_linear: bias needs ", N, " elements");
  auto y = paddle::experimental::addmm(paddle::experimental::reshape(b, {1, N}),
                                       paddle::experimental::reshape(x, {-1, K}), w, 1.f, 1.f);
  auto shape = x.shape();
  shape.back() = N;
  return {paddle::experimental::reshape(y, shape)};
}

std::vector<paddle::Tensor> LinearBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                           const paddle::Tensor& gy_in) {
  const auto x = checked(x_in, "rs_linear_grad"), w = checked(w_in, "rs_linear_grad"),
             gy = checked(gy_in, "rs_linear_grad");
  const int64_t K = w.shape()[0], N = w.shape()[1];
  const auto x2 = paddle::experimental::reshape(x, {-1, K});
  const auto gy2 = paddle::experimental::reshape(gy, {-1, N});
  auto gx = paddle::experimental::reshape(paddle::experimental::matmul(gy2, w, false, true), x.shape());
  auto gw = paddle::experimental::matmul(x2, gy2, true, false);
  auto gb = paddle::empty({N}, paddle::DataType::FLOAT32, x.place());
  column_sum(gy.data<float>(), gy.numel() / N, N, gb.data<float>());
  return {gx, gw, gb};
}

std::vector<paddle::Tensor> BatchNormInfer(const paddle::Tensor& x_in, const paddle::Tensor& mean_in,
                                           const paddle::Tensor& var_in, const paddle::Tensor& w_in,
                                           const paddle::Tensor& b_in, float epsilon) {
  const char* op = "rs_batch_norm_infer";
  const auto x = checked(x_in, op), mean = checked(mean_in, op), var = checked(var_in, op), w = checked(w_in, op),
             b = checked(b_in, op);
  PD_CHECK(x.shape().size() >= 2 && x.numel() > 0, op, ": a non-empty [N, C, ...] tensor expected");
  const int64_t N = x.shape()[0], C = x.shape()[1], inner = x.numel() / (N * C);
  PD_CHECK(mean.numel() == C && var.numel() == C && w.numel() == C && b.numel() == C, op,
           ": mean, variance, weight and bias need ", C, " elements");
  // torch's CPU formula: alpha = weight / sqrt(var + eps) (as 1/sqrt, then times weight), beta = bias - mean * alpha
  std::vector<float> alpha(C), beta(C);
  const float *m = mean.data<float>(), *v = var.data<float>(), *wt = w.data<float>(), *bs = b.data<float>();
  for (int64_t c = 0; c < C; ++c) {
    alpha[c] = 1.f / std::sqrt(v[c] + epsilon) * wt[c];
    beta[c] = bs[c] - m[c] * alpha[c];
  }
  const auto e = get_entry({kBatchNorm, N, C, inner, 0, 0});
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  run(e->fwd, e->fwd_pd,
      {{DNNL_ARG_SRC_0, wrap(e->md, x.data<float>())}, {DNNL_ARG_SRC_1, wrap(e->wb_md, alpha.data())},
       {DNNL_ARG_DST, wrap(e->md, y.data<float>())},
       {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, wrap(e->wb_md, beta.data())}},
      x.place());
  return {y};
}

std::vector<paddle::Tensor> PermuteForward(const paddle::Tensor& x, const std::vector<int>& perm) {
  return {permute(x, perm, "rs_permute")};
}

std::vector<paddle::Tensor> PermuteBackward(const paddle::Tensor& gout, const std::vector<int>& perm) {
  return {permute(gout, inverse(checked_perm(perm, gout.shape().size(), "rs_permute_grad")), "rs_permute_grad")};
}

std::vector<std::vector<int64_t>> PermuteShape(const std::vector<int64_t>& x, const std::vector<int>& perm) {
  checked_perm(perm, x.size(), "rs_permute");
  std::vector<int64_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[perm[i]];
  return {y};
}

std::vector<std::vector<int64_t>> PermuteGradShape(const std::vector<int64_t>& gout, const std::vector<int>& perm) {
  return PermuteShape(gout, inverse(checked_perm(perm, gout.size(), "rs_permute_grad")));
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                              const std::vector<int64_t>&) {
  auto y = x;
  y.back() = w[1];
  return {y};
}

std::vector<paddle::DataType> LinearDtype(const paddle::DataType& x, const paddle::DataType&,
                                          const paddle::DataType&) {
  return {x};
}

std::vector<std::vector<int64_t>> SameShape(const std::vector<int64_t>& x) { return {x}; }
std::vector<std::vector<int64_t>> BatchNormInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&) {
  return {x};
}
std::vector<paddle::DataType> BatchNormInferDtype(const paddle::DataType& x, const paddle::DataType&,
                                                  const paddle::DataType&, const paddle::DataType&,
                                                  const paddle::DataType&) {
  return {x};
}
std::vector<paddle::DataType> SameDtype(const paddle::DataType& x) { return {x}; }

std::vector<std::vector<int64_t>> LayerNormShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) rows = (rows < 0 || x[i] < 0) ? -1 : rows * x[i];
  return {x, {rows}, {rows}};
}

std::vector<paddle::DataType> LayerNormDtype(const paddle::DataType& x, const paddle::DataType&,
                                             const paddle::DataType&) {
  return {x, x, x};
}

PD_BUILD_OP(rs_softmax)
    .Inputs({"x"})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(SoftmaxForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_GRAD_OP(rs_softmax)
    .Inputs({"out", paddle::Grad("out")})
    .Outputs({paddle::Grad("x")})
    .SetKernelFn(PD_KERNEL(SoftmaxBackward));

PD_BUILD_OP(rs_eltwise)
    .Inputs({"x"})
    .Outputs({"out"})
    .Attrs({"alg: int"})
    .SetKernelFn(PD_KERNEL(EltwiseForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_GRAD_OP(rs_eltwise)
    .Inputs({"x", paddle::Grad("out")})
    .Outputs({paddle::Grad("x")})
    .Attrs({"alg: int"})
    .SetKernelFn(PD_KERNEL(EltwiseBackward));

PD_BUILD_OP(rs_layer_norm)
    .Inputs({"x", "weight", "bias"})
    .Outputs({"y", "mean", "variance"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(LayerNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormDtype));

PD_BUILD_GRAD_OP(rs_layer_norm)
    .Inputs({"x", "weight", "bias", "mean", "variance", paddle::Grad("y")})
    .Outputs({paddle::Grad("x"), paddle::Grad("weight"), paddle::Grad("bias")})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(LayerNormBackward));

PD_BUILD_OP(rs_linear)
    .Inputs({"x", "weight", "bias"})
    .Outputs({"y"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearDtype));

PD_BUILD_GRAD_OP(rs_linear)
    .Inputs({"x", "weight", paddle::Grad("y")})
    .Outputs({paddle::Grad("x"), paddle::Grad("weight"), paddle::Grad("bias")})
    .SetKernelFn(PD_KERNEL(LinearBackward));

PD_BUILD_OP(rs_permute)
    .Inputs({"x"})
    .Outputs({"out"})
    .Attrs({"perm: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(PermuteForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PermuteShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_GRAD_OP(rs_permute)
    .Inputs({paddle::Grad("out")})
    .Outputs({paddle::Grad("x")})
    .Attrs({"perm: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(PermuteBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(PermuteGradShape));

PD_BUILD_OP(rs_batch_norm_infer)
    .Inputs({"x", "mean", "variance", "weight", "bias"})
    .Outputs({"y"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(BatchNormInfer))
    .SetInferShapeFn(PD_INFER_SHAPE(BatchNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BatchNormInferDtype));
