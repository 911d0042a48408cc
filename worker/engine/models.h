#ifndef MAL_WORKER_ENGINE_MODELS_H_
#define MAL_WORKER_ENGINE_MODELS_H_

// Networks of the engine (torch; included only by engine code). Parameter and buffer names of
// the ResNets follow torchvision, under the prefix "backbone.", so torchvision state dicts load.

#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace mal::engine {

// torchvision's BasicBlock: conv1, bn1, conv2, bn2, optional downsample (conv, bn).
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

// ResNet-18/34 without the classifier: image -> 512 grid^2 features after average pooling.
class ResNetImpl : public torch::nn::Module {
 public:
  // grid: the last feature map (512 x ceil(H/32) x ceil(W/32)) is average-pooled to grid x grid
  // cells.
  explicit ResNetImpl(const std::vector<int>& blocks, int64_t grid = 1);
  // N x 3 x H x W -> N x (512 grid^2).
  torch::Tensor forward(torch::Tensor x);
  // N x 3 x H x W -> the last feature map before pooling, N x 512 x ceil(H/32) x ceil(W/32)
  // (LastFeatureMapSide in common/spec/backbones.h).
  torch::Tensor FeatureMap(torch::Tensor x);

 private:
  torch::nn::Sequential MakeLayer(int64_t in, int64_t out, int blocks, int64_t stride);
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  int64_t grid_ = 1;
};
TORCH_MODULE(ResNet);

// A small CNN for tests and the quickstart: 4 x (conv3x3, BN, ReLU, max-pool), average-pooled to
// grid x grid cells: 256 grid^2 features at the default width.
class SmallCnnImpl : public torch::nn::Module {
 public:
  // grid: the last feature map (8 width x floor(H/16) x floor(W/16)) is average-pooled to grid x
  // grid cells.
  explicit SmallCnnImpl(int64_t width = 32, int64_t grid = 1);
  // N x 3 x H x W -> N x (8 width grid^2).
  torch::Tensor forward(torch::Tensor x);
  // N x 3 x H x W -> the last feature map before pooling, N x (8 width) x floor(H/16) x
  // floor(W/16) (LastFeatureMapSide in common/spec/backbones.h).
  torch::Tensor FeatureMap(torch::Tensor x);

 private:
  torch::nn::Sequential features{nullptr};
  int64_t grid_ = 1;
};
TORCH_MODULE(SmallCnn);

// A tiny network for exact-gradient tests: "tiny" = conv(3->4) + BN + ReLU + global pool (4-d);
// "mlp" = flatten + linear(in -> 6) + tanh (6-d), no BN.
class TinyNetImpl : public torch::nn::Module {
 public:
  TinyNetImpl(const std::string& kind, int64_t in_features);
  torch::Tensor forward(torch::Tensor x);

 private:
  std::string kind_;
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TinyNet);

// Backbone + AU head + FE head: f(x) -> h, z = W_au h + b_au, u = W_fe h + b_fe.
class BaseNetImpl : public torch::nn::Module {
 public:
  struct Config {
    std::string backbone = "small_cnn";  // small_cnn | resnet18 | resnet34 | tiny | mlp
    int64_t num_aus = 12;
    int64_t num_expressions = 7;
    int64_t input = 96;  // mlp: the input side, for its in-features
    // small_cnn, resnet*: the last feature map is average-pooled to feature_grid x feature_grid
    // cells and flattened, so feature_dim = channels x feature_grid^2 (spec model.feature_grid).
    int64_t feature_grid = 1;
  };
  explicit BaseNetImpl(const Config& config);

  torch::Tensor Features(const torch::Tensor& x);
  torch::Tensor forward(const torch::Tensor& x) { return au_head->forward(Features(x)); }
  const Config& config() const { return config_; }
  int64_t feature_dim() const { return feature_dim_; }
  // Parameters of the two heads only (the heads_only meta step).
  std::vector<torch::Tensor> HeadParameters();

  torch::nn::AnyModule backbone;
  torch::nn::Linear au_head{nullptr}, fe_head{nullptr};

 private:
  Config config_;
  int64_t feature_dim_ = 0;
};
TORCH_MODULE(BaseNet);

// Every 4-D parameter (convolution weights) of `net` into NHWC memory format (torch.channels_last,
// train.channels_last), in place: the same values and Parameter objects, so optimisers that hold
// them keep working. Inputs should then be N x 3 x H x W tensors in channels_last format too.
void ToChannelsLast(torch::nn::Module& net);

// float64 for a double tensor (the tests' exact references), otherwise float32: under bf16
// autocast (train.precision) logits and features are bfloat16, and weights or means cast down to
// them would lose the precision that the float32 loss and the meta net's centring keep.
at::ScalarType WideFloat(const torch::Tensor& t);

// The meta net: w = sigmoid(v . (stopgrad(h) - mu) + b), zero-initialised so every weight starts
// at 0.5 (paper, section 4.1.2). `mu` is a running mean of the training features (a buffer, not
// learned; with `center` false it stays 0, the paper's literal form). Centring changes nothing
// the meta net can express (v . mu folds into b) but how it learns: without it, every step on v
// also moves the level of all weights, since ReLU features share a large common component, and the
// level is what the normalisation cancels, so the raw weights drifted from seed to seed.
// With `task_bias` (mal.task_bias, an extension the paper does not have) it adds a learned bias per
// task, w = sigmoid(v . (h - mu) + b + c_task), also zero-initialised: the balance between the AU
// and FE tasks then has its own parameter instead of having to be read from the features.
// With `loss_input` (mal.loss_input, an extension after Meta-Weight-Net, Shu et al., NeurIPS 2019,
// which weighs noisy labels by their loss; the paper's meta net reads only the feature) it adds
// q_task z_i, z_i = (l_i - m_task) / s_task: the sample's own training loss (detached, like h),
// standardised by the running mean m and standard deviation s of its task's losses; q ([2]) is
// zero-initialised. A sample whose label its face does not support tends to keep a high loss, which
// no feature of the face alone shows.
class MetaNetImpl : public torch::nn::Module {
 public:
  static constexpr int kAuTask = 0, kFeTask = 1;
  // `fe_classes` > 0 makes it label-aware (mal.label_aware): FE samples with label c add
  // u_c . (h - mu) + d_c, one zero-initialised row of `fe_label` (a Linear D -> fe_classes) per class.
  explicit MetaNetImpl(int64_t feature_dim, bool with_task_bias = false, bool center = false,
                       int64_t fe_classes = 0, bool loss_input = false);
  // Per-sample weights in (0, 1), shape [N], for features `h` (N x D) of samples of `task`
  // (kAuTask or kFeTask). Detaches `h` itself. `fe_labels` ([N] int64 in [0, fe_classes)) is used
  // only by a label-aware meta net for kFeTask, where it is required. `loss` ([N], the samples'
  // per-sample training losses, detached here) is required by a loss-input meta net and ignored
  // by the others. A missing input throws c10::Error.
  torch::Tensor forward(const torch::Tensor& h, int task = kAuTask, const torch::Tensor& fe_labels = {},
                        const torch::Tensor& loss = {});
  // Moves mu towards the mean of `h` (N x D, detached): mu <- (1 - m) mu + m mean(h), with the
  // first call setting mu to mean(h). No-op without `center`.
  void UpdateFeatureMean(const torch::Tensor& h, double momentum = 0.05);
  // Moves task `task`'s running loss mean m and mean square towards those of `loss` ([N],
  // detached): m <- (1 - k) m + k mean(l), the same for mean(l^2), the first call for the task
  // setting them. The standard deviation s = sqrt(mean square - m^2) so spans samples across
  // batches (a batch of one sample has no spread of its own). No-op without `loss_input`.
  void UpdateLossStatistics(const torch::Tensor& loss, int task, double momentum = 0.05);
  bool reads_loss() const { return loss_weight.defined(); }
  torch::nn::Linear linear{nullptr};
  torch::nn::Linear fe_label{nullptr};  // label-aware only
  torch::Tensor task_bias;     // [2] (AU, FE), or undefined without task_bias
  torch::Tensor loss_weight;   // [2] q (AU, FE), or undefined without loss_input
  torch::Tensor loss_mean, loss_square_mean, loss_updates;  // [2] buffers (AU, FE), loss_input only
  torch::Tensor feature_mean;  // [D] buffer
  torch::Tensor mean_updates;  // [] buffer: how often UpdateFeatureMean ran

 private:
  bool center_ = false;
};
TORCH_MODULE(MetaNet);

// Copies parameters and buffers of `from` into `to` (same architecture), without autograd.
void CopyState(torch::nn::Module& from, torch::nn::Module& to);

// Loads a state dict written by PyTorch's torch.save into the backbone of `net` (torchvision
// names; "fc.*" is ignored; a "module." prefix on every name, from nn.DataParallel, is removed).
// The file formats and where the state dict may sit are those of ReadTorchStateDict
// (torch_file.h). Tensors are converted to the model's dtype. BatchNorm's num_batches_tracked may
// be absent (files from PyTorch < 0.4.1); every parameter and running statistic must be present.
// Errors: NotFound for a file that cannot be opened; InvalidArgument naming the file for an
// unreadable file, and listing names not in the model, shape mismatches and missing tensors.
absl::Status LoadPretrainedBackbone(const std::string& path, BaseNetImpl& net);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_MODELS_H_
