// conv2d (fp32, NCHW, CPU) on oneDNN for Paddle dygraph: forward, data gradient, weight/bias gradient
// (custom operators; used through paddle_rs.ops.conv, which explains why they exist).
//
//   rs_conv2d_fwd(x [N,C,H,W], weight [O,C/g,kh,kw], bias [O] | 1-element placeholder) -> y [N,O,OH,OW]
//     forward only (no gradient): inference, and the custom op of exported programs
//   rs_conv2d(x, weight, bias) -> y, the same forward with a gradient op registered here:
//     grad: (x, weight, y@GRAD) -> x@GRAD (oneDNN backward-data, if need_dx), weight@GRAD and bias@GRAD
//     (one oneDNN backward-weights call, if need_dw); a gradient not computed is an uninitialised tensor of the
//     right shape, which Paddle drops (the Python side sets need_dx / need_dw from the inputs' stop_gradient)
//   attrs: strides, paddings (symmetric [ph, pw]), dilations (Paddle's convention: 1 = none), groups,
//          has_bias; rs_conv2d also need_dx, need_dw.
//
// Inputs and outputs are plain contiguous NCHW / OIHW tensors. The convolutions are created with
// format_tag::any, so oneDNN picks its blocked layouts (nChw16c / OIhw16i16o on AVX-512); tensors are reordered
// into those layouts and back around each call. Reorders cost a pass over memory, the convolution itself is
// compute bound; Paddle Inference avoids them by keeping blocked layouts between operators, which an eager
// operator cannot do. (Plain NHWC activations, which select the brgconv kernels of oneDNN 3.6, were measured
// no faster than the blocked layouts, forward or backward, and still need a transpose each way.) The algorithm
// is convolution_direct (no Winograd: fp32 results as accurate as a GEMM).
//
// Primitive descriptors, primitives and reorders are cached per geometry (shapes + attrs) in a map guarded by a
// mutex; the backward primitives are added to a geometry's entry on its first backward call. Nothing derived
// from tensor values is cached (weights change every training step and are reordered on every call). Scratch
// buffers (reordered tensors, the primitives' scratchpads: scratchpad_mode::user) come from Paddle's allocator
// and live until the call returns. Engine, memory wrapping, threads and the header / library version rules:
// onednn_common.h.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "onednn_common.h"

namespace {

using namespace rs_onednn;  // NOLINT: memory, tag, dims, f32, cpu_engine, wrap, bytes_of, Workspace

// A plain layout and the layout a primitive wants, with the reorder between them (empty when they are equal).
struct Link {
  memory::desc plain, want;
  dnnl::reorder to_want, to_plain;  // only the direction that is used is created
};

Link input_link(const memory::desc& plain, const memory::desc& want) {
  Link l{plain, want, {}, {}};
  if (plain != want) l.to_want = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), plain, cpu_engine(), want));
  return l;
}

Link output_link(const memory::desc& plain, const memory::desc& want) {
  Link l{plain, want, {}, {}};
  if (plain != want) l.to_plain = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), want, cpu_engine(), plain));
  return l;
}

// `data` (plain layout) as the layout the primitive wants: the buffer itself or a reordered copy.
memory stage_in(const Link& l, const void* data, Workspace& ws, dnnl::stream& s) {
  memory user = wrap(l.plain, const_cast<void*>(data));  // read only
  if (!l.to_want) return user;
  memory m = wrap(l.want, ws.get(bytes_of(l.want)));
  l.to_want.execute(s, user, m);
  return m;
}

// Where the primitive writes a result that must end up in `data` (plain layout): `data` itself or a scratch
// buffer that stage_out reorders into `data`.
memory out_target(const Link& l, void* data, Workspace& ws) {
  return l.to_plain ? wrap(l.want, ws.get(bytes_of(l.want))) : wrap(l.plain, data);
}

void stage_out(const Link& l, memory m, void* data, dnnl::stream& s) {
  if (!l.to_plain) return;
  memory user = wrap(l.plain, data);
  l.to_plain.execute(s, m, user);
}

// N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, groups, has_bias
using Key = std::array<int64_t, 15>;

struct Geometry {
  Key key;
  int64_t N, C, H, W, O, KH, KW, OH, OW, groups;
  dims strides, dilates, padding;  // oneDNN conventions (dilation 0 = none)
  bool has_bias;
};

Geometry geometry(const paddle::Tensor& x, const paddle::Tensor& w, const std::vector<int>& strides,
                  const std::vector<int>& paddings, const std::vector<int>& dilations, int groups, bool has_bias) {
  PD_CHECK(x.shape().size() == 4 && w.shape().size() == 4, "rs_conv2d: 4-D x and weight expected");
  PD_CHECK(strides.size() == 2 && paddings.size() == 2 && dilations.size() == 2,
           "rs_conv2d: strides, paddings and dilations need 2 values");
  Geometry g;
  g.N = x.shape()[0]; g.C = x.shape()[1]; g.H = x.shape()[2]; g.W = x.shape()[3];
  g.O = w.shape()[0]; g.KH = w.shape()[2]; g.KW = w.shape()[3]; g.groups = groups;
  PD_CHECK(groups >= 1 && g.C % groups == 0 && g.O % groups == 0 && w.shape()[1] * groups == g.C,
           "rs_conv2d: channels do not match groups");
  g.OH = (g.H + 2 * paddings[0] - dilations[0] * (g.KH - 1) - 1) / strides[0] + 1;
  g.OW = (g.W + 2 * paddings[1] - dilations[1] * (g.KW - 1) - 1) / strides[1] + 1;
  PD_CHECK(g.OH > 0 && g.OW > 0, "rs_conv2d: empty output");
  g.strides = {strides[0], strides[1]};
  g.dilates = {dilations[0] - 1, dilations[1] - 1};
  g.padding = {paddings[0], paddings[1]};
  g.has_bias = has_bias;
  g.key = {g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, strides[0], strides[1], paddings[0], paddings[1],
           dilations[0], dilations[1], groups, has_bias ? 1 : 0};
  return g;
}

// right padding that reproduces the floor in the output size: oneDNN wants (H - span + pl + pr) / s + 1 == OH
dims padding_r(const Geometry& g) {
  return {(g.OH - 1) * g.strides[0] + (g.dilates[0] + 1) * (g.KH - 1) + 1 - g.H - g.padding[0],
          (g.OW - 1) * g.strides[1] + (g.dilates[1] + 1) * (g.KW - 1) + 1 - g.W - g.padding[1]};
}

struct Entry {
  Geometry g;
  memory::desc x_md, w_md, y_md, b_md;  // plain layouts
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  Link fwd_x, fwd_w, fwd_y;
  bool has_bwd = false;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  Link bd_gy, bd_w, bd_dx;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
  dnnl::convolution_backward_weights bwd_w;
  Link bw_x, bw_gy, bw_dw;

  explicit Entry(const Geometry& geo) : g(geo) {
    auto& eng = cpu_engine();
    x_md = memory::desc({g.N, g.C, g.H, g.W}, f32, tag::nchw);
    y_md = memory::desc({g.N, g.O, g.OH, g.OW}, f32, tag::nchw);
    if (g.groups > 1) {
      w_md = memory::desc({g.groups, g.O / g.groups, g.C / g.groups, g.KH, g.KW}, f32, tag::goihw);
    } else {
      w_md = memory::desc({g.O, g.C, g.KH, g.KW}, f32, tag::oihw);
    }
    if (g.has_bias) b_md = memory::desc({g.O}, f32, tag::x);
    const memory::desc x_any(x_md.get_dims(), f32, tag::any), y_any(y_md.get_dims(), f32, tag::any),
        w_any(w_md.get_dims(), f32, tag::any);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    fwd_pd = dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x_any, w_any, b_md, y_any,
        g.strides, g.dilates, g.padding, padding_r(g), attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    fwd_x = input_link(x_md, fwd_pd.src_desc());
    fwd_w = input_link(w_md, fwd_pd.weights_desc());
    fwd_y = output_link(y_md, fwd_pd.dst_desc());
  }

  void add_backward() {
    if (has_bwd) return;
    auto& eng = cpu_engine();
    const memory::desc x_any(x_md.get_dims(), f32, tag::any), y_any(y_md.get_dims(), f32, tag::any),
        w_any(w_md.get_dims(), f32, tag::any);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, x_any, w_any, y_any, g.strides, g.dilates, g.padding,
        padding_r(g), fwd_pd, attr);
    bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
    bd_gy = input_link(y_md, bwd_data_pd.diff_dst_desc());
    bd_w = input_link(w_md, bwd_data_pd.weights_desc());
    bd_dx = output_link(x_md, bwd_data_pd.diff_src_desc());
    bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, x_any, w_any, b_md, y_any, g.strides, g.dilates, g.padding,
        padding_r(g), fwd_pd, attr);
    bwd_w = dnnl::convolution_backward_weights(bwd_w_pd);
    bw_x = input_link(x_md, bwd_w_pd.src_desc());
    bw_gy = input_link(y_md, bwd_w_pd.diff_dst_desc());
    bw_dw = output_link(w_md, bwd_w_pd.diff_weights_desc());
    has_bwd = true;
  }
};

constexpr size_t kMaxEntries = 512;  // geometries; the cache is dropped when full (in-flight entries survive)

std::shared_ptr<Entry> get_entry(const Geometry& g, bool backward) {
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(g.key);
  if (it == cache.end()) {
    if (cache.size() >= kMaxEntries) cache.clear();
    it = cache.emplace(g.key, std::make_shared<Entry>(g)).first;
  }
  if (backward) it->second->add_backward();
  return it->second;
}

void check_inputs(const paddle::Tensor& x, const paddle::Tensor& w) {
  PD_CHECK(x.is_cpu() && w.is_cpu(), "rs_conv2d: CPU tensors only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && w.dtype() == paddle::DataType::FLOAT32,
           "rs_conv2d: float32 only");
}

paddle::Tensor placeholder(const paddle::Place& place) {
  return paddle::empty({1}, paddle::DataType::FLOAT32, place);
}

}  // namespace

std::vector<paddle::Tensor> Conv2dForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias, const std::vector<int>& strides,
                                          const std::vector<int>& paddings, const std::vector<int>& dilations,
                                          int groups, bool has_bias) {
  check_inputs(x, weight);
  const Geometry g = geometry(x, weight, strides, paddings, dilations, groups, has_bias);
  const auto e = get_entry(g, false);
  auto y = paddle::empty({g.N, g.O, g.OH, g.OW}, paddle::DataType::FLOAT32, x.place());
  Workspace ws(x.place());
  dnnl::stream s(cpu_engine());
  memory src = stage_in(e->fwd_x, x.data<float>(), ws, s);
  memory wei = stage_in(e->fwd_w, weight.data<float>(), ws, s);
  memory dst = out_target(e->fwd_y, y.data<float>(), ws);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad(e->fwd_pd, ws)}};
  if (has_bias) args.emplace(DNNL_ARG_BIAS, wrap(e->b_md, const_cast<float*>(bias.data<float>())));
  e->fwd.execute(s, args);
  stage_out(e->fwd_y, dst, y.data<float>(), s);
  s.wait();
  return {y};
}

std::vector<paddle::Tensor> Conv2dBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                           const paddle::Tensor& gy, const std::vector<int>& strides,
                                           const std::vector<int>& paddings, const std::vector<int>& dilations,
                                           int groups, bool has_bias, bool need_dx, bool need_dw) {
  check_inputs(x, weight);
  const Geometry g = geometry(x, weight, strides, paddings, dilations, groups, has_bias);
  PD_CHECK(gy.shape() == std::vector<int64_t>({g.N, g.O, g.OH, g.OW}), "rs_conv2d: gy has the wrong shape");
  const auto e = get_entry(g, true);
  const auto place = x.place();
  Workspace ws(place);
  dnnl::stream s(cpu_engine());
  paddle::Tensor dx = placeholder(place), dw = placeholder(place), db = placeholder(place);
  memory gy_data;  // gy in the data-gradient layout, reused by the weight gradient when the layouts agree
  if (need_dx) {
    dx = paddle::empty({g.N, g.C, g.H, g.W}, paddle::DataType::FLOAT32, place);
    gy_data = stage_in(e->bd_gy, gy.data<float>(), ws, s);
    memory wei = stage_in(e->bd_w, weight.data<float>(), ws, s);
    memory dsrc = out_target(e->bd_dx, dx.data<float>(), ws);
    e->bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, gy_data}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dsrc},
                            {DNNL_ARG_SCRATCHPAD, scratchpad(e->bwd_data_pd, ws)}});
    stage_out(e->bd_dx, dsrc, dx.data<float>(), s);
  }
  if (need_dw) {
    dw = paddle::empty({g.O, g.C / g.groups, g.KH, g.KW}, paddle::DataType::FLOAT32, place);
    memory src = stage_in(e->bw_x, x.data<float>(), ws, s);
    memory gyw = need_dx && e->bw_gy.want == e->bd_gy.want ? gy_data : stage_in(e->bw_gy, gy.data<float>(), ws, s);
    memory dwei = out_target(e->bw_dw, dw.data<float>(), ws);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, gyw},
                                         {DNNL_ARG_DIFF_WEIGHTS, dwei},
                                         {DNNL_ARG_SCRATCHPAD, scratchpad(e->bwd_w_pd, ws)}};
    if (has_bias) {
      db = paddle::empty({g.O}, paddle::DataType::FLOAT32, place);
      args.emplace(DNNL_ARG_DIFF_BIAS, wrap(e->b_md, db.data<float>()));
    }
    e->bwd_w.execute(s, args);
    stage_out(e->bw_dw, dwei, dw.data<float>(), s);
  }
  s.wait();
  return {dx, dw, db};
}

std::vector<paddle::Tensor> Conv2dTrainForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& bias, const std::vector<int>& strides,
                                               const std::vector<int>& paddings, const std::vector<int>& dilations,
                                               int groups, bool has_bias, bool, bool) {
  return Conv2dForward(x, weight, bias, strides, paddings, dilations, groups, has_bias);
}

std::vector<paddle::Tensor> Conv2dTrainBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                const paddle::Tensor& gy, const std::vector<int>& strides,
                                                const std::vector<int>& paddings, const std::vector<int>& dilations,
                                                int groups, bool has_bias, bool need_dx, bool need_dw) {
  auto g = Conv2dBackward(x, weight, gy.is_contiguous() ? gy : gy.contiguous(), strides, paddings, dilations,
                          groups, has_bias, need_dx, need_dw);
  const auto place = x.place();
  if (!need_dx) g[0] = paddle::empty(x.shape(), paddle::DataType::FLOAT32, place);
  if (!need_dw) g[1] = paddle::empty(weight.shape(), paddle::DataType::FLOAT32, place);
  if (!need_dw && has_bias) g[2] = paddle::empty({weight.shape()[0]}, paddle::DataType::FLOAT32, place);
  return g;
}

std::vector<std::vector<int64_t>> Conv2dForwardShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                     const std::vector<int64_t>&, const std::vector<int>& strides,
                                                     const std::vector<int>& paddings,
                                                     const std::vector<int>& dilations, int, bool) {
  auto out = [&](int64_t in, int64_t k, int i) {
    return in < 0 ? -1 : (in + 2 * paddings[i] - dilations[i] * (k - 1) - 1) / strides[i] + 1;
  };
  return {{x[0], w[0], out(x[2], w[2], 0), out(x[3], w[3], 1)}};
}

std::vector<std::vector<int64_t>> Conv2dTrainShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                   const std::vector<int64_t>& b, const std::vector<int>& strides,
                                                   const std::vector<int>& paddings,
                                                   const std::vector<int>& dilations, int groups, bool has_bias,
                                                   bool, bool) {
  return Conv2dForwardShape(x, w, b, strides, paddings, dilations, groups, has_bias);
}

std::vector<paddle::DataType> Conv2dForwardDtype(const paddle::DataType& x, const paddle::DataType&,
                                                 const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(rs_conv2d_fwd)
    .Inputs({"x", "weight", "bias"})
    .Outputs({"y"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>",
            "groups: int", "has_bias: bool"})
    .SetKernelFn(PD_KERNEL(Conv2dForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Conv2dForwardShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Conv2dForwardDtype));

PD_BUILD_OP(rs_conv2d)
    .Inputs({"x", "weight", "bias"})
    .Outputs({"y"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>",
            "groups: int", "has_bias: bool", "need_dx: bool", "need_dw: bool"})
    .SetKernelFn(PD_KERNEL(Conv2dTrainForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Conv2dTrainShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Conv2dForwardDtype));

PD_BUILD_GRAD_OP(rs_conv2d)
    .Inputs({"x", "weight", paddle::Grad("y")})
    .Outputs({paddle::Grad("x"), paddle::Grad("weight"), paddle::Grad("bias")})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>",
            "groups: int", "has_bias: bool", "need_dx: bool", "need_dw: bool"})
    .SetKernelFn(PD_KERNEL(Conv2dTrainBackward));
