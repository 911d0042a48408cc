#ifndef MAL_WORKER_ENGINE_TORCH_COMPAT_H_
#define MAL_WORKER_ENGINE_TORCH_COMPAT_H_

// The one place for code that differs between the LibTorch versions mal builds against (Debian's
// 1.13, the default; 2.x from PyTorch's wheels, docs/gpu.md) and between CPU-only and CUDA builds
// of LibTorch. Torch-facing; included only by engine code.
//
// What differs, and where it is handled:
//   - autocast: up to 2.3 one switch per device kind (set_enabled for CUDA, set_cpu_enabled) and
//     per-kind dtype setters; from 2.4 the device type is an argument (the old functions are
//     deprecated). AutocastGuard.
//   - CUDA allocator statistics: only in LibTorch builds with CUDA (MAL_TORCH_CUDA, defined by
//     worker/engine/CMakeLists.txt when the LibTorch found has CUDA libraries). The statistics
//     struct moved to c10::CachingDeviceAllocator in 2.x, with the same fields.
// Nothing else in worker/engine needed a change for 2.x (checked with 2.15).

#include <cstdint>

#include <ATen/autocast_mode.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#ifdef MAL_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace mal::engine {

// Autocast (mixed precision) for one device type while alive: eligible ops (convolutions, matrix
// products) run in `dtype` (kBFloat16 or kHalf), numerically sensitive ones (losses, reductions)
// in float32, as torch.autocast(device_type, dtype) does in Python. Restores the previous state
// and drops the cast cache on destruction. `device_type` is kCPU or kCUDA; other types are a
// no-op. Thread-local, like autocast itself: enable it on the thread that runs the ops.
// The cast cache (low-precision copies of float32 leaf tensors, kept while the guard lives) is
// off inside the guard: the MAL step changes parameters in place (the virtual step into the
// shadow, the optimiser step), and a cached copy would keep the old values and drop the tangents
// of the forward-mode pass.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device_type, at::ScalarType dtype) : type_(device_type) {
    if (type_ != c10::DeviceType::CPU && type_ != c10::DeviceType::CUDA) return;
    active_ = true;
    was_enabled_ = Enabled();
    previous_dtype_ = Dtype();
    cache_was_enabled_ = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    SetDtype(dtype);
    SetEnabled(true);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    SetEnabled(was_enabled_);
    SetDtype(previous_dtype_);
    at::autocast::set_autocast_cache_enabled(cache_was_enabled_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  bool Enabled() const { return at::autocast::is_autocast_enabled(type_); }
  void SetEnabled(bool on) const { at::autocast::set_autocast_enabled(type_, on); }
  at::ScalarType Dtype() const { return at::autocast::get_autocast_dtype(type_); }
  void SetDtype(at::ScalarType t) const { at::autocast::set_autocast_dtype(type_, t); }
#else
  bool cuda() const { return type_ == c10::DeviceType::CUDA; }
  bool Enabled() const { return cuda() ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled(); }
  void SetEnabled(bool on) const {
    cuda() ? at::autocast::set_enabled(on) : at::autocast::set_cpu_enabled(on);
  }
  at::ScalarType Dtype() const {
    return cuda() ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
  }
  void SetDtype(at::ScalarType t) const {
    cuda() ? at::autocast::set_autocast_gpu_dtype(t) : at::autocast::set_autocast_cpu_dtype(t);
  }
#endif

  c10::DeviceType type_;
  bool active_ = false;
  bool was_enabled_ = false;
  bool cache_was_enabled_ = true;
  at::ScalarType previous_dtype_ = at::kFloat;
};

// True when this LibTorch was built with CUDA (whether or not a GPU is present).
constexpr bool kTorchHasCuda =
#ifdef MAL_TORCH_CUDA
    true;
#else
    false;
#endif

// Starts a new peak of the CUDA caching allocator's allocated bytes on `device` (what
// torch.cuda.reset_peak_memory_stats does). No-op for other devices or without CUDA.
inline void ResetPeakDeviceMemory(const c10::Device& device) {
#ifdef MAL_TORCH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
  }
#endif
}

// Peak bytes allocated by tensors on CUDA `device` since the last ResetPeakDeviceMemory (what
// torch.cuda.max_memory_allocated reports; the allocator's cache on top is not counted).
// -1 for other devices or without CUDA.
inline int64_t PeakDeviceMemoryBytes(const c10::Device& device) {
#ifdef MAL_TORCH_CUDA
  if (device.is_cuda()) {
    // Index 0 of the statistics arrays is StatType::AGGREGATE in every version (the enum moved
    // namespace in 2.x).
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0)
        .allocated_bytes[0]
        .peak;
  }
#endif
  return -1;
}

// Returns the CUDA caching allocator's unused cached blocks to the driver (what
// torch.cuda.empty_cache does), so that a run started over after running out of memory does not
// inherit the larger batch's fragmented cache. No-op without CUDA.
inline void ReleaseCachedDeviceMemory() {
#ifdef MAL_TORCH_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_TORCH_COMPAT_H_
