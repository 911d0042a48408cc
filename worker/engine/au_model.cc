#include "worker/engine/au_model.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/image/transforms.h"
#include "common/spec/model_metadata.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "worker/engine/device.h"
#include "worker/engine/models.h"

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

}  // namespace

AuModel::AuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuModel::~AuModel() = default;

const v1::ModelMetadata& AuModel::metadata() const { return impl_->metadata; }
int64_t AuModel::bytes() const { return impl_->bytes; }

absl::StatusOr<std::unique_ptr<AuModel>> AuModel::Load(const std::string& dir,
                                                       const std::string& device) {
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(impl->metadata,
                   ReadModelMetadata((fs::path(dir) / run_files::kModelMetadata).string()));
  ASSIGN_OR_RETURN(impl->device, ParseDevice(device, "device"));
  const v1::ModelMetadata& m = impl->metadata;
  const std::string weights = (fs::path(dir) / run_files::kModel).string();
  if (!fs::exists(weights)) return absl::NotFoundError(absl::StrCat(weights, ": no such file"));
  BaseNetImpl::Config config;
  config.backbone = m.backbone();
  config.num_aus = m.aus_size();
  config.input = m.input();
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

absl::StatusOr<std::vector<float>> AuModel::Predict(const std::vector<cv::Mat>& faces) const {
  const int64_t n = static_cast<int64_t>(faces.size());
  const int64_t side = impl_->metadata.input();
  const int64_t a = impl_->metadata.aus_size();
  if (n == 0) return std::vector<float>();
  torch::Tensor x = torch::empty({n, 3, side, side}, torch::kFloat32);
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
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor p =
        torch::sigmoid(impl_->net->forward(x.to(impl_->device))).to(torch::kCPU).contiguous();
    return std::vector<float>(p.data_ptr<float>(), p.data_ptr<float>() + n * a);
  } catch (const std::exception& e) {
    const std::string what = FirstLine(e.what());
    if (what.find("out of memory") != std::string::npos) {
      return absl::ResourceExhaustedError(
          absl::StrCat("AU model on ", impl_->device.str(), ": ", what));
    }
    return absl::InternalError(absl::StrCat("AU model: ", what));
  }
}

}  // namespace mal::engine
