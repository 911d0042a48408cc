// Over 400 lines on purpose: the training loop's steps are methods of one class sharing its state
// (nets, optimisers, loaders, position); its parts with their own state live beside it
// (training_data, run_output, checkpoint, evaluation).

#include "worker/engine/trainer.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/data/expression.h"
#include "common/image/transforms.h"
#include "common/metrics/au_metrics.h"
#include "common/spec/model_metadata.h"
#include "common/spec/spec.h"
#include "common/util/files.h"
#include "common/util/logging.h"
#include "common/util/random.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/device.h"
#include "worker/engine/evaluation.h"
#include "worker/engine/mal_step.h"
#include "worker/engine/models.h"
#include "worker/engine/run_output.h"
#include "worker/engine/torch_compat.h"
#include "worker/engine/torch_file.h"
#include "worker/engine/training_data.h"

namespace mal::engine {

namespace fs = std::filesystem;
using image::Batch;
using image::BatchLoader;

namespace {

using Clock = std::chrono::steady_clock;

// The weights' statistics and time of epoch `e.epoch` from its metrics.json line (`json`, as
// EpochJson writes it) into `e`: a run resumed after its last epoch evaluates the model again,
// which gives its F1 but not these. Nothing when the line is missing, unreadable or of another
// epoch.
void RestoreEpochStatistics(const std::string& json, EpochRecord& e) {
  google::protobuf::Struct line;
  if (json.empty() || !google::protobuf::util::JsonStringToMessage(json, &line).ok()) return;
  const auto& fields = line.fields();
  auto number = [&fields](const char* key) -> std::optional<double> {
    auto it = fields.find(key);
    if (it == fields.end() || !it->second.has_number_value()) return std::nullopt;
    return it->second.number_value();
  };
  if (number("epoch") != std::optional<double>(e.epoch)) return;
  e.mean_au_weight = number("mean_au_weight").value_or(e.mean_au_weight);
  e.mean_fe_weight = number("mean_fe_weight").value_or(e.mean_fe_weight);
  e.fe_weight_consistency_spearman =
      number("fe_weight_consistency_spearman").value_or(e.fe_weight_consistency_spearman);
  e.seconds = number("seconds").value_or(e.seconds);
  e.train_failed_images = static_cast<int64_t>(
      number("train_failed_images").value_or(static_cast<double>(e.train_failed_images)));
}

// The batch sizes `spec`'s method trains with (checkpoint.h).
Batches SpecBatches(const v1::ExperimentSpec& spec) {
  Batches b;
  b.au = spec.train().batch_au();
  if (spec.method() != v1::STL) b.fe = spec.train().batch_fe();
  if (spec.method() == v1::MAL) b.val = spec.mal().val_batch();
  return b;
}

void SetBatches(const Batches& b, v1::ExperimentSpec* spec) {
  spec->mutable_train()->set_batch_au(static_cast<int32_t>(b.au));
  if (b.fe > 0) spec->mutable_train()->set_batch_fe(static_cast<int32_t>(b.fe));
  if (b.val > 0) spec->mutable_mal()->set_val_batch(static_cast<int32_t>(b.val));
}

// Every batch halved, rounding down, none below 1 (an unused one stays 0): train.oom_retries.
Batches Halved(const Batches& b) {
  auto half = [](int64_t n) { return n > 0 ? std::max<int64_t>(1, n / 2) : n; };
  return Batches{half(b.au), half(b.fe), half(b.val)};
}

// Whether LibTorch's error `e` means that memory ran out: c10::OutOfMemoryError (CUDA), or the
// messages that a batch too large for the device gives otherwise, as Hugging Face Accelerate's
// should_reduce_batch_size reads them (cuDNN's NOT_SUPPORTED for convolutions too large for it,
// cuDNN / cuBLAS allocation failures, the CPU allocator's failure).
bool IsOutOfMemory(const c10::Error& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  const std::string what = e.what_without_backtrace();
  for (const char* sign :
       {"CUDA out of memory", "CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_ALLOC_FAILED",
        "CUBLAS_STATUS_ALLOC_FAILED", "DefaultCPUAllocator: can't allocate memory"}) {
    if (what.find(sign) != std::string::npos) return true;
  }
  return false;
}

// "batch 32 AU + 32 FE, validation batch 128", as OutOfMemoryMessage words it.
std::string DescribeBatches(const Batches& b) {
  std::string s = absl::StrCat("batch ", b.au, " AU");
  if (b.fe > 0) absl::StrAppend(&s, " + ", b.fe, " FE");
  if (b.val > 0) absl::StrAppend(&s, ", validation batch ", b.val);
  return s;
}

Method ToMethod(v1::Method m) {
  return m == v1::STL ? Method::kStl : (m == v1::MTL ? Method::kMtl : Method::kMal);
}

MetaMode ToMode(const std::string& m) {
  if (m == "finite_difference") return MetaMode::kFiniteDifference;
  if (m == "heads_only") return MetaMode::kHeadsOnly;
  return MetaMode::kExact;
}

AuWeighting ToAuWeighting(const std::string& w) {
  if (w == "task") return AuWeighting::kTask;
  if (w == "task_in_base_step") return AuWeighting::kTaskInBaseStep;
  return AuWeighting::kSample;
}

// Sets the learning rate of every parameter group of an SGD or Adam optimiser (the base net's and
// the meta net's).
void SetLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) {
    if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) sgd->lr(lr);
    if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&group.options())) adam->lr(lr);
  }
}

// One fold run from set-up to the exported model: each step of docs/engine.md's training loop is
// a method, and the state they share (data, nets, optimisers, loaders, position) are members.
class Training {
 public:
  explicit Training(const TrainOptions& options)
      : options_(options),
        spec_(options.spec),
        t_(options.spec.train()),
        method_(ToMethod(spec_.method())) {}

  absl::StatusOr<TrainResult> Run() {
    RETURN_IF_ERROR(SetUp());
    RETURN_IF_ERROR(Resume());
    if (options_.checkpoint_at_start && pos_.global_iter == 0) RETURN_IF_ERROR(Save());
    while (pos_.epoch <= t_.epochs()) RETURN_IF_ERROR(TrainEpoch());
    // Resumed after the last epoch had finished: the final metrics again, for the metadata and
    // the result; the weights' statistics and time of that epoch from its line in metrics.json.
    if (last_.epoch == 0) {
      ASSIGN_OR_RETURN(last_, Evaluate(t_.epochs()));
      RestoreEpochStatistics(log_->LastEpochJson(), last_);
    }
    return Export();
  }

 private:
  absl::Status SetUp();
  absl::Status MakeLoaders();
  void MakeStepOptions();
  absl::Status Resume();
  absl::Status TrainEpoch();
  // One iteration at learning rate `lr`; sets `*exhausted` when the AU loader ran out early.
  absl::Status Iterate(double lr, bool* exhausted);
  // MAL: the batch's weights into the summary window, alignments into the epoch's sums, and a
  // weight summary every log_every iterations.
  void RecordWeights(const StepStats& stats, const Batch& au, const Batch& fe,
                     const IterationRecord& r);
  absl::Status FinishEpoch(Clock::time_point start);
  // The epoch's test and validation figures; DataLoss when no image of the test part or of the
  // validation reserve decodes.
  absl::StatusOr<EpochRecord> Evaluate(int epoch);
  // Logs a training image left out of its batch, counted in the epoch's train_failed_images.
  void SkippedImages(const std::vector<std::string>& failures);
  absl::Status Save();
  absl::StatusOr<TrainResult> Export();

  const TrainOptions& options_;
  const v1::ExperimentSpec& spec_;
  const v1::TrainSpec& t_;
  const Method method_;
  torch::Device device_{torch::kCPU};
  Data data_;
  int num_aus_ = 0;
  uint64_t seed_ = 0;
  BaseNetImpl::Config config_;
  BaseNet model_{nullptr}, shadow_{nullptr};
  MetaNet meta_{nullptr};
  std::unique_ptr<torch::optim::SGD> base_opt_;
  std::unique_ptr<torch::optim::Optimizer> meta_opt_;
  double meta_lr_ = 0;  // this epoch's (mal.meta_schedule)
  std::unique_ptr<BatchLoader> au_train_, test_eval_, val_eval_, au_all_, fe_all_;
  std::unique_ptr<CyclingLoader> fe_train_, val_train_;
  torch::Tensor
      val_pos_weight_;  // L_v's positive weights (mal.val_pos_weight), also the reported loss's
  int64_t per_epoch_ = 0;
  std::string checkpoint_;
  Position pos_;
  std::string fe_draw_;  // FeDrawDigest of this run's FE draw ("none" without train.fe_weights)
  std::unique_ptr<RunLog> log_;
  std::unique_ptr<Progress> progress_;
  std::unique_ptr<MalStep> step_;
  StepOptions so_;
  // Samples weighted since the last summary; alignment sums of this epoch's meta updates.
  std::vector<std::pair<int64_t, double>> window_au_, window_fe_;
  AlignmentSums alignment_[2];  // AU, FE samples
  // Training images (AU, FE, reserve) left out this epoch, as their "path: reason".
  absl::flat_hash_set<std::string> epoch_failed_images_;
  EpochRecord last_;
};

absl::Status Training::SetUp() {
  RETURN_IF_ERROR(ValidateSpec(spec_));
  const int threads = t_.threads() > 0
                          ? t_.threads()
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  ASSIGN_OR_RETURN(device_, ParseDevice(t_.device(), "train.device"));
  // cuDNN picks the fastest convolution algorithms for the (fixed) batch shapes; on CUDA, runs are
  // then not bit-reproducible (same-seed determinism is a CPU guarantee, docs/engine.md).
  if (device_.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  // The data first: a run its data refuses leaves no run directory behind.
  ASSIGN_OR_RETURN(data_, LoadData(spec_, options_.fold));
  std::error_code ec;
  fs::create_directories(fs::path(options_.out_dir) / run_files::kWeightsDir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(options_.out_dir, ": ", ec.message()));
  // Temporary files of a run that was killed while writing (they never replaced anything).
  for (const auto& entry : fs::directory_iterator(options_.out_dir, ec)) {
    if (entry.path().filename().string().find(".tmp.") != std::string::npos)
      fs::remove(entry.path(), ec);
  }
  fe_draw_ = FeDrawDigest(data_.fe_train, !t_.fe_weights().empty());
  num_aus_ = static_cast<int>(data_.au.aus.size());
  seed_ = MixSeed(static_cast<uint64_t>(spec_.seed()), static_cast<uint64_t>(options_.fold));

  // Model, shadow, meta net, optimisers.
  torch::manual_seed(static_cast<int64_t>(seed_ & 0x7fffffffffffffffULL));
  config_.backbone = spec_.model().backbone();
  config_.num_aus = num_aus_;
  config_.num_expressions = data::kNumExpressions;
  config_.input = spec_.model().input();
  config_.feature_grid = spec_.model().feature_grid();
  model_ = BaseNet(config_);
  shadow_ = BaseNet(config_);
  meta_ = MetaNet(model_->feature_dim(), spec_.mal().task_bias(), spec_.mal().center_features(),
                  spec_.mal().label_aware() ? data::kNumExpressions : 0, spec_.mal().loss_input());
  if (!spec_.model().pretrained().empty()) {
    RETURN_IF_ERROR(LoadPretrainedBackbone(spec_.model().pretrained(), *model_));
  }
  model_->to(device_);
  shadow_->to(device_);
  meta_->to(device_);
  if (t_.channels_last()) {  // before the optimisers: they hold the same Parameters either way
    ToChannelsLast(*model_);
    ToChannelsLast(*shadow_);
  }
  base_opt_ = std::make_unique<torch::optim::SGD>(
      model_->parameters(),
      torch::optim::SGDOptions(t_.lr()).momentum(t_.momentum()).weight_decay(t_.weight_decay()));
  if (spec_.mal().meta_optimizer() == "sgd") {
    meta_opt_ = std::make_unique<torch::optim::SGD>(
        meta_->parameters(), torch::optim::SGDOptions(spec_.mal().meta_lr()));
  } else {
    meta_opt_ = std::make_unique<torch::optim::Adam>(
        meta_->parameters(), torch::optim::AdamOptions(spec_.mal().meta_lr()));
  }
  RETURN_IF_ERROR(MakeLoaders());
  val_pos_weight_ =
      ValidationPositiveWeights(data_.val_rates, spec_.mal().val_pos_weight()).to(device_);
  per_epoch_ = t_.max_iterations() > 0
                   ? std::min<int64_t>(t_.max_iterations(), au_train_->batches_per_epoch())
                   : au_train_->batches_per_epoch();
  checkpoint_ = (fs::path(options_.out_dir) / run_files::kCheckpoint).string();
  step_ = std::make_unique<MalStep>(model_, shadow_, meta_);
  MakeStepOptions();
  return absl::OkStatus();
}

absl::Status Training::MakeLoaders() {
  ASSIGN_OR_RETURN(au_train_, MakeLoader(data_.au, data_.fold.train, t_.batch_au(),
                                         LoaderKind::kTrain, spec_, seed_));
  if (method_ != Method::kStl) {
    ASSIGN_OR_RETURN(auto fe, MakeLoader(data_.fe, data_.fe_train, t_.batch_fe(),
                                         LoaderKind::kTrain, spec_, seed_ + 1));
    fe_train_ = std::make_unique<CyclingLoader>(std::move(fe));
  }
  if (method_ == Method::kMal) {
    ASSIGN_OR_RETURN(auto val, MakeLoader(data_.au, data_.fold.val, spec_.mal().val_batch(),
                                          LoaderKind::kMetaValidation, spec_, seed_ + 2));
    val_train_ = std::make_unique<CyclingLoader>(std::move(val));
    ASSIGN_OR_RETURN(au_all_, MakeLoader(data_.au, data_.fold.train, options_.eval_batch,
                                         LoaderKind::kEval, spec_, seed_));
    ASSIGN_OR_RETURN(fe_all_, MakeLoader(data_.fe, AllOf(data_.fe), options_.eval_batch,
                                         LoaderKind::kEval, spec_, seed_));
  }
  if (!data_.fold.test.empty()) {  // none for the final fit (fold 0)
    ASSIGN_OR_RETURN(test_eval_, MakeLoader(data_.au, data_.fold.test, options_.eval_batch,
                                            LoaderKind::kEval, spec_, seed_));
  }
  ASSIGN_OR_RETURN(val_eval_, MakeLoader(data_.au, data_.fold.val, options_.eval_batch,
                                         LoaderKind::kEval, spec_, seed_));
  return absl::OkStatus();
}

void Training::MakeStepOptions() {
  so_.method = method_;
  so_.mode = ToMode(spec_.mal().mode());
  so_.fe_lambda = t_.fe_lambda();
  so_.joint_forward = spec_.mal().joint_forward();
  so_.fd_epsilon = spec_.mal().fd_epsilon();
  so_.exact_jvp = spec_.mal().exact_method() != "vjp";
  so_.lookahead_steps = spec_.mal().lookahead_steps();
  so_.bn_stats_au_only = t_.bn_stats() != "all";
  so_.au_weighting = ToAuWeighting(spec_.mal().au_weighting());
  so_.task_balance = spec_.mal().task_balance() == "fixed_in_base_step"
                         ? TaskBalance::kFixedInBaseStep
                         : TaskBalance::kMeta;
  if (t_.au_pos_weight() == "inverse_frequency") {
    so_.au_pos_weight =
        PositiveWeights(data::PositiveRates(data_.au, data_.fold.train)).to(device_);
  }
}

absl::Status Training::Resume() {
  const bool resuming = options_.resume && fs::exists(checkpoint_);
  if (resuming) {
    ASSIGN_OR_RETURN(pos_,
                     LoadCheckpoint(checkpoint_, *model_, *meta_, *base_opt_, *meta_opt_, device_));
    // A spec edited between the stop and the resume (train.oom_retries' halvings are already
    // applied to spec_ by Train): say so rather than mix two batch sizes silently.
    if (pos_.batches != Batches{} && pos_.batches != SpecBatches(spec_)) {
      LOG(WARNING) << checkpoint_ << " was written with " << DescribeBatches(pos_.batches)
                   << "; the resumed run continues with the spec's "
                   << DescribeBatches(SpecBatches(spec_));
    }
    // train.fe_weights is read again at the resume: a CSV rewritten in between (or the field
    // set or unset) would change the FE draw under the loader's saved position. Refused, the
    // checkpoint kept; a checkpoint written before draws were recorded goes on.
    if (!pos_.fe_draw.empty() && pos_.fe_draw != fe_draw_) {
      if (pos_.fe_draw == "none" || t_.fe_weights().empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            checkpoint_, " was written ", t_.fe_weights().empty() ? "with" : "without",
            " train.fe_weights, and the spec now ", t_.fe_weights().empty() ? "unsets" : "sets",
            " it: resume with the spec the run started with, or start the run over"));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          checkpoint_, " was written training on another FE draw than train.fe_weights (",
          t_.fe_weights(),
          ") gives now: the weights file changed since the run started. Put "
          "back the file it started with to resume, or start the run over without resuming"));
    }
  }
  ASSIGN_OR_RETURN(log_, RunLog::Open(options_.out_dir, resuming ? pos_.global_iter : -1,
                                      pos_.epoch, t_.tensorboard()));
  progress_ = std::make_unique<Progress>(options_.progress, per_epoch_, t_.epochs());
  if (fe_train_) fe_train_->Start(pos_.fe_epoch, pos_.fe_next);
  if (val_train_) val_train_->Start(pos_.val_epoch, pos_.val_next);
  return absl::OkStatus();
}

absl::Status Training::Save() {
  pos_.batches = SpecBatches(spec_);
  pos_.fe_draw = fe_draw_;
  if (fe_train_) {
    pos_.fe_epoch = fe_train_->epoch();
    pos_.fe_next = fe_train_->next();
  }
  if (val_train_) {
    pos_.val_epoch = val_train_->epoch();
    pos_.val_next = val_train_->next();
  }
  return SaveCheckpoint(checkpoint_, *model_, *meta_, *base_opt_, *meta_opt_, pos_);
}

absl::StatusOr<EpochRecord> Training::Evaluate(int epoch) {
  // Images that do not decode are left out of the figures, said in the log and counted in
  // metrics.json; a part with no image that decodes has no figure at all.
  auto check = [epoch](const Evaluation& ev, const char* part) -> absl::Status {
    if (ev.failed == 0) return absl::OkStatus();
    if (ev.scored == 0) {
      return absl::DataLossError(absl::StrCat("epoch ", epoch, ": no image of the ", part,
                                              " decodes (", ev.failed,
                                              " failed; first: ", ev.first_failure, ")"));
    }
    LOG(WARNING) << "epoch " << epoch << ": " << ev.failed << " of the " << ev.failed + ev.scored
                 << " images of the " << part
                 << " did not decode and are not scored (first: " << ev.first_failure << ")";
    return absl::OkStatus();
  };
  EpochRecord e;
  e.epoch = epoch;
  e.iteration = pos_.global_iter;
  e.aus = data_.au.aus;
  if (test_eval_) {
    Evaluation test = engine::Evaluate(*model_, *test_eval_, val_pos_weight_, device_, num_aus_);
    RETURN_IF_ERROR(check(test, "test part"));
    e.test_f1 = test.f1.PerAu();
    e.test_mean_f1 = test.f1.Mean();
    e.test_failed_images = test.failed;
  } else {
    e.test_mean_f1 = -1;  // no test part
  }
  Evaluation val = engine::Evaluate(*model_, *val_eval_, val_pos_weight_, device_, num_aus_);
  RETURN_IF_ERROR(check(val, "validation reserve"));
  e.val_failed_images = val.failed;
  e.val_f1 = val.f1.PerAu();
  e.val_mean_f1 = val.f1.Mean();
  e.val_loss = val.loss;
  return e;
}

absl::Status Training::TrainEpoch() {
  const auto start = Clock::now();
  const double lr = LearningRate(t_, static_cast<int>(pos_.epoch));
  SetLearningRate(*base_opt_, lr);
  meta_lr_ = spec_.mal().meta_lr() * (spec_.mal().meta_schedule() == "follow" ? lr / t_.lr() : 1.0);
  if (meta_opt_) SetLearningRate(*meta_opt_, meta_lr_);
  au_train_->StartEpoch(pos_.epoch, pos_.au_next);
  bool exhausted = false;
  while (pos_.iter_in_epoch < per_epoch_ && !exhausted) {
    if (options_.should_stop && options_.should_stop()) {
      RETURN_IF_ERROR(Save());
      return absl::CancelledError(
          absl::StrCat("stopped at iteration ", pos_.global_iter, "; checkpoint saved"));
    }
    RETURN_IF_ERROR(Iterate(lr, &exhausted));
  }
  if (exhausted) {
    SkippedImages(au_train_->TakeFailures());  // batches at the end that none decoded in
    if (pos_.iter_in_epoch == 0) {
      return absl::DataLossError(
          absl::StrCat("epoch ", pos_.epoch, ": no AU training image of fold ", options_.fold,
                       " decodes (", epoch_failed_images_.size(), " failed; the log names them)"));
    }
    LOG(WARNING) << "epoch " << pos_.epoch << " ends after " << pos_.iter_in_epoch << " of "
                 << per_epoch_ << " iterations: AU training images did not decode";
  }
  return FinishEpoch(start);
}

void Training::SkippedImages(const std::vector<std::string>& failures) {
  // The FE and reserve loaders cycle (the reserve several times an epoch): an image is counted,
  // and logged, once per epoch however often it was drawn.
  for (const auto& f : failures) {
    if (epoch_failed_images_.insert(f).second) LOG(WARNING) << "skipped image: " << f;
  }
}

absl::Status Training::Iterate(double lr, bool* exhausted) {
  const auto start = Clock::now();
  std::optional<Batch> au = au_train_->Next();
  if (!au) {  // fewer usable batches than planned (corrupt images)
    *exhausted = true;
    return absl::OkStatus();
  }
  pos_.au_next = au->number + 1;
  SkippedImages(au->failures);
  // N x 3 x H x W on the device, NHWC in memory with train.channels_last.
  auto images = [this](Batch& b) {
    torch::Tensor x = Images(b, device_);
    return t_.channels_last() ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
  };
  TrainBatch batch;
  batch.au_images = images(*au);
  batch.au_labels = AuTensor(au->au_labels, au->size, device_);
  batch.au_mask = AuTensor(au->au_mask, au->size, device_);
  std::optional<Batch> fe;
  if (fe_train_) {
    fe = fe_train_->Next();
    if (!fe) return absl::DataLossError("data.fe: no image of the expression data decodes");
    SkippedImages(fe->failures);
    batch.fe_images = images(*fe);
    batch.fe_labels =
        torch::from_blob(fe->expressions.data(), {fe->size}, torch::kLong).to(device_);
  }
  so_.update_meta = method_ == Method::kMal && pos_.global_iter % spec_.mal().meta_interval() == 0;
  std::optional<Batch> vb;
  ValBatch val;
  if (so_.update_meta) {
    vb = val_train_->Next();
    if (!vb) return absl::DataLossError("validation reserve: no image decodes");
    SkippedImages(vb->failures);
    val.images = images(*vb);
    val.labels = AuTensor(vb->au_labels, vb->size, device_);
    val.mask = AuTensor(vb->au_mask, vb->size, device_);
    val.pos_weight = val_pos_weight_;
  }
  std::optional<AutocastGuard> autocast;  // this iteration's forwards and backwards only
  if (t_.precision() == "bf16-mixed") autocast.emplace(device_.type(), torch::kBFloat16);
  absl::StatusOr<StepStats> stats =
      step_->Run(batch, so_.update_meta ? &val : nullptr, lr, so_, *base_opt_, meta_opt_.get());
  autocast.reset();
  if (!stats.ok()) {
    return absl::Status(stats.status().code(),
                        absl::StrCat("epoch ", pos_.epoch, " iteration ", pos_.global_iter + 1,
                                     ": ", stats.status().message(), "; last checkpoint kept"));
  }
  ++pos_.iter_in_epoch;
  ++pos_.global_iter;
  IterationRecord r;
  r.epoch = static_cast<int>(pos_.epoch);
  r.iteration = pos_.global_iter;
  r.loss_au = stats->loss_au;
  r.loss_fe = stats->loss_fe;
  r.loss_val = stats->loss_val;
  r.mean_w_au = stats->mean_w_au;
  r.mean_w_fe = stats->mean_w_fe;
  r.mean_wn_au = stats->mean_wn_au;
  r.mean_wn_fe = stats->mean_wn_fe;
  r.lr = lr;
  r.meta_lr = method_ == Method::kMal ? meta_lr_ : 0;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  log_->Iteration(r);
  if (options_.sink) options_.sink->OnIteration(r);
  progress_->Iteration(r, pos_.iter_in_epoch, t_.log_every());
  if (method_ == Method::kMal) RecordWeights(*stats, *au, *fe, r);
  if (pos_.global_iter % t_.checkpoint_every() == 0) RETURN_IF_ERROR(Save());
  return absl::OkStatus();
}

void Training::RecordWeights(const StepStats& stats, const Batch& au, const Batch& fe,
                             const IterationRecord& r) {
  const torch::Tensor wa = stats.w_au.to(torch::kDouble).contiguous();
  const torch::Tensor wf = stats.w_fe.to(torch::kDouble).contiguous();
  for (int i = 0; i < au.size; ++i)
    window_au_.emplace_back(au.samples[i], wa.data_ptr<double>()[i]);
  for (int i = 0; i < fe.size; ++i)
    window_fe_.emplace_back(fe.samples[i], wf.data_ptr<double>()[i]);
  if (stats.alignment_au.defined()) {
    auto add = [](AlignmentSums& sums, const Batch& b, const torch::Tensor& d) {
      const torch::Tensor x = d.to(torch::kDouble).contiguous();
      for (int i = 0; i < b.size; ++i) {
        auto& [sum, n] = sums[b.samples[i]];
        sum += x.data_ptr<double>()[i];
        ++n;
      }
    };
    add(alignment_[0], au, stats.alignment_au);
    add(alignment_[1], fe, stats.alignment_fe);
  }
  if (pos_.global_iter % t_.log_every() != 0) return;
  WeightSummary s;
  s.epoch = r.epoch;
  s.iteration = r.iteration;
  std::vector<double> w_au, w_fe;
  for (auto& [i, w] : window_au_) w_au.push_back(w);
  for (auto& [i, w] : window_fe_) w_fe.push_back(w);
  for (double q : WeightSummary::kQuantiles) {
    s.au_quantiles.push_back(Quantile(w_au, q));
    s.fe_quantiles.push_back(Quantile(w_fe, q));
  }
  std::sort(window_fe_.begin(), window_fe_.end(),
            [](auto& a, auto& b) { return a.second < b.second; });
  auto sample = [&](const std::pair<int64_t, double>& x) {
    const data::Sample& smp = data_.fe.samples[x.first];
    return SampleWeight{smp.id, smp.expression, smp.consistency, x.second};
  };
  for (size_t k = 0; k < std::min<size_t>(5, window_fe_.size()); ++k) {
    s.lowest_fe.push_back(sample(window_fe_[k]));
    s.highest_fe.push_back(sample(window_fe_[window_fe_.size() - 1 - k]));
  }
  log_->Summary(s);
  if (options_.sink) options_.sink->OnWeightSummary(s);
  window_au_.clear();
  window_fe_.clear();
}

// End of epoch: evaluate, per-sample weights, metrics, checkpoint at the start of the next epoch.
absl::Status Training::FinishEpoch(Clock::time_point start) {
  ASSIGN_OR_RETURN(EpochRecord e, Evaluate(static_cast<int>(pos_.epoch)));
  e.train_failed_images = static_cast<int64_t>(epoch_failed_images_.size());
  if (method_ == Method::kMal) {
    AllWeights w =
        ComputeAllWeights(*model_, *meta_, *au_all_, data_.au, *fe_all_, data_.fe, alignment_,
                          device_, so_.au_weighting != AuWeighting::kSample, so_.au_pos_weight,
                          so_.task_balance == TaskBalance::kFixedInBaseStep);
    alignment_[0].clear();
    alignment_[1].clear();
    e.mean_au_weight = w.mean_au;
    e.mean_fe_weight = w.mean_fe;
    e.fe_weight_consistency_spearman = w.spearman;
    e.weights_csv = (fs::path(options_.out_dir) / run_files::WeightsCsv(e.epoch)).string();
    RETURN_IF_ERROR(WriteFileAtomic(e.weights_csv, w.csv));
  }
  e.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  RETURN_IF_ERROR(log_->Epoch(e));
  progress_->Epoch(e);
  if (options_.sink) options_.sink->OnEpoch(e);
  last_ = e;
  ++pos_.epoch;
  epoch_failed_images_.clear();
  pos_.iter_in_epoch = 0;
  pos_.au_next = 0;
  return Save();
}

// The model: weights (model.pt) and metadata (model.json), each through a temporary file.
absl::StatusOr<TrainResult> Training::Export() {
  TrainResult result;
  result.final_epoch = last_;
  result.iterations = pos_.global_iter;
  result.model_path = (fs::path(options_.out_dir) / run_files::kModel).string();
  result.metadata_path = (fs::path(options_.out_dir) / run_files::kModelMetadata).string();
  {
    const std::string tmp = absl::StrCat(result.model_path, ".tmp.", ::getpid());
    torch::serialize::OutputArchive archive;
    model_->save(archive);
    archive.save_to(tmp);
    std::error_code ec;
    fs::rename(tmp, result.model_path, ec);
    if (ec) return absl::DataLossError(absl::StrCat(result.model_path, ": ", ec.message()));
  }
  image::TransformOptions norm;
  v1::ModelMetadata m;
  m.set_format(kModelFormat);
  m.set_backbone(config_.backbone);
  for (int au : data_.au.aus) m.add_aus(au);
  m.set_input(spec_.model().input());
  m.set_resize(spec_.model().resize());
  m.set_feature_grid(static_cast<int32_t>(config_.feature_grid));
  for (int c = 0; c < 3; ++c) {
    m.add_mean(norm.mean[c]);
    m.add_std(norm.std[c]);
  }
  std::vector<double> thresholds(static_cast<size_t>(num_aus_), 0.5);
  if (t_.tune_thresholds()) {
    // F1-best per AU on the validation reserve: never the test subjects.
    EvaluationOutputs val;
    (void)engine::Evaluate(*model_, *val_eval_, val_pos_weight_, device_, num_aus_, &val);
    thresholds = TuneThresholds(val.probs, val.labels, val.mask, static_cast<int>(num_aus_));
    LOG(INFO) << "thresholds tuned on the validation reserve ("
              << val.probs.size() / std::max<int64_t>(num_aus_, 1)
              << " samples): " << absl::StrJoin(thresholds, " ");
  }
  for (double t : thresholds) m.add_thresholds(t);
  (void)google::protobuf::util::JsonStringToMessage(EpochJson(last_), m.mutable_metrics());
  if (t_.tune_thresholds() && test_eval_) {
    // What the tuned thresholds do on the test subjects, beside the 0.5 figure of the metrics.
    EvaluationOutputs test;
    (void)engine::Evaluate(*model_, *test_eval_, val_pos_weight_, device_, num_aus_, &test);
    for (size_t i = 0; i < test.probs.size(); ++i) {
      test.probs[i] = test.probs[i] >= thresholds[i % thresholds.size()] ? 1.0f : 0.0f;
    }
    AuF1 tuned(static_cast<int>(num_aus_));
    tuned.Add(test.probs.data(), test.labels.data(), test.mask.data(),
              static_cast<int64_t>(test.probs.size()) / num_aus_);
    (*m.mutable_metrics()->mutable_fields())["test_mean_f1_tuned_thresholds"].set_number_value(
        tuned.Mean());
    LOG(INFO) << "test mean F1 " << last_.test_mean_f1 << " at 0.5, " << tuned.Mean()
              << " at the tuned thresholds";
  }
  m.set_experiment(spec_.name());
  m.set_trial(options_.trial);
  m.set_fold(options_.fold);
  m.set_method(absl::AsciiStrToLower(v1::Method_Name(spec_.method())));
  *m.mutable_spec() = spec_;
  const std::string metadata = ModelMetadataToJson(m);
  RETURN_IF_ERROR(WriteFileAtomic(result.metadata_path, metadata));
  return result;
}

}  // namespace

std::string OutOfMemoryMessage(const v1::ExperimentSpec& spec, const std::string& what) {
  const std::string first_line = what.substr(0, what.find('\n'));
  return absl::StrCat(
      "out of memory on ", spec.train().device().empty() ? "cpu" : spec.train().device(), " with ",
      DescribeBatches(SpecBatches(spec)), " at ", spec.model().input(), " px (",
      spec.model().backbone(), "): lower train.batch_au",
      spec.method() != v1::STL ? " / train.batch_fe" : "",
      spec.method() == v1::MAL ? " / mal.val_batch" : "", " or model.input (", first_line, ")");
}

absl::StatusOr<TrainResult> TrainOnce(const TrainOptions& options) {
  return Training(options).Run();
}

absl::StatusOr<TrainResult> TrainWithOomFallback(const TrainOptions& options,
                                                 const TrainAttempt& attempt) {
  TrainOptions o = options;
  const int retries = options.spec.train().oom_retries();
  const fs::path out(options.out_dir);
  const std::string checkpoint = (out / run_files::kCheckpoint).string();
  int halvings = 0;
  std::error_code ec;
  if (options.resume && retries > 0 && fs::exists(checkpoint, ec)) {
    // A run that had halved its batches resumes with them (its checkpoint may come from another
    // host); an unreadable checkpoint is reported by the attempt's own load.
    if (auto saved = ReadCheckpointBatches(checkpoint); saved.ok()) {
      Batches b = SpecBatches(o.spec);
      for (int k = 1; k <= retries && *saved != b && Halved(b) != b; ++k) {
        b = Halved(b);
        if (b == *saved) halvings = k;
      }
      if (halvings > 0) {
        SetBatches(*saved, &o.spec);
        o.eval_batch = std::max(1, options.eval_batch >> halvings);
        LOG(INFO) << "resuming with the checkpoint's batches: " << DescribeBatches(*saved);
      }
    }
  }
  // LibTorch reports errors by throwing c10::Error: it stops here, as a status.
  for (;;) {
    std::string message;
    try {
      auto result = attempt(o);
      if (result.ok()) result->oom_halvings = halvings;
      return result;
    } catch (const c10::Error& e) {
      if (!IsOutOfMemory(e)) return absl::InternalError(e.what_without_backtrace());
      // The same batch fails again, so the message says what to change.
      message = OutOfMemoryMessage(o.spec, e.what_without_backtrace());
    } catch (const std::exception& e) {
      return absl::InternalError(e.what());
    }
    const Batches now = SpecBatches(o.spec), next = Halved(now);
    if (halvings >= retries || next == now) {
      if (retries > 0) {
        absl::StrAppend(&message, "; the batches were halved ", halvings,
                        " time(s) already (train.oom_retries ", retries, ")");
      }
      return absl::ResourceExhaustedError(message);
    }
    ++halvings;
    SetBatches(next, &o.spec);
    o.eval_batch = std::max(1, o.eval_batch / 2);
    if (absl::StartsWith(o.spec.train().device(), "cuda")) {
      try {
        ReleaseCachedDeviceMemory();
      } catch (const c10::Error& e) {
        LOG(WARNING) << "releasing cached device memory: " << e.what_without_backtrace();
      }
    }
    // Every file of the larger batch's run goes: the new run writes its own, and a checkpoint of
    // the smaller batches before its first iteration; the worker daemon, told by the restart
    // event, sends that before any of the new logs (a retry elsewhere then resumes the new run).
    for (const char* name :
         {run_files::kCheckpoint, run_files::kRecords, run_files::kSummaries, run_files::kMetrics,
          run_files::kModel, run_files::kModelMetadata, run_files::kWeightsDir, "tensorboard"}) {
      fs::remove_all(out / name, ec);
    }
    o.resume = false;
    o.checkpoint_at_start = true;
    if (o.sink != nullptr) {
      o.sink->OnRestart(RestartRecord{message, static_cast<int>(next.au), static_cast<int>(next.fe),
                                      static_cast<int>(next.val), halvings});
    }
    LOG(WARNING) << message << "; starting over from the first iteration with "
                 << DescribeBatches(next) << " (train.oom_retries: halving " << halvings << " of "
                 << retries << ")";
  }
}

absl::StatusOr<TrainResult> Train(const TrainOptions& options) {
  return TrainWithOomFallback(options, TrainOnce);
}

}  // namespace mal::engine
