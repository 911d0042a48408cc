#include "worker/engine/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include <torch/torch.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/data/expression.h"
#include "common/data/folds.h"
#include "common/data/reader.h"
#include "common/image/batch_loader.h"
#include "common/metrics/au_metrics.h"
#include "common/spec/spec.h"
#include "common/synth/synth_dataset.h"
#include "common/util/files.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "worker/engine/mal_step.h"
#include "worker/engine/models.h"

namespace mal::engine {

namespace fs = std::filesystem;
using image::Batch;
using image::BatchLoader;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kPrefetch = 4;

// --- data ---------------------------------------------------------------------------------

struct Data {
  data::DatasetIndex au, fe;
  data::Fold fold;
  std::vector<double> val_rates;
};

// SynthFace is generated on first use, so a spec pointing at a fresh cache directory just works.
absl::Status EnsureSynthFace(const v1::DatasetSpec& spec) {
  if (spec.format() != "synthface" || fs::exists(spec.root())) return absl::OkStatus();
  synth::SynthOptions o;
  o.out = spec.root();
  auto made = synth::GenerateSynthFace(o);
  if (!made.ok() && !fs::exists(spec.root())) {  // another run may have made it meanwhile
    return absl::Status(made.status().code(),
                        absl::StrCat("generating SynthFace: ", made.status().message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<Data> LoadData(const v1::ExperimentSpec& spec, int fold_number) {
  Data d;
  const std::vector<int> aus(spec.data().aus().begin(), spec.data().aus().end());
  RETURN_IF_ERROR(EnsureSynthFace(spec.data().au()));
  auto au = data::LoadDataset(spec.data().au(), aus, data::DataRole::kAu);
  if (!au.ok()) return absl::Status(au.status().code(), absl::StrCat("data.au: ", au.status().message()));
  d.au = std::move(*au);
  if (spec.method() != v1::STL) {
    RETURN_IF_ERROR(EnsureSynthFace(spec.data().fe()));
    auto fe = data::LoadDataset(spec.data().fe(), {}, data::DataRole::kFe);
    if (!fe.ok()) return absl::Status(fe.status().code(), absl::StrCat("data.fe: ", fe.status().message()));
    d.fe = std::move(*fe);
    // Only samples with an expression label train the FE head.
    std::vector<data::Sample> labelled;
    for (auto& s : d.fe.samples) {
      if (s.expression >= 0) labelled.push_back(std::move(s));
    }
    d.fe.samples = std::move(labelled);
    if (d.fe.samples.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("data.fe: ", spec.data().fe().root(),
                                                        ": no sample with an expression label"));
    }
  }
  data::FoldOptions fo;
  fo.protocol = spec.cv().protocol();
  fo.folds = spec.cv().folds();
  fo.seed = static_cast<uint64_t>(spec.cv().seed());
  fo.val_fraction = spec.mal().val_fraction();
  if (fold_number == 0) {  // the final fit: every subject trains, nothing is held out for testing
    ASSIGN_OR_RETURN(d.fold, data::AllSubjectsFold(d.au, fo));
    if (d.fold.train.empty()) return absl::FailedPreconditionError("final fit: no training sample");
    d.val_rates = data::PositiveRates(d.au, d.fold.val);
    return d;
  }
  auto folds = data::MakeFolds(d.au, fo);
  if (!folds.ok()) return folds.status();
  if (fold_number < 1 || fold_number > static_cast<int>(folds->size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fold: ", fold_number, " is not in 1..", folds->size(), " (0: all subjects)"));
  }
  d.fold = (*folds)[fold_number - 1];
  if (d.fold.train.empty() || d.fold.test.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("fold ", fold_number, ": empty training or test part"));
  }
  d.val_rates = data::PositiveRates(d.au, d.fold.val);
  return d;
}

// --- batches as tensors -------------------------------------------------------------------

torch::Tensor Images(Batch& b, const torch::Device& device) {
  return torch::from_blob(b.images.data(), {b.size, 3, b.height, b.width}).to(device);
}
torch::Tensor AuTensor(std::vector<float>& v, int n, const torch::Device& device) {
  return torch::from_blob(v.data(), {n, static_cast<int64_t>(v.size()) / std::max(n, 1)}).to(device);
}

// A loader that starts the next epoch by itself when one ends; tracks its position.
class CyclingLoader {
 public:
  CyclingLoader(std::unique_ptr<BatchLoader> loader) : loader_(std::move(loader)) {}
  void Start(int64_t epoch, int64_t next) {
    epoch_ = epoch;
    next_ = next;
    loader_->StartEpoch(epoch_, next);
  }
  std::optional<Batch> Next() {
    for (int tries = 0; tries < 2; ++tries) {
      if (auto b = loader_->Next()) {
        next_ = b->number + 1;
        return b;
      }
      loader_->StartEpoch(++epoch_, 0);
      next_ = 0;
    }
    return std::nullopt;  // every image of a whole epoch failed
  }
  int64_t epoch() const { return epoch_; }
  int64_t next() const { return next_; }

 private:
  std::unique_ptr<BatchLoader> loader_;
  int64_t epoch_ = 0, next_ = 0;
};

// How a loader visits its samples: training batches are shuffled and augmented, the meta
// validation batches shuffled (a new seeded order each epoch, so every meta-gradient sees frames
// of several subjects) but not augmented, evaluation neither.
enum class LoaderKind { kTrain, kMetaValidation, kEval };

absl::StatusOr<std::unique_ptr<BatchLoader>> MakeLoader(const data::DatasetIndex& index,
                                                        std::vector<int64_t> samples, int batch,
                                                        LoaderKind kind,
                                                        const v1::ExperimentSpec& spec,
                                                        uint64_t seed) {
  BatchLoader::Options o;
  o.batch_size = batch;
  o.threads = spec.train().data_threads();
  o.prefetch = kPrefetch;
  o.shuffle = kind != LoaderKind::kEval;
  o.augment = kind == LoaderKind::kTrain;
  o.seed = seed;
  o.transform.resize = spec.model().resize();
  o.transform.crop = spec.model().input();
  o.transform.hflip = spec.train().hflip();
  return BatchLoader::Create(&index, std::move(samples), o);
}

std::vector<int64_t> AllOf(const data::DatasetIndex& index) {
  std::vector<int64_t> v(index.samples.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i);
  return v;
}

// --- learning-rate schedule ---------------------------------------------------------------

double LearningRate(const v1::TrainSpec& t, int epoch /*1-based*/) {
  if (t.schedule() == "step") return t.lr() * std::pow(t.step_gamma(), (epoch - 1) / t.step_epochs());
  if (t.schedule() == "cosine") {
    return 0.5 * t.lr() * (1 + std::cos(M_PI * (epoch - 1) / std::max(1, t.epochs())));
  }
  return t.lr();
}

void SetLearningRate(torch::optim::SGD& opt, double lr) {
  for (auto& group : opt.param_groups()) {
    static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);
  }
}

// --- evaluation -----------------------------------------------------------------------------

struct Evaluation {
  AuF1 f1{0};
  double loss = 0;
};

Evaluation Evaluate(BaseNetImpl& model, BatchLoader& loader, const torch::Tensor& pos_weight,
                    const torch::Device& device, int num_aus) {
  torch::NoGradGuard no_grad;
  model.eval();
  Evaluation e{AuF1(num_aus), 0};
  double loss_sum = 0;
  int64_t n = 0;
  loader.StartEpoch(0);
  while (auto b = loader.Next()) {
    torch::Tensor logits = model.forward(Images(*b, device));
    torch::Tensor labels = AuTensor(b->au_labels, b->size, device);
    torch::Tensor mask = AuTensor(b->au_mask, b->size, device);
    loss_sum += RebalancedAuLoss(logits, labels, mask, pos_weight).item<double>() * b->size;
    n += b->size;
    torch::Tensor probs = torch::sigmoid(logits).to(torch::kCPU).contiguous();
    e.f1.Add(probs.data_ptr<float>(), b->au_labels.data(), b->au_mask.data(), b->size);
  }
  e.loss = n > 0 ? loss_sum / n : 0;
  model.train();
  return e;
}

// Weights the current meta net gives every training sample (eval-mode features), as CSV rows.
struct AllWeights {
  std::string csv;
  double mean_au = 0, mean_fe = 0, spearman = 0;
};

// Sum and count of a sample's gradient alignment over the meta updates of one epoch, by sample.
using AlignmentSums = absl::flat_hash_map<int64_t, std::pair<double, int>>;

AllWeights ComputeAllWeights(BaseNetImpl& model, MetaNetImpl& meta, BatchLoader& au_loader,
                             const data::DatasetIndex& au, BatchLoader& fe_loader,
                             const data::DatasetIndex& fe, const AlignmentSums alignment[2],
                             const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model.eval();
  struct Row {
    int64_t sample;
    bool is_fe;
    double w;
  };
  std::vector<Row> rows;
  double sum[2] = {0, 0};
  int64_t count[2] = {0, 0};
  for (int task = 0; task < 2; ++task) {
    BatchLoader& loader = task == 0 ? au_loader : fe_loader;
    loader.StartEpoch(0);
    while (auto b = loader.Next()) {
      torch::Tensor labels;
      if (task == 1) labels = torch::from_blob(b->expressions.data(), {b->size}, torch::kLong).to(device);
      torch::Tensor w = meta.forward(model.Features(Images(*b, device)),
                                     task == 0 ? MetaNetImpl::kAuTask : MetaNetImpl::kFeTask, labels)
                            .to(torch::kCPU)
                            .to(torch::kDouble);
      for (int i = 0; i < b->size; ++i) {
        rows.push_back({b->samples[i], task == 1, w[i].item<double>()});
        sum[task] += rows.back().w;
        ++count[task];
      }
    }
  }
  model.train();
  AllWeights out;
  out.mean_au = count[0] ? sum[0] / count[0] : 0;
  out.mean_fe = count[1] ? sum[1] / count[1] : 0;
  const double s = std::max(out.mean_au + out.mean_fe, 1e-6);
  out.csv = "id,task,label,consistency,weight,normalized_weight,alignment\n";
  std::vector<double> fe_w, fe_c;
  for (const Row& r : rows) {
    const data::Sample& x = (r.is_fe ? fe : au).samples[r.sample];
    std::string mean_alignment;  // empty: not in a meta update of this epoch
    if (auto it = alignment[r.is_fe].find(r.sample); it != alignment[r.is_fe].end()) {
      mean_alignment = absl::StrFormat("%.6g", it->second.first / it->second.second);
    }
    absl::StrAppendFormat(&out.csv, "%s,%s,%s,%.4f,%.6f,%.6f,%s\n", x.id, r.is_fe ? "fe" : "au",
                          r.is_fe ? data::ExpressionName(x.expression) : "",
                          r.is_fe ? x.consistency : -1.0, r.w, r.w / s, mean_alignment);
    if (r.is_fe && x.consistency >= 0) {
      fe_w.push_back(r.w);
      fe_c.push_back(x.consistency);
    }
  }
  out.spearman = SpearmanCorrelation(fe_w, fe_c);
  return out;
}

// --- checkpoints ----------------------------------------------------------------------------

struct Position {
  int64_t epoch = 1, iter_in_epoch = 0, global_iter = 0;
  int64_t au_next = 0, fe_epoch = 0, fe_next = 0, val_epoch = 0, val_next = 0;
};

absl::Status SaveCheckpoint(const std::string& path, BaseNetImpl& model, MetaNetImpl& meta,
                            torch::optim::Optimizer& base, torch::optim::Optimizer& meta_opt,
                            const Position& p) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  try {
    torch::serialize::OutputArchive archive;
    torch::serialize::OutputArchive model_a, meta_a, base_a, meta_opt_a;
    model.save(model_a);
    meta.save(meta_a);
    base.save(base_a);
    meta_opt.save(meta_opt_a);
    archive.write("model", model_a);
    archive.write("meta", meta_a);
    archive.write("base_optimizer", base_a);
    archive.write("meta_optimizer", meta_opt_a);
    archive.write("position", torch::tensor({p.epoch, p.iter_in_epoch, p.global_iter, p.au_next,
                                             p.fe_epoch, p.fe_next, p.val_epoch, p.val_next}));
    archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
    archive.save_to(tmp);
  } catch (const c10::Error& e) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    return absl::DataLossError(absl::StrCat(path, ": cannot write checkpoint: ", e.what_without_backtrace()));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::DataLossError(absl::StrCat(path, ": cannot write checkpoint: ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<Position> LoadCheckpoint(const std::string& path, BaseNetImpl& model, MetaNetImpl& meta,
                                        torch::optim::Optimizer& base, torch::optim::Optimizer& meta_opt,
                                        const torch::Device& device) {
  Position p;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path, device);
    torch::serialize::InputArchive model_a, meta_a, base_a, meta_opt_a;
    archive.read("model", model_a);
    archive.read("meta", meta_a);
    archive.read("base_optimizer", base_a);
    archive.read("meta_optimizer", meta_opt_a);
    model.load(model_a);
    meta.load(meta_a);
    base.load(base_a);
    meta_opt.load(meta_opt_a);
    torch::Tensor pos, rng;
    archive.read("position", pos);
    archive.read("rng", rng);
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(rng.to(torch::kCPU));
    pos = pos.to(torch::kCPU);
    const int64_t* v = pos.data_ptr<int64_t>();
    p = Position{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(path, ": cannot read checkpoint (written by another spec or "
                                            "backbone?): ", e.what_without_backtrace()));
  }
  return p;
}

// A resumed run keeps the lines of a log file that `keep` accepts (those up to its checkpoint).
absl::Status FilterLines(const std::string& path,
                         const std::function<bool(absl::string_view line, bool first)>& keep) {
  if (!fs::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::string kept;
  bool first = true;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (keep(line, first)) absl::StrAppend(&kept, line, "\n");
    first = false;
  }
  return WriteFileAtomic(path, kept);
}

// The integer after `"key": ` in a JSON line, or -1.
int64_t JsonInt(absl::string_view line, absl::string_view key) {
  const std::string needle = absl::StrCat("\"", key, "\": ");
  const size_t at = line.find(needle);
  if (at == absl::string_view::npos) return -1;
  line.remove_prefix(at + needle.size());
  int64_t v = -1;
  (void)absl::SimpleAtoi(line.substr(0, line.find_first_of(",}")), &v);
  return v;
}

std::string RecordsHeader() {
  return "epoch,iteration,loss_au,loss_fe,loss_val,mean_w_au,mean_w_fe,mean_wn_au,mean_wn_fe,lr,"
         "meta_lr,seconds\n";
}

std::string RecordsRow(const IterationRecord& r) {
  return absl::StrFormat("%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6g,%.6g,%.4f\n", r.epoch,
                         r.iteration, r.loss_au, r.loss_fe, r.loss_val, r.mean_w_au, r.mean_w_fe,
                         r.mean_wn_au, r.mean_wn_fe, r.lr, r.meta_lr, r.seconds);
}

std::string JsonList(const std::vector<double>& v) {
  std::vector<std::string> s;
  for (double x : v) s.push_back(absl::StrFormat("%.6g", x));
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

std::string EpochJson(const EpochRecord& e) {
  return absl::StrFormat(
      "{\"epoch\": %d, \"iteration\": %d, \"aus\": [%s], \"test_f1\": %s, \"test_mean_f1\": %.6f, "
      "\"val_f1\": %s, \"val_mean_f1\": %.6f, \"val_loss\": %.6f, \"mean_au_weight\": %.6f, "
      "\"mean_fe_weight\": %.6f, \"fe_weight_consistency_spearman\": %.6f, \"seconds\": %.3f}",
      e.epoch, e.iteration, absl::StrJoin(e.aus, ", "), JsonList(e.test_f1), e.test_mean_f1,
      JsonList(e.val_f1), e.val_mean_f1, e.val_loss, e.mean_au_weight, e.mean_fe_weight,
      e.fe_weight_consistency_spearman, e.seconds);
}

std::string SummaryJson(const WeightSummary& s) {
  auto samples = [](const std::vector<SampleWeight>& v) {
    std::vector<std::string> out;
    for (const auto& x : v) {
      out.push_back(absl::StrFormat("{\"id\": \"%s\", \"label\": \"%s\", \"consistency\": %.4f, "
                                    "\"weight\": %.6f}",
                                    x.id, data::ExpressionName(x.label), x.consistency, x.weight));
    }
    return absl::StrCat("[", absl::StrJoin(out, ", "), "]");
  };
  return absl::StrFormat(
      "{\"epoch\": %d, \"iteration\": %d, \"au_quantiles\": %s, \"fe_quantiles\": %s, "
      "\"lowest_fe\": %s, \"highest_fe\": %s}\n",
      s.epoch, s.iteration, JsonList(s.au_quantiles), JsonList(s.fe_quantiles),
      samples(s.lowest_fe), samples(s.highest_fe));
}

// Progress on stderr: a bar on a terminal, a plain line now and then otherwise.
class Progress {
 public:
  Progress(bool enabled, int64_t per_epoch, int epochs)
      : enabled_(enabled), tty_(::isatty(2)), per_epoch_(per_epoch), epochs_(epochs) {}
  void Iteration(const IterationRecord& r, int64_t in_epoch, int log_every) {
    if (!enabled_) return;
    if (tty_) {
      const int width = 30;
      const int filled = static_cast<int>(width * in_epoch / std::max<int64_t>(1, per_epoch_));
      std::fprintf(stderr, "\repoch %d/%d [%s%s] %lld/%lld  loss au %.4f fe %.4f  w au %.3f fe %.3f ",
                   r.epoch, epochs_, std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), static_cast<long long>(in_epoch),
                   static_cast<long long>(per_epoch_), r.loss_au, r.loss_fe, r.mean_wn_au,
                   r.mean_wn_fe);
    } else if (r.iteration % log_every == 0) {
      std::fprintf(stderr, "epoch %d iteration %lld: loss au %.4f fe %.4f val %.4f, weights au %.3f fe %.3f\n",
                   r.epoch, static_cast<long long>(r.iteration), r.loss_au, r.loss_fe, r.loss_val,
                   r.mean_wn_au, r.mean_wn_fe);
    }
  }
  void Epoch(const EpochRecord& e) {
    if (!enabled_) return;
    std::fprintf(stderr, "%sepoch %d: test mean F1 %.4f, val mean F1 %.4f, val loss %.4f (%.1f s)\n",
                 tty_ ? "\n" : "", e.epoch, e.test_mean_f1, e.val_mean_f1, e.val_loss, e.seconds);
  }

 private:
  bool enabled_, tty_;
  int64_t per_epoch_;
  int epochs_;
};

absl::StatusOr<torch::Device> ParseDevice(const std::string& name) {
  try {
    torch::Device device(name);
    if (device.is_cuda() && !torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("train.device: ", name, " requested but this build or machine has no CUDA"));
    }
    return device;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("train.device: ", e.what_without_backtrace()));
  }
}

Method ToMethod(v1::Method m) {
  return m == v1::STL ? Method::kStl : (m == v1::MTL ? Method::kMtl : Method::kMal);
}

MetaMode ToMode(const std::string& m) {
  if (m == "finite_difference") return MetaMode::kFiniteDifference;
  if (m == "heads_only") return MetaMode::kHeadsOnly;
  return MetaMode::kExact;
}

absl::StatusOr<TrainResult> TrainImpl(const TrainOptions& options) {
  const v1::ExperimentSpec& spec = options.spec;
  RETURN_IF_ERROR(ValidateSpec(spec));
  const v1::TrainSpec& t = spec.train();
  const int threads = t.threads() > 0 ? t.threads()
                                      : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  ASSIGN_OR_RETURN(const torch::Device device, ParseDevice(t.device()));
  // cuDNN picks the fastest convolution algorithms for the (fixed) batch shapes; on CUDA, runs are
  // then not bit-reproducible (same-seed determinism is a CPU guarantee, docs/engine.md).
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  std::error_code ec;
  fs::create_directories(fs::path(options.out_dir) / run_files::kWeightsDir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(options.out_dir, ": ", ec.message()));

  // Temporary files of a run that was killed while writing (they never replaced anything).
  for (const auto& entry : fs::directory_iterator(options.out_dir, ec)) {
    if (entry.path().filename().string().find(".tmp.") != std::string::npos) fs::remove(entry.path(), ec);
  }
  ASSIGN_OR_RETURN(Data data, LoadData(spec, options.fold));
  const Method method = ToMethod(spec.method());
  const int num_aus = static_cast<int>(data.au.aus.size());
  const uint64_t seed = MixSeed(static_cast<uint64_t>(spec.seed()), static_cast<uint64_t>(options.fold));

  // Model, shadow, meta net, optimisers.
  torch::manual_seed(static_cast<int64_t>(seed & 0x7fffffffffffffffULL));
  BaseNetImpl::Config config;
  config.backbone = spec.model().backbone();
  config.num_aus = num_aus;
  config.num_expressions = data::kNumExpressions;
  config.input = spec.model().input();
  BaseNet model(config), shadow(config);
  MetaNet meta(model->feature_dim(), spec.mal().task_bias(), spec.mal().center_features(),
               spec.mal().label_aware() ? data::kNumExpressions : 0);
  if (!spec.model().pretrained().empty()) {
    RETURN_IF_ERROR(LoadPretrainedBackbone(spec.model().pretrained(), *model));
  }
  model->to(device);
  shadow->to(device);
  meta->to(device);
  torch::optim::SGD base_opt(model->parameters(), torch::optim::SGDOptions(t.lr())
                                                      .momentum(t.momentum())
                                                      .weight_decay(t.weight_decay()));
  std::unique_ptr<torch::optim::Optimizer> meta_opt;
  if (spec.mal().meta_optimizer() == "sgd") {
    meta_opt = std::make_unique<torch::optim::SGD>(meta->parameters(),
                                                   torch::optim::SGDOptions(spec.mal().meta_lr()));
  } else {
    meta_opt = std::make_unique<torch::optim::Adam>(meta->parameters(),
                                                    torch::optim::AdamOptions(spec.mal().meta_lr()));
  }

  // Loaders.
  ASSIGN_OR_RETURN(auto au_train, MakeLoader(data.au, data.fold.train, t.batch_au(),
                                             LoaderKind::kTrain, spec, seed));
  std::unique_ptr<CyclingLoader> fe_train, val_train;
  if (method != Method::kStl) {
    ASSIGN_OR_RETURN(auto fe, MakeLoader(data.fe, AllOf(data.fe), t.batch_fe(), LoaderKind::kTrain,
                                         spec, seed + 1));
    fe_train = std::make_unique<CyclingLoader>(std::move(fe));
  }
  if (method == Method::kMal) {
    ASSIGN_OR_RETURN(auto val, MakeLoader(data.au, data.fold.val, spec.mal().val_batch(),
                                          LoaderKind::kMetaValidation, spec, seed + 2));
    val_train = std::make_unique<CyclingLoader>(std::move(val));
  }
  std::unique_ptr<BatchLoader> test_eval;  // none for the final fit (fold 0)
  if (!data.fold.test.empty()) {
    ASSIGN_OR_RETURN(test_eval, MakeLoader(data.au, data.fold.test, 64, LoaderKind::kEval, spec, seed));
  }
  ASSIGN_OR_RETURN(auto val_eval, MakeLoader(data.au, data.fold.val, 64, LoaderKind::kEval, spec, seed));
  std::unique_ptr<BatchLoader> au_all, fe_all;
  if (method == Method::kMal) {
    ASSIGN_OR_RETURN(au_all, MakeLoader(data.au, data.fold.train, 64, LoaderKind::kEval, spec, seed));
    ASSIGN_OR_RETURN(fe_all, MakeLoader(data.fe, AllOf(data.fe), 64, LoaderKind::kEval, spec, seed));
  }
  // The class-rebalanced validation loss (meta-test stage, and the reported validation loss).
  // L_v's positive weights (mal.val_pos_weight), also those of the reported validation loss.
  const torch::Tensor val_pos_weight =
      ValidationPositiveWeights(data.val_rates, spec.mal().val_pos_weight()).to(device);

  const int64_t per_epoch =
      t.max_iterations() > 0 ? std::min<int64_t>(t.max_iterations(), au_train->batches_per_epoch())
                             : au_train->batches_per_epoch();
  const std::string checkpoint = (fs::path(options.out_dir) / run_files::kCheckpoint).string();
  const std::string records_path = (fs::path(options.out_dir) / run_files::kRecords).string();
  const std::string summaries_path = (fs::path(options.out_dir) / run_files::kSummaries).string();
  const std::string metrics_path = (fs::path(options.out_dir) / run_files::kMetrics).string();

  Position pos;
  std::vector<std::string> epoch_json;
  if (options.resume && fs::exists(checkpoint)) {
    ASSIGN_OR_RETURN(pos, LoadCheckpoint(checkpoint, *model, *meta, base_opt, *meta_opt, device));
    const int64_t done = pos.global_iter;
    RETURN_IF_ERROR(FilterLines(records_path, [&](absl::string_view line, bool first) {
      const std::vector<absl::string_view> f = absl::StrSplit(line, ',');
      int64_t it = 0;
      return first || (f.size() > 1 && absl::SimpleAtoi(f[1], &it) && it <= done);
    }));
    RETURN_IF_ERROR(FilterLines(summaries_path, [&](absl::string_view line, bool) {
      return JsonInt(line, "iteration") <= done;
    }));
    // metrics.json has one epoch per line: keep the epochs finished before the checkpoint.
    if (fs::exists(metrics_path)) {
      ASSIGN_OR_RETURN(std::string text, ReadFile(metrics_path));
      for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
        const int64_t e = JsonInt(line, "epoch");
        if (e < 1 || e >= pos.epoch) continue;
        std::string l(absl::StripAsciiWhitespace(line));
        if (!l.empty() && l.back() == ',') l.pop_back();
        epoch_json.push_back(l);
      }
    }
  } else {
    RETURN_IF_ERROR(WriteFileAtomic(records_path, RecordsHeader()));
    RETURN_IF_ERROR(WriteFileAtomic(summaries_path, ""));
  }
  std::ofstream records(records_path, std::ios::app);
  std::ofstream summaries(summaries_path, std::ios::app);
  Progress progress(options.progress, per_epoch, t.epochs());
  MalStep step(model, shadow, meta);
  StepOptions so;
  so.method = method;
  so.mode = ToMode(spec.mal().mode());
  so.fe_lambda = t.fe_lambda();
  so.joint_forward = spec.mal().joint_forward();
  so.fd_epsilon = spec.mal().fd_epsilon();
  so.exact_jvp = spec.mal().exact_method() != "vjp";
  so.bn_stats_au_only = t.bn_stats() != "all";
  if (t.au_pos_weight() == "inverse_frequency") {
    so.au_pos_weight = PositiveWeights(data::PositiveRates(data.au, data.fold.train)).to(device);
  }
  if (fe_train) fe_train->Start(pos.fe_epoch, pos.fe_next);
  if (val_train) val_train->Start(pos.val_epoch, pos.val_next);

  // Samples weighted since the last summary.
  std::vector<std::pair<int64_t, double>> window_au, window_fe;
  AlignmentSums alignment[2];  // AU, FE samples: this epoch's meta updates
  EpochRecord last;
  auto save = [&]() {
    if (fe_train) {
      pos.fe_epoch = fe_train->epoch();
      pos.fe_next = fe_train->next();
    }
    if (val_train) {
      pos.val_epoch = val_train->epoch();
      pos.val_next = val_train->next();
    }
    return SaveCheckpoint(checkpoint, *model, *meta, base_opt, *meta_opt, pos);
  };

  auto evaluate = [&](int epoch) {
    EpochRecord e;
    e.epoch = epoch;
    e.iteration = pos.global_iter;
    e.aus = data.au.aus;
    if (test_eval) {
      Evaluation test = Evaluate(*model, *test_eval, val_pos_weight, device, num_aus);
      e.test_f1 = test.f1.PerAu();
      e.test_mean_f1 = test.f1.Mean();
    } else {
      e.test_mean_f1 = -1;  // no test part
    }
    Evaluation val = Evaluate(*model, *val_eval, val_pos_weight, device, num_aus);
    e.val_f1 = val.f1.PerAu();
    e.val_mean_f1 = val.f1.Mean();
    e.val_loss = val.loss;
    return e;
  };

  while (pos.epoch <= t.epochs()) {
    const auto epoch_start = Clock::now();
    const double lr = LearningRate(t, static_cast<int>(pos.epoch));
    SetLearningRate(base_opt, lr);
    au_train->StartEpoch(pos.epoch, pos.au_next);
    while (pos.iter_in_epoch < per_epoch) {
      if (options.should_stop && options.should_stop()) {
        RETURN_IF_ERROR(save());
        return absl::CancelledError(absl::StrCat("stopped at iteration ", pos.global_iter,
                                                 "; checkpoint saved"));
      }
      const auto it_start = Clock::now();
      std::optional<Batch> au = au_train->Next();
      if (!au) break;  // fewer usable batches than planned (corrupt images)
      pos.au_next = au->number + 1;
      for (const auto& f : au->failures) LOG(WARNING) << "skipped image: " << f;
      TrainBatch batch;
      batch.au_images = Images(*au, device);
      batch.au_labels = AuTensor(au->au_labels, au->size, device);
      batch.au_mask = AuTensor(au->au_mask, au->size, device);
      std::optional<Batch> fe;
      if (fe_train) {
        fe = fe_train->Next();
        if (!fe) return absl::DataLossError("data.fe: no image of the expression data decodes");
        for (const auto& f : fe->failures) LOG(WARNING) << "skipped image: " << f;
        batch.fe_images = Images(*fe, device);
        batch.fe_labels = torch::from_blob(fe->expressions.data(), {fe->size}, torch::kLong).to(device);
      }
      so.update_meta = method == Method::kMal && pos.global_iter % spec.mal().meta_interval() == 0;
      std::optional<Batch> vb;
      ValBatch val;
      if (so.update_meta) {
        vb = val_train->Next();
        if (!vb) return absl::DataLossError("validation reserve: no image decodes");
        for (const auto& f : vb->failures) LOG(WARNING) << "skipped image: " << f;
        val.images = Images(*vb, device);
        val.labels = AuTensor(vb->au_labels, vb->size, device);
        val.mask = AuTensor(vb->au_mask, vb->size, device);
        val.pos_weight = val_pos_weight;
      }
      absl::StatusOr<StepStats> stats = step.Run(batch, so.update_meta ? &val : nullptr, lr, so, base_opt, meta_opt.get());
      if (!stats.ok()) {
        return absl::Status(stats.status().code(),
                            absl::StrCat("epoch ", pos.epoch, " iteration ", pos.global_iter + 1, ": ",
                                         stats.status().message(), "; last checkpoint kept"));
      }
      ++pos.iter_in_epoch;
      ++pos.global_iter;
      IterationRecord r;
      r.epoch = static_cast<int>(pos.epoch);
      r.iteration = pos.global_iter;
      r.loss_au = stats->loss_au;
      r.loss_fe = stats->loss_fe;
      r.loss_val = stats->loss_val;
      r.mean_w_au = stats->mean_w_au;
      r.mean_w_fe = stats->mean_w_fe;
      r.mean_wn_au = stats->mean_wn_au;
      r.mean_wn_fe = stats->mean_wn_fe;
      r.lr = lr;
      r.meta_lr = method == Method::kMal ? spec.mal().meta_lr() : 0;
      r.seconds = std::chrono::duration<double>(Clock::now() - it_start).count();
      records << RecordsRow(r);
      records.flush();
      if (options.sink) options.sink->OnIteration(r);
      progress.Iteration(r, pos.iter_in_epoch, t.log_every());

      if (method == Method::kMal) {
        const torch::Tensor wa = stats->w_au.to(torch::kDouble).contiguous();
        const torch::Tensor wf = stats->w_fe.to(torch::kDouble).contiguous();
        for (int i = 0; i < au->size; ++i) window_au.emplace_back(au->samples[i], wa.data_ptr<double>()[i]);
        for (int i = 0; i < fe->size; ++i) window_fe.emplace_back(fe->samples[i], wf.data_ptr<double>()[i]);
        if (stats->alignment_au.defined()) {
          auto add = [](AlignmentSums& sums, const Batch& b, const torch::Tensor& d) {
            const torch::Tensor x = d.to(torch::kDouble).contiguous();
            for (int i = 0; i < b.size; ++i) {
              auto& [sum, n] = sums[b.samples[i]];
              sum += x.data_ptr<double>()[i];
              ++n;
            }
          };
          add(alignment[0], *au, stats->alignment_au);
          add(alignment[1], *fe, stats->alignment_fe);
        }
        if (pos.global_iter % t.log_every() == 0) {
          WeightSummary s;
          s.epoch = r.epoch;
          s.iteration = r.iteration;
          std::vector<double> wa, wf;
          for (auto& [i, w] : window_au) wa.push_back(w);
          for (auto& [i, w] : window_fe) wf.push_back(w);
          for (double q : WeightSummary::kQuantiles) {
            s.au_quantiles.push_back(Quantile(wa, q));
            s.fe_quantiles.push_back(Quantile(wf, q));
          }
          std::sort(window_fe.begin(), window_fe.end(),
                    [](auto& a, auto& b) { return a.second < b.second; });
          auto sample = [&](const std::pair<int64_t, double>& x) {
            const data::Sample& smp = data.fe.samples[x.first];
            return SampleWeight{smp.id, smp.expression, smp.consistency, x.second};
          };
          for (size_t k = 0; k < std::min<size_t>(5, window_fe.size()); ++k) {
            s.lowest_fe.push_back(sample(window_fe[k]));
            s.highest_fe.push_back(sample(window_fe[window_fe.size() - 1 - k]));
          }
          summaries << SummaryJson(s);
          summaries.flush();
          if (options.sink) options.sink->OnWeightSummary(s);
          window_au.clear();
          window_fe.clear();
        }
      }
      if (pos.global_iter % t.checkpoint_every() == 0) RETURN_IF_ERROR(save());
    }

    // End of epoch: evaluate, per-sample weights, checkpoint, metrics.
    EpochRecord e = evaluate(static_cast<int>(pos.epoch));
    if (method == Method::kMal) {
      AllWeights w = ComputeAllWeights(*model, *meta, *au_all, data.au, *fe_all, data.fe, alignment, device);
      alignment[0].clear();
      alignment[1].clear();
      e.mean_au_weight = w.mean_au;
      e.mean_fe_weight = w.mean_fe;
      e.fe_weight_consistency_spearman = w.spearman;
      e.weights_csv = (fs::path(options.out_dir) / run_files::WeightsCsv(e.epoch)).string();
      RETURN_IF_ERROR(WriteFileAtomic(e.weights_csv, w.csv));
    }
    e.seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
    epoch_json.push_back(EpochJson(e));
    RETURN_IF_ERROR(WriteFileAtomic(metrics_path,
                                    absl::StrCat("{\"epochs\": [\n  ", absl::StrJoin(epoch_json, ",\n  "), "\n]}\n")));
    progress.Epoch(e);
    if (options.sink) options.sink->OnEpoch(e);
    last = e;
    // The epoch is complete: the checkpoint points at the start of the next one.
    ++pos.epoch;
    pos.iter_in_epoch = 0;
    pos.au_next = 0;
    RETURN_IF_ERROR(save());
  }

  // Resumed after the last epoch had finished: the final metrics again, for the metadata.
  if (last.epoch == 0) last = evaluate(t.epochs());

  // The model: weights and metadata.
  TrainResult result;
  result.final_epoch = last;
  result.iterations = pos.global_iter;
  result.model_path = (fs::path(options.out_dir) / run_files::kModel).string();
  result.metadata_path = (fs::path(options.out_dir) / run_files::kModelMetadata).string();
  {
    const std::string tmp = absl::StrCat(result.model_path, ".tmp.", ::getpid());
    torch::serialize::OutputArchive archive;
    model->save(archive);
    archive.save_to(tmp);
    fs::rename(tmp, result.model_path, ec);
    if (ec) return absl::DataLossError(absl::StrCat(result.model_path, ": ", ec.message()));
  }
  image::TransformOptions norm;
  const std::string metadata = absl::StrFormat(
      "{\n  \"format\": \"mal-model-v1\",\n  \"backbone\": \"%s\",\n  \"aus\": [%s],\n"
      "  \"input\": %d,\n  \"resize\": %d,\n  \"mean\": [%g, %g, %g],\n  \"std\": [%g, %g, %g],\n"
      "  \"thresholds\": %s,\n  \"experiment\": \"%s\",\n  \"fold\": %d,\n  \"method\": \"%s\",\n"
      "  \"metrics\": %s,\n  \"spec\": %s\n}\n",
      config.backbone, absl::StrJoin(data.au.aus, ", "), spec.model().input(), spec.model().resize(),
      norm.mean[0], norm.mean[1], norm.mean[2], norm.std[0], norm.std[1], norm.std[2],
      JsonList(std::vector<double>(num_aus, 0.5)), spec.name(), options.fold,
      absl::AsciiStrToLower(v1::Method_Name(spec.method())), EpochJson(last), SpecToJson(spec));
  RETURN_IF_ERROR(WriteFileAtomic(result.metadata_path, metadata));
  return result;
}

}  // namespace

std::string OutOfMemoryMessage(const v1::ExperimentSpec& spec, const std::string& what) {
  const std::string first_line = what.substr(0, what.find('\n'));
  std::string batches = absl::StrCat(spec.train().batch_au(), " AU");
  if (spec.method() != v1::STL) absl::StrAppend(&batches, " + ", spec.train().batch_fe(), " FE");
  if (spec.method() == v1::MAL) absl::StrAppend(&batches, ", validation batch ", spec.mal().val_batch());
  return absl::StrCat("out of memory on ", spec.train().device().empty() ? "cpu" : spec.train().device(),
                      " with batch ", batches, " at ", spec.model().input(), " px (", spec.model().backbone(),
                      "): lower train.batch_au", spec.method() != v1::STL ? " / train.batch_fe" : "",
                      spec.method() == v1::MAL ? " / mal.val_batch" : "", " or model.input (", first_line, ")");
}

absl::StatusOr<TrainResult> Train(const TrainOptions& options) {
  // LibTorch reports errors by throwing c10::Error: it stops here, as a status.
  try {
    return TrainImpl(options);
  } catch (const c10::OutOfMemoryError& e) {
    // Device memory: the same batch fails again on retry, so the message says what to change.
    return absl::ResourceExhaustedError(OutOfMemoryMessage(options.spec, e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace mal::engine
