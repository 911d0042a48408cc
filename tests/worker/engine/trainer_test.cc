#include "worker/engine/trainer.h"

#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/spec/model_metadata.h"
#include "common/spec/spec.h"
#include "common/synth/synth_dataset.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/models.h"
#include "worker/engine/training_data.h"

namespace mal::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    synth::SynthOptions o;
    o.out = *dir_ / "sf";
    o.au_subjects = 3;
    o.frames = 40;
    o.fe_subjects = 10;
    o.fe_images = 50;
    o.size = 40;
    o.threads = 2;
    ASSERT_TRUE(synth::GenerateSynthFace(o).ok());
  }
  static void TearDownTestSuite() { delete dir_; }

  static v1::ExperimentSpec Spec(const std::string& method, const std::string& mode = "exact") {
    auto spec =
        ParseSpecYaml(absl::StrCat(R"(
name: t
method: )",
                                   method, R"(
data:
  au: {format: synthface, root: )",
                                   *dir_ / "sf", R"(}
  fe: {format: synthface, root: )",
                                   *dir_ / "sf", R"(}
model: {backbone: small_cnn, input: 32, resize: 36}
train: {epochs: 2, batch_au: 8, batch_fe: 8, lr: 0.01, max_iterations: 3, threads: 1,
        data_threads: 1, checkpoint_every: 2, log_every: 2}
mal: {mode: )",
                                   mode, R"(, val_fraction: 0.1, val_batch: 8, meta_lr: 0.01}
seed: 3
)"),
                      "test.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    ApplyDefaults(*spec);
    EXPECT_TRUE(ValidateSpec(*spec).ok());
    return *spec;
  }

  static std::vector<torch::Tensor> Parameters(const std::string& model_path) {
    BaseNetImpl::Config c;
    c.backbone = "small_cnn";
    c.input = 32;
    c.feature_grid = 2;  // the spec's default for small_cnn
    BaseNet net(c);
    torch::serialize::InputArchive archive;
    archive.load_from(model_path);
    net->load(archive);
    std::vector<torch::Tensor> out;
    for (const auto& p : net->parameters()) out.push_back(p.detach().clone());
    for (const auto& b : net->buffers()) out.push_back(b.clone());
    return out;
  }

  static bool Same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!torch::equal(a[i], b[i])) return false;
    }
    return true;
  }

  // The rows of a run's last weights CSV (epoch 2 of Spec's two), the header checked and left
  // out: id, task, label, consistency, weight, normalized_weight, alignment, meta_weight.
  static std::vector<std::vector<std::string>> WeightsRows(const std::string& out_dir) {
    const absl::StatusOr<std::string> text = ReadFile(out_dir + "/weights/epoch_002.csv");
    EXPECT_TRUE(text.ok()) << text.status();
    if (!text.ok()) return {};
    std::vector<std::string> lines = absl::StrSplit(*text, '\n', absl::SkipEmpty());
    EXPECT_FALSE(lines.empty());
    if (lines.empty()) return {};
    EXPECT_EQ(lines[0], "id,task,label,consistency,weight,normalized_weight,alignment,meta_weight");
    std::vector<std::vector<std::string>> rows;
    for (size_t i = 1; i < lines.size(); ++i) {
      std::vector<std::string> f = absl::StrSplit(lines[i], ',');
      EXPECT_EQ(f.size(), 8u) << lines[i];
      if (f.size() == 8u) rows.push_back(std::move(f));
    }
    return rows;
  }

  static int CountLines(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) ++n;
    return n;
  }

  // The parameters of Spec("mal") trained uninterrupted with AU, FE and validation batches of `n`.
  static std::vector<torch::Tensor> MalParametersAtBatch(int n) {
    testing::TempDir out;
    TrainOptions o;
    o.spec = Spec("mal");
    o.spec.mutable_train()->set_batch_au(n);
    o.spec.mutable_train()->set_batch_fe(n);
    o.spec.mutable_mal()->set_val_batch(n);
    o.out_dir = out.path();
    auto result = Train(o);
    EXPECT_TRUE(result.ok()) << result.status();
    return Parameters(out / "model.pt");
  }

  static testing::TempDir* dir_;
};
testing::TempDir* TrainerTest::dir_ = nullptr;

TEST_F(TrainerTest, TrainsEachMethodAndWritesItsFiles) {
  for (const auto& [method, mode] :
       std::vector<std::pair<std::string, std::string>>{{"stl", "exact"},
                                                        {"mtl", "exact"},
                                                        {"mal", "exact"},
                                                        {"mal", "finite_difference"},
                                                        {"mal", "heads_only"}}) {
    SCOPED_TRACE(method + " " + mode);
    testing::TempDir out;
    TrainOptions o;
    o.spec = Spec(method, mode);
    o.out_dir = out.path();
    o.trial = 3;
    auto result = Train(o);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->iterations, 6);
    EXPECT_EQ(result->final_epoch.epoch, 2);
    EXPECT_EQ(result->final_epoch.test_f1.size(), 12u);
    for (const char* f :
         {"model.pt", "model.json", "metrics.json", "records.csv", "checkpoint.pt"}) {
      EXPECT_TRUE(fs::exists(out / f)) << f;
    }
    EXPECT_EQ(CountLines(out / "records.csv"), 7);
    auto metadata = ReadModelMetadata(out / "model.json");
    ASSERT_TRUE(metadata.ok()) << metadata.status();
    EXPECT_EQ(std::vector<int>(metadata->aus().begin(), metadata->aus().end()),
              (std::vector<int>{1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24}));
    EXPECT_EQ(metadata->thresholds_size(), 12);
    EXPECT_EQ(metadata->method(), method);
    EXPECT_EQ(metadata->trial(), 3);  // the run's trial (mal-worker train --trial, the daemon's)
    EXPECT_EQ(metadata->fold(), 1);
    EXPECT_EQ(metadata->spec().name(), o.spec.name());
    EXPECT_NEAR(metadata->metrics().fields().at("test_mean_f1").number_value(),
                result->final_epoch.test_mean_f1, 1e-5);
    if (method == "mal") {
      ASSERT_TRUE(fs::exists(out / "weights/epoch_002.csv"));
      // Every training AU sample and every FE sample has a weight row.
      EXPECT_GT(CountLines(out / "weights/epoch_002.csv"), 40);
      EXPECT_THAT(*ReadFile(out / "summaries.jsonl"), HasSubstr("\"lowest_fe\""));
      EXPECT_GT(result->final_epoch.mean_fe_weight, 0);
    }
  }
}

TEST_F(TrainerTest, SameSeedSameParameters) {
  testing::TempDir a, b;
  TrainOptions o;
  o.spec = Spec("mal");
  o.out_dir = a.path();
  ASSERT_TRUE(Train(o).ok());
  o.out_dir = b.path();
  ASSERT_TRUE(Train(o).ok());
  EXPECT_TRUE(Same(Parameters(a / "model.pt"), Parameters(b / "model.pt")));
  o.spec.set_seed(4);
  testing::TempDir c;
  o.out_dir = c.path();
  ASSERT_TRUE(Train(o).ok());
  EXPECT_FALSE(Same(Parameters(a / "model.pt"), Parameters(c / "model.pt")));
}

TEST_F(TrainerTest, TunedThresholdsComeFromTheValidationReserveIntoTheMetadata) {
  testing::TempDir out;
  TrainOptions o;
  o.spec = Spec("stl");
  o.spec.mutable_train()->set_tune_thresholds(true);
  o.out_dir = out.path();
  auto result = Train(o);
  ASSERT_TRUE(result.ok()) << result.status();
  auto metadata = ReadModelMetadata(out / "model.json");
  ASSERT_TRUE(metadata.ok()) << metadata.status();
  ASSERT_EQ(metadata->thresholds_size(), 12);
  for (double t : metadata->thresholds()) {
    EXPECT_GE(t, 0.05 - 1e-9);
    EXPECT_LE(t, 0.95 + 1e-9);
    EXPECT_NEAR(t * 20, std::round(t * 20), 1e-6);  // on the 0.05 grid
  }
  ASSERT_TRUE(metadata->metrics().fields().count("test_mean_f1_tuned_thresholds"));
  // Not asked: 0.5 everywhere.
  testing::TempDir plain;
  o.spec.mutable_train()->clear_tune_thresholds();
  o.out_dir = plain.path();
  ASSERT_TRUE(Train(o).ok());
  auto plain_metadata = ReadModelMetadata(plain / "model.json");
  ASSERT_TRUE(plain_metadata.ok());
  for (double t : plain_metadata->thresholds()) EXPECT_EQ(t, 0.5);
}

TEST_F(TrainerTest, ResumeFromCheckpointEqualsUninterruptedRun) {
  for (const char* method : {"mal", "mtl"}) {
    SCOPED_TRACE(method);
    testing::TempDir full, split;
    TrainOptions o;
    o.spec = Spec(method);
    o.out_dir = full.path();
    ASSERT_TRUE(Train(o).ok());

    o.out_dir = split.path();
    int polls = 0;
    o.should_stop = [&] { return ++polls == 5; };  // stop before iteration 5 (mid epoch 2)
    auto stopped = Train(o);
    ASSERT_FALSE(stopped.ok());
    EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled);
    o.should_stop = nullptr;
    o.resume = true;
    auto resumed = Train(o);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(resumed->iterations, 6);
    EXPECT_TRUE(Same(Parameters(full / "model.pt"), Parameters(split / "model.pt")));
    // Every iteration is recorded exactly once.
    std::vector<std::string> rows =
        absl::StrSplit(*ReadFile(split / "records.csv"), '\n', absl::SkipEmpty());
    ASSERT_EQ(rows.size(), 7u);
    for (int i = 1; i <= 6; ++i) {
      std::vector<std::string> f = absl::StrSplit(rows[i], ',');
      EXPECT_EQ(f[1], std::to_string(i));
    }
    EXPECT_EQ(CountLines(split / "metrics.json"), 4);  // 2 epochs + brackets
  }
}

// A run resumed from the checkpoint written after its last epoch (its worker died before the
// completion reached the coordinator) trains nothing and still returns the final metrics, which
// the daemon reports as the run's result (RunOutcome.final_epoch; it reported an empty one).
TEST_F(TrainerTest, AResumeAfterTheLastEpochReturnsTheFinalMetrics) {
  testing::TempDir out;
  TrainOptions o;
  o.spec = Spec("mal");
  o.out_dir = out.path();
  auto first = Train(o);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string metadata = *ReadFile(out / "model.json");
  o.resume = true;
  auto again = Train(o);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->iterations, first->iterations);
  EXPECT_EQ(again->final_epoch.epoch, first->final_epoch.epoch);
  EXPECT_EQ(again->final_epoch.iteration, first->iterations);
  EXPECT_GT(again->final_epoch.epoch, 0);
  EXPECT_DOUBLE_EQ(again->final_epoch.test_mean_f1, first->final_epoch.test_mean_f1);
  EXPECT_EQ(again->final_epoch.test_f1, first->final_epoch.test_f1);
  EXPECT_EQ(again->final_epoch.aus, first->final_epoch.aus);
  EXPECT_EQ(CountLines(out / "metrics.json"), 4);  // its 2 epochs once
  // The weights' statistics of the last epoch too (from metrics.json; evaluating gives only F1),
  // so the model's metadata reads as before.
  EXPECT_GT(first->final_epoch.mean_fe_weight, 0);
  EXPECT_NEAR(again->final_epoch.mean_au_weight, first->final_epoch.mean_au_weight, 1e-6);
  EXPECT_NEAR(again->final_epoch.mean_fe_weight, first->final_epoch.mean_fe_weight, 1e-6);
  EXPECT_NEAR(again->final_epoch.fe_weight_consistency_spearman,
              first->final_epoch.fe_weight_consistency_spearman, 1e-6);
  google::protobuf::Struct before, after;  // the same fields and values (maps have no order)
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(metadata, &before).ok());
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(*ReadFile(out / "model.json"), &after).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(before, after));
}

// The meta net's linear weights after a run, read from its checkpoint.
torch::Tensor MetaWeights(const fs::path& checkpoint) {
  torch::serialize::InputArchive archive, meta_archive;
  archive.load_from(checkpoint.string());
  archive.read("meta", meta_archive);
  MetaNet meta(1024, /*with_task_bias=*/true);  // small_cnn's 256 channels x 2 x 2 cells
  meta->load(meta_archive);
  return meta->linear->weight.detach().clone();
}

// The virtual step uses the current base learning rate: with a zero-initialised meta net and
// plain SGD on it, the first meta update is proportional to alpha (to first order), so doubling
// train.lr doubles it; a trainer passing 0 or a constant would not.
TEST_F(TrainerTest, MetaUpdateScalesWithTheCurrentLearningRate) {
  std::vector<double> norms;
  for (double lr : {0.001, 0.002}) {
    testing::TempDir out;
    TrainOptions o;
    o.spec = Spec("mal");
    o.spec.mutable_train()->set_epochs(1);
    o.spec.mutable_train()->set_max_iterations(1);
    o.spec.mutable_train()->set_lr(lr);
    o.spec.mutable_mal()->set_meta_optimizer("sgd");
    o.spec.mutable_mal()->set_meta_lr(100);
    o.out_dir = out.path();
    ASSERT_TRUE(Train(o).ok());
    norms.push_back(MetaWeights(out / "checkpoint.pt").norm().item<double>());
  }
  ASSERT_GT(norms[0], 0);
  EXPECT_NEAR(norms[1] / norms[0], 2.0, 0.1);
}

// mal.meta_schedule: follow scales the meta net's learning rate by the base schedule's factor
// each epoch (what records.csv reports, and what the optimiser uses: with a cosine schedule over
// 2 epochs the second epoch's rate is half the first's); constant keeps meta_lr.
TEST_F(TrainerTest, MetaScheduleFollowScalesTheMetaLearningRateWithTheBaseSchedule) {
  for (const char* schedule : {"follow", "constant"}) {
    SCOPED_TRACE(schedule);
    testing::TempDir out;
    TrainOptions o;
    o.spec = Spec("mal");
    o.spec.mutable_train()->set_schedule("cosine");
    o.spec.mutable_mal()->set_meta_schedule(schedule);
    o.out_dir = out.path();
    ASSERT_TRUE(Train(o).ok());
    std::vector<std::string> rows =
        absl::StrSplit(*ReadFile(out / "records.csv"), '\n', absl::SkipEmpty());
    ASSERT_EQ(rows.size(), 7u);
    for (int i = 1; i <= 6; ++i) {
      std::vector<std::string> f = absl::StrSplit(rows[i], ',');
      const int epoch = std::stoi(f[0]);
      const double factor = std::string(schedule) == "follow"
                                ? LearningRate(o.spec.train(), epoch) / o.spec.train().lr()
                                : 1.0;
      EXPECT_NEAR(std::stod(f[10]), 0.01 * factor, 1e-9) << rows[i];  // the meta_lr column
    }
  }
}

// A short MAL run moves the per-sample weights off their initial 0.5, for AU and FE samples.
TEST_F(TrainerTest, SampleWeightsLeaveOneHalf) {
  testing::TempDir out;
  TrainOptions o;
  o.spec = Spec("mal");
  o.out_dir = out.path();
  ASSERT_TRUE(Train(o).ok());
  const auto rows = WeightsRows(out.path());
  ASSERT_GT(rows.size(), 1u);
  double spread[2] = {0, 0};  // largest |w - 0.5| per task
  int aligned[2] = {0, 0};    // samples with a gradient alignment from this epoch's meta updates
  double alignment_abs = 0;
  for (const auto& f : rows) {
    const int task = f[1] == "fe" ? 1 : 0;
    spread[task] = std::max(spread[task], std::abs(std::stod(f[4]) - 0.5));
    if (!f[6].empty()) {
      ++aligned[task];
      alignment_abs += std::abs(std::stod(f[6]));
    }
  }
  EXPECT_GT(spread[0], 1e-4);
  EXPECT_GT(spread[1], 1e-4);
  EXPECT_GT(aligned[0], 0);
  EXPECT_GT(aligned[1], 0);
  EXPECT_GT(alignment_abs, 0);
}

// mal.au_weighting: task and task_in_base_step. The weights CSV gives every AU frame the AU task's
// one weight (the mean AU weight over the training part at the epoch's end, metrics.json's
// mean_au_weight; training applies each batch's own mean), the FE images keep one weight each;
// with sample the AU frames differ. In every setting the meta_weight column keeps the meta net's
// per-frame AU weights, whose mean is the AU rows' weight under task / task_in_base_step. (Its
// validation: SpecTest.ErrorsNameFieldPathAndReason.)
TEST_F(TrainerTest, TaskAuWeightingWritesOneWeightForEveryAuFrame) {
  std::map<std::string, std::vector<std::string>> fe_weights;  // per weighting, in CSV order
  for (const std::string weighting : {"task", "task_in_base_step", "sample"}) {
    SCOPED_TRACE(weighting);
    testing::TempDir out;
    TrainOptions o;
    o.spec = Spec("mal");
    o.spec.mutable_mal()->set_au_weighting(weighting);
    o.out_dir = out.path();
    ASSERT_TRUE(Train(o).ok());
    const auto rows = WeightsRows(out.path());
    ASSERT_GT(rows.size(), 1u);
    std::set<std::string> au_weights, au_meta_weights;
    double fe_min = 1, fe_max = 0, au_meta_sum = 0;
    int au_rows = 0;
    for (const auto& f : rows) {
      if (f[1] == "au") {
        au_weights.insert(f[4]);
        au_meta_weights.insert(f[7]);
        au_meta_sum += std::stod(f[7]);
        ++au_rows;
      } else {
        EXPECT_EQ(f[7], f[4]) << f[0];  // an FE image's weight is the meta net's output
        fe_weights[weighting].push_back(f[4]);
        fe_min = std::min(fe_min, std::stod(f[4]));
        fe_max = std::max(fe_max, std::stod(f[4]));
      }
    }
    EXPECT_GT(fe_max - fe_min, 1e-4);
    // meta_weight keeps the per-frame AU weights the meta net learned, in every setting.
    EXPECT_GT(au_meta_weights.size(), 1u);
    if (weighting == "sample") {
      EXPECT_EQ(au_weights, au_meta_weights);
      continue;
    }
    ASSERT_EQ(au_weights.size(), 1u);
    // The applied AU weight is the mean of the meta net's per-frame outputs.
    EXPECT_NEAR(std::stod(*au_weights.begin()), au_meta_sum / au_rows, 2e-6);
    const std::string metrics = *ReadFile(out / "metrics.json");
    const std::string key = "\"mean_au_weight\": ";
    const size_t at = metrics.rfind(key);  // the last epoch's
    ASSERT_NE(at, std::string::npos) << metrics;
    EXPECT_NEAR(std::stod(*au_weights.begin()), std::stod(metrics.substr(at + key.size())), 2e-6);
  }
  // The same seed: task_in_base_step's meta net learns from other virtual steps than task's.
  EXPECT_NE(fe_weights["task"], fe_weights["task_in_base_step"]);
  EXPECT_NE(fe_weights["sample"], fe_weights["task_in_base_step"]);
}

// mal.task_balance: fixed_in_base_step. The weights CSV's normalized_weight divides each sample's
// weight by its own task's mean (mean 1 per task), where the paper's one normalisation gives the
// two tasks shares that sum to 1; and the real steps differ, so the same seed ends elsewhere.
TEST_F(TrainerTest, FixedTaskBalanceNormalisesEachTaskByItsOwnMean) {
  std::map<std::string, std::vector<std::string>> fe_weights;  // per balance, in CSV order
  for (const std::string balance : {"meta", "fixed_in_base_step"}) {
    SCOPED_TRACE(balance);
    testing::TempDir out;
    TrainOptions o;
    o.spec = Spec("mal");
    o.spec.mutable_mal()->set_task_balance(balance);
    o.out_dir = out.path();
    ASSERT_TRUE(Train(o).ok());
    const auto rows = WeightsRows(out.path());
    ASSERT_GT(rows.size(), 1u);
    double sum[2] = {0, 0};
    int count[2] = {0, 0};
    for (const auto& f : rows) {
      const int task = f[1] == "fe";
      sum[task] += std::stod(f[5]);
      ++count[task];
      if (task == 1) fe_weights[balance].push_back(f[4]);
    }
    ASSERT_GT(count[0], 0);
    ASSERT_GT(count[1], 0);
    const double au = sum[0] / count[0], fe = sum[1] / count[1];
    if (balance == "meta") {
      EXPECT_NEAR(au + fe, 1.0, 1e-5);
    } else {
      EXPECT_NEAR(au, 1.0, 1e-5);
      EXPECT_NEAR(fe, 1.0, 1e-5);
    }
  }
  EXPECT_NE(fe_weights["meta"], fe_weights["fixed_in_base_step"]);
}

// train.channels_last trains the same model as NCHW (the same values in another memory layout,
// up to float rounding), and its model.pt loads into a plain model. MAL with an SGD meta
// optimiser: Adam's first steps are about lr x sign(gradient), which turns rounding in a
// meta-gradient component near zero into a difference of the meta learning rate.
TEST_F(TrainerTest, ChannelsLastTrainsTheSameModel) {
  for (const std::string method : {"stl", "mal"}) {
    SCOPED_TRACE(method);
    std::vector<std::vector<torch::Tensor>> params;
    for (const bool channels_last : {false, true}) {
      testing::TempDir out;
      TrainOptions o;
      o.spec = Spec(method);
      o.spec.mutable_mal()->set_meta_optimizer("sgd");
      o.spec.mutable_train()->set_channels_last(channels_last);
      o.out_dir = out.path();
      ASSERT_TRUE(Train(o).ok());
      params.push_back(Parameters(out / "model.pt"));
    }
    ASSERT_EQ(params[0].size(), params[1].size());
    int nhwc = 0;  // convolution weights with a spatial kernel, stored NHWC: the option was applied
    for (const auto& p : params[1]) {
      nhwc += p.dim() == 4 && p.size(2) > 1 && p.is_contiguous(torch::MemoryFormat::ChannelsLast) &&
              !p.is_contiguous();
    }
    EXPECT_GT(nhwc, 0);
    for (size_t i = 0; i < params[0].size(); ++i) {
      EXPECT_TRUE(torch::allclose(params[0][i], params[1][i], /*rtol=*/1e-4, /*atol=*/1e-6))
          << "tensor " << i << " differs by "
          << (params[0][i] - params[1][i]).abs().max().item<double>();
    }
  }
}

// train.precision: bf16-mixed runs every method and meta mode it allows under bfloat16 autocast:
// finite losses, other values than float32 (autocast was on), and close to them at the first
// iteration (bf16 keeps about 3 significant digits).
TEST_F(TrainerTest, Bf16MixedPrecisionTrainsEveryMethod) {
  auto first_loss_au = [](const fs::path& records) {
    std::vector<std::string> rows = absl::StrSplit(*ReadFile(records), '\n', absl::SkipEmpty());
    if (rows.size() < 2) {
      ADD_FAILURE() << records << ": no iteration";
      return 0.0;
    }
    std::vector<std::string> header = absl::StrSplit(rows[0], ',');
    std::vector<std::string> first = absl::StrSplit(rows[1], ',');
    for (size_t i = 0; i < header.size(); ++i) {
      if (header[i] == "loss_au") return std::stod(first[i]);
    }
    ADD_FAILURE() << "no loss_au column: " << rows[0];
    return 0.0;
  };
  for (const auto& [method, mode] : std::vector<std::pair<std::string, std::string>>{
           {"stl", "exact"}, {"mtl", "exact"}, {"mal", "exact"}, {"mal", "heads_only"}}) {
    SCOPED_TRACE(method + " " + mode);
    double loss[2];
    std::vector<std::vector<torch::Tensor>> params;
    for (const char* precision : {"fp32", "bf16-mixed"}) {
      testing::TempDir out;
      TrainOptions o;
      o.spec = Spec(method, mode);
      o.spec.mutable_train()->set_precision(precision);
      ASSERT_TRUE(ValidateSpec(o.spec).ok());
      o.out_dir = out.path();
      auto result = Train(o);
      ASSERT_TRUE(result.ok()) << result.status();
      loss[params.size()] = first_loss_au(out / "records.csv");
      params.push_back(Parameters(out / "model.pt"));
    }
    EXPECT_NEAR(loss[1], loss[0], 0.02 * loss[0]);
    bool differs = false;
    for (size_t i = 0; i < params[0].size(); ++i) {
      EXPECT_TRUE(torch::isfinite(params[1][i]).all().item<bool>()) << "tensor " << i;
      differs = differs || !torch::equal(params[0][i], params[1][i]);
    }
    EXPECT_TRUE(differs) << "bf16-mixed trained exactly the float32 model: autocast was off";
  }
}

// train.fe_weights: an MTL run on a MAL run's final FE weights draws its highest-weighted third
// three times, its lowest third once, and trains a model of its own.
TEST_F(TrainerTest, MtlOnAMalRunsFeWeightsDrawsTheHighestWeightedImagesMoreOften) {
  testing::TempDir mal_out, mtl_out, weighted_out;
  TrainOptions o;
  o.spec = Spec("mal");
  o.out_dir = mal_out.path();
  ASSERT_TRUE(Train(o).ok());
  std::map<std::string, double> weight;  // FE image id -> its final weight
  for (const auto& row : WeightsRows(mal_out.path())) {
    if (row[1] == "fe") weight[row[0]] = std::stod(row[4]);
  }
  ASSERT_GT(weight.size(), 10u);

  o.spec = Spec("mtl");
  o.spec.mutable_train()->set_fe_weights(mal_out / "weights/epoch_002.csv");
  ASSERT_TRUE(ValidateSpec(o.spec).ok());
  auto data = LoadData(o.spec, 1);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->fe.samples.size(), weight.size());
  std::map<std::string, int> times;
  for (int64_t i : data->fe_train) ++times[data->fe.samples[i].id];
  const size_t n = weight.size();
  size_t drawn = 0;
  for (size_t r = 0; r < n; ++r) drawn += r * 3 / n + 1;
  EXPECT_EQ(data->fe_train.size(), drawn);
  const auto [lowest, highest] =
      std::minmax_element(weight.begin(), weight.end(),
                          [](const auto& a, const auto& b) { return a.second < b.second; });
  EXPECT_EQ(times[lowest->first], 1) << lowest->first;
  EXPECT_EQ(times[highest->first], 3) << highest->first;
  for (const auto& [id, w] : weight) {  // the draw never favours a lower weight
    for (const auto& [other, v] : weight) {
      if (w < v) {
        EXPECT_LE(times[id], times[other]) << id << " " << other;
      }
    }
  }

  o.out_dir = weighted_out.path();
  ASSERT_TRUE(Train(o).ok());
  o.spec.mutable_train()->clear_fe_weights();
  o.out_dir = mtl_out.path();
  ASSERT_TRUE(Train(o).ok());
  EXPECT_FALSE(Same(Parameters(weighted_out / "model.pt"), Parameters(mtl_out / "model.pt")));
  auto metadata = ReadModelMetadata(weighted_out / "model.json");
  ASSERT_TRUE(metadata.ok()) << metadata.status();
  EXPECT_EQ(metadata->spec().train().fe_weights(), mal_out / "weights/epoch_002.csv");

  // Weights of other FE data: refused before training, naming the field and an image without a
  // row; nothing of the run is written.
  testing::WriteText(mal_out / "other.csv", "id,task,weight\nsomeone_else,fe,0.5\n");
  o.spec.mutable_train()->set_fe_weights(mal_out / "other.csv");
  testing::TempDir refused;
  o.out_dir = refused.path();
  auto result = Train(o);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      std::string(result.status().message()),
      HasSubstr("train.fe_weights: " + (mal_out / "other.csv") + " has no row for FE image"));
  EXPECT_FALSE(fs::exists(refused / "checkpoint.pt"));
}

// train.fe_weights is read again when a run resumes: a checkpoint records the FE draw it was
// training on, and a resume whose weights file now gives another draw is refused (the checkpoint
// kept); with the file put back, the run resumes.
TEST_F(TrainerTest, AResumeRefusesAnFeDrawThatChangedSinceItsCheckpoint) {
  testing::TempDir dir;
  TrainOptions o;
  o.spec = Spec("mtl");
  auto data = LoadData(o.spec, 1);
  ASSERT_TRUE(data.ok()) << data.status();
  std::string rising = "id,weight\n", falling = "id,weight\n";
  const size_t n = data->fe.samples.size();
  for (size_t i = 0; i < n; ++i) {
    absl::StrAppend(&rising, data->fe.samples[i].id, ",", i, "\n");
    absl::StrAppend(&falling, data->fe.samples[i].id, ",", n - i, "\n");
  }
  testing::WriteText(dir / "w.csv", rising);
  o.spec.mutable_train()->set_fe_weights(dir / "w.csv");
  o.out_dir = dir / "run";
  int polls = 0;
  o.should_stop = [&] { return ++polls == 5; };
  ASSERT_EQ(Train(o).status().code(), absl::StatusCode::kCancelled);
  o.should_stop = nullptr;
  o.resume = true;
  testing::WriteText(dir / "w.csv", falling);
  auto refused = Train(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("another FE draw than train.fe_weights (" + (dir / "w.csv") + ")"));
  EXPECT_TRUE(fs::exists(dir / "run/checkpoint.pt"));
  o.spec.mutable_train()->clear_fe_weights();
  EXPECT_THAT(std::string(Train(o).status().message()),
              HasSubstr("was written with train.fe_weights, and the spec now unsets it"));
  o.spec.mutable_train()->set_fe_weights(dir / "w.csv");
  testing::WriteText(dir / "w.csv", rising);
  auto resumed = Train(o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->iterations, 6);

  // Started without the field, resumed with it: refused too (the saved position is in the plain
  // draw).
  o.spec.mutable_train()->clear_fe_weights();
  o.out_dir = dir / "plain";
  o.resume = false;
  polls = 0;
  o.should_stop = [&] { return ++polls == 5; };
  ASSERT_EQ(Train(o).status().code(), absl::StatusCode::kCancelled);
  o.should_stop = nullptr;
  o.resume = true;
  o.spec.mutable_train()->set_fe_weights(dir / "w.csv");
  auto set_later = Train(o);
  EXPECT_EQ(set_later.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(set_later.status().message()),
              HasSubstr("was written without train.fe_weights, and the spec now sets it"));
}

// WeightedFeDraw on a hand-made index: the levels by rank, ties by order, AU rows and unknown ids
// ignored, and every malformed input refused naming the file and line.
TEST(WeightedFeDrawTest, GroupsByRankAndNamesTheLineOfEveryBadInput) {
  testing::TempDir dir;
  data::DatasetIndex fe;
  for (const char* id : {"a", "b", "c", "d", "e", "f"}) {
    data::Sample s;
    s.id = id;
    s.expression = 1;
    s.image = dir / absl::StrCat(id, ".png");
    testing::WriteImage(s.image);
    fe.samples.push_back(s);
  }
  const std::string path = dir / "w.csv";
  auto counts = [&](const std::string& csv, int levels) {
    testing::WriteText(path, csv);
    auto draw = WeightedFeDraw(fe, path, levels);
    EXPECT_TRUE(draw.ok()) << draw.status();
    std::string out;
    for (size_t i = 0; i < fe.samples.size() && draw.ok(); ++i)
      out += std::to_string(std::count(draw->begin(), draw->end(), static_cast<int64_t>(i)));
    return out;
  };
  // Ranked e < a = c < f < b < d; a before c (the index's order) on the tie.
  const std::string csv =
      "id,task,label,weight\nx/1,au,,0.99\na,fe,happy,0.2\nb,fe,sad,0.7\nc,fe,sad,0.2\n"
      "d,fe,fear,0.9\ne,fe,anger,0.1\nf,fe,anger,0.4\nunknown,fe,sad,0.5\n";
  EXPECT_EQ(counts(csv, 3), "132312");
  EXPECT_EQ(counts(csv, 2), "121212");
  EXPECT_EQ(counts(csv, 6), "253614");
  // No task column: every row is an FE image's; CRLF line ends and blank lines are fine.
  EXPECT_EQ(counts("id,weight\r\na,1\r\nb,2\r\n\r\nc,3\r\nd,4\r\ne,5\r\nf,6\r\n", 3), "112233");

  auto error = [&](const std::string& text) {
    testing::WriteText(path, text);
    auto draw = WeightedFeDraw(fe, path, 3);
    EXPECT_FALSE(draw.ok());
    return std::string(draw.status().message());
  };
  const std::string rows = "a,1\nb,1\nc,1\nd,1\ne,1\nf,1\n";
  EXPECT_THAT(error(""), HasSubstr("train.fe_weights: " + path + ": empty"));
  EXPECT_THAT(error("id,score\n" + rows), HasSubstr(path + ":1: no 'weight' column"));
  EXPECT_THAT(error("name,weight\n" + rows), HasSubstr(path + ":1: no 'id' column"));
  EXPECT_THAT(error("id,weight\na,1\nb,heavy\n"),
              HasSubstr(path + ":3: weight 'heavy' is not a finite number >= 0"));
  EXPECT_THAT(error("id,weight\na,-0.5\n"), HasSubstr(path + ":2: weight '-0.5'"));
  EXPECT_THAT(error("id,weight\na,nan\n"), HasSubstr(path + ":2: weight 'nan'"));
  EXPECT_THAT(error("id,weight\na,1\nb\n"), HasSubstr(path + ":3: 1 fields, the header has 2"));
  EXPECT_THAT(error("id,weight\n\"a,1\n"), HasSubstr(path + ":2: unterminated quoted field"));
  EXPECT_THAT(error("id,weight\n" + rows + "c,2\n"),
              HasSubstr(path + ":8: id 'c' is listed twice (first on line 4)"));
  EXPECT_THAT(error("id,weight\na,1\nb,1\nd,1\n"),
              HasSubstr("has no row for FE image 'c' (3 of the 6 FE training images have none)"));
  // A MAL run writes no row for an image that does not decode: the same image here is drawn once
  // (and left out of its batches again); the others are ranked among themselves.
  testing::WriteText(fe.samples[2].image, "");  // c
  testing::WriteText(fe.samples[4].image, "");  // e
  EXPECT_EQ(counts("id,weight\na,1\nb,2\nd,3\nf,4\n", 2), "111212");
  EXPECT_THAT(error("id,weight\na,1\nb,2\nd,3\n"),
              HasSubstr("has no row for FE image 'f' (3 of the 6 FE training images have none)"));
  auto missing = WeightedFeDraw(fe, dir / "nope.csv", 3);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("train.fe_weights: " + (dir / "nope.csv")));
}

// Images that do not decode are left out, counted per part in the epoch's metrics and said in the
// log; a test part or a training set of which no image decodes fails the run, naming the part.
TEST_F(TrainerTest, ImagesThatDoNotDecodeAreCountedAndAPartWithoutAnyFailsTheRun) {
  testing::TempDir data;
  fs::copy(*dir_ / "sf", data / "sf", fs::copy_options::recursive);
  v1::ExperimentSpec spec = Spec("mal");
  spec.mutable_data()->mutable_au()->set_root(data / "sf");
  spec.mutable_data()->mutable_fe()->set_root(data / "sf");
  absl::StatusOr<Data> d = LoadData(spec, 1);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_GE(d->fold.test.size(), 3u);
  auto corrupt = [&](const std::vector<int64_t>& which, size_t n) {
    for (size_t k = 0; k < std::min(n, which.size()); ++k)
      testing::WriteText(d->au.samples[which[k]].image, "");
  };
  auto train = [&](const std::string& out) {
    TrainOptions o;
    o.spec = spec;
    o.out_dir = out;
    return Train(o);
  };

  corrupt(d->fold.test, 2);
  testing::TempDir some;
  auto result = train(some.path());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->final_epoch.test_failed_images, 2);
  EXPECT_EQ(result->final_epoch.train_failed_images, 0);
  const absl::StatusOr<std::string> metrics = ReadFile(some / "metrics.json");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, HasSubstr("\"train_failed_images\": 0, \"test_failed_images\": 2, "
                                  "\"val_failed_images\": 0"));

  corrupt(d->fold.test, d->fold.test.size());
  testing::TempDir none;
  result = train(none.path());
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("epoch 1: no image of the test part decodes ("));

  corrupt(d->fold.train, d->fold.train.size());
  testing::TempDir untrained;
  result = train(untrained.path());
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("epoch 1: no AU training image of fold 1 decodes"));
  EXPECT_FALSE(fs::exists(untrained / "model.pt"));
}

TEST_F(TrainerTest, MissingDatasetFailsNamingThePath) {
  testing::TempDir out;
  TrainOptions o;
  o.spec = Spec("stl");
  o.spec.mutable_data()->mutable_au()->set_format("bp4d");
  o.spec.mutable_data()->mutable_au()->set_root("/nonexistent/BP4D");
  o.out_dir = out / "run";
  auto result = Train(o);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("/nonexistent/BP4D"));
  EXPECT_FALSE(fs::exists(out / "run"));  // data refused: no run directory left behind
}

// An AU the dataset does not code trained on nothing and counted 0 in the mean F1.
TEST_F(TrainerTest, AnAuTheDatasetDoesNotCodeIsRefusedNamingIt) {
  testing::TempDir out;
  TrainOptions o;
  o.spec = Spec("stl");
  o.spec.mutable_data()->clear_aus();
  o.spec.mutable_data()->add_aus(1);
  o.spec.mutable_data()->add_aus(99);
  o.out_dir = out.path();
  auto result = Train(o);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("data.aus: AU99 is not coded in any of the"));
}

TEST_F(TrainerTest, NonFiniteLossFailsAndKeepsTheLastCheckpoint) {
  testing::TempDir out;
  TrainOptions o;
  o.spec = Spec("mtl");
  o.spec.mutable_train()->set_lr(1e30);
  o.spec.mutable_train()->set_checkpoint_every(1);
  o.out_dir = out.path();
  auto result = Train(o);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("non-finite"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("last checkpoint kept"));
  ASSERT_TRUE(fs::exists(out / "checkpoint.pt"));
  EXPECT_FALSE(fs::exists(out / "model.pt"));
}

// A real file written by PyTorch: torchvision's resnet18 state dict, and its features for an input.
TEST(PretrainedTest, LoadsTorchvisionStateDictAndReproducesItsFeatures) {
  if (!fs::exists("/usr/bin/python3") ||
      std::system("/usr/bin/python3 -c 'import torchvision' 2>/dev/null") != 0) {
    GTEST_SKIP() << "python3-torchvision not installed (deploy/setup.sh installs it)";
  }
  testing::TempDir dir;
  const std::string script = absl::StrCat(
      "import torch, torchvision\n"
      "torch.manual_seed(0)\n"
      "m = torchvision.models.resnet18()\n"
      "for mod in m.modules():\n"
      "    if isinstance(mod, torch.nn.BatchNorm2d):\n"
      "        mod.running_mean.uniform_(-0.1, 0.1); mod.running_var.uniform_(0.5, 1.5)\n"
      "torch.save(m.state_dict(), '",
      dir / "r18.pth",
      "')\n"
      "m.fc = torch.nn.Identity(); m.eval()\n"
      "x = torch.randn(2, 3, 64, 64)\n"
      "with torch.no_grad(): y = m(x)\n"
      "torch.save({'x': x, 'y': y}, '",
      dir / "io.pt",
      "')\n"
      "torch.save(torchvision.models.resnet34().state_dict(), '",
      dir / "r34.pth", "')\n");
  testing::WriteText(dir / "make.py", script);
  ASSERT_EQ(std::system(("/usr/bin/python3 " + (dir / "make.py")).c_str()), 0);

  BaseNetImpl::Config c;
  c.backbone = "resnet18";
  BaseNet net(c);
  absl::Status s = LoadPretrainedBackbone(dir / "r18.pth", *net);
  ASSERT_TRUE(s.ok()) << s;
  std::ifstream in(dir / "io.pt", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto io = torch::pickle_load(bytes).toGenericDict();
  net->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor y = net->Features(io.at("x").toTensor());
  EXPECT_TRUE(torch::allclose(y, io.at("y").toTensor(), 1e-4, 1e-5));

  absl::Status mismatch = LoadPretrainedBackbone(dir / "r34.pth", *net);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(std::string(mismatch.message()), HasSubstr("names not in the model"));
  EXPECT_THAT(std::string(mismatch.message()),
              HasSubstr("names not in the model (96): layer1.2.bn1.bias"));
  EXPECT_FALSE(LoadPretrainedBackbone(dir / "missing.pth", *net).ok());
  testing::WriteText(dir / "junk.pth", "not a pickle");
  absl::Status junk = LoadPretrainedBackbone(dir / "junk.pth", *net);
  ASSERT_FALSE(junk.ok());
  EXPECT_THAT(std::string(junk.message()), HasSubstr("junk.pth"));
}

// Throws CUDA's out-of-memory error from inside the training loop, once, at iteration `at`, and
// reads the batches of the checkpoint in `dir` at the first iteration after that.
class OutOfMemoryAt : public RecordSink {
 public:
  OutOfMemoryAt(int64_t at, fs::path dir) : at_(at), dir_(std::move(dir)) {}
  void OnIteration(const IterationRecord& r) override {
    iterations_.push_back(r.iteration);
    if (thrown_ && iterations_.size() == static_cast<size_t>(at_) + 1) {
      auto b = ReadCheckpointBatches(dir_ / "checkpoint.pt");
      if (b.ok()) checkpoint_at_restart_ = *b;
    }
    if (r.iteration == at_ && !thrown_) {
      thrown_ = true;
      C10_THROW_ERROR(OutOfMemoryError, "CUDA out of memory. Tried to allocate 2.00 GiB");
    }
  }
  std::vector<int64_t> iterations_;
  Batches checkpoint_at_restart_;

 private:
  int64_t at_;
  fs::path dir_;
  bool thrown_ = false;
};

// train.oom_retries: a run that runs out of device memory mid-iteration (here at iteration 4,
// after a checkpoint, a weights CSV and TensorBoard events of epoch 1) starts over with every
// batch halved, without a trace of the larger batch's files, and its model is the one a run at
// those batches gives.
TEST_F(TrainerTest, OutOfMemoryStartsOverWithHalvedBatches) {
  testing::TempDir halved;
  TrainOptions o;
  o.spec = Spec("mal");
  o.spec.mutable_train()->set_oom_retries(2);
  o.spec.mutable_train()->set_tensorboard(true);
  o.out_dir = halved.path();
  OutOfMemoryAt sink(4, halved.path());
  o.sink = &sink;
  auto result = Train(o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(sink.iterations_, (std::vector<int64_t>{1, 2, 3, 4, 1, 2, 3, 4, 5, 6}));
  // The restarted run checkpointed its batches before its first iteration.
  EXPECT_EQ(sink.checkpoint_at_restart_, (Batches{4, 4, 4}));
  EXPECT_EQ(result->oom_halvings, 1);
  auto meta = ReadModelMetadata(halved / "model.json");
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->spec().train().batch_au(), 4);
  EXPECT_EQ(meta->spec().train().batch_fe(), 4);
  EXPECT_EQ(meta->spec().mal().val_batch(), 4);
  auto saved = ReadCheckpointBatches(halved / "checkpoint.pt");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(*saved, (Batches{4, 4, 4}));
  // The logs have the second run's 6 iterations and 2 epochs only, TensorBoard one event file.
  EXPECT_EQ(CountLines(halved / "records.csv"), 7);
  EXPECT_EQ(CountLines(halved / "metrics.json"), 4);
  int event_files = 0;
  for (const auto& f : fs::directory_iterator(halved / "tensorboard"))
    event_files += f.is_regular_file();
  EXPECT_EQ(event_files, 1);
  EXPECT_TRUE(Same(Parameters(halved / "model.pt"), MalParametersAtBatch(4)));
}

// A run that had halved its batches and was stopped resumes with the checkpoint's batches, though
// its spec (the coordinator's, unchanged) still names the larger ones; the result is the run at
// the halved batches, uninterrupted.
TEST_F(TrainerTest, ResumeAfterOutOfMemoryKeepsTheHalvedBatches) {
  testing::TempDir split;
  TrainOptions o;
  o.spec = Spec("mal");
  o.spec.mutable_train()->set_oom_retries(3);
  o.out_dir = split.path();
  int polls = 0;
  auto attempt = [&](const TrainOptions& a) -> absl::StatusOr<TrainResult> {
    if (a.spec.train().batch_au() > 2) C10_THROW_ERROR(OutOfMemoryError, "CUDA out of memory.");
    TrainOptions stopped = a;
    stopped.should_stop = [&] { return ++polls == 5; };  // mid epoch 2
    return TrainOnce(stopped);
  };
  auto first = TrainWithOomFallback(o, attempt);
  ASSERT_EQ(first.status().code(), absl::StatusCode::kCancelled) << first.status();
  auto saved = ReadCheckpointBatches(split / "checkpoint.pt");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(*saved, (Batches{2, 2, 2}));

  o.resume = true;
  auto resumed = Train(o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->oom_halvings, 2);
  EXPECT_EQ(resumed->iterations, 6);
  auto meta = ReadModelMetadata(split / "model.json");
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->spec().train().batch_au(), 2);

  EXPECT_TRUE(Same(Parameters(split / "model.pt"), MalParametersAtBatch(2)));
}

// Out of memory at every batch: the run fails for good (ResourceExhausted) after
// train.oom_retries halvings, naming the last batches; with 0 retries after the first attempt.
TEST(OomFallbackTest, FailsAfterTheRetriesNamingTheLastBatches) {
  testing::TempDir out;
  for (int retries : {0, 2}) {
    SCOPED_TRACE(retries);
    TrainOptions o;
    o.spec.set_method(v1::MAL);
    o.spec.mutable_train()->set_device("cuda:0");
    o.spec.mutable_train()->set_batch_au(64);
    o.spec.mutable_train()->set_batch_fe(48);
    o.spec.mutable_train()->set_oom_retries(retries);
    o.spec.mutable_mal()->set_val_batch(256);
    o.spec.mutable_model()->set_input(224);
    o.spec.mutable_model()->set_backbone("resnet34");
    o.out_dir = out.path();
    struct RestartSink : RecordSink {
      void OnRestart(const RestartRecord& r) override { restarts.push_back(r); }
      std::vector<RestartRecord> restarts;
    } sink;
    o.sink = &sink;
    std::vector<int64_t> tried;
    auto result =
        TrainWithOomFallback(o, [&](const TrainOptions& a) -> absl::StatusOr<TrainResult> {
          tried.push_back(a.spec.train().batch_au());
          C10_THROW_ERROR(OutOfMemoryError, "CUDA out of memory. Tried to allocate 2.00 GiB");
        });
    // Each start-over is announced with the batches it starts with and why the last one ended.
    ASSERT_EQ(sink.restarts.size(), static_cast<size_t>(retries));
    for (int k = 0; k < retries; ++k) {
      EXPECT_EQ(sink.restarts[k].halving, k + 1);
      EXPECT_EQ(sink.restarts[k].batch_au, 64 >> (k + 1));
      EXPECT_EQ(sink.restarts[k].batch_fe, 48 >> (k + 1));
      EXPECT_EQ(sink.restarts[k].val_batch, 256 >> (k + 1));
      EXPECT_THAT(sink.restarts[k].reason,
                  HasSubstr(absl::StrCat("with batch ", 64 >> k, " AU + ", 48 >> k, " FE")));
    }
    ASSERT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
    const std::string message(result.status().message());
    if (retries == 0) {
      EXPECT_EQ(tried, (std::vector<int64_t>{64}));
      EXPECT_THAT(message, HasSubstr("with batch 64 AU + 48 FE, validation batch 256 at 224 px"));
      EXPECT_THAT(message, Not(HasSubstr("oom_retries")));
    } else {
      EXPECT_EQ(tried, (std::vector<int64_t>{64, 32, 16}));
      EXPECT_THAT(message, HasSubstr("with batch 16 AU + 12 FE, validation batch 64 at 224 px"));
      EXPECT_THAT(message, HasSubstr("halved 2 time(s) already (train.oom_retries 2)"));
    }
  }
}

// Halving stops at 1: a batch of 1 out of memory fails at once, whatever the retries left.
TEST(OomFallbackTest, BatchesOfOneAreNotHalvedFurther) {
  testing::TempDir out;
  TrainOptions o;
  o.spec.set_method(v1::STL);
  o.spec.mutable_train()->set_batch_au(2);
  o.spec.mutable_train()->set_batch_fe(64);  // unused by STL: not what makes room
  o.spec.mutable_train()->set_oom_retries(5);
  o.out_dir = out.path();
  std::vector<int64_t> tried;
  auto result = TrainWithOomFallback(o, [&](const TrainOptions& a) -> absl::StatusOr<TrainResult> {
    tried.push_back(a.spec.train().batch_au());
    C10_THROW_ERROR(OutOfMemoryError, "CUDA out of memory.");
  });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tried, (std::vector<int64_t>{2, 1}));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("halved 1 time(s)"));
}

// cuDNN's NOT_SUPPORTED (a convolution too large for it) and the CPU allocator's failure are
// plain c10::Errors that a smaller batch cures: they are handled as out of memory.
TEST(OomFallbackTest, CudnnAndAllocatorFailuresCountAsOutOfMemory) {
  testing::TempDir out;
  for (const char* what : {"cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if ...",
                           "DefaultCPUAllocator: can't allocate memory: you tried to allocate 9"}) {
    SCOPED_TRACE(what);
    TrainOptions o;
    o.spec.set_method(v1::STL);
    o.spec.mutable_train()->set_batch_au(8);
    o.spec.mutable_train()->set_oom_retries(1);
    o.out_dir = out.path();
    std::vector<int64_t> tried;
    auto result =
        TrainWithOomFallback(o, [&](const TrainOptions& a) -> absl::StatusOr<TrainResult> {
          tried.push_back(a.spec.train().batch_au());
          EXPECT_EQ(a.eval_batch, tried.size() == 1 ? 64 : 32);
          TORCH_CHECK(false, what);
        });
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(tried, (std::vector<int64_t>{8, 4}));
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("out of memory on"));
  }
}

// Other LibTorch errors are not retried: an internal error with LibTorch's message.
TEST(OomFallbackTest, OtherTorchErrorsFailAtOnce) {
  testing::TempDir out;
  TrainOptions o;
  o.spec.set_method(v1::STL);
  o.spec.mutable_train()->set_batch_au(8);
  o.spec.mutable_train()->set_oom_retries(3);
  o.out_dir = out.path();
  int calls = 0;
  auto result = TrainWithOomFallback(o, [&](const TrainOptions&) -> absl::StatusOr<TrainResult> {
    ++calls;
    TORCH_CHECK(false, "shape mismatch");
  });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("shape mismatch"));
  EXPECT_EQ(calls, 1);
}

// A run out of device memory names the batch sizes of its method and what to lower.
TEST(OutOfMemoryMessageTest, NamesDeviceBatchesAndFieldsToLower) {
  v1::ExperimentSpec spec;
  spec.set_method(v1::MAL);
  spec.mutable_train()->set_device("cuda:1");
  spec.mutable_train()->set_batch_au(64);
  spec.mutable_train()->set_batch_fe(48);
  spec.mutable_mal()->set_val_batch(256);
  spec.mutable_model()->set_input(224);
  spec.mutable_model()->set_backbone("resnet34");
  EXPECT_EQ(OutOfMemoryMessage(spec, "CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
            "out of memory on cuda:1 with batch 64 AU + 48 FE, validation batch 256 at 224 px "
            "(resnet34): lower train.batch_au / train.batch_fe / mal.val_batch or model.input "
            "(CUDA out of memory. Tried to allocate 2.00 GiB)");
  spec.set_method(v1::STL);
  EXPECT_EQ(
      OutOfMemoryMessage(spec, "x"),
      "out of memory on cuda:1 with batch 64 AU at 224 px (resnet34): lower train.batch_au or "
      "model.input (x)");
}

}  // namespace
}  // namespace mal::engine
