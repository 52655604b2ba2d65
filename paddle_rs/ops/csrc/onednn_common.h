// oneDNN plumbing shared by paddle_rs's oneDNN CPU ops (conv2d_onednn_cpu.cc, act_onednn_cpu.cc): the engine,
// memory objects over caller-owned buffers, scratch buffers from Paddle's allocator.
//
// oneDNN headers and library may come from different 3.x releases (Paddle ships the library but not the real
// headers): memory objects are created with dnnl_memory_create and sized with dnnl_memory_desc_get_size,
// present in every 3.x library, instead of the C++ members that call the _v2 functions of newer releases; the
// loader links with -z now, so a symbol missing from the library makes loading fail (and paddle_rs fall back)
// instead of a call crashing. Threads: Paddle's libdnnl.so.3 is built for OpenMP and, loaded by Paddle, binds to
// Paddle's OpenMP runtime (libiomp5), so these ops use the thread count Paddle's own kernels use
// (OMP_NUM_THREADS) and share its thread pool.
#pragma once

#include <cstdint>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "paddle/extension.h"

namespace rs_onednn {

using dnnl::memory;
using tag = memory::format_tag;
using dims = memory::dims;
constexpr auto f32 = memory::data_type::f32;

inline dnnl::engine& cpu_engine() {
  static dnnl::engine eng = [] {
    const dnnl_version_t* v = dnnl_version();
    PD_CHECK(v->major == DNNL_VERSION_MAJOR, "paddle_rs oneDNN ops: oneDNN library ", v->major, ".", v->minor,
             " does not match the headers' major version ", DNNL_VERSION_MAJOR);
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return eng;
}

// A memory object over a caller-owned buffer (see the header comment for why not the C++ constructor).
inline memory wrap(const memory::desc& md, const void* data) {
  dnnl_memory_t m = nullptr;
  dnnl::error::wrap_c_api(dnnl_memory_create(&m, md.get(), cpu_engine().get(), const_cast<void*>(data)),
                          "paddle_rs oneDNN ops: could not create a memory object");
  memory out;
  out.reset(m);
  return out;
}

// Bytes of a memory descriptor (dnnl_memory_desc_get_size: desc::get_size calls a _v2 function of newer
// releases).
inline size_t bytes_of(const memory::desc& md) { return dnnl_memory_desc_get_size(md.get()); }

// Scratch buffers from Paddle's allocator (64-byte aligned), alive as long as this object.
class Workspace {
 public:
  explicit Workspace(const paddle::Place& place) : place_(place) {}
  void* get(size_t bytes) {
    if (bytes == 0) return nullptr;
    bufs_.push_back(paddle::empty({static_cast<int64_t>((bytes + 64 + 3) / 4)}, paddle::DataType::FLOAT32,
                                  place_));
    auto p = reinterpret_cast<uintptr_t>(bufs_.back().data<float>());
    return reinterpret_cast<void*>((p + 63) & ~static_cast<uintptr_t>(63));
  }

 private:
  paddle::Place place_;
  std::vector<paddle::Tensor> bufs_;
};

// The primitive's scratchpad (created with scratchpad_mode::user) in a Workspace buffer.
inline memory scratchpad(const dnnl::primitive_desc& pd, Workspace& ws) {
  const memory::desc md = pd.scratchpad_desc();
  return wrap(md, ws.get(bytes_of(md)));
}

}  // namespace rs_onednn
