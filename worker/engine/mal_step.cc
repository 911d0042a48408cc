#include "worker/engine/mal_step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"

namespace mal::engine {

namespace {

// Guards the normalisation s = mean(w_au) + mean(w_fe) against a zero sum.
constexpr double kMinWeightSum = 1e-6;

std::vector<torch::Tensor> ZerosForUndefined(std::vector<torch::Tensor> grads,
                                             const std::vector<torch::Tensor>& like) {
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) grads[i] = torch::zeros_like(like[i]);
  }
  return grads;
}

// Sets `dst` = a + scale * b, parameter by parameter, without autograd.
void Assign(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& a,
            const std::vector<torch::Tensor>& b, double scale) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(a[i] + scale * b[i]);
}

bool Finite(const torch::Tensor& t) { return torch::isfinite(t).all().item<bool>(); }

// Adds the seconds since the last mark to `stats->phases` under `name` (no-op without stats).
class PhaseTimer {
 public:
  explicit PhaseTimer(StepStats* stats) : stats_(stats), last_(std::chrono::steady_clock::now()) {}
  void Mark(const char* name) {
    if (stats_ == nullptr) return;
    const auto now = std::chrono::steady_clock::now();
    stats_->phases.emplace_back(name, std::chrono::duration<double>(now - last_).count());
    last_ = now;
  }

 private:
  StepStats* stats_;
  std::chrono::steady_clock::time_point last_;
};

torch::Tensor Bce(const torch::Tensor& logits, const torch::Tensor& labels,
                  const torch::Tensor& pos_weight) {
  return torch::binary_cross_entropy_with_logits(
      logits, labels, /*weight=*/{},
      pos_weight.defined() ? pos_weight.to(WideFloat(logits)) : torch::Tensor(),
      at::Reduction::None);
}

// Holds the BatchNorm running statistics of a net still while alive (momentum 0: the batch
// statistics still normalise, the running ones do not move), and restores the momenta after.
class FrozenBatchNormStats {
 public:
  explicit FrozenBatchNormStats(torch::nn::Module& net) {
    for (const auto& m : net.modules(/*include_self=*/false)) {
      if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
        saved_.emplace_back(bn, bn->options.momentum());
        bn->options.momentum(0.0);
      }
    }
  }
  ~FrozenBatchNormStats() {
    for (auto& [bn, momentum] : saved_) bn->options.momentum(momentum);
  }
  FrozenBatchNormStats(const FrozenBatchNormStats&) = delete;
  FrozenBatchNormStats& operator=(const FrozenBatchNormStats&) = delete;

 private:
  std::vector<std::pair<torch::nn::BatchNorm2dImpl*, c10::optional<double>>> saved_;
};

}  // namespace

torch::Tensor PositiveWeights(const std::vector<double>& positive_rates, double cap) {
  std::vector<float> w(positive_rates.size(), 1.0f);
  for (size_t c = 0; c < w.size(); ++c) {
    const double p = positive_rates[c];
    if (p > 0 && p < 1) w[c] = static_cast<float>(std::clamp((1 - p) / p, 1.0 / cap, cap));
  }
  return torch::tensor(w);
}

torch::Tensor ValidationPositiveWeights(const std::vector<double>& positive_rates,
                                        const std::string& mode) {
  const torch::Tensor w = PositiveWeights(positive_rates);
  if (mode == "sqrt") return w.sqrt();
  if (mode == "none") return torch::ones_like(w);
  return w;
}

torch::Tensor PerSampleAuLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                              const torch::Tensor& mask, const torch::Tensor& pos_weight) {
  return (Bce(logits, labels, pos_weight) * mask).sum(1) / mask.sum(1).clamp_min(1);
}

torch::Tensor PerSampleFeLoss(const torch::Tensor& logits, const torch::Tensor& labels) {
  return torch::nn::functional::cross_entropy(
      logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
}

torch::Tensor RebalancedAuLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                               const torch::Tensor& mask, const torch::Tensor& pos_weight) {
  return (Bce(logits, labels, pos_weight) * mask).sum() / mask.sum().clamp_min(1);
}

MalStep::MalStep(BaseNet model, BaseNet shadow, MetaNet meta)
    : model_(std::move(model)), shadow_(std::move(shadow)), meta_(std::move(meta)) {
  params_ = model_->parameters();
  shadow_params_ = shadow_->parameters();
}

MalStep::Forward MalStep::ForwardTrain(BaseNetImpl& net, const TrainBatch& b,
                                       const StepOptions& o) {
  Forward f;
  const bool with_fe = o.method != Method::kStl && b.fe_images.defined();
  if (with_fe) f.fe_labels = b.fe_labels;
  if (with_fe && o.joint_forward) {
    const torch::Tensor h = net.Features(torch::cat({b.au_images, b.fe_images}));
    const int64_t n = b.au_images.size(0);
    f.h_au = h.narrow(0, 0, n);
    f.h_fe = h.narrow(0, n, h.size(0) - n);
  } else {
    f.h_au = net.Features(b.au_images);
    if (with_fe) {
      std::optional<FrozenBatchNormStats> frozen;
      if (o.bn_stats_au_only) frozen.emplace(net);
      f.h_fe = net.Features(b.fe_images);
    }
  }
  f.l_au = PerSampleAuLoss(net.au_head(f.h_au), b.au_labels, b.au_mask, o.au_pos_weight);
  if (with_fe) {
    f.l_fe = PerSampleFeLoss(net.fe_head(f.h_fe), b.fe_labels);
  }
  return f;
}

MalStep::Weights MalStep::ComputeWeights(const Forward& f, const StepOptions& o, bool base_step) {
  Weights w;
  w.w_au = meta_->forward(f.h_au, MetaNetImpl::kAuTask, {}, f.l_au);
  // mal.au_weighting: task (virtual and real step), task_in_base_step (real step only).
  if (o.au_weighting == AuWeighting::kTask ||
      (base_step && o.au_weighting == AuWeighting::kTaskInBaseStep)) {
    w.w_au = w.w_au.mean() * torch::ones_like(w.w_au);
  }
  w.w_fe = meta_->forward(f.h_fe, MetaNetImpl::kFeTask, f.fe_labels, f.l_fe);
  if (base_step && o.task_balance == TaskBalance::kFixedInBaseStep) {
    // mal.task_balance: fixed_in_base_step. Each task's weights by their own batch mean: the
    // tasks count as in MTL (lambda 1), the meta net ranks samples within each task.
    w.wn_au = w.w_au / w.w_au.mean().clamp_min(kMinWeightSum);
    w.wn_fe = w.w_fe / w.w_fe.mean().clamp_min(kMinWeightSum);
    return w;
  }
  const torch::Tensor s = (w.w_au.mean() + w.w_fe.mean()).clamp_min(kMinWeightSum);
  w.wn_au = w.w_au / s;
  w.wn_fe = w.w_fe / s;
  return w;
}

torch::Tensor MalStep::WeightedLoss(const Forward& f, const Weights& w) {
  return (w.wn_au * f.l_au).mean() + (w.wn_fe * f.l_fe).mean();
}

std::vector<torch::Tensor> MalStep::ValidationGradient(const ValBatch& val, double* loss) {
  shadow_->train();
  const torch::Tensor lv =
      RebalancedAuLoss(shadow_->forward(val.images), val.labels, val.mask, val.pos_weight);
  if (loss != nullptr) *loss = lv.item<double>();
  return ZerosForUndefined(
      torch::autograd::grad({lv}, shadow_params_, {}, /*retain_graph=*/false,
                            /*create_graph=*/false, /*allow_unused=*/true),
      shadow_params_);
}

// About 80 lines on purpose: the three ways of computing the same meta-gradient (heads-only, VJP,
// JVP / finite difference) sit side by side so their shared steps (weights, virtual step,
// validation gradient) read once, in docs/mal.md's order.
std::vector<torch::Tensor> MalStep::MetaGradientFromForward(const Forward& f,
                                                            const TrainBatch& batch,
                                                            const ValBatch& val, double alpha,
                                                            const StepOptions& o,
                                                            StepStats* stats) {
  const std::vector<torch::Tensor> phi = meta_->parameters();
  PhaseTimer timer(stats != nullptr && o.profile ? stats : nullptr);
  double* val_loss = stats != nullptr ? &stats->loss_val : nullptr;
  if (o.mode == MetaMode::kHeadsOnly) {
    // Virtual step on the heads only, features fixed: exact in that subspace, and small.
    const torch::Tensor h_au = f.h_au.detach(), h_fe = f.h_fe.detach();
    Forward heads;
    heads.h_au = h_au;
    heads.h_fe = h_fe;
    heads.fe_labels = f.fe_labels;
    heads.l_au = PerSampleAuLoss(model_->au_head(h_au), batch.au_labels, batch.au_mask,
                                 o.au_pos_weight);
    heads.l_fe = PerSampleFeLoss(model_->fe_head(h_fe), batch.fe_labels);
    const torch::Tensor l = WeightedLoss(heads, ComputeWeights(heads, o));
    const torch::Tensor w = model_->au_head->weight, b = model_->au_head->bias;
    auto g = torch::autograd::grad({l}, {w, b}, {}, /*retain_graph=*/true, /*create_graph=*/true);
    timer.Mark("meta: head gradient with graph");
    // Validation features at the current backbone, through the shadow (its BatchNorm buffers).
    CopyState(*model_, *shadow_);
    shadow_->train();
    torch::Tensor h_v;
    {
      torch::NoGradGuard no_grad;
      h_v = shadow_->Features(val.images);
    }
    const torch::Tensor z_v = torch::nn::functional::linear(h_v, w - alpha * g[0], b - alpha * g[1]);
    const torch::Tensor lv = RebalancedAuLoss(z_v, val.labels, val.mask, val.pos_weight);
    if (val_loss != nullptr) *val_loss = lv.item<double>();
    timer.Mark("meta: validation forward");
    auto meta_grad = ZerosForUndefined(torch::autograd::grad({lv}, phi, {}, false, false, true), phi);
    timer.Mark("meta: gradient to phi");
    return meta_grad;
  }

  const Weights weights = ComputeWeights(f, o);
  const torch::Tensor loss = WeightedLoss(f, weights);
  // The VJP form needs g as a function of phi: only then is the graph of the backward kept.
  const bool vjp = o.mode == MetaMode::kExact && !o.exact_jvp;
  std::vector<torch::Tensor> g = ZerosForUndefined(
      torch::autograd::grad({loss}, params_, {}, /*retain_graph=*/true, /*create_graph=*/vjp,
                            /*allow_unused=*/true),
      params_);
  timer.Mark(vjp ? "meta: backward with create_graph" : "meta: backward");
  // Virtual step into the shadow: theta' = theta - alpha g, as plain tensors.
  Assign(shadow_params_, params_, g, -alpha);
  // mal.lookahead_steps: theta_1 .. theta_{K-1} and the losses there, for the derivatives below.
  std::vector<std::vector<torch::Tensor>> points;
  std::vector<Forward> point_losses;
  for (int k = 1; k < o.lookahead_steps; ++k) {
    std::vector<torch::Tensor> point;
    for (const auto& p : shadow_params_) point.push_back(p.detach().clone());
    points.push_back(std::move(point));
    point_losses.push_back(LookaheadStep(batch, weights, alpha, o));
  }
  if (!points.empty()) timer.Mark("meta: further virtual steps (lookahead)");
  const std::vector<torch::Tensor> r = ValidationGradient(val, val_loss);
  timer.Mark("meta: virtual step + validation forward/backward");

  if (vjp) {
    // dL_v/dphi = (d theta'/d phi)^T r = -alpha (dg/dphi)^T r: one vector-Jacobian product.
    std::vector<torch::Tensor> outputs, grad_outputs;
    for (size_t i = 0; i < g.size(); ++i) {
      if (!g[i].requires_grad()) continue;  // a parameter the loss does not reach
      outputs.push_back(g[i]);
      grad_outputs.push_back(-alpha * r[i]);
    }
    auto meta_grad = ZerosForUndefined(torch::autograd::grad(outputs, phi, grad_outputs,
                                                             /*retain_graph=*/true,
                                                             /*create_graph=*/false,
                                                             /*allow_unused=*/true),
                                       phi);
    timer.Mark("meta: double backward (VJP)");
    return meta_grad;
  }

  // Since g = sum_i (wn_i / n) grad l_i, the same product is
  //   dL_v/dphi = -alpha d/dphi [mean(wn_au d_au) + mean(wn_fe d_fe)],  d_i = grad l_i . r held
  // constant; d comes exactly from forward-mode AD, or approximately from finite differences.
  // Looking K steps ahead, the weights enter every step: d_i = sum_k grad l_i(theta_k) . r.
  auto [d_au, d_fe] = DirectionalDerivatives(f, batch, params_, r, o);
  for (size_t k = 0; k < points.size(); ++k) {
    const auto [dk_au, dk_fe] = DirectionalDerivatives(point_losses[k], batch, points[k], r, o);
    d_au = d_au + dk_au;
    d_fe = d_fe + dk_fe;
  }
  if (stats != nullptr) {
    stats->alignment_au = d_au.detach().to(torch::kCPU);
    stats->alignment_fe = d_fe.detach().to(torch::kCPU);
  }
  timer.Mark(o.mode == MetaMode::kExact ? "meta: forward-mode directional derivatives (JVP)"
                                        : "meta: forward at theta + eps r (finite difference)");
  const torch::Tensor surrogate =
      -alpha * ((weights.wn_au * d_au).mean() + (weights.wn_fe * d_fe).mean());
  auto meta_grad = ZerosForUndefined(torch::autograd::grad({surrogate}, phi, {}, false, false, true), phi);
  timer.Mark("meta: gradient to phi");
  return meta_grad;
}

MalStep::Forward MalStep::LookaheadStep(const TrainBatch& batch, const Weights& w, double alpha,
                                        const StepOptions& o) {
  shadow_->train();
  Forward at = ForwardTrain(*shadow_, batch, o);
  Weights held;
  held.wn_au = w.wn_au.detach();
  held.wn_fe = w.wn_fe.detach();
  const std::vector<torch::Tensor> g = ZerosForUndefined(
      torch::autograd::grad({WeightedLoss(at, held)}, shadow_params_, {}, /*retain_graph=*/false,
                            /*create_graph=*/false, /*allow_unused=*/true),
      shadow_params_);
  Assign(shadow_params_, shadow_params_, g, -alpha);
  at.h_au = at.h_au.detach();
  at.l_au = at.l_au.detach();
  if (at.h_fe.defined()) at.h_fe = at.h_fe.detach();
  if (at.l_fe.defined()) at.l_fe = at.l_fe.detach();
  return at;
}

std::pair<torch::Tensor, torch::Tensor> MalStep::DirectionalDerivatives(
    const Forward& base, const TrainBatch& batch, const std::vector<torch::Tensor>& point,
    const std::vector<torch::Tensor>& r, const StepOptions& o) {
  torch::NoGradGuard no_grad;  // forward-mode AD is not affected by grad mode
  shadow_->train();
  if (o.mode == MetaMode::kExact) {
    Assign(shadow_params_, point, r, 0.0);
    const uint64_t level = torch::autograd::forward_ad::enter_dual_level();
    torch::Tensor d_au, d_fe;
    try {
      for (size_t i = 0; i < shadow_params_.size(); ++i) {
        shadow_params_[i]._set_fw_grad(r[i].contiguous(), level, /*is_inplace_op=*/false);
      }
      const Forward fs = ForwardTrain(*shadow_, batch, o);
      d_au = std::get<1>(at::_unpack_dual(fs.l_au, level)).clone();
      d_fe = std::get<1>(at::_unpack_dual(fs.l_fe, level)).clone();
    } catch (...) {
      torch::autograd::forward_ad::exit_dual_level(level);
      throw;
    }
    torch::autograd::forward_ad::exit_dual_level(level);
    return {d_au, d_fe};
  }
  // Forward difference from the losses at the point, which a forward there already has:
  // one extra forward instead of two (the bench reports its cosine to the exact gradient).
  double norm_sq = 0;
  for (const auto& t : r) norm_sq += t.pow(2).sum().item<double>();
  const double eps = o.fd_epsilon / std::max(std::sqrt(norm_sq), 1e-12);
  Assign(shadow_params_, point, r, eps);
  const Forward plus = ForwardTrain(*shadow_, batch, o);
  return {(plus.l_au - base.l_au.detach()) / eps, (plus.l_fe - base.l_fe.detach()) / eps};
}

std::vector<torch::Tensor> MalStep::MetaGradient(const TrainBatch& batch, const ValBatch& val,
                                                 double alpha, const StepOptions& options) {
  model_->train();
  const Forward f = ForwardTrain(*model_, batch, options);
  return MetaGradientFromForward(f, batch, val, alpha, options, nullptr);
}

absl::StatusOr<StepStats> MalStep::Run(const TrainBatch& batch, const ValBatch* val, double alpha,
                                       const StepOptions& o,
                                       torch::optim::Optimizer& base_optimizer,
                                       torch::optim::Optimizer* meta_optimizer) {
  model_->train();
  StepStats stats;
  PhaseTimer timer(o.profile ? &stats : nullptr);
  const Forward f = ForwardTrain(*model_, batch, o);
  stats.loss_au = f.l_au.mean().item<double>();
  if (f.l_fe.defined()) stats.loss_fe = f.l_fe.mean().item<double>();
  if (!std::isfinite(stats.loss_au) || !std::isfinite(stats.loss_fe)) {
    return absl::DataLossError(absl::StrCat("non-finite training loss (AU ", stats.loss_au,
                                            ", FE ", stats.loss_fe, ")"));
  }
  timer.Mark("forward");

  torch::Tensor loss;
  if (o.method == Method::kStl) {
    loss = f.l_au.mean();
  } else if (o.method == Method::kMtl) {
    loss = f.l_au.mean() + o.fe_lambda * f.l_fe.mean();
  } else {
    // The meta net's running feature mean (and, with mal.loss_input, its loss statistics) move
    // before this iteration's weights (constants for the meta-gradient below).
    meta_->UpdateFeatureMean(torch::cat({f.h_au.detach(), f.h_fe.detach()}));
    meta_->UpdateLossStatistics(f.l_au, MetaNetImpl::kAuTask);
    meta_->UpdateLossStatistics(f.l_fe, MetaNetImpl::kFeTask);
    if (o.update_meta) {
      if (val == nullptr || meta_optimizer == nullptr) {
        return absl::InternalError("MAL meta update without a validation batch or meta optimizer");
      }
      std::vector<torch::Tensor> meta_grad =
          MetaGradientFromForward(f, batch, *val, alpha, o, &stats);
      timer = PhaseTimer(o.profile ? &stats : nullptr);  // the meta phases timed themselves
      for (const auto& t : meta_grad) {
        if (!Finite(t)) return absl::DataLossError("non-finite meta-gradient");
      }
      meta_optimizer->zero_grad();
      const std::vector<torch::Tensor> phi = meta_->parameters();
      // A copy: autograd may hand back a view (the label-aware rows' gradient is one), and the
      // optimizer's zero_grad detaches gradients in place, which a view refuses.
      for (size_t i = 0; i < phi.size(); ++i) phi[i].mutable_grad() = meta_grad[i].clone();
      meta_optimizer->step();
      timer.Mark("meta: optimizer step");
    }
    // Base learning: weights from the updated meta net on the same (detached) features.
    const Weights w = ComputeWeights(f, o, /*base_step=*/true);
    if (!Finite(w.wn_au) || !Finite(w.wn_fe)) return absl::DataLossError("non-finite sample weights");
    loss = WeightedLoss(f, w);
    stats.w_au = w.w_au.detach().to(torch::kCPU);
    stats.w_fe = w.w_fe.detach().to(torch::kCPU);
    stats.mean_w_au = w.w_au.mean().item<double>();
    stats.mean_w_fe = w.w_fe.mean().item<double>();
    stats.mean_wn_au = w.wn_au.mean().item<double>();
    stats.mean_wn_fe = w.wn_fe.mean().item<double>();
  }
  stats.loss_total = loss.item<double>();
  if (!std::isfinite(stats.loss_total)) {
    return absl::DataLossError(absl::StrCat("non-finite training loss ", stats.loss_total));
  }
  base_optimizer.zero_grad();
  loss.backward();
  base_optimizer.step();
  timer.Mark("base: weights, backward, step");
  return stats;
}

}  // namespace mal::engine
