#ifndef MAL_WORKER_ENGINE_MAL_STEP_H_
#define MAL_WORKER_ENGINE_MAL_STEP_H_

// One training iteration of STL, MTL or MAL (docs/mal.md in shared/, docs/engine.md here).
// Torch-facing; included only by engine code.

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "worker/engine/models.h"

namespace mal::engine {

enum class Method { kStl, kMtl, kMal };
enum class MetaMode { kExact, kFiniteDifference, kHeadsOnly };
// mal.au_weighting. kSample: the paper, the meta net weighs every AU frame. kTask: every AU frame
// of the batch gets the batch's mean meta-net weight (the meta net balances the tasks and weighs FE
// images, not AU frames among themselves). kTaskInBaseStep: the meta net learns from per-frame AU
// weights (its virtual step is the paper's), and the base step gives every AU frame their mean.
enum class AuWeighting { kSample, kTask, kTaskInBaseStep };
// mal.task_balance. kMeta: the paper (section 4.1.2), one normalisation s = mean w_au + mean w_fe
// for both tasks, so the meta net sets the balance between them. kFixedInBaseStep: the virtual step
// is the paper's; the real step divides each task's weights by their batch mean, so the tasks count
// as in MTL with lambda 1 and the weights rank samples only within each task.
enum class TaskBalance { kMeta, kFixedInBaseStep };

// A training batch: AU images with labels and mask (0 = unknown), FE images with canonical labels.
struct TrainBatch {
  torch::Tensor au_images, au_labels, au_mask;
  torch::Tensor fe_images, fe_labels;  // undefined for STL
};

// A batch of the AU validation reserve, and the per-AU positive weights of the class-rebalanced
// loss (PositiveWeights of the reserve's positive rates).
struct ValBatch {
  torch::Tensor images, labels, mask;  // N x 3 x H x W, N x C, N x C
  torch::Tensor pos_weight;            // [C]
};

struct StepOptions {
  Method method = Method::kMal;
  MetaMode mode = MetaMode::kExact;
  double fe_lambda = 1.0;      // MTL
  bool update_meta = true;     // MAL: false between meta updates (meta_interval)
  bool joint_forward = false;  // AU and FE images through one forward (shared BN statistics)
  // With separate forwards: BatchNorm running statistics advance on the AU batch only (the FE
  // forward uses its batch statistics but leaves the running ones alone), so evaluation on AU
  // images uses AU statistics. False: both forwards move them, the FE batch last.
  bool bn_stats_au_only = true;
  AuWeighting au_weighting = AuWeighting::kSample;
  TaskBalance task_balance = TaskBalance::kMeta;
  // Per-AU positive weights of the AU training loss ([C]); undefined = plain BCE (train.au_pos_weight).
  torch::Tensor au_pos_weight;
  double fd_epsilon = 1e-3;    // finite_difference: step along r, relative to |r|
  // exact: the directional derivatives grad l_i . r by forward-mode AD (one dual forward, true)
  // or the double-backward VJP of mal.md (false). Both are exact; the tests hold them equal.
  bool exact_jvp = true;
  // mal.lookahead_steps, K >= 1: the meta-gradient looks K virtual steps ahead (K - 1 more on the
  // same batch with the weights held, Hessian terms dropped; docs/engine.md). K > 1 needs exact
  // with exact_jvp, or finite_difference (the spec validation refuses the others).
  int lookahead_steps = 1;
  bool profile = false;        // fill StepStats::phases (CPU timing; adds no synchronisation)
};

// What one iteration measured. Weights are those the base step used (after the meta update).
struct StepStats {
  double loss_au = 0, loss_fe = 0, loss_val = -1, loss_total = 0;
  double mean_w_au = 0, mean_w_fe = 0;    // raw meta-net outputs
  double mean_wn_au = 0, mean_wn_fe = 0;  // normalised (both 1 under kFixedInBaseStep)
  torch::Tensor w_au, w_fe;               // raw, detached, on CPU ([n], [m]); undefined for STL/MTL
  // MAL meta updates in exact (JVP) and finite_difference modes: the gradient alignment of every
  // training sample, grad_theta l_i(theta) . grad_theta' L_v(theta') (detached, CPU, [n], [m]);
  // with lookahead_steps K, sum_k grad l_i(theta_k) . grad L_v(theta_K) over k = 0 .. K - 1.
  // Positive: a larger weight on the sample lowers L_v after the virtual step(s), since
  // dL_v/dwn_i = -(alpha / n) alignment_i. Undefined in the other modes and without a meta update.
  torch::Tensor alignment_au, alignment_fe;
  std::vector<std::pair<std::string, double>> phases;  // seconds per phase, with options.profile
};

// Per-AU positive weights that balance positives against negatives within each AU:
// pos_weight_c = (1 - p_c) / p_c, clamped to [1 / cap, cap], with p_c the AU's positive rate
// (a share in [0, 1]). An AU without positives (p_c = 0) or without negatives gets 1: its loss is
// the plain BCE of the frames it has, never amplified (docs/mal.md, "class-rebalanced"). [C], float.
torch::Tensor PositiveWeights(const std::vector<double>& positive_rates, double cap = 20.0);

// The positive weights of the validation loss L_v for mal.val_pos_weight: "inverse_frequency"
// (PositiveWeights), "sqrt" (their square root) or "none" (ones). [C], float; an unknown mode is
// treated as inverse_frequency (the spec validation refuses it first).
torch::Tensor ValidationPositiveWeights(const std::vector<double>& positive_rates,
                                        const std::string& mode);

// Runs iterations on a model, its shadow (same architecture, own buffers: the virtual step and the
// validation pass happen there, so the real BatchNorm statistics move only in the meta-train
// forward) and the meta net. Not thread-safe.
class MalStep {
 public:
  MalStep(BaseNet model, BaseNet shadow, MetaNet meta);

  // One iteration at base learning rate `alpha`: for MAL with update_meta, meta-train, meta-test and
  // the meta update through `meta_optimizer`; then the base step through `base_optimizer`.
  // A non-finite loss or weight is an error and leaves the parameters untouched.
  absl::StatusOr<StepStats> Run(const TrainBatch& batch, const ValBatch* val, double alpha,
                                const StepOptions& options, torch::optim::Optimizer& base_optimizer,
                                torch::optim::Optimizer* meta_optimizer);

  // dL_v(theta'(phi))/dphi at the current state by `options.mode`, changing nothing but the
  // shadow. The model's BatchNorm statistics advance as in a training forward. One tensor per
  // meta parameter (weight, bias).
  std::vector<torch::Tensor> MetaGradient(const TrainBatch& batch, const ValBatch& val,
                                          double alpha, const StepOptions& options);

 private:
  struct Forward {
    torch::Tensor h_au, h_fe, l_au, l_fe;  // features and per-sample losses (with graph)
    torch::Tensor fe_labels;               // the batch's FE labels (a label-aware meta net reads them)
  };
  struct Weights {
    torch::Tensor w_au, w_fe, wn_au, wn_fe;  // raw and normalised (graph to phi)
  };
  Forward ForwardTrain(BaseNetImpl& net, const TrainBatch& batch, const StepOptions& options);
  // `base_step`: the weights of the real step (mal.au_weighting: task_in_base_step flattens the
  // AU weights there only, mal.task_balance: fixed_in_base_step normalises each task by its own
  // mean there only), not of the virtual step.
  Weights ComputeWeights(const Forward& f, const StepOptions& options, bool base_step = false);
  static torch::Tensor WeightedLoss(const Forward& f, const Weights& w);
  // d_i = grad_theta l_i(point) . r for every training sample of `batch`, whose losses at `point`
  // (parameter tensors like the model's) are `base`: forward-mode AD, or a forward difference
  // through the shadow at point + eps r.
  std::pair<torch::Tensor, torch::Tensor> DirectionalDerivatives(
      const Forward& base, const TrainBatch& batch, const std::vector<torch::Tensor>& point,
      const std::vector<torch::Tensor>& r, const StepOptions& options);
  // One more virtual step in the shadow (mal.lookahead_steps): theta_{k+1} = theta_k - alpha g_k,
  // g_k the gradient at the shadow's parameters of the batch's loss weighted by `w` (held, no
  // graph to phi). Returns the per-sample losses at theta_k (detached).
  Forward LookaheadStep(const TrainBatch& batch, const Weights& w, double alpha,
                        const StepOptions& options);
  // r = grad of the validation loss at the shadow parameters (zeros where unused).
  std::vector<torch::Tensor> ValidationGradient(const ValBatch& val, double* loss);
  std::vector<torch::Tensor> MetaGradientFromForward(const Forward& f, const TrainBatch& batch,
                                                     const ValBatch& val, double alpha,
                                                     const StepOptions& options, StepStats* stats);

  BaseNet model_, shadow_;
  MetaNet meta_;
  std::vector<torch::Tensor> params_, shadow_params_;
};

// Per-sample AU loss: masked mean over AUs of sigmoid BCE, positives weighted by `pos_weight`
// ([C]; undefined = 1). logits, labels, mask: N x C. Returns [N].
torch::Tensor PerSampleAuLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                              const torch::Tensor& mask, const torch::Tensor& pos_weight = {});

// Per-sample FE loss: softmax cross-entropy of `logits` (N x 7) against canonical expression
// labels (N, int64). Returns [N].
torch::Tensor PerSampleFeLoss(const torch::Tensor& logits, const torch::Tensor& labels);

// The class-rebalanced AU loss of the meta-test stage (mal.md stage 2): masked mean over frames
// and AUs of sigmoid BCE with per-AU positive weights `pos_weight` ([C]). A scalar.
torch::Tensor RebalancedAuLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                               const torch::Tensor& mask, const torch::Tensor& pos_weight);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_MAL_STEP_H_
