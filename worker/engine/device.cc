#include "worker/engine/device.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "worker/engine/torch_compat.h"

namespace mal::engine {

absl::StatusOr<torch::Device> ParseDevice(const std::string& name, const std::string& field) {
  std::optional<torch::Device> device;
  try {
    device.emplace(name);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", name, "' is not cpu, cuda or cuda:N"));
  }
  if (device->is_cpu()) return *device;
  if (!device->is_cuda())
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", name, ": cpu or cuda[:N]"));
  if (!torch::cuda::is_available()) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": ", name, " requested but there is no CUDA device here (",
                     kTorchHasCuda ? "this LibTorch has CUDA; no GPU or driver is visible"
                                   : "this LibTorch is CPU-only",
                     ")"));
  }
  if (device->has_index() && device->index() >= static_cast<int>(torch::cuda::device_count())) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", name, ": this machine has ",
                                                   torch::cuda::device_count(), " CUDA device(s)"));
  }
  return *device;
}

}  // namespace mal::engine
