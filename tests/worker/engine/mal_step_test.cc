#include "worker/engine/mal_step.h"

#include <cmath>
#include <map>
#include <sstream>
#include <utility>

#include <gtest/gtest.h>

namespace mal::engine {
namespace {

constexpr double kAlpha = 0.1;

struct Fixture {
  BaseNet model{nullptr}, shadow{nullptr};
  MetaNet meta{nullptr};
  TrainBatch batch;
  ValBatch val;
};

// A tiny model in double precision, its shadow, a meta net (random or zero-initialised; with a
// per-task bias when `task_bias`, label rows when `label_aware`, the loss input when `loss_input`),
// an AU batch of 5 frames, an FE batch of `n_fe` images and a validation batch of 6 frames.
Fixture Make(const std::string& backbone, bool random_meta, uint64_t seed = 0, int n_fe = 4,
             bool task_bias = false, bool label_aware = false, bool loss_input = false) {
  torch::manual_seed(seed);
  Fixture f;
  BaseNetImpl::Config c;
  c.backbone = backbone;
  c.num_aus = 3;
  c.num_expressions = 7;
  c.input = 6;
  f.model = BaseNet(c);
  f.shadow = BaseNet(c);
  f.model->to(torch::kDouble);
  f.shadow->to(torch::kDouble);
  f.meta = MetaNet(f.model->feature_dim(), task_bias, /*center=*/false, label_aware ? 7 : 0,
                   loss_input);
  f.meta->to(torch::kDouble);
  if (random_meta) {
    torch::NoGradGuard g;
    f.meta->linear->weight.normal_(0, 0.5);
    f.meta->linear->bias.fill_(0.3);
    if (task_bias) f.meta->task_bias.copy_(torch::tensor({0.4, -0.7}, torch::kDouble));
    if (label_aware) {
      f.meta->fe_label->weight.normal_(0, 0.5);
      f.meta->fe_label->bias.normal_(0, 0.5);
    }
    if (loss_input) {
      f.meta->loss_weight.copy_(torch::tensor({-0.8, 1.1}, torch::kDouble));
      f.meta->loss_mean.copy_(torch::tensor({0.6, 1.9}, torch::kDouble));
      f.meta->loss_square_mean.copy_(torch::tensor({0.40, 3.86}, torch::kDouble));  // sd 0.2, 0.5
    }
  }
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  f.batch.au_images = torch::randn({5, 3, 6, 6}, opts);
  f.batch.au_labels = torch::randint(0, 2, {5, 3}, opts);
  f.batch.au_mask = torch::ones({5, 3}, opts);
  f.batch.au_mask[1][2] = 0;
  f.batch.fe_images = torch::randn({n_fe, 3, 6, 6}, opts);
  f.batch.fe_labels = torch::randint(0, 7, {n_fe}, torch::kLong);
  f.val.images = torch::randn({6, 3, 6, 6}, opts);
  f.val.labels = torch::randint(0, 2, {6, 3}, opts);
  f.val.mask = torch::ones({6, 3}, opts);
  f.val.pos_weight = torch::tensor({0.5, 1.0, 1.5}, opts);
  return f;
}

// L_v(theta - alpha * grad_theta L(theta, phi)) recomputed from scratch: the quantity whose
// derivative in phi the meta-gradient is. `au_task`: every AU frame gets the batch's mean weight
// (mal.au_weighting: task).
double ValLossAfterVirtualStep(Fixture& f, bool au_task = false) {
  f.model->train();
  auto h_au = f.model->Features(f.batch.au_images);
  auto h_fe = f.model->Features(f.batch.fe_images);
  auto l_au = PerSampleAuLoss(f.model->au_head(h_au), f.batch.au_labels, f.batch.au_mask);
  auto l_fe = torch::nn::functional::cross_entropy(
      f.model->fe_head(h_fe), f.batch.fe_labels,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto w_au = f.meta->forward(h_au, MetaNetImpl::kAuTask, {}, l_au);
  if (au_task) w_au = w_au.mean().expand({w_au.size(0)});
  auto w_fe = f.meta->forward(h_fe, MetaNetImpl::kFeTask, f.batch.fe_labels, l_fe);
  auto s = w_au.mean() + w_fe.mean();
  auto loss = (w_au / s * l_au).mean() + (w_fe / s * l_fe).mean();
  auto params = f.model->parameters();
  auto g = torch::autograd::grad({loss}, params, {}, false, false, true);
  auto shadow_params = f.shadow->parameters();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    shadow_params[i].copy_(g[i].defined() ? params[i] - kAlpha * g[i] : params[i]);
  }
  f.shadow->train();
  return RebalancedAuLoss(f.shadow->forward(f.val.images), f.val.labels, f.val.mask,
                          f.val.pos_weight)
      .item<double>();
}

class ExactTest : public ::testing::TestWithParam<bool> {};  // param: exact_jvp

TEST_P(ExactTest, MetaGradientMatchesCentralFiniteDifferences) {
  // The paper's meta net, with the per-task bias, with the label-aware rows too, with one
  // weight for the AU task (mal.au_weighting: task), and reading each sample's loss
  // (mal.loss_input: the loss is an input, held constant, as the feature is).
  for (int variant : {0, 1, 2, 3, 4}) {
    const bool task_bias = variant >= 1, label_aware = variant == 2, au_task = variant == 3;
    const bool loss_input = variant == 4;
    Fixture f = Make("tiny", /*random_meta=*/true, 0, 4, task_bias, label_aware, loss_input);
    MalStep step(f.model, f.shadow, f.meta);
    StepOptions o;
    o.exact_jvp = GetParam();
    if (au_task) o.au_weighting = AuWeighting::kTask;
    const auto exact = step.MetaGradient(f.batch, f.val, kAlpha, o);
    // Central differences in double: truncation O(delta^2) and rounding O(1e-16 / delta) both
    // stay near 1e-11, far below the gradient's components (1e-5 .. 1e-2 here).
    const double delta = 1e-5;
    auto phi = f.meta->parameters();
    ASSERT_EQ(phi.size(), 2u + task_bias + 2 * label_aware + loss_input);
    double largest = 0;
    for (size_t p = 0; p < phi.size(); ++p) {
      auto flat = phi[p].view(-1);
      for (int64_t k = 0; k < flat.numel(); ++k) {
        const double original = flat[k].item<double>();
        {
          torch::NoGradGuard g;
          flat[k].fill_(original + delta);
        }
        const double plus = ValLossAfterVirtualStep(f, au_task);
        {
          torch::NoGradGuard g;
          flat[k].fill_(original - delta);
        }
        const double minus = ValLossAfterVirtualStep(f, au_task);
        {
          torch::NoGradGuard g;
          flat[k].fill_(original);
        }
        const double numeric = (plus - minus) / (2 * delta);
        const double analytic = exact[p].view(-1)[k].item<double>();
        largest = std::max(largest, std::abs(numeric));
        EXPECT_NEAR(analytic, numeric, 1e-10 + 1e-6 * std::abs(numeric))
            << "variant " << variant << " param " << p << "[" << k << "]";
      }
    }
    EXPECT_GT(largest, 1e-6);  // the comparison is not between zeros
    if (task_bias) {
      // The task bias sees the AU and FE samples apart: its gradient has two distinct entries.
      size_t t = 0;
      while (!phi[t].is_same(f.meta->task_bias)) ++t;
      EXPECT_GT(std::abs(exact[t][0].item<double>() - exact[t][1].item<double>()), 1e-8);
    }
  }
}

// The meta-gradient written out as a function of explicit parameter tensors (a "MetaModule"
// formulation) on the MLP backbone, with the virtual step on all parameters or on the heads only.
// `lookahead_steps` K > 1 (all parameters): K - 1 more virtual steps on the same batch, each
// gradient taken at a detached copy of theta_k (no Hessian term) with the weights' graph to phi
// kept, and L_v at theta_K (mal.lookahead_steps' first-order meta-gradient, docs/engine.md).
std::vector<torch::Tensor> FunctionalMetaGradient(Fixture& f, bool heads_only,
                                                  int lookahead_steps = 1) {
  auto W1 = f.model->backbone.ptr()->named_parameters()["fc.weight"].detach().clone().requires_grad_(!heads_only);
  auto b1 = f.model->backbone.ptr()->named_parameters()["fc.bias"].detach().clone().requires_grad_(!heads_only);
  auto Wa = f.model->au_head->weight.detach().clone().requires_grad_(true);
  auto ba = f.model->au_head->bias.detach().clone().requires_grad_(true);
  auto Wf = f.model->fe_head->weight.detach().clone().requires_grad_(true);
  auto bf = f.model->fe_head->bias.detach().clone().requires_grad_(true);
  auto v = f.meta->linear->weight.detach().clone().requires_grad_(true);
  auto c = f.meta->linear->bias.detach().clone().requires_grad_(true);
  namespace F = torch::nn::functional;
  auto features = [](const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b) {
    return torch::tanh(F::linear(x.flatten(1), W, b));
  };
  auto h_au = features(f.batch.au_images, W1, b1), h_fe = features(f.batch.fe_images, W1, b1);
  auto l_au = PerSampleAuLoss(F::linear(h_au, Wa, ba), f.batch.au_labels, f.batch.au_mask);
  auto l_fe = F::cross_entropy(F::linear(h_fe, Wf, bf), f.batch.fe_labels,
                               F::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto w_au = torch::sigmoid(F::linear(h_au.detach(), v, c)).squeeze(1);
  auto w_fe = torch::sigmoid(F::linear(h_fe.detach(), v, c)).squeeze(1);
  auto s = w_au.mean() + w_fe.mean();
  auto loss = (w_au / s * l_au).mean() + (w_fe / s * l_fe).mean();
  torch::Tensor z_v;
  if (heads_only) {
    auto g = torch::autograd::grad({loss}, {Wa, ba}, {}, true, true);
    z_v = F::linear(features(f.val.images, W1, b1), Wa - kAlpha * g[0], ba - kAlpha * g[1]);
  } else {
    auto g = torch::autograd::grad({loss}, {W1, b1, Wa, ba, Wf, bf}, {}, true, true);
    std::vector<torch::Tensor> theta = {W1, b1, Wa, ba, Wf, bf};
    for (size_t i = 0; i < theta.size(); ++i) theta[i] = theta[i] - kAlpha * g[i];
    for (int k = 1; k < lookahead_steps; ++k) {
      std::vector<torch::Tensor> at;
      for (const auto& t : theta) at.push_back(t.detach().clone().requires_grad_(true));
      auto hk_au = features(f.batch.au_images, at[0], at[1]);
      auto hk_fe = features(f.batch.fe_images, at[0], at[1]);
      auto lk_au = PerSampleAuLoss(F::linear(hk_au, at[2], at[3]), f.batch.au_labels, f.batch.au_mask);
      auto lk_fe = F::cross_entropy(F::linear(hk_fe, at[4], at[5]), f.batch.fe_labels,
                                    F::CrossEntropyFuncOptions().reduction(torch::kNone));
      auto loss_k = (w_au / s * lk_au).mean() + (w_fe / s * lk_fe).mean();
      auto g_k = torch::autograd::grad({loss_k}, at, {}, true, true);
      for (size_t i = 0; i < theta.size(); ++i) theta[i] = theta[i] - kAlpha * g_k[i];
    }
    z_v = F::linear(features(f.val.images, theta[0], theta[1]), theta[2], theta[3]);
  }
  auto lv = RebalancedAuLoss(z_v, f.val.labels, f.val.mask, f.val.pos_weight);
  return torch::autograd::grad({lv}, {v, c});
}

TEST_P(ExactTest, ShadowCopyEqualsFunctionalComputation) {
  Fixture f = Make("mlp", /*random_meta=*/true, 3);
  const auto functional = FunctionalMetaGradient(f, /*heads_only=*/false);
  MalStep step(f.model, f.shadow, f.meta);
  StepOptions o;
  o.exact_jvp = GetParam();
  const auto shadow = step.MetaGradient(f.batch, f.val, kAlpha, o);
  for (size_t p = 0; p < 2; ++p) {
    EXPECT_TRUE(torch::allclose(shadow[p], functional[p], 1e-12, 1e-14)) << p;
  }
}

// The same for the BatchNorm backbone ("tiny": conv -> batch norm -> ReLU -> mean pool), written
// with explicit tensors: batch statistics per forward (AU, FE and validation batches apart), the
// virtual step on every parameter, and the meta net with its per-task bias.
std::vector<torch::Tensor> FunctionalMetaGradientBatchNorm(Fixture& f) {
  auto named = f.model->backbone.ptr()->named_parameters();
  auto leaf = [](const torch::Tensor& t) { return t.detach().clone().requires_grad_(true); };
  auto Wc = leaf(named["conv.weight"]), bc = leaf(named["conv.bias"]);
  auto gamma = leaf(named["bn.weight"]), beta = leaf(named["bn.bias"]);
  auto Wa = leaf(f.model->au_head->weight), ba = leaf(f.model->au_head->bias);
  auto Wf = leaf(f.model->fe_head->weight), bf = leaf(f.model->fe_head->bias);
  auto v = leaf(f.meta->linear->weight), c = leaf(f.meta->linear->bias);
  auto t = leaf(f.meta->task_bias);
  namespace F = torch::nn::functional;
  auto features = [](const torch::Tensor& x, const torch::Tensor& Wc, const torch::Tensor& bc,
                     const torch::Tensor& gamma, const torch::Tensor& beta) {
    auto y = F::conv2d(x, Wc, F::Conv2dFuncOptions().bias(bc).padding(1));
    y = torch::batch_norm(y, gamma, beta, {}, {}, /*training=*/true, 0.1, 1e-5, false);
    return torch::adaptive_avg_pool2d(torch::relu(y), {1, 1}).flatten(1);
  };
  auto h_au = features(f.batch.au_images, Wc, bc, gamma, beta);
  auto h_fe = features(f.batch.fe_images, Wc, bc, gamma, beta);
  auto l_au = PerSampleAuLoss(F::linear(h_au, Wa, ba), f.batch.au_labels, f.batch.au_mask);
  auto l_fe = F::cross_entropy(F::linear(h_fe, Wf, bf), f.batch.fe_labels,
                               F::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto w_au = torch::sigmoid(F::linear(h_au.detach(), v, c).squeeze(1) + t[0]);
  auto w_fe = torch::sigmoid(F::linear(h_fe.detach(), v, c).squeeze(1) + t[1]);
  auto s = w_au.mean() + w_fe.mean();
  auto loss = (w_au / s * l_au).mean() + (w_fe / s * l_fe).mean();
  auto g = torch::autograd::grad({loss}, {Wc, bc, gamma, beta, Wa, ba}, {}, true, true);
  auto h_v = features(f.val.images, Wc - kAlpha * g[0], bc - kAlpha * g[1],
                      gamma - kAlpha * g[2], beta - kAlpha * g[3]);
  auto z_v = F::linear(h_v, Wa - kAlpha * g[4], ba - kAlpha * g[5]);
  auto lv = RebalancedAuLoss(z_v, f.val.labels, f.val.mask, f.val.pos_weight);
  // In the order of the meta net's parameters().
  std::map<std::string, torch::Tensor> by_name = {
      {"linear.weight", v}, {"linear.bias", c}, {"task_bias", t}};
  std::vector<torch::Tensor> inputs;
  for (const auto& p : f.meta->named_parameters()) inputs.push_back(by_name.at(p.key()));
  return torch::autograd::grad({lv}, inputs);
}

TEST_P(ExactTest, ShadowCopyEqualsFunctionalComputationWithBatchNorm) {
  // Equal AU and FE batch sizes: swapping the two tasks' weights would keep every shape right.
  Fixture f = Make("tiny", /*random_meta=*/true, 13, /*n_fe=*/5, /*task_bias=*/true);
  const auto functional = FunctionalMetaGradientBatchNorm(f);
  MalStep step(f.model, f.shadow, f.meta);
  StepOptions o;
  o.exact_jvp = GetParam();
  const auto shadow = step.MetaGradient(f.batch, f.val, kAlpha, o);
  ASSERT_EQ(shadow.size(), 3u);
  for (size_t p = 0; p < 3; ++p) {
    EXPECT_GT(functional[p].abs().max().item<double>(), 1e-8) << p;
    EXPECT_TRUE(torch::allclose(shadow[p], functional[p], 1e-10, 1e-14)) << p;
  }
}

INSTANTIATE_TEST_SUITE_P(VjpAndJvp, ExactTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Jvp" : "Vjp"; });

TEST(MalStepTest, JvpEqualsVjpWithBatchNorm) {
  Fixture f = Make("tiny", /*random_meta=*/true, 12);
  MalStep step(f.model, f.shadow, f.meta);
  StepOptions o;
  o.exact_jvp = false;
  const auto vjp = step.MetaGradient(f.batch, f.val, kAlpha, o);
  o.exact_jvp = true;
  const auto jvp = step.MetaGradient(f.batch, f.val, kAlpha, o);
  for (size_t p = 0; p < 2; ++p) EXPECT_TRUE(torch::allclose(jvp[p], vjp[p], 1e-10, 1e-14)) << p;
  o.joint_forward = true;
  const auto joint_jvp = step.MetaGradient(f.batch, f.val, kAlpha, o);
  o.exact_jvp = false;
  const auto joint_vjp = step.MetaGradient(f.batch, f.val, kAlpha, o);
  for (size_t p = 0; p < 2; ++p) {
    EXPECT_TRUE(torch::allclose(joint_jvp[p], joint_vjp[p], 1e-10, 1e-14)) << p;
  }
}

TEST(MalStepTest, HeadsOnlyEqualsFunctionalHeadsOnly) {
  Fixture f = Make("mlp", /*random_meta=*/true, 4);
  const auto functional = FunctionalMetaGradient(f, /*heads_only=*/true);
  MalStep step(f.model, f.shadow, f.meta);
  StepOptions o;
  o.mode = MetaMode::kHeadsOnly;
  const auto heads = step.MetaGradient(f.batch, f.val, kAlpha, o);
  for (size_t p = 0; p < 2; ++p) {
    EXPECT_TRUE(torch::allclose(heads[p], functional[p], 1e-12, 1e-14)) << p;
  }
}

double Cosine(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  auto x = torch::cat({a[0].view(-1), a[1].view(-1)}), y = torch::cat({b[0].view(-1), b[1].view(-1)});
  return (x.dot(y) / (x.norm() * y.norm())).item<double>();
}

TEST(MalStepTest, FiniteDifferenceIsCloseToExact) {
  Fixture f = Make("tiny", /*random_meta=*/true, 5);
  MalStep step(f.model, f.shadow, f.meta);
  const auto exact = step.MetaGradient(f.batch, f.val, kAlpha, StepOptions{});
  StepOptions o;
  o.mode = MetaMode::kFiniteDifference;
  o.fd_epsilon = 1e-4;
  const auto fd = step.MetaGradient(f.batch, f.val, kAlpha, o);
  EXPECT_GT(Cosine(exact, fd), 0.9999);
}

TEST(MalStepTest, LookaheadEqualsFunctionalFirstOrderComputation) {
  Fixture f = Make("mlp", /*random_meta=*/true, 7);
  const auto one_step = FunctionalMetaGradient(f, /*heads_only=*/false);
  const auto functional = FunctionalMetaGradient(f, /*heads_only=*/false, /*lookahead_steps=*/3);
  MalStep step(f.model, f.shadow, f.meta);
  StepOptions o;
  o.lookahead_steps = 3;
  const auto shadow = step.MetaGradient(f.batch, f.val, kAlpha, o);
  for (size_t p = 0; p < 2; ++p) {
    EXPECT_TRUE(torch::allclose(shadow[p], functional[p], 1e-10, 1e-14)) << p;
    // Three steps ahead is not one step ahead (the option is not ignored).
    EXPECT_FALSE(torch::allclose(functional[p], one_step[p], 1e-3, 0)) << p;
  }
  o.mode = MetaMode::kFiniteDifference;
  o.fd_epsilon = 1e-4;
  EXPECT_GT(Cosine(shadow, step.MetaGradient(f.batch, f.val, kAlpha, o)), 0.9999);
  // The model's parameters are untouched: the lookahead happens in the shadow.
  o.mode = MetaMode::kExact;
  EXPECT_TRUE(torch::allclose(step.MetaGradient(f.batch, f.val, kAlpha, o)[0], shadow[0], 1e-12,
                              1e-14));
}

TEST(MalStepTest, ZeroInitGivesHalfWeightsAndZeroBiasGradient) {
  Fixture f = Make("tiny", /*random_meta=*/false, 6);
  auto w = f.meta->forward(f.model->Features(f.batch.au_images));
  EXPECT_TRUE(torch::allclose(w, torch::full_like(w, 0.5)));
  MalStep step(f.model, f.shadow, f.meta);
  const auto g = step.MetaGradient(f.batch, f.val, kAlpha, StepOptions{});
  EXPECT_LT(g[1].abs().item<double>(), 1e-15);        // the bias: a common scale cancels
  EXPECT_GT(g[0].abs().max().item<double>(), 1e-10);  // v learns
}

// mal.au_weighting: task and task_in_base_step. The base step gives every AU frame of the batch one
// weight, the mean of the meta net's weights for the batch's frames, while the FE images keep
// their own; sample (the paper) weighs every AU frame apart.
TEST(MalStepTest, TaskAuWeightingGivesEveryAuFrameTheBatchMeanWeight) {
  for (AuWeighting weighting :
       {AuWeighting::kSample, AuWeighting::kTask, AuWeighting::kTaskInBaseStep}) {
    const bool au_task = weighting != AuWeighting::kSample;
    Fixture f = Make("mlp", /*random_meta=*/true, 9, 4, /*task_bias=*/true);  // no BatchNorm
    // The meta net's own weights for the AU frames (no meta update below, so the step uses them).
    torch::Tensor per_frame;
    {
      torch::NoGradGuard g;
      per_frame = f.meta->forward(f.model->Features(f.batch.au_images), MetaNetImpl::kAuTask);
    }
    MalStep step(f.model, f.shadow, f.meta);
    torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(kAlpha));
    StepOptions o;
    o.au_weighting = weighting;
    o.update_meta = false;
    auto stats = step.Run(f.batch, &f.val, kAlpha, o, base, nullptr);
    ASSERT_TRUE(stats.ok()) << stats.status();
    ASSERT_EQ(stats->w_au.size(0), 5);
    const double au_spread = (stats->w_au.max() - stats->w_au.min()).item<double>();
    if (au_task) {
      EXPECT_LT(au_spread, 1e-15);
      EXPECT_NEAR(stats->w_au[0].item<double>(), per_frame.mean().item<double>(), 1e-12);
      EXPECT_GT((per_frame.max() - per_frame.min()).item<double>(), 1e-3);  // a mean, not a copy
    } else {
      EXPECT_TRUE(torch::allclose(stats->w_au, per_frame, 0, 1e-12));
      EXPECT_GT(au_spread, 1e-3);  // the same start weighs the AU frames apart without it
    }
    EXPECT_GT((stats->w_fe.max() - stats->w_fe.min()).item<double>(), 1e-3);  // FE: per image
    EXPECT_NEAR(stats->mean_wn_au + stats->mean_wn_fe, 1.0, 1e-9);
  }
}

// mal.au_weighting: task_in_base_step. The meta net learns from the paper's virtual step (per-frame
// AU weights): its meta-gradient is the sample form's to the last bit, and not the task form's.
// Every meta mode: exact by VJP and by JVP, finite_difference, heads_only.
TEST(MalStepTest, TaskInBaseStepLearnsFromThePerFrameVirtualStep) {
  const std::pair<MetaMode, bool> modes[] = {{MetaMode::kExact, false},  // (mode, exact_jvp)
                                             {MetaMode::kExact, true},
                                             {MetaMode::kFiniteDifference, false},
                                             {MetaMode::kHeadsOnly, false}};
  for (const auto& [mode, jvp] : modes) {
    SCOPED_TRACE(static_cast<int>(mode) * 2 + jvp);
    Fixture f = Make("tiny", /*random_meta=*/true, 0, 4, /*task_bias=*/true);
    MalStep step(f.model, f.shadow, f.meta);
    StepOptions sample;
    sample.mode = mode;
    sample.exact_jvp = jvp;
    StepOptions task = sample, in_base = sample;
    task.au_weighting = AuWeighting::kTask;
    in_base.au_weighting = AuWeighting::kTaskInBaseStep;
    const auto g_sample = step.MetaGradient(f.batch, f.val, kAlpha, sample);
    const auto g_task = step.MetaGradient(f.batch, f.val, kAlpha, task);
    const auto g_in_base = step.MetaGradient(f.batch, f.val, kAlpha, in_base);
    ASSERT_EQ(g_in_base.size(), g_sample.size());
    double task_difference = 0;
    for (size_t p = 0; p < g_sample.size(); ++p) {
      EXPECT_TRUE(torch::equal(g_in_base[p], g_sample[p])) << "param " << p;
      const double difference = (g_task[p] - g_sample[p]).abs().max().item<double>();
      task_difference = std::max(task_difference, difference);
    }
    EXPECT_GT(task_difference, 1e-8);  // the fixture tells the two virtual steps apart
  }
}

// mal.task_balance: fixed_in_base_step. The real step divides each task's weights by their own batch
// mean: theta moves by exactly -alpha grad[mean(w_au / mean w_au * l_au) + mean(w_fe / mean w_fe *
// l_fe)] (a functional reference on a network without BatchNorm), not by the paper's one
// normalisation; the meta net learns from the paper's virtual step (its meta-gradient is kMeta's to
// the last bit, every mode).
TEST(MalStepTest, FixedTaskBalanceNormalisesEachTaskInTheBaseStepOnly) {
  for (AuWeighting weighting : {AuWeighting::kSample, AuWeighting::kTaskInBaseStep}) {
    SCOPED_TRACE(static_cast<int>(weighting));
    Fixture f = Make("mlp", /*random_meta=*/true, 11, 4, /*task_bias=*/true);  // no BatchNorm
    std::vector<torch::Tensor> expected, before;
    torch::Tensor w_au, w_fe;
    {
      auto params = f.model->parameters();
      auto h_au = f.model->Features(f.batch.au_images);
      auto h_fe = f.model->Features(f.batch.fe_images);
      auto l_au = PerSampleAuLoss(f.model->au_head(h_au), f.batch.au_labels, f.batch.au_mask);
      auto l_fe = PerSampleFeLoss(f.model->fe_head(h_fe), f.batch.fe_labels);
      {
        torch::NoGradGuard g;
        w_au = f.meta->forward(h_au, MetaNetImpl::kAuTask);
        w_fe = f.meta->forward(h_fe, MetaNetImpl::kFeTask, f.batch.fe_labels);
      }
      torch::Tensor applied_au = w_au;
      if (weighting == AuWeighting::kTaskInBaseStep) applied_au = w_au.mean().expand({5});
      auto loss =
          (applied_au / applied_au.mean() * l_au).mean() + (w_fe / w_fe.mean() * l_fe).mean();
      auto g = torch::autograd::grad({loss}, params, {}, false, false, true);
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        before.push_back(params[i].clone());
        expected.push_back(g[i].defined() ? params[i] - kAlpha * g[i] : params[i].clone());
      }
    }
    MalStep step(f.model, f.shadow, f.meta);
    StepOptions meta_balance;
    meta_balance.au_weighting = weighting;
    StepOptions fixed = meta_balance;
    fixed.task_balance = TaskBalance::kFixedInBaseStep;
    const std::pair<MetaMode, bool> modes[] = {{MetaMode::kExact, true},  // (mode, exact_jvp)
                                               {MetaMode::kExact, false},
                                               {MetaMode::kFiniteDifference, false},
                                               {MetaMode::kHeadsOnly, false}};
    for (const auto& [mode, jvp] : modes) {
      meta_balance.mode = fixed.mode = mode;
      meta_balance.exact_jvp = fixed.exact_jvp = jvp;
      const auto g_meta = step.MetaGradient(f.batch, f.val, kAlpha, meta_balance);
      const auto g_fixed = step.MetaGradient(f.batch, f.val, kAlpha, fixed);
      ASSERT_EQ(g_fixed.size(), g_meta.size());
      for (size_t p = 0; p < g_meta.size(); ++p) EXPECT_TRUE(torch::equal(g_fixed[p], g_meta[p]));
    }
    fixed.mode = MetaMode::kExact;
    fixed.exact_jvp = true;
    fixed.update_meta = false;  // the step applies the weights computed above
    torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(kAlpha));
    auto stats = step.Run(f.batch, &f.val, kAlpha, fixed, base, nullptr);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_NEAR(stats->mean_wn_au, 1.0, 1e-12);
    EXPECT_NEAR(stats->mean_wn_fe, 1.0, 1e-12);
    EXPECT_TRUE(torch::allclose(stats->w_fe, w_fe, 0, 1e-12));
    const auto after = f.model->parameters();
    double moved = 0;
    for (size_t i = 0; i < after.size(); ++i) {
      EXPECT_TRUE(torch::allclose(after[i], expected[i], 0, 1e-12)) << "param " << i;
      moved = std::max(moved, (after[i] - before[i]).abs().max().item<double>());
    }
    EXPECT_GT(moved, 1e-4);
    // The paper's normalisation would have moved theta elsewhere: the weights' task means differ.
    EXPECT_GT(std::abs(w_au.mean().item<double>() - w_fe.mean().item<double>()), 0.05);
  }
}

TEST(MalStepTest, LabelAwareMetaNetStartsAtHalfAndLearnsOnlyTheRowsOfLabelsItSaw) {
  Fixture f = Make("tiny", /*random_meta=*/false, 6, 4, /*task_bias=*/true, /*label_aware=*/true);
  f.batch.fe_labels = torch::tensor({1, 1, 4, 4}, torch::kLong);
  const auto h_fe = f.model->Features(f.batch.fe_images);
  auto w = f.meta->forward(h_fe, MetaNetImpl::kFeTask, f.batch.fe_labels);
  EXPECT_TRUE(torch::allclose(w, torch::full_like(w, 0.5)));
  EXPECT_THROW(f.meta->forward(h_fe, MetaNetImpl::kFeTask), c10::Error);  // FE needs its labels
  MalStep step(f.model, f.shadow, f.meta);
  const auto g = step.MetaGradient(f.batch, f.val, kAlpha, StepOptions{});
  auto phi = f.meta->named_parameters();
  size_t rows = 0;
  while (!phi[rows].value().is_same(f.meta->fe_label->weight)) ++rows;
  const torch::Tensor row_norms = g[rows].abs().sum(1);  // 7 classes x D
  for (int c = 0; c < 7; ++c) {
    if (c == 1 || c == 4) {
      EXPECT_GT(row_norms[c].item<double>(), 1e-10) << "class " << c;
    } else {
      EXPECT_EQ(row_norms[c].item<double>(), 0.0) << "class " << c;
    }
  }
}

TEST(MalStepTest, LossInputMetaNetStandardisesEachTasksLossAndRunTracksTheirStatistics) {
  MetaNet meta(4, /*with_task_bias=*/false, /*center=*/false, 0, /*loss_input=*/true);
  meta->to(torch::kDouble);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const torch::Tensor h = torch::randn({3, 4}, opts);
  const torch::Tensor loss = torch::tensor({0.5, 1.0, 3.0}, opts);
  EXPECT_TRUE(torch::allclose(meta->forward(h, MetaNetImpl::kFeTask, {}, loss),
                              torch::full({3}, 0.5, opts)));  // zero-initialised: 0.5 everywhere
  EXPECT_THROW(meta->forward(h, MetaNetImpl::kFeTask), c10::Error);  // it needs the losses
  // First update sets the task's statistics, later ones move them by the momentum; the other
  // task's stay.
  meta->UpdateLossStatistics(loss, MetaNetImpl::kFeTask);
  EXPECT_NEAR(meta->loss_mean[1].item<double>(), 1.5, 1e-12);
  EXPECT_NEAR(meta->loss_square_mean[1].item<double>(), (0.25 + 1.0 + 9.0) / 3, 1e-12);
  meta->UpdateLossStatistics(torch::tensor({2.5}, opts), MetaNetImpl::kFeTask, 0.5);
  EXPECT_NEAR(meta->loss_mean[1].item<double>(), 2.0, 1e-12);
  EXPECT_NEAR(meta->loss_square_mean[1].item<double>(), (0.25 + 1.0 + 9.0) / 6 + 6.25 / 2, 1e-12);
  EXPECT_EQ(meta->loss_updates[0].item<int64_t>(), 0);
  EXPECT_EQ(meta->loss_mean[0].item<double>(), 0.0);
  // w = sigmoid(q (l - m) / s): with q < 0 a higher loss gives a lower weight; a loss at the
  // running mean (2.0) gives 0.5.
  {
    torch::NoGradGuard g;
    meta->loss_weight[1].fill_(-2.0);
  }
  const torch::Tensor w = meta->forward(torch::zeros({3, 4}, opts), MetaNetImpl::kFeTask, {},
                                        torch::tensor({2.0, 1.0, 3.0}, opts));
  const double s = std::sqrt((0.25 + 1.0 + 9.0) / 6 + 6.25 / 2 - 2.0 * 2.0);  // across batches: 5/6
  EXPECT_NEAR(w[0].item<double>(), 0.5, 1e-12);
  EXPECT_NEAR(w[1].item<double>(), 1 / (1 + std::exp(-2.0 / s)), 1e-12);
  EXPECT_NEAR(w[2].item<double>(), 1 / (1 + std::exp(2.0 / s)), 1e-12);
  // The statistics and q are saved and loaded with the meta net (a checkpoint).
  {
    std::stringstream buffer;
    torch::save(meta, buffer);
    MetaNet loaded(4, false, false, 0, true);
    loaded->to(torch::kDouble);
    torch::load(loaded, buffer);
    EXPECT_TRUE(torch::equal(loaded->loss_mean, meta->loss_mean));
    EXPECT_TRUE(torch::equal(loaded->loss_square_mean, meta->loss_square_mean));
    EXPECT_TRUE(torch::equal(loaded->loss_updates, meta->loss_updates));
    EXPECT_TRUE(torch::equal(loaded->loss_weight, meta->loss_weight));
  }
  // A MAL iteration updates both tasks' statistics from its own per-sample losses, learns q, and
  // its base step weighs with the updated statistics and q: the FE weights it applied equal the
  // meta net's after the iteration on the iteration's FE features and losses.
  Fixture f = Make("tiny", /*random_meta=*/false, 8, 4, /*task_bias=*/true, false, true);
  BaseNet before(f.model->config());
  before->to(torch::kDouble);
  CopyState(*f.model, *before);
  before->train();
  const torch::Tensor h_fe = before->Features(f.batch.fe_images).detach();
  const torch::Tensor l_fe =
      torch::nn::functional::cross_entropy(
          before->fe_head(h_fe), f.batch.fe_labels,
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
          .detach();
  MalStep step(f.model, f.shadow, f.meta);
  torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(0.1));
  torch::optim::SGD meta_opt(f.meta->parameters(), torch::optim::SGDOptions(1.0));
  auto stats = step.Run(f.batch, &f.val, 0.1, StepOptions{}, base, &meta_opt);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_NEAR(f.meta->loss_mean[0].item<double>(), stats->loss_au, 1e-12);
  EXPECT_NEAR(f.meta->loss_mean[1].item<double>(), stats->loss_fe, 1e-12);
  EXPECT_EQ(f.meta->loss_updates[0].item<int64_t>(), 1);
  EXPECT_GT(f.meta->loss_weight.abs().min().item<double>(), 0.0);  // each task's q moved
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::allclose(stats->w_fe, f.meta->forward(h_fe, MetaNetImpl::kFeTask, {}, l_fe),
                              1e-12, 1e-12));
}

TEST(MalStepTest, StepChangesMetaAndAdvancesBatchNormOncePerForward) {
  for (bool au_only : {true, false}) {
    Fixture f = Make("tiny", /*random_meta=*/false, 7);
    // Reference: the same model, only the meta-train forwards (the FE one only when it counts).
    BaseNetImpl::Config c = f.model->config();
    BaseNet reference(c);
    reference->to(torch::kDouble);
    CopyState(*f.model, *reference);
    reference->train();
    {
      torch::NoGradGuard g;
      reference->Features(f.batch.au_images);
      if (!au_only) reference->Features(f.batch.fe_images);
    }
    MalStep step(f.model, f.shadow, f.meta);
    torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(0.1));
    torch::optim::Adam meta_opt(f.meta->parameters(), torch::optim::AdamOptions(1e-2));
    const auto before = f.meta->linear->weight.clone();
    StepOptions o;
    o.bn_stats_au_only = au_only;
    auto stats = step.Run(f.batch, &f.val, 0.1, o, base, &meta_opt);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_FALSE(torch::equal(before, f.meta->linear->weight));
    EXPECT_GE(stats->loss_val, 0);
    EXPECT_NEAR(stats->mean_wn_au + stats->mean_wn_fe, 1.0, 1e-9);
    auto got = f.model->named_buffers(), want = reference->named_buffers();
    for (const char* name : {"backbone.bn.running_mean", "backbone.bn.running_var"}) {
      EXPECT_TRUE(torch::equal(got[name], want[name])) << name << " au_only " << au_only;
    }
    // The momenta are restored after the FE forward.
    EXPECT_EQ(f.model->named_modules()["backbone.bn"]->as<torch::nn::BatchNorm2d>()->options.momentum(),
              c10::optional<double>(0.1));
  }
}

TEST(MalStepTest, SgdMetaStepMovesPhiByMinusLearningRateTimesMetaGradient) {
  Fixture f = Make("mlp", /*random_meta=*/true, 14, 4, /*task_bias=*/true);  // no BatchNorm
  MalStep step(f.model, f.shadow, f.meta);
  const auto g = step.MetaGradient(f.batch, f.val, kAlpha, StepOptions{});
  std::vector<torch::Tensor> before;
  for (const auto& p : f.meta->parameters()) before.push_back(p.detach().clone());
  constexpr double kMetaLr = 0.7;
  torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(kAlpha));
  torch::optim::SGD meta_opt(f.meta->parameters(), torch::optim::SGDOptions(kMetaLr));
  ASSERT_TRUE(step.Run(f.batch, &f.val, kAlpha, StepOptions{}, base, &meta_opt).ok());
  const auto after = f.meta->parameters();
  for (size_t p = 0; p < after.size(); ++p) {
    EXPECT_GT(g[p].abs().max().item<double>(), 1e-8) << p;
    EXPECT_TRUE(torch::allclose(after[p], before[p] - kMetaLr * g[p], 1e-12, 1e-15)) << p;
  }
}

// StepStats::alignment_* (the weights CSV's `alignment` column) is, for every training sample,
// grad_theta l_i(theta) . grad L_v(theta'), computed here sample by sample with plain autograd.
TEST(MalStepTest, AlignmentIsEachSampleGradientDotTheValidationGradient) {
  Fixture f = Make("mlp", /*random_meta=*/true, 21, 4, /*task_bias=*/true);  // no BatchNorm
  ValLossAfterVirtualStep(f);  // the shadow now holds theta'
  f.shadow->train();
  const auto shadow_params = f.shadow->parameters();
  const auto lv = RebalancedAuLoss(f.shadow->forward(f.val.images), f.val.labels, f.val.mask,
                                   f.val.pos_weight);
  const auto r = torch::autograd::grad({lv}, shadow_params, {}, false, false, true);
  f.model->train();
  const auto params = f.model->parameters();
  const auto l_au = PerSampleAuLoss(f.model->au_head(f.model->Features(f.batch.au_images)),
                                    f.batch.au_labels, f.batch.au_mask);
  const auto l_fe = torch::nn::functional::cross_entropy(
      f.model->fe_head(f.model->Features(f.batch.fe_images)), f.batch.fe_labels,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto dot = [&](const torch::Tensor& l) {
    const auto g = torch::autograd::grad({l}, params, {}, /*retain_graph=*/true, false, true);
    double sum = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      if (g[i].defined() && r[i].defined()) sum += (g[i] * r[i]).sum().item<double>();
    }
    return sum;
  };
  std::vector<double> want_au, want_fe;
  for (int i = 0; i < 5; ++i) want_au.push_back(dot(l_au[i]));
  for (int i = 0; i < 4; ++i) want_fe.push_back(dot(l_fe[i]));

  MalStep step(f.model, f.shadow, f.meta);
  torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(kAlpha));
  torch::optim::SGD meta_opt(f.meta->parameters(), torch::optim::SGDOptions(0.1));
  auto stats = step.Run(f.batch, &f.val, kAlpha, StepOptions{}, base, &meta_opt);  // exact, JVP
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_TRUE(stats->alignment_au.defined() && stats->alignment_fe.defined());
  ASSERT_EQ(stats->alignment_au.numel(), 5);
  ASSERT_EQ(stats->alignment_fe.numel(), 4);
  double largest = 0;
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(stats->alignment_au[i].item<double>(), want_au[i], 1e-9 * (std::abs(want_au[i]) + 1e-6)) << i;
    largest = std::max(largest, std::abs(want_au[i]));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(stats->alignment_fe[i].item<double>(), want_fe[i], 1e-9 * (std::abs(want_fe[i]) + 1e-6)) << i;
    largest = std::max(largest, std::abs(want_fe[i]));
  }
  EXPECT_GT(largest, 1e-6);  // not a comparison of zeros

  // The VJP form never forms the per-sample products: no alignment.
  Fixture g = Make("mlp", /*random_meta=*/true, 21, 4, /*task_bias=*/true);
  MalStep vjp_step(g.model, g.shadow, g.meta);
  torch::optim::SGD base2(g.model->parameters(), torch::optim::SGDOptions(kAlpha));
  torch::optim::SGD meta_opt2(g.meta->parameters(), torch::optim::SGDOptions(0.1));
  StepOptions vjp;
  vjp.exact_jvp = false;
  auto vjp_stats = vjp_step.Run(g.batch, &g.val, kAlpha, vjp, base2, &meta_opt2);
  ASSERT_TRUE(vjp_stats.ok()) << vjp_stats.status();
  EXPECT_FALSE(vjp_stats->alignment_au.defined());
}

TEST(MalStepTest, MetaStepsLowerTheValidationLossAfterTheVirtualStep) {
  Fixture f = Make("tiny", /*random_meta=*/false, 15, 4, /*task_bias=*/true);
  MalStep step(f.model, f.shadow, f.meta);
  const double start = ValLossAfterVirtualStep(f);
  double previous = start;
  for (int i = 0; i < 5; ++i) {
    const auto g = step.MetaGradient(f.batch, f.val, kAlpha, StepOptions{});
    {
      torch::NoGradGuard no_grad;
      auto phi = f.meta->parameters();
      for (size_t p = 0; p < phi.size(); ++p) phi[p].sub_(g[p] * 1e3);  // gradient descent on phi
    }
    const double now = ValLossAfterVirtualStep(f);
    EXPECT_LT(now, previous) << "meta step " << i;
    previous = now;
  }
  EXPECT_LT(previous, start - 1e-7);
}

TEST(MalStepTest, CentredMetaNetSubtractsTheRunningFeatureMean) {
  MetaNet meta(3, /*with_task_bias=*/true, /*center=*/true);
  meta->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    meta->linear->weight.copy_(torch::tensor({{0.5, -1.0, 2.0}}, torch::kDouble));
    meta->linear->bias.fill_(0.1);
    meta->task_bias.copy_(torch::tensor({0.0, -0.3}, torch::kDouble));
  }
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const torch::Tensor a = torch::tensor({{1.0, 2.0, 3.0}, {3.0, 2.0, 1.0}}, opts);
  meta->UpdateFeatureMean(a);  // the first call sets mu = mean(a) = (2, 2, 2)
  EXPECT_TRUE(torch::allclose(meta->feature_mean.to(torch::kDouble), torch::full({3}, 2.0, opts)));
  meta->UpdateFeatureMean(torch::zeros({1, 3}, opts), 0.25);  // mu <- 0.75 mu
  EXPECT_TRUE(torch::allclose(meta->feature_mean.to(torch::kDouble), torch::full({3}, 1.5, opts)));
  const torch::Tensor h = torch::tensor({{1.5, 0.5, 2.5}}, opts);
  const double z = 0.5 * 0.0 - 1.0 * -1.0 + 2.0 * 1.0 + 0.1 - 0.3;
  EXPECT_NEAR(meta->forward(h, MetaNetImpl::kFeTask)[0].item<double>(), 1 / (1 + std::exp(-z)), 1e-7);
  // Without centring, mu stays 0: the paper's literal sigmoid(v . h + b).
  MetaNet plain(3);
  plain->UpdateFeatureMean(torch::ones({2, 3}));
  EXPECT_EQ(plain->feature_mean.abs().sum().item<double>(), 0.0);
}

TEST(MalStepTest, ValidationPositiveWeightsFollowTheMode) {
  const std::vector<double> rates{0.1, 0.5, 0.0, 0.01};
  const torch::Tensor full = ValidationPositiveWeights(rates, "inverse_frequency");
  EXPECT_TRUE(torch::allclose(full, torch::tensor({9.0f, 1.0f, 1.0f, 20.0f})));
  EXPECT_TRUE(torch::allclose(ValidationPositiveWeights(rates, "sqrt"), full.sqrt()));
  EXPECT_TRUE(torch::equal(ValidationPositiveWeights(rates, "none"), torch::ones({4})));
}

TEST(MalStepTest, PositiveWeightsBalanceEachAuAndLeaveAnAuWithoutPositivesAlone) {
  const torch::Tensor w = PositiveWeights({0.1, 0.5, 0.0, 1.0, 0.001, 0.9}, 20.0);
  const std::vector<double> want = {9.0, 1.0, 1.0, 1.0, 20.0, 1.0 / 9};
  for (size_t c = 0; c < want.size(); ++c) EXPECT_NEAR(w[c].item<double>(), want[c], 1e-6) << c;
}

TEST(MalStepTest, PositiveWeightScalesOnlyThePositiveTermOfTheAuLoss) {
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const torch::Tensor logits = torch::tensor({{0.3, -1.2}, {2.0, 0.5}}, opts);
  const torch::Tensor labels = torch::tensor({{1.0, 0.0}, {0.0, 1.0}}, opts);
  const torch::Tensor mask = torch::tensor({{1.0, 1.0}, {1.0, 0.0}}, opts);
  const torch::Tensor pos = torch::tensor({3.0, 5.0}, opts);
  auto sp = [](double x) { return std::log1p(std::exp(x)); };  // softplus: -log sigmoid(-x)
  // Frame 0: positive of AU a (weight 3), negative of AU b. Frame 1: negative of AU a only.
  const double l0 = (3.0 * sp(-0.3) + sp(-1.2)) / 2, l1 = sp(2.0);
  const torch::Tensor per_sample = PerSampleAuLoss(logits, labels, mask, pos);
  EXPECT_NEAR(per_sample[0].item<double>(), l0, 1e-12);
  EXPECT_NEAR(per_sample[1].item<double>(), l1, 1e-12);
  EXPECT_NEAR(RebalancedAuLoss(logits, labels, mask, pos).item<double>(),
              (3.0 * sp(-0.3) + sp(-1.2) + sp(2.0)) / 3, 1e-12);
  EXPECT_NEAR(PerSampleAuLoss(logits, labels, mask)[0].item<double>(), (sp(-0.3) + sp(-1.2)) / 2,
              1e-12);
}

TEST(MalStepTest, NoNanWhenWeightsVanish) {
  Fixture f = Make("tiny", /*random_meta=*/false, 8);
  {
    torch::NoGradGuard g;
    f.meta->linear->bias.fill_(-2000);  // sigmoid underflows to exactly 0
  }
  MalStep step(f.model, f.shadow, f.meta);
  torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(0.1));
  torch::optim::SGD meta_opt(f.meta->parameters(), torch::optim::SGDOptions(0.1));
  for (MetaMode mode : {MetaMode::kExact, MetaMode::kFiniteDifference, MetaMode::kHeadsOnly}) {
    StepOptions o;
    o.mode = mode;
    auto stats = step.Run(f.batch, &f.val, 0.1, o, base, &meta_opt);
    ASSERT_TRUE(stats.ok()) << stats.status();
    for (const auto& p : f.model->parameters()) ASSERT_TRUE(torch::isfinite(p).all().item<bool>());
    for (const auto& p : f.meta->parameters()) ASSERT_TRUE(torch::isfinite(p).all().item<bool>());
  }
}

TEST(MalStepTest, NonFiniteLossIsAnErrorAndChangesNothing) {
  Fixture f = Make("tiny", /*random_meta=*/false, 9);
  f.batch.au_images[0][0][0][0] = std::numeric_limits<double>::quiet_NaN();
  MalStep step(f.model, f.shadow, f.meta);
  torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(0.1));
  torch::optim::Adam meta_opt(f.meta->parameters(), torch::optim::AdamOptions(1e-2));
  const auto before = f.model->au_head->weight.clone();
  auto stats = step.Run(f.batch, &f.val, 0.1, StepOptions{}, base, &meta_opt);
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(std::string(stats.status().message()).find("non-finite"), std::string::npos);
  EXPECT_TRUE(torch::equal(before, f.model->au_head->weight));
}

TEST(MalStepTest, BaselinesTrain) {
  for (Method m : {Method::kStl, Method::kMtl}) {
    Fixture f = Make("tiny", false, 10);
    MalStep step(f.model, f.shadow, f.meta);
    torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(0.5));
    StepOptions o;
    o.method = m;
    double first = 0, last = 0;
    for (int i = 0; i < 30; ++i) {
      auto stats = step.Run(f.batch, nullptr, 0.5, o, base, nullptr);
      ASSERT_TRUE(stats.ok());
      (i == 0 ? first : last) = stats->loss_au;
    }
    EXPECT_LT(last, first);
  }
}

// One MTL step equals SGD on L_au + lambda L_fe computed by hand, for two lambdas; STL ignores FE.
TEST(MalStepTest, BaselineStepsFollowTheirLosses) {
  for (double lambda : {0.0, 0.3, 2.0}) {
    for (Method m : {Method::kStl, Method::kMtl}) {
      Fixture f = Make("tiny", false, 16);
      BaseNet reference(f.model->config());
      reference->to(torch::kDouble);
      CopyState(*f.model, *reference);
      reference->train();
      torch::Tensor loss = PerSampleAuLoss(reference->forward(f.batch.au_images), f.batch.au_labels,
                                           f.batch.au_mask)
                               .mean();
      if (m == Method::kMtl) {
        loss = loss + lambda * torch::nn::functional::cross_entropy(
                                   reference->fe_head(reference->Features(f.batch.fe_images)),
                                   f.batch.fe_labels);
      }
      torch::optim::SGD ref_opt(reference->parameters(), torch::optim::SGDOptions(0.2));
      ref_opt.zero_grad();
      loss.backward();
      ref_opt.step();

      MalStep step(f.model, f.shadow, f.meta);
      torch::optim::SGD base(f.model->parameters(), torch::optim::SGDOptions(0.2));
      StepOptions o;
      o.method = m;
      o.fe_lambda = lambda;
      ASSERT_TRUE(step.Run(f.batch, nullptr, 0.2, o, base, nullptr).ok());
      auto got = f.model->named_parameters(), want = reference->named_parameters();
      for (const auto& p : want) {
        EXPECT_TRUE(torch::allclose(got[p.key()], p.value(), 1e-12, 1e-14))
            << p.key() << " lambda " << lambda << " method " << static_cast<int>(m);
      }
    }
  }
}

}  // namespace
}  // namespace mal::engine
