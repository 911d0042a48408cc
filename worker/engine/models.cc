#include "worker/engine/models.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/torch_file.h"

namespace mal::engine {

namespace nn = torch::nn;

namespace {

// The smallest loss variance the loss-input meta net divides by (losses without spread yet).
constexpr double kMinLossVariance = 1e-6;

nn::Conv2d Conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(pad).bias(false));
}

}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t in, int64_t out, int64_t stride) {
  conv1 = register_module("conv1", Conv(in, out, 3, stride, 1));
  bn1 = register_module("bn1", nn::BatchNorm2d(out));
  conv2 = register_module("conv2", Conv(out, out, 3, 1, 1));
  bn2 = register_module("bn2", nn::BatchNorm2d(out));
  if (stride != 1 || in != out) {
    downsample = register_module(
        "downsample", nn::Sequential(Conv(in, out, 1, stride, 0), nn::BatchNorm2d(out)));
  }
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::relu(bn1(conv1(x)));
  y = bn2(conv2(y));
  return torch::relu(y + (downsample ? downsample->forward(x) : x));
}

ResNetImpl::ResNetImpl(const std::vector<int>& blocks, int64_t grid) : grid_(grid) {
  conv1 = register_module("conv1", Conv(3, 64, 7, 2, 3));
  bn1 = register_module("bn1", nn::BatchNorm2d(64));
  layer1 = register_module("layer1", MakeLayer(64, 64, blocks[0], 1));
  layer2 = register_module("layer2", MakeLayer(64, 128, blocks[1], 2));
  layer3 = register_module("layer3", MakeLayer(128, 256, blocks[2], 2));
  layer4 = register_module("layer4", MakeLayer(256, 512, blocks[3], 2));
  // torchvision's initialisation: Kaiming normal (fan_out) for convs, BN weight 1 and bias 0.
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    }
  }
}

nn::Sequential ResNetImpl::MakeLayer(int64_t in, int64_t out, int blocks, int64_t stride) {
  nn::Sequential layer;
  layer->push_back(BasicBlock(in, out, stride));
  for (int i = 1; i < blocks; ++i) layer->push_back(BasicBlock(out, out, 1));
  return layer;
}

torch::Tensor ResNetImpl::FeatureMap(torch::Tensor x) {
  x = torch::relu(bn1(conv1(x)));
  x = torch::max_pool2d(x, 3, 2, 1);
  return layer4->forward(layer3->forward(layer2->forward(layer1->forward(x))));
}

torch::Tensor ResNetImpl::forward(torch::Tensor x) {
  return torch::adaptive_avg_pool2d(FeatureMap(std::move(x)), {grid_, grid_}).flatten(1);
}

SmallCnnImpl::SmallCnnImpl(int64_t width, int64_t grid) : grid_(grid) {
  features = nn::Sequential();
  int64_t in = 3;
  for (int64_t out : {width, 2 * width, 4 * width, 8 * width}) {
    features->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
    features->push_back(nn::BatchNorm2d(out));
    features->push_back(nn::Functional(torch::relu));
    features->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
    in = out;
  }
  register_module("features", features);
}

torch::Tensor SmallCnnImpl::FeatureMap(torch::Tensor x) { return features->forward(x); }

torch::Tensor SmallCnnImpl::forward(torch::Tensor x) {
  return torch::adaptive_avg_pool2d(FeatureMap(std::move(x)), {grid_, grid_}).flatten(1);
}

TinyNetImpl::TinyNetImpl(const std::string& kind, int64_t in_features) : kind_(kind) {
  if (kind == "tiny") {
    conv = register_module("conv", nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(1)));
    bn = register_module("bn", nn::BatchNorm2d(4));
  } else {
    fc = register_module("fc", nn::Linear(in_features, 6));
  }
}

torch::Tensor TinyNetImpl::forward(torch::Tensor x) {
  if (kind_ == "tiny") {
    return torch::adaptive_avg_pool2d(torch::relu(bn(conv(x))), {1, 1}).flatten(1);
  }
  return torch::tanh(fc(x.flatten(1)));
}

BaseNetImpl::BaseNetImpl(const Config& config) : config_(config) {
  if (config.backbone == "resnet18" || config.backbone == "resnet34") {
    backbone = nn::AnyModule(ResNet(config.backbone == "resnet18" ? std::vector<int>{2, 2, 2, 2}
                                                                  : std::vector<int>{3, 4, 6, 3},
                                    config.feature_grid));
    feature_dim_ = 512 * config.feature_grid * config.feature_grid;
  } else if (config.backbone == "tiny" || config.backbone == "mlp") {
    backbone = nn::AnyModule(TinyNet(config.backbone, 3 * config.input * config.input));
    feature_dim_ = config.backbone == "tiny" ? 4 : 6;
  } else {
    backbone = nn::AnyModule(SmallCnn(32, config.feature_grid));
    feature_dim_ = 256 * config.feature_grid * config.feature_grid;
  }
  register_module("backbone", backbone.ptr());
  au_head = register_module("au_head", nn::Linear(feature_dim_, config.num_aus));
  fe_head = register_module("fe_head", nn::Linear(feature_dim_, config.num_expressions));
}

torch::Tensor BaseNetImpl::Features(const torch::Tensor& x) { return backbone.forward(x); }

at::ScalarType WideFloat(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

void ToChannelsLast(nn::Module& net) {
  torch::NoGradGuard no_grad;
  for (auto& p : net.parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

std::vector<torch::Tensor> BaseNetImpl::HeadParameters() {
  std::vector<torch::Tensor> p = au_head->parameters();
  for (const auto& t : fe_head->parameters()) p.push_back(t);
  return p;
}

MetaNetImpl::MetaNetImpl(int64_t feature_dim, bool with_task_bias, bool center, int64_t fe_classes,
                         bool loss_input)
    : center_(center) {
  linear = register_module("linear", nn::Linear(feature_dim, 1));
  if (fe_classes > 0) {
    fe_label = register_module("fe_label", nn::Linear(feature_dim, fe_classes));
    torch::NoGradGuard no_grad;
    fe_label->weight.zero_();
    fe_label->bias.zero_();
  }
  if (with_task_bias) task_bias = register_parameter("task_bias", torch::zeros({2}));
  if (loss_input) {
    loss_weight = register_parameter("loss_weight", torch::zeros({2}));
    loss_mean = register_buffer("loss_mean", torch::zeros({2}));
    loss_square_mean = register_buffer("loss_square_mean", torch::ones({2}));  // sd 1 until updated
    loss_updates = register_buffer("loss_updates", torch::zeros({2}, torch::kLong));
  }
  feature_mean = register_buffer("feature_mean", torch::zeros({feature_dim}));
  mean_updates = register_buffer("mean_updates", torch::zeros({}, torch::kLong));
  torch::NoGradGuard no_grad;
  linear->weight.zero_();
  linear->bias.zero_();
}

torch::Tensor MetaNetImpl::forward(const torch::Tensor& h, int task, const torch::Tensor& fe_labels,
                                   const torch::Tensor& loss) {
  // Centred in float32 (float64 for double features) even when h is bfloat16 under autocast
  // (train.precision): the centred values are small, and bf16 subtraction would cancel them.
  const torch::Tensor x = h.detach().to(WideFloat(h)) - feature_mean.to(WideFloat(h));
  torch::Tensor z = linear(x).squeeze(1);
  if (task_bias.defined()) z = z + task_bias[task];
  if (task == kFeTask && fe_label) {
    TORCH_CHECK(fe_labels.defined() && fe_labels.size(0) == h.size(0),
                "a label-aware meta net needs one FE label per sample");
    z = z + fe_label(x).gather(1, fe_labels.to(torch::kLong).unsqueeze(1)).squeeze(1);
  }
  if (loss_weight.defined()) {
    TORCH_CHECK(loss.defined() && loss.dim() == 1 && loss.size(0) == h.size(0),
                "a loss-input meta net needs one training loss per sample");
    const at::ScalarType wide = WideFloat(h);
    const torch::Tensor m = loss_mean[task].to(wide);
    const torch::Tensor sd = (loss_square_mean[task].to(wide) - m * m).clamp_min(kMinLossVariance).sqrt();
    z = z + loss_weight[task].to(wide) * (loss.detach().to(wide) - m) / sd;
  }
  return torch::sigmoid(z);
}

void MetaNetImpl::UpdateLossStatistics(const torch::Tensor& loss, int task, double momentum) {
  if (!loss_weight.defined()) return;
  torch::NoGradGuard no_grad;
  const torch::Tensor l = loss.detach().to(loss_mean.dtype());
  const torch::Tensor mean = l.mean(), square_mean = l.pow(2).mean();
  if (loss_updates[task].item<int64_t>() == 0) {
    loss_mean[task].copy_(mean);
    loss_square_mean[task].copy_(square_mean);
  } else {
    loss_mean[task].mul_(1 - momentum).add_(mean, momentum);
    loss_square_mean[task].mul_(1 - momentum).add_(square_mean, momentum);
  }
  loss_updates[task].add_(1);
}

void MetaNetImpl::UpdateFeatureMean(const torch::Tensor& h, double momentum) {
  if (!center_) return;
  torch::NoGradGuard no_grad;
  const torch::Tensor m = h.detach().mean(0).to(feature_mean.dtype());
  if (mean_updates.item<int64_t>() == 0) {
    feature_mean.copy_(m);
  } else {
    feature_mean.mul_(1 - momentum).add_(m, momentum);
  }
  mean_updates.add_(1);
}

void CopyState(nn::Module& from, nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters(true);
  for (auto& p : to.named_parameters(true)) p.value().copy_(src[p.key()]);
  auto src_b = from.named_buffers(true);
  for (auto& b : to.named_buffers(true)) b.value().copy_(src_b[b.key()]);
}

absl::Status LoadPretrainedBackbone(const std::string& path, BaseNetImpl& net) {
  if (!std::ifstream(path)) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open (model.pretrained)"));
  }
  auto loaded_or = ReadTorchStateDict(path);
  if (!loaded_or.ok()) return loaded_or.status();
  std::map<std::string, torch::Tensor> loaded = *std::move(loaded_or);
  // nn.DataParallel / DistributedDataParallel save every name under "module.".
  if (!loaded.empty() && std::all_of(loaded.begin(), loaded.end(), [](const auto& e) {
        return absl::StartsWith(e.first, "module.");
      })) {
    std::map<std::string, torch::Tensor> stripped;
    for (auto& [name, t] : loaded) stripped[name.substr(7)] = t;
    loaded = std::move(stripped);
  }
  std::vector<std::string> unknown, mismatched, missing;
  auto params = net.backbone.ptr()->named_parameters(true);
  auto buffers = net.backbone.ptr()->named_buffers(true);
  auto target = [&](const std::string& name) -> torch::Tensor* {
    if (auto* p = params.find(name)) return p;
    return buffers.find(name);
  };
  std::set<std::string> assigned;
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : loaded) {
    if (absl::StartsWith(name, "fc.")) continue;  // the ImageNet classifier: we have our heads
    torch::Tensor* t = target(name);
    if (t == nullptr) {
      unknown.push_back(name);
    } else if (t->sizes() != tensor.sizes()) {
      std::ostringstream s;
      s << name << " " << tensor.sizes() << " vs model " << t->sizes();
      mismatched.push_back(s.str());
    } else {
      t->copy_(tensor.to(t->dtype()));
      assigned.insert(name);
    }
  }
  for (const auto& p : params) {
    if (!assigned.count(p.key())) missing.push_back(p.key());
  }
  for (const auto& b : buffers) {
    // BatchNorm's step counter exists since PyTorch 0.4.1 and is used only with momentum None;
    // files written before it lack it, and PyTorch loads them (the counter keeps its value).
    if (absl::EndsWith(b.key(), "num_batches_tracked")) continue;
    if (!assigned.count(b.key())) missing.push_back(b.key());
  }
  if (!unknown.empty() || !mismatched.empty() || !missing.empty()) {
    std::string msg = absl::StrCat(path, ": does not match backbone ", net.config().backbone);
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      std::vector<std::string> shown(v.begin(), v.begin() + std::min<size_t>(v.size(), 10));
      absl::StrAppend(&msg, "; ", what, " (", v.size(), "): ", absl::StrJoin(shown, ", "),
                      v.size() > 10 ? ", ..." : "");
    };
    list("names not in the model", unknown);
    list("shape mismatches", mismatched);
    list("model tensors missing from the file", missing);
    return absl::InvalidArgumentError(msg);
  }
  return absl::OkStatus();
}

}  // namespace mal::engine
