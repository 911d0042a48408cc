#include "common/spec/spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data/folds.h"
#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal {
namespace {

using ::testing::HasSubstr;

constexpr char kDesignExample[] = R"(
name: bp4d-mal
method: mal                  # stl | mtl | mal
data:
  au: {format: bp4d, root: /data/BP4D}
  fe: {format: rafdb, root: /data/RAF-DB/basic}
  aus: [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]
cv: {protocol: standard}
model: {backbone: resnet34, input: 224, pretrained: /models/resnet34.pth}
train: {epochs: 30, batch_au: 64, batch_fe: 64, lr: 1e-3, momentum: 0.9, weight_decay: 5e-4}
mal: {mode: exact, meta_lr: 1e-3, meta_optimizer: adam, meta_interval: 1, val_fraction: 0.02, val_batch: 256}
search: {algorithm: random, trials: 8, concurrent: 4, metric: mean_f1,
         space: {train.lr: {log_uniform: [1e-4, 1e-2]}, mal.meta_lr: {choice: [1e-4, 1e-3]}}}
max_restarts: 3
seed: 1
)";

absl::StatusOr<v1::ExperimentSpec> LoadValid(const std::string& yaml) {
  auto spec = ParseSpecYaml(yaml, "exp.yaml");
  if (!spec.ok()) return spec.status();
  ApplyDefaults(*spec);
  absl::Status s = ValidateSpec(*spec);
  if (!s.ok()) return s;
  return spec;
}

std::string ErrorOf(const std::string& yaml) {
  auto spec = LoadValid(yaml);
  return spec.ok() ? "OK" : std::string(spec.status().message());
}

TEST(SpecTest, DesignExampleParsesOneToOne) {
  auto spec = LoadValid(kDesignExample);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "bp4d-mal");
  EXPECT_EQ(spec->method(), v1::MAL);
  EXPECT_EQ(spec->data().au().format(), "bp4d");
  EXPECT_EQ(spec->data().fe().root(), "/data/RAF-DB/basic");
  EXPECT_EQ(spec->data().aus_size(), 12);
  EXPECT_EQ(spec->model().input(), 224);
  EXPECT_EQ(spec->model().resize(), 256);
  EXPECT_DOUBLE_EQ(spec->train().weight_decay(), 5e-4);
  EXPECT_EQ(spec->mal().val_batch(), 256);
  EXPECT_EQ(spec->search().space().at("train.lr").log_uniform_size(), 2);
  EXPECT_EQ(spec->search().space().at("mal.meta_lr").choice(1), "1e-3");
}

// The coordinator applies defaults to a spec malctl already completed: nothing may change, or
// the fold runs would train a different protocol than the engine alone (a bug found that way).
TEST(SpecTest, ApplyingDefaultsTwiceChangesNothing) {
  for (const char* format : {"bp4d", "disfa", "gft", "synthface", "csv"}) {
    auto spec = ParseSpecYaml(
        absl::StrCat("name: x\ndata: {au: {format: ", format, ", root: /d}}\n"), "x.yaml");
    ASSERT_TRUE(spec.ok()) << spec.status();
    ApplyDefaults(*spec);
    EXPECT_EQ(spec->cv().protocol(), data::DefaultProtocol(format)) << format;
    const std::string once = spec->SerializeAsString();
    ApplyDefaults(*spec);
    EXPECT_EQ(spec->SerializeAsString(), once) << format;
  }
  auto kfold =
      ParseSpecYaml("name: x\ndata: {au: {format: bp4d, root: /d}}\ncv: {folds: 5}\n", "x.yaml");
  ASSERT_TRUE(kfold.ok());
  ApplyDefaults(*kfold);
  ApplyDefaults(*kfold);
  EXPECT_EQ(kfold->cv().protocol(), "kfold");
  EXPECT_EQ(kfold->cv().folds(), 5);
}

// Found by the spec_proto fuzzer (UBSan): the default resize of an absurd input overflowed an int
// before validation ran. It is clamped, and validation then names the field.
TEST(SpecTest, DefaultResizeOfAnAbsurdInputDoesNotOverflow) {
  v1::ExperimentSpec spec;
  spec.mutable_model()->set_input(-1879048224);
  ApplyDefaults(spec);
  EXPECT_EQ(spec.model().resize(), std::numeric_limits<int32_t>::min());
  spec.mutable_model()->set_input(2000000000);
  spec.mutable_model()->clear_resize();
  ApplyDefaults(spec);
  EXPECT_EQ(spec.model().resize(), std::numeric_limits<int32_t>::max());
  spec.set_name("x");
  spec.set_method(v1::STL);
  spec.mutable_data()->mutable_au()->set_format("synthface");
  spec.mutable_data()->mutable_au()->set_root("/d");
  ApplyDefaults(spec);
  EXPECT_THAT(std::string(ValidateSpec(spec).message()), HasSubstr("model.input"));
}

TEST(SpecTest, DefaultsFillWhatIsUnset) {
  auto spec =
      LoadValid("name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /r}}\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->method(), v1::MAL);
  EXPECT_DOUBLE_EQ(spec->train().lr(), 1e-3);
  EXPECT_DOUBLE_EQ(spec->train().momentum(), 0.9);
  EXPECT_EQ(spec->mal().mode(), "exact");
  EXPECT_EQ(spec->mal().meta_schedule(), "follow");  // docs/benchmarks.md: the ranking holds
  EXPECT_EQ(spec->mal().au_weighting(), "sample");   // the paper's per-frame weights
  EXPECT_EQ(spec->mal().val_split(), "frames");      // the paper's per-subject frames
  EXPECT_EQ(spec->mal().lookahead_steps(), 1);       // the paper's one virtual step
  EXPECT_EQ(spec->mal().task_balance(), "meta");     // the paper's one normalisation
  EXPECT_EQ(spec->max_restarts(), 3);
  EXPECT_EQ(spec->cv().seed(), spec->seed());
}

// small_cnn keeps a 2 x 2 grid of its last feature map (where on the face a feature is), the
// ResNets global pooling; a grid finer than the feature map is refused naming the field.
TEST(SpecTest, FeatureGridDefaultsByBackboneAndIsBoundedByTheFeatureMap) {
  const std::string data = "name: x\nmethod: stl\ndata: {au: {format: bp4d, root: /d}}\n";
  auto small = LoadValid(data + "model: {backbone: small_cnn, input: 64}\n");
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->model().feature_grid(), 2);
  auto resnet = LoadValid(data + "model: {backbone: resnet18}\n");
  ASSERT_TRUE(resnet.ok()) << resnet.status();
  EXPECT_EQ(resnet->model().feature_grid(), 1);
  EXPECT_TRUE(LoadValid(data + "model: {backbone: resnet18, feature_grid: 4}\n").ok());
  // ResNet-18 at 112 px ends in a 4 x 4 map (its padded stride-2 steps round up: 112 / 32 = 3.5).
  EXPECT_TRUE(LoadValid(data + "model: {backbone: resnet18, input: 112, feature_grid: 4}\n").ok());
  // small_cnn at 32 px ends in a 2 x 2 map; ResNet-18 at 64 px in 2 x 2.
  for (const char* model : {"{backbone: small_cnn, input: 32, feature_grid: 3}",
                            "{backbone: resnet18, input: 64, feature_grid: 3}",
                            "{backbone: small_cnn, feature_grid: 0}"}) {
    auto bad = LoadValid(data + "model: " + model + "\n");
    ASSERT_FALSE(bad.ok()) << model;
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr("model.feature_grid")) << model;
  }
}

// train.precision defaults to fp32 and accepts bf16-mixed, except with MAL's finite-difference
// meta-gradient (its step is near bfloat16's resolution); train.channels_last defaults to false.
TEST(SpecTest, PrecisionAndChannelsLast) {
  const std::string head =
      "name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /f}}\n";
  auto plain = LoadValid(head + "method: mal\n");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->train().precision(), "fp32");
  EXPECT_FALSE(plain->train().channels_last());
  auto bf16 =
      LoadValid(head + "method: mal\ntrain: {precision: bf16-mixed, channels_last: true}\n");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->train().precision(), "bf16-mixed");
  EXPECT_TRUE(bf16->train().channels_last());
  EXPECT_TRUE(
      LoadValid(head +
                "method: mtl\ntrain: {precision: bf16-mixed}\nmal: {mode: finite_difference}\n")
          .ok());
  for (const char* bad :
       {"method: mal\ntrain: {precision: bf16-mixed}\nmal: {mode: finite_difference}\n",
        "method: stl\ntrain: {precision: fp16}\n"}) {
    EXPECT_THAT(ErrorOf(head + bad), HasSubstr("train.precision")) << bad;
  }
}

// train.oom_retries defaults to 0 (an out-of-memory run fails) and is bounded.
TEST(SpecTest, OomRetries) {
  const std::string head =
      "name: x\nmethod: mal\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /f}}\n";
  auto plain = LoadValid(head);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->train().oom_retries(), 0);
  auto two = LoadValid(head + "train: {oom_retries: 2}\n");
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->train().oom_retries(), 2);
  for (const char* bad : {"train: {oom_retries: -1}\n", "train: {oom_retries: 17}\n"}) {
    EXPECT_THAT(ErrorOf(head + bad), HasSubstr("train.oom_retries")) << bad;
  }
}

// train.fe_weights is empty by default (every FE image once); fe_weight_levels defaults to 3 and
// is bounded; STL, which trains no FE task, refuses fe_weights.
TEST(SpecTest, FeWeights) {
  const std::string head =
      "name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /f}}\n";
  auto plain = LoadValid(head + "method: mtl\n");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->train().fe_weights(), "");
  EXPECT_EQ(plain->train().fe_weight_levels(), 3);
  auto set = LoadValid(head +
                       "method: mtl\ntrain: {fe_weights: /r/weights/epoch_012.csv, "
                       "fe_weight_levels: 4}\n");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->train().fe_weights(), "/r/weights/epoch_012.csv");
  EXPECT_EQ(set->train().fe_weight_levels(), 4);
  EXPECT_TRUE(LoadValid(head + "method: mal\ntrain: {fe_weights: w.csv}\n").ok());
  for (const auto& [bad, field] : std::vector<std::pair<std::string, std::string>>{
           {"method: stl\ntrain: {fe_weights: w.csv}\n", "train.fe_weights: STL trains no FE"},
           {"method: mtl\ntrain: {fe_weight_levels: 1}\n", "train.fe_weight_levels"},
           {"method: mtl\ntrain: {fe_weight_levels: 21}\n", "train.fe_weight_levels"}}) {
    EXPECT_THAT(ErrorOf(head + bad), HasSubstr(field)) << bad;
  }
}

TEST(SpecTest, ExplicitZeroIsKeptNotDefaulted) {
  auto spec = LoadValid(
      "name: x\nmethod: stl\ndata: {au: {format: bp4d, root: /d}}\ntrain: {momentum: 0, "
      "weight_decay: 0}\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->train().momentum(), 0);
  EXPECT_EQ(spec->train().weight_decay(), 0);
}

TEST(SpecTest, KFoldShorthand) {
  auto spec = LoadValid(
      "name: x\nmethod: stl\ndata: {au: {format: csv, root: /d}}\ncv: {folds: 5, seed: 7}\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->cv().protocol(), "kfold");
  EXPECT_EQ(spec->cv().folds(), 5);
  EXPECT_EQ(spec->cv().seed(), 7);
}

TEST(SpecTest, ErrorsNameFieldPathAndReason) {
  const std::string base =
      "name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /r}}\n";
  EXPECT_EQ(ErrorOf(base + "search: {space: {train.lr: {log_uniform: [0, 1e-2]}}}\n"),
            "search.space.train.lr: log_uniform needs 0 < low < high");
  EXPECT_THAT(ErrorOf(base + "train: {lr: -1}\n"), HasSubstr("train.lr: must be > 0"));
  EXPECT_THAT(ErrorOf(base + "train: {lr: fast}\n"),
              HasSubstr("train.lr: 'fast' is not a finite number"));
  EXPECT_THAT(ErrorOf(base + "train: {lr: fast}\n"), HasSubstr("exp.yaml:3:"));
  EXPECT_THAT(ErrorOf(base + "trian: {lr: 1}\n"), HasSubstr("trian: unknown field"));
  EXPECT_THAT(ErrorOf(base + "method: maml\n"),
              HasSubstr("method: 'maml' is not one of stl, mtl, mal"));
  EXPECT_THAT(ErrorOf(base + "model: {backbone: vgg}\n"), HasSubstr("model.backbone"));
  EXPECT_THAT(ErrorOf(base + "data: {aus: [1, 1]}\n"), HasSubstr("data: given twice"));
  EXPECT_THAT(ErrorOf("name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: "
                      "/r}, aus: [1, 1]}\n"),
              HasSubstr("data.aus[1]: AU1 listed twice"));
  EXPECT_THAT(ErrorOf("name: x\ndata: {au: {format: bp4d, root: /d}}\n"),
              HasSubstr("data.fe: required"));
  EXPECT_THAT(ErrorOf(base + "search: {space: {train.nope: {choice: [1]}}}\n"),
              HasSubstr("search.space.train.nope"));
  EXPECT_EQ(ErrorOf(base + "search: {space: {mal.mode: {choice: [exact, heads_only]}}}\n"), "OK");
  EXPECT_EQ(ErrorOf(base + "search: {space: {method: {choice: [mtl, mal]}}}\n"), "OK");
  EXPECT_THAT(ErrorOf(base + "search: {space: {train.device: {choice: [cpu, cuda:7]}}}\n"),
              HasSubstr("search.space.train.device: not searchable: the worker"));
  {
    // The limits inside a map entry are named by the map and its key (was "value.choice").
    std::string many;
    for (int i = 0; i < 1001; ++i) absl::StrAppend(&many, i == 0 ? "" : ", ", 1e-4 * (i + 1));
    EXPECT_THAT(ErrorOf(base + "search: {space: {train.lr: {choice: [" + many + "]}}}\n"),
                HasSubstr("search.space.train.lr.choice: 1001 entries, at most 1000"));
    EXPECT_THAT(ErrorOf(base + "search: {space: {\"train.\\tlr\": {choice: [0.1]}}}\n"),
                HasSubstr("search.space: a key: contains a control character"));
  }
  // One for every trial: a searched seed was overwritten by the trial's, final_fit never ran.
  for (const char* key :
       {"seed", "final_fit", "priority", "name", "data.au.root", "cv.folds", "search.trials"}) {
    EXPECT_THAT(ErrorOf(base + "search: {space: {" + key + ": {choice: ['1']}}}\n"),
                HasSubstr(absl::StrCat("search.space.", key, ": not searchable")))
        << key;
  }
  EXPECT_THAT(ErrorOf(base + "search: {space: {mal.mode: {choice: [exact, bogus]}}}\n"),
              HasSubstr("search.space.mal.mode.choice[1]: mal.mode: 'bogus' is not one of"));
  EXPECT_THAT(ErrorOf(base + "search: {space: {train.momentum: {uniform: [0.5, 1.5]}}}\n"),
              HasSubstr("search.space.train.momentum.uniform[1]: train.momentum"));
  EXPECT_THAT(ErrorOf(base + "search: {space: {train.epochs: {choice: [3, many]}}}\n"),
              HasSubstr("search.space.train.epochs.choice[1]"));
  EXPECT_THAT(
      ErrorOf(base + "search: {algorithm: grid, space: {train.lr: {uniform: [0.1, 0.2]}}}\n"),
      HasSubstr("grid search needs choice or int_uniform"));
  EXPECT_THAT(ErrorOf(base + "train: {device: gpu}\n"), HasSubstr("train.device"));
  EXPECT_THAT(ErrorOf(base + "mal: {val_pos_weight: half}\n"),
              HasSubstr("mal.val_pos_weight: 'half' is not one of inverse_frequency, sqrt, none"));
  EXPECT_EQ(ErrorOf(base + "mal: {val_pos_weight: sqrt}\n"), "OK");
  EXPECT_THAT(ErrorOf(base + "mal: {meta_schedule: cosine}\n"),
              HasSubstr("mal.meta_schedule: 'cosine' is not one of constant, follow"));
  EXPECT_THAT(
      ErrorOf(base + "search: {algorithm: grid, space: {train.lr: {choice: [0.1, 1e-1]}}}\n"),
      HasSubstr("search.space.train.lr.choice[1]: '1e-1' is the value of choice[0] again"));
  EXPECT_THAT(ErrorOf(base + "search: {space: {mal.mode: {choice: [exact, heads_only, exact]}}}\n"),
              HasSubstr("search.space.mal.mode.choice[2]: 'exact' is the value of choice[0]"));
  EXPECT_EQ(ErrorOf(base + "search: {space: {mal.mode: {choice: [exact, heads_only]}}}\n"), "OK");
  EXPECT_THAT(ErrorOf(base + "model: &m {input: 64}\ntrain: {<<: *m, epochs: 2}\n"),
              HasSubstr("train.<<: YAML merge keys (<<) are not supported"));
  EXPECT_THAT(ErrorOf(base + "search: {space: {train.weight_decay: {choice: [0, -0.0]}}}\n"),
              HasSubstr("choice[1]: '-0.0' is the value of choice[0] again"));
  EXPECT_THAT(ErrorOf(base + "mal: {task_balance: fixed}\n"),
              HasSubstr("mal.task_balance: 'fixed' is not one of meta, fixed_in_base_step"));
  EXPECT_EQ(ErrorOf(base + "mal: {task_balance: fixed_in_base_step}\n"), "OK");
  EXPECT_THAT(ErrorOf(base + "mal: {au_weighting: frame}\n"),
              HasSubstr("mal.au_weighting: 'frame' is not one of sample, task, task_in_base_step"));
  EXPECT_EQ(ErrorOf(base + "mal: {meta_schedule: constant, au_weighting: task}\n"), "OK");
  EXPECT_THAT(ErrorOf(base + "mal: {val_split: identities}\n"),
              HasSubstr("mal.val_split: 'identities' is not one of frames, subjects"));
  EXPECT_EQ(ErrorOf(base + "mal: {val_split: subjects}\n"), "OK");
  EXPECT_THAT(ErrorOf(base + "mal: {lookahead_steps: 0}\n"),
              HasSubstr("mal.lookahead_steps: must be in 1..16"));
  EXPECT_THAT(ErrorOf(base + "mal: {lookahead_steps: 3, exact_method: vjp}\n"),
              HasSubstr("mal.lookahead_steps: more than 1 step needs mal.mode exact with "
                        "exact_method jvp, or finite_difference (mode exact, exact_method vjp)"));
  EXPECT_THAT(ErrorOf(base + "mal: {lookahead_steps: 2, mode: heads_only}\n"),
              HasSubstr("mal.lookahead_steps"));
  EXPECT_EQ(ErrorOf(base + "mal: {lookahead_steps: 4}\n"), "OK");
  EXPECT_EQ(ErrorOf(base + "mal: {lookahead_steps: 4, mode: finite_difference}\n"), "OK");
}

TEST(SpecTest, YamlSyntaxErrorNamesLine) {
  auto spec = ParseSpecYaml("name: x\ndata: {au: [\n", "bad.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("bad.yaml:"));
}

// yaml-cpp's Load ignored everything after a '---': a second document is an error naming its line.
TEST(SpecTest, ASecondYamlDocumentIsAnError) {
  auto spec = ParseSpecYaml("name: x\n---\nname: other\n", "two.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("two.yaml:2: a second YAML document"));
  EXPECT_THAT(std::string(ParseSpecYaml("name: x\n...\nname: y\n", "e.yaml").status().message()),
              HasSubstr("e.yaml:3: a second YAML document"));
  auto leading = ParseSpecYaml("# a comment\n---\nname: x\n...\n# the end\n", "one.yaml");
  ASSERT_TRUE(leading.ok()) << leading.status();
  EXPECT_EQ(leading->name(), "x");
  // '---' inside a value is not a marker; a lone ',' parses as an empty spec instead of hanging
  // (yaml-cpp's LoadAll never returned on it; the validation then says what is missing).
  EXPECT_TRUE(ParseSpecYaml("name: a---b\n", "v.yaml").ok());
  auto comma = ParseSpecYaml(",\n", "comma.yaml");
  ASSERT_TRUE(comma.ok()) << comma.status();
  EXPECT_TRUE(comma->name().empty());
}

TEST(SpecTest, LoadSpecFileNamesFile) {
  testing::TempDir dir;
  testing::WriteText(
      dir / "e.yaml",
      "name: x\nmethod: stl\ndata: {au: {format: bp4d, root: /d}}\ntrain: {epochs: 0}\n");
  auto spec = LoadSpecFile(dir / "e.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("e.yaml:4:17: train.epochs"));
  EXPECT_FALSE(LoadSpecFile(dir / "missing.yaml").ok());
}

// A validation error is placed where its field was written: the file's line and column (a list
// element, a map key that holds dots), or the --set that gave the value (also for ill-typed
// values, which were placed at the file's 1:1 before); the file alone for the proto form.
TEST(SpecTest, ErrorsArePlacedAtTheLineOrTheOverrideThatGaveTheValue) {
  testing::TempDir dir;
  testing::WriteText(dir / "e.yaml",
                     "name: x\n"  // 1
                     "data: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /r}}\n"
                     "train:\n"                                      // 3
                     "  lr: 0.1\n"                                   // 4
                     "cv:\n"                                         // 5
                     "  only: [1, 2,\n"                              // 6
                     "         2]\n"                                 // 7
                     "search:\n"                                     // 8
                     "  space:\n"                                    // 9
                     "    train.lr: {log_uniform: [0.1, 0.01]}\n");  // 10
  auto message = [&](const std::vector<std::string>& overrides) {
    auto spec = LoadSpecFile(dir / "e.yaml", overrides);
    return spec.ok() ? std::string("OK") : std::string(spec.status().message());
  };
  const std::string file = dir / "e.yaml";
  EXPECT_EQ(message({}), file + ":7:10: cv.only[2]: fold 2 listed twice");
  EXPECT_EQ(message({"cv.only=[1]"}),
            file + ":10:15: search.space.train.lr: log_uniform needs 0 < low < high");
  // Search keys that are no field, with a space or brackets in them: at their line too.
  EXPECT_EQ(message({"cv.only=[1]", "search.space={\"train lr\": {choice: [1, 2]}}"}),
            "--set search.space={\"train lr\": {choice: [1, 2]}}: search.space.train lr: not "
            "searchable: the same for every trial of an experiment (search method, model.*, "
            "train.* or mal.*; repeat the experiment for other seeds or data)");
  // The error of a spec whose search.space (from line 5) holds `space_lines`.
  auto with_space = [&dir](const std::string& space_lines) {
    testing::WriteText(dir / "keys.yaml",
                       "name: x\n"
                       "data: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /r}}\n"
                       "search:\n"
                       "  space:\n" +
                           space_lines);
    return std::string(LoadSpecFile(dir / "keys.yaml").status().message());
  };
  EXPECT_THAT(with_space("    train lr: {choice: [1, 2]}\n"),
              ::testing::StartsWith((dir / "keys.yaml") + ":5:15: search.space.train lr: "));
  EXPECT_THAT(with_space("    train.lr: {choice: [0.1, 0.2]}\n"
                         "    train.lr[0]: {choice: [1, 2]}\n"),
              ::testing::StartsWith((dir / "keys.yaml") + ":6:18: search.space.train.lr[0]: "));
  EXPECT_EQ(message({"cv.only=[1]", "search.space={}", "train.lr=-1"}),
            "--set train.lr=-1: train.lr: must be > 0");
  EXPECT_EQ(message({"cv.only=[1]", "search.space={}", "train={lr: 0.1, momentum: 7}"}),
            "--set train={lr: 0.1, momentum: 7}: train.momentum: must be in [0, 1)");
  EXPECT_EQ(message({"cv.only=[1]", "search.space={}", "train.lr=abc"}),
            "train.lr: 'abc' is not a finite number (--set train.lr=abc)");
  EXPECT_EQ(message({"cv.only=[1, x]"}),
            "cv.only[1]: 'x' is not an integer (--set cv.only=[1, x])");
  // Not written (a field another requires): the file alone, not the line of a neighbour; under a
  // --set that replaced its parent, that --set.
  testing::WriteText(dir / "no_fe.yaml",
                     "name: x\nmethod: mal\ndata:\n  au: {format: bp4d, root: /d}\n");
  auto no_fe = LoadSpecFile(dir / "no_fe.yaml");
  EXPECT_THAT(std::string(no_fe.status().message()),
              ::testing::StartsWith((dir / "no_fe.yaml") + ": data.fe: required"));
  EXPECT_THAT(
      message({"cv.only=[1]", "search.space={}", "data={au: {format: bp4d, root: /d}}"}),
      ::testing::StartsWith("--set data={au: {format: bp4d, root: /d}}: data.fe: required"));
  // An override replaces the value, never writes through an alias to its anchor (or back).
  testing::WriteText(dir / "alias.yaml",
                     "name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: "
                     "/r}}\ntrain: {momentum: &m 0.5, lr: *m}\n");
  auto aliased = LoadSpecFile(dir / "alias.yaml", {"train.momentum=0"});
  ASSERT_TRUE(aliased.ok()) << aliased.status();
  EXPECT_DOUBLE_EQ(aliased->train().momentum(), 0);
  EXPECT_DOUBLE_EQ(aliased->train().lr(), 0.5);
  auto anchored = LoadSpecFile(dir / "alias.yaml", {"train.lr=0.01"});
  ASSERT_TRUE(anchored.ok()) << anchored.status();
  EXPECT_DOUBLE_EQ(anchored->train().momentum(), 0.5);
  EXPECT_DOUBLE_EQ(anchored->train().lr(), 0.01);
  // A key the file repeats stays an error under --set (which rebuilds the maps on its path).
  testing::WriteText(dir / "twice.yaml",
                     "name: x\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: "
                     "/r}}\ntrain: {lr: 0.2}\ntrain: {momentum: 0.5}\n");
  for (const std::vector<std::string>& overrides :
       {std::vector<std::string>{}, std::vector<std::string>{"train.lr=0.3"}}) {
    auto twice = LoadSpecFile(dir / "twice.yaml", overrides);
    EXPECT_EQ(std::string(twice.status().message()),
              "train: given twice (" + (dir / "twice.yaml") + ":4:1)");
  }
  testing::WriteText(dir / "list.yaml", "name: x\ncv: {only: [1, x]}\n");
  auto list = LoadSpecFile(dir / "list.yaml");
  EXPECT_EQ(std::string(list.status().message()),
            "cv.only[1]: 'x' is not an integer (" + (dir / "list.yaml") + ":2:16)");
}

// The field report: malctl's path rewriting used to create an empty data.fe, which the server
// then refused as "data.fe.format: required". Resolving paths sets nothing that was unset.
TEST(SpecTest, ASerializedSpecLoadsAsItWasAndACorruptOneNamesTheFile) {
  testing::TempDir dir;
  auto spec = ParseSpecYaml(
      "name: x\nmethod: mtl\ndata: {au: {format: bp4d, root: /d}, fe: {format: rafdb, root: /f}}\n"
      "train: {epochs: 3, lr: 0.01}\n",
      "e.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults(*spec);
  testing::WriteText(dir / "spec.pb", spec->SerializeAsString());
  auto loaded = LoadSpecFile(dir / "spec.pb");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->SerializeAsString(), spec->SerializeAsString());
  testing::WriteText(dir / "bad.pb", "\xff\xff\xff not a proto");
  auto bad = LoadSpecFile(dir / "bad.pb");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("bad.pb"));
}

TEST(SpecTest, ResolvingPathsKeepsTheSpecValidAndCreatesNothing) {
  auto stl = LoadValid("name: x\nmethod: stl\ndata: {au: {format: synthface, root: sf}}\n");
  ASSERT_TRUE(stl.ok()) << stl.status();
  ResolveSpecPaths(*stl, "/home/u/exp");
  EXPECT_EQ(stl->data().au().root(), "/home/u/exp/sf");
  EXPECT_FALSE(stl->data().has_fe());
  EXPECT_TRUE(stl->model().pretrained().empty());
  ApplyDefaults(*stl);
  EXPECT_TRUE(ValidateSpec(*stl).ok()) << ValidateSpec(*stl);

  auto mal = LoadValid(
      "name: x\ndata: {au: {format: synthface, root: ../sf}, fe: {format: synthface, root: "
      "/abs/sf}}\n"
      "model: {backbone: resnet18, pretrained: w/r18.pth}\n");
  ASSERT_TRUE(mal.ok()) << mal.status();
  ResolveSpecPaths(*mal, "/home/u/exp");
  EXPECT_EQ(mal->data().au().root(), "/home/u/sf");
  EXPECT_EQ(mal->data().fe().root(), "/abs/sf");
  EXPECT_EQ(mal->model().pretrained(), "/home/u/exp/w/r18.pth");
  EXPECT_TRUE(ValidateSpec(*mal).ok());
}

TEST(SpecTest, SetFieldByPathSetsAndRejects) {
  v1::ExperimentSpec spec;
  ASSERT_TRUE(SetFieldByPath(spec, "train.lr", "0.01").ok());
  EXPECT_DOUBLE_EQ(spec.train().lr(), 0.01);
  ASSERT_TRUE(SetFieldByPath(spec, "method", "mtl").ok());
  EXPECT_EQ(spec.method(), v1::MTL);
  EXPECT_FALSE(SetFieldByPath(spec, "train.nothing", "1").ok());
  EXPECT_FALSE(SetFieldByPath(spec, "train", "1").ok());
  EXPECT_FALSE(SetFieldByPath(spec, "train.epochs", "1.5").ok());
}

}  // namespace
}  // namespace mal

namespace mal {
namespace {

TEST(SpecTest, OverridesReplaceFieldsAndAreValidatedLikeTheFile) {
  testing::TempDir dir;
  testing::WriteText(
      dir / "e.yaml",
      "name: x\nmethod: stl\ndata: {au: {format: bp4d, root: /d}}\ntrain: {lr: 0.1}\n");
  auto spec = LoadSpecFile(dir / "e.yaml", {"train.lr=1e-3", "cv.only=[1, 2]", "method=mal",
                                            "data.fe={format: rafdb, root: /r}", "mal.mode=exact"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_DOUBLE_EQ(spec->train().lr(), 1e-3);
  EXPECT_THAT(spec->cv().only(), ::testing::ElementsAre(1, 2));
  EXPECT_EQ(spec->method(), v1::MAL);
  EXPECT_EQ(spec->data().fe().root(), "/r");
  EXPECT_EQ(spec->data().au().root(), "/d");  // siblings of an overridden field stay
  for (const auto& [override, message] : std::vector<std::pair<std::string, std::string>>{
           {"train.lrr=0.1", "--set train.lrr=0.1: "},
           {"train.lr", "--set train.lr: write FIELD.PATH=VALUE"},
           {"search.space.train.lr={choice: [0.1]}", "'search.space' is a map: set it whole"},
           {"cv.only.x=1", "'cv.only.x' goes below 'cv.only', which is a list"},
           {"train.lr=[", "--set train.lr=[: "},
           {"train.epochs=-3", "train.epochs"},
           {"method=sometimes", "method"}}) {
    auto bad = LoadSpecFile(dir / "e.yaml", {override});
    ASSERT_FALSE(bad.ok()) << override;
    EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr(message)) << override;
  }
}

}  // namespace
}  // namespace mal

namespace mal {
namespace {

// Every example spec in deploy/examples parses and validates as the coordinator would (without its
// data: the dataset readers are not run here).
TEST(SpecTest, EveryExampleSpecIsValid) {
  int n = 0;
  for (const auto& e :
       std::filesystem::directory_iterator(testing::SourceDir() + "/deploy/examples")) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    auto spec = LoadSpecFile(e.path().string());
    EXPECT_TRUE(spec.ok()) << spec.status();
  }
  EXPECT_GE(n, 6);
}

}  // namespace
}  // namespace mal

namespace mal {
namespace {

// One table of bad values run through both ways a spec reaches the coordinator: a YAML file
// (--set on the file) and a proto (the field set directly, as a gRPC client would). Both must be
// refused by ValidateSpec naming the same field (issue 14: the proto path accepted method = 99,
// train.lr = inf, train.epochs = 2^31 - 1).
TEST(SpecTest, ProtoAndYamlPathsRefuseTheSameValues) {
  testing::TempDir dir;
  testing::WriteText(dir / "e.yaml",
                     "name: x\nmethod: stl\ndata: {au: {format: bp4d, root: /d}}\n");
  struct Case {
    std::string yaml;  // --set override; empty: no YAML spelling
    std::function<void(v1::ExperimentSpec&)> proto;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"", [](v1::ExperimentSpec& s) { s.set_method(static_cast<v1::Method>(99)); }, "method"},
      {"train.lr=.inf", [](v1::ExperimentSpec& s) { s.mutable_train()->set_lr(INFINITY); },
       "train.lr"},
      {"train.lr=.nan", [](v1::ExperimentSpec& s) { s.mutable_train()->set_lr(NAN); }, "train.lr"},
      {"train.epochs=2147483647",
       [](v1::ExperimentSpec& s) { s.mutable_train()->set_epochs(2147483647); }, "train.epochs"},
      {"train.batch_au=1000000",
       [](v1::ExperimentSpec& s) { s.mutable_train()->set_batch_au(1000000); }, "train.batch_au"},
      {"search.trials=2147483647",
       [](v1::ExperimentSpec& s) { s.mutable_search()->set_trials(2147483647); }, "search.trials"},
      {"cv.only=[1,1]",
       [](v1::ExperimentSpec& s) {
         s.mutable_cv()->add_only(1);
         s.mutable_cv()->add_only(1);
       },
       "cv.only[1]"},
      {"data.au.root=\"/d\\nx\"",
       [](v1::ExperimentSpec& s) {
         s.mutable_data()->mutable_au()->set_root(std::string("/d\0x", 4));
       },
       "data.au.root"},
      {"", [](v1::ExperimentSpec& s) { s.set_name(std::string(200, 'n')); }, "name"},
      {"name=..", [](v1::ExperimentSpec& s) { s.set_name(".."); }, "name"},
      {"data.au.root=\"/d\xff\"",
       [](v1::ExperimentSpec& s) { s.mutable_data()->mutable_au()->set_root("/d\xff"); },
       "data.au.root"},
      {"mal.val_batch=0", [](v1::ExperimentSpec& s) { s.mutable_mal()->set_val_batch(0); },
       "mal.val_batch"},
  };
  for (const Case& c : cases) {
    if (!c.yaml.empty()) {
      auto from_yaml = LoadSpecFile(dir / "e.yaml", {c.yaml});
      ASSERT_FALSE(from_yaml.ok()) << c.yaml;
      EXPECT_THAT(std::string(from_yaml.status().message()), HasSubstr(c.field + ":")) << c.yaml;
    }
    auto base = ParseSpecYaml(*ReadFile(dir / "e.yaml"), "e.yaml");
    ASSERT_TRUE(base.ok());
    c.proto(*base);
    ApplyDefaults(*base);
    const absl::Status s = ValidateSpec(*base);
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.field + ":")) << c.field;
  }
}

}  // namespace
}  // namespace mal
