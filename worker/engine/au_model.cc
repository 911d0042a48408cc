#include "worker/engine/au_model.h"

#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <opencv2/imgproc.hpp>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/image/transforms.h"
#include "common/spec/model_metadata.h"
#include "common/util/files.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "worker/engine/device.h"
#include "worker/engine/models.h"
#include "worker/engine/torch_file.h"

namespace mal::engine {

namespace fs = std::filesystem;

struct AuModel::Impl {
  v1::ModelMetadata metadata;
  torch::Device device{torch::kCPU};
  BaseNet net{nullptr};
  image::TransformOptions transform;
  int64_t bytes = 0;
};

namespace {

// LibTorch's messages carry a C++ backtrace after the first line.
std::string FirstLine(const std::string& what) { return what.substr(0, what.find('\n')); }

// The exported name of a BaseNet parameter or buffer ("backbone.conv1.weight" -> "conv1.weight",
// "au_head.bias" -> "fc.bias", "fe_head.*" unchanged), and back.
std::string ExportName(const std::string& name) {
  if (absl::StartsWith(name, "backbone.")) return name.substr(9);
  if (absl::StartsWith(name, "au_head.")) return "fc." + name.substr(8);
  return name;
}
std::string InternalName(const std::string& name) {
  if (absl::StartsWith(name, "fe_head.")) return name;
  if (absl::StartsWith(name, "fc.")) return "au_head." + name.substr(3);
  return "backbone." + name;
}

// LibTorch's error of a forward pass as a status: ResourceExhausted where memory ran out (CUDA's
// out of memory, the CPU allocator's "can't allocate memory"), so that a client halves its
// request; Internal otherwise.
absl::Status ForwardError(const std::exception& e, const torch::Device& device) {
  const std::string what = FirstLine(e.what());
  if (what.find("out of memory") != std::string::npos ||
      what.find("can't allocate memory") != std::string::npos ||
      what.find("ALLOC_FAILED") != std::string::npos) {
    return absl::ResourceExhaustedError(absl::StrCat("AU model on ", device.str(), ": ", what));
  }
  return absl::InternalError(absl::StrCat("AU model: ", what));
}

// sigmoid(AU head) of `x` (N x 3 x S x S, CPU) on `device`: N x A values; LibTorch's errors as a
// status (ResourceExhausted for out of memory).
absl::StatusOr<std::vector<float>> Forward(BaseNetImpl& net, const torch::Device& device,
                                           const torch::Tensor& x) {
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor p = torch::sigmoid(net.forward(x.to(device))).to(torch::kCPU).contiguous();
    return std::vector<float>(p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
  } catch (const std::exception& e) {
    return ForwardError(e, device);
  }
}

BaseNetImpl::Config ConfigOf(const v1::ModelMetadata& m) {
  BaseNetImpl::Config config;
  config.backbone = m.backbone();
  config.num_aus = m.aus_size();
  config.input = m.input();
  config.feature_grid = m.feature_grid() > 0 ? m.feature_grid() : 1;  // 0: written before the field
  return config;
}

}  // namespace

AuModel::AuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuModel::~AuModel() = default;

const v1::ModelMetadata& AuModel::metadata() const { return impl_->metadata; }
int64_t AuModel::bytes() const { return impl_->bytes; }

absl::Status AuModel::CheckDevice(const std::string& device) {
  return ParseDevice(device, "--device").status();
}

absl::StatusOr<std::unique_ptr<AuModel>> AuModel::Load(const std::string& dir,
                                                       const std::string& device) {
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(impl->metadata,
                   ReadModelMetadata((fs::path(dir) / run_files::kModelMetadata).string()));
  ASSIGN_OR_RETURN(impl->device, ParseDevice(device, "device"));
  const v1::ModelMetadata& m = impl->metadata;
  const std::string weights = (fs::path(dir) / run_files::kModel).string();
  if (!fs::exists(weights)) return absl::NotFoundError(absl::StrCat(weights, ": no such file"));
  const BaseNetImpl::Config config = ConfigOf(m);
  try {
    impl->net = BaseNet(config);
    // LibTorch's load replaces each tensor, whatever its shape: check the shapes ourselves.
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& p : impl->net->named_parameters()) shapes[p.key()] = p.value().sizes().vec();
    for (const auto& b : impl->net->named_buffers()) shapes[b.key()] = b.value().sizes().vec();
    torch::serialize::InputArchive archive;
    archive.load_from(weights, impl->device);
    impl->net->load(archive);
    for (const auto& p : impl->net->named_parameters()) {
      if (p.value().sizes().vec() != shapes[p.key()]) {
        return absl::DataLossError(absl::StrCat(
            weights, ": ", p.key(), " is [", absl::StrJoin(p.value().sizes(), ", "), "], a ",
            m.backbone(), " with ", m.aus_size(), " AUs (as ", run_files::kModelMetadata,
            " says) needs [", absl::StrJoin(shapes[p.key()], ", "), "]"));
      }
    }
    for (const auto& b : impl->net->named_buffers()) {
      if (b.value().sizes().vec() != shapes[b.key()]) {
        return absl::DataLossError(
            absl::StrCat(weights, ": buffer ", b.key(), " does not fit the network"));
      }
    }
    impl->net->to(impl->device);
    impl->net->eval();
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(weights, ": not a ", m.backbone(), " model with ",
                                            m.aus_size(), " AUs as ", run_files::kModelMetadata,
                                            " says: ", FirstLine(e.what())));
  }
  for (const auto& p : impl->net->parameters())
    impl->bytes += p.numel() * static_cast<int64_t>(p.element_size());
  for (const auto& b : impl->net->buffers())
    impl->bytes += b.numel() * static_cast<int64_t>(b.element_size());
  impl->transform.resize = m.resize();
  impl->transform.crop = m.input();
  impl->transform.hflip = false;
  for (int c = 0; c < 3; ++c) {
    impl->transform.mean[c] = m.mean(c);
    impl->transform.std[c] = m.std(c);
  }
  return std::unique_ptr<AuModel>(new AuModel(std::move(impl)));
}

absl::StatusOr<std::vector<float>> AuModel::PredictNormalized(
    const std::vector<float>& nchw) const {
  const int64_t side = impl_->metadata.input();
  const int64_t per_image = 3 * side * side;
  if (nchw.empty() || static_cast<int64_t>(nchw.size()) % per_image != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(nchw.size(), " floats are not N images of 3 x ", side, " x ", side));
  }
  const int64_t n = static_cast<int64_t>(nchw.size()) / per_image;
  return Forward(
      *impl_->net, impl_->device,
      torch::from_blob(const_cast<float*>(nchw.data()), {n, 3, side, side}, torch::kFloat32));
}

absl::StatusOr<std::vector<float>> AuModel::Predict(const std::vector<cv::Mat>& faces) const {
  const int64_t n = static_cast<int64_t>(faces.size());
  const int64_t side = impl_->metadata.input();
  if (n == 0) return std::vector<float>();
  torch::Tensor x;
  try {  // the batch's input alone can be more than the host has
    x = torch::empty({n, 3, side, side}, torch::kFloat32);
  } catch (const std::exception& e) {
    return ForwardError(e, torch::Device(torch::kCPU));
  }
  for (int64_t i = 0; i < n; ++i) {
    const cv::Mat& f = faces[static_cast<size_t>(i)];
    if (f.empty() || f.depth() != CV_8U || (f.channels() != 1 && f.channels() != 3)) {
      return absl::InvalidArgumentError(
          absl::StrCat("face ", i, ": not an 8-bit grey or BGR image"));
    }
    cv::Mat bgr = f;
    if (f.channels() == 1) cv::cvtColor(f, bgr, cv::COLOR_GRAY2BGR);
    image::TransformToTensor(bgr, impl_->transform, nullptr,
                             x.data_ptr<float>() + i * 3 * side * side);
  }
  return Forward(*impl_->net, impl_->device, x);
}

absl::Status AuModel::ExportStateDict(const std::string& path) const {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& p : impl_->net->named_parameters())
    dict.insert(ExportName(p.key()), p.value().detach().cpu());
  for (const auto& b : impl_->net->named_buffers())
    dict.insert(ExportName(b.key()), b.value().cpu());
  std::vector<char> bytes;
  try {
    bytes = torch::pickle_save(dict);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": ", FirstLine(e.what())));
  }
  std::error_code ec;
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path(), ec);
  RETURN_IF_ERROR(WriteFileAtomic(path, absl::string_view(bytes.data(), bytes.size())));
  const std::string json = fs::path(path).replace_extension(".json").string();
  return WriteFileAtomic(json, ModelMetadataToJson(impl_->metadata));
}

absl::Status AuModel::ImportStateDict(const std::string& state_dict, const std::string& metadata,
                                      const std::string& out_dir) {
  if (!fs::exists(state_dict))
    return absl::NotFoundError(absl::StrCat(state_dict, ": no such file"));
  ASSIGN_OR_RETURN(const v1::ModelMetadata m, ReadModelMetadata(metadata));
  ASSIGN_OR_RETURN(auto loaded, ReadTorchStateDict(state_dict));
  BaseNet net(ConfigOf(m));
  std::map<std::string, torch::Tensor*> targets;
  auto params = net->named_parameters();
  auto buffers = net->named_buffers();
  for (auto& p : params) targets[p.key()] = &p.value();
  for (auto& b : buffers) targets[b.key()] = &b.value();
  std::vector<std::string> unknown, mismatched, missing;
  std::set<std::string> assigned;
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : loaded) {
    auto it = targets.find(InternalName(name));
    if (it == targets.end()) {
      unknown.push_back(name);
    } else if (it->second->sizes() != tensor.sizes()) {
      mismatched.push_back(absl::StrCat(name, " [", absl::StrJoin(tensor.sizes(), ", "), "] vs [",
                                        absl::StrJoin(it->second->sizes(), ", "), "]"));
    } else {
      it->second->copy_(tensor.to(it->second->dtype()));
      assigned.insert(it->first);
    }
  }
  for (const auto& [name, t] : targets) {
    if (!assigned.count(name) && !absl::StartsWith(name, "fe_head.") &&
        !absl::EndsWith(name, "num_batches_tracked")) {
      missing.push_back(ExportName(name));
    }
  }
  if (!unknown.empty() || !mismatched.empty() || !missing.empty()) {
    std::string message = absl::StrCat(state_dict, ": does not fit a ", m.backbone(), " with ",
                                       m.aus_size(), " AUs (", metadata, ")");
    if (!missing.empty()) absl::StrAppend(&message, "; missing: ", absl::StrJoin(missing, ", "));
    if (!unknown.empty()) absl::StrAppend(&message, "; unknown: ", absl::StrJoin(unknown, ", "));
    if (!mismatched.empty())
      absl::StrAppend(&message, "; shape: ", absl::StrJoin(mismatched, "; "));
    return absl::InvalidArgumentError(message);
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, ": ", ec.message()));
  const std::string weights = (fs::path(out_dir) / run_files::kModel).string();
  const std::string tmp = absl::StrCat(weights, ".tmp.", ::getpid());
  try {
    torch::serialize::OutputArchive archive;
    net->save(archive);
    archive.save_to(tmp);
  } catch (const std::exception& e) {
    fs::remove(tmp, ec);
    return absl::DataLossError(absl::StrCat(weights, ": ", FirstLine(e.what())));
  }
  fs::rename(tmp, weights, ec);
  if (ec) return absl::DataLossError(absl::StrCat(weights, ": ", ec.message()));
  return WriteFileAtomic((fs::path(out_dir) / run_files::kModelMetadata).string(),
                         ModelMetadataToJson(m));
}

}  // namespace mal::engine
