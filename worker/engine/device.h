#ifndef MAL_WORKER_ENGINE_DEVICE_H_
#define MAL_WORKER_ENGINE_DEVICE_H_

// The one parser of a device name for the engine (training, mal-worker bench, mal-engine-check).
// Torch-facing; included only by engine code.

#include <torch/torch.h>

#include <string>

#include "absl/status/statusor.h"

namespace mal::engine {

// "cpu", "cuda" or "cuda:N" as a torch device. Errors start with `field` (train.device, --device):
// InvalidArgument for another name or an N at or beyond the visible CUDA devices;
// FailedPrecondition for cuda when this LibTorch is CPU-only or no GPU or driver is visible (the
// message says which).
absl::StatusOr<torch::Device> ParseDevice(const std::string& name, const std::string& field);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_DEVICE_H_
