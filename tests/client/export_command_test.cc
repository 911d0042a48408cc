#include "client/export_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal::cli {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A run's artifacts as the coordinator holds them; a name maps to its text or to the status its
// download fails with.
struct FakeRun {
  std::map<std::string, std::string> files;
  std::map<std::string, absl::Status> failures;
  std::vector<std::string> asked;

  FetchArtifact Fetch() {
    return [this](const std::string& name, std::string* out) {
      asked.push_back(name);
      if (auto f = failures.find(name); f != failures.end()) return f->second;
      auto it = files.find(name);
      if (it == files.end()) return absl::NotFoundError("artifact " + name + " not found");
      *out = it->second;
      return absl::OkStatus();
    };
  }
};

FakeRun TwoEpochs() {
  FakeRun run;
  run.files["records.csv"] =
      "epoch,iteration,loss_au,loss_fe,loss_val,mean_w_au,mean_w_fe,mean_wn_au,mean_wn_fe,lr,"
      "meta_lr,seconds\n"
      "1,1,0.7,1.9,0.6,0.5,0.5,0.5,0.5,0.01,0.001,0.1\n"
      "2,2,0.6,1.8,0.5,0.5,0.4,0.55,0.45,0.01,0.001,0.2\n";
  run.files["metrics.json"] =
      R"({"epochs": [{"epoch": 1, "iteration": 1, "aus": [1], "test_f1": [0.5], "test_mean_f1": 0.5},
                     {"epoch": 2, "iteration": 2, "aus": [1], "test_f1": [0.6], "test_mean_f1": 0.6}]})";
  const std::string csv =
      "id,task,label,consistency,weight\nf1,fe,happiness,0.9,0.6\na1,au,,-1,0.3\n";
  run.files["weights/epoch_001.csv"] = csv;
  run.files["weights/epoch_002.csv"] = csv;
  return run;
}

// The names of the files in `dir`, sorted.
std::vector<std::string> Listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// An earlier export in `dir`, as a previous `malctl export` left it.
std::string EarlierExport(const fs::path& dir) {
  fs::create_directories(dir);
  const std::string path = (dir / "events.out.tfevents.1000.host.mal").string();
  testing::WriteText(path, "an earlier export");
  return path;
}

TEST(ExportRunTest, ANewExportReplacesTheEarlierOneOnlyOnceItIsComplete) {
  testing::TempDir tmp;
  const fs::path dir = tmp / "exp-1/trial-0/fold-1";
  const std::string earlier = EarlierExport(dir);
  FakeRun run = TwoEpochs();
  auto path = ExportRun(run.Fetch(), dir.string());
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_THAT(run.asked, ::testing::ElementsAre("records.csv", "metrics.json",
                                                "weights/epoch_001.csv", "weights/epoch_002.csv"));
  EXPECT_FALSE(fs::exists(earlier));
  EXPECT_THAT(Listing(dir), ::testing::ElementsAre(fs::path(*path).filename().string()));
  EXPECT_GT(fs::file_size(*path), 200u);
}

// The coordinator went away mid-export, or a file does not parse: the run is not exported, its
// earlier export stays, and no temporary or partial file is left.
TEST(ExportRunTest, AFailureKeepsTheEarlierExportAndLeavesNothingElse) {
  struct Case {
    std::string name;
    absl::Status failure;  // the download's, or OK with a malformed file
    std::string malformed;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"metrics.json", absl::UnavailableError("connection refused"), "",
       "metrics.json: connection refused"},
      {"weights/epoch_002.csv", absl::DeadlineExceededError("deadline"), "",
       "weights/epoch_002.csv: deadline"},
      {"weights/epoch_001.csv", absl::OkStatus(), "id,weight\n\"unterminated\n",
       "weights/epoch_001.csv: line 2: unterminated quoted field"},
      {"metrics.json", absl::OkStatus(), "[1, 2]", "metrics.json: not"},
      {"records.csv", absl::OkStatus(), "epoch,loss_au\n1,0.5\n",
       "records.csv: no iteration column"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name + " " + c.expected);
    testing::TempDir tmp;
    const fs::path dir = tmp / "run";
    const std::string earlier = EarlierExport(dir);
    FakeRun run = TwoEpochs();
    if (c.failure.ok())
      run.files[c.name] = c.malformed;
    else
      run.failures[c.name] = c.failure;
    auto path = ExportRun(run.Fetch(), dir.string());
    ASSERT_FALSE(path.ok());
    EXPECT_FALSE(absl::IsNotFound(path.status())) << "a failure is not 'nothing uploaded yet'";
    EXPECT_THAT(std::string(path.status().message()), HasSubstr(c.expected));
    EXPECT_THAT(Listing(dir), ::testing::ElementsAre(fs::path(earlier).filename().string()));
    EXPECT_EQ(*ReadFile(earlier), "an earlier export");
  }
}

// Only a records.csv the coordinator does not have means "nothing uploaded yet"; any other failure
// to download it is an error naming it.
TEST(ExportRunTest, OnlyAMissingRecordsFileMeansNothingUploadedYet) {
  testing::TempDir tmp;
  FakeRun empty;
  auto missing = ExportRun(empty.Fetch(), tmp / "a");
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_FALSE(fs::exists(tmp / "a"));

  FakeRun down = TwoEpochs();
  down.failures["records.csv"] = absl::UnavailableError("failed to connect");
  auto unavailable = ExportRun(down.Fetch(), tmp / "b");
  EXPECT_EQ(unavailable.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(unavailable.status().message()),
              HasSubstr("records.csv: failed to connect"));
  EXPECT_FALSE(fs::exists(tmp / "b"));
}

// Mid-run (metrics.json not yet uploaded, or an epoch's weights CSV missing) and STL runs (no FE
// weights) export what there is.
TEST(ExportRunTest, MissingMetricsOrWeightsAreLeftOut) {
  testing::TempDir tmp;
  // After an out-of-memory restart the daemon empties the run's logs on the coordinator: an
  // empty records.csv is nothing yet, an empty metrics.json no epoch yet.
  FakeRun restarted = TwoEpochs();
  restarted.files["records.csv"] = "";
  EXPECT_TRUE(absl::IsNotFound(ExportRun(restarted.Fetch(), tmp / "r").status()));
  restarted = TwoEpochs();
  restarted.files["metrics.json"] = "";
  ASSERT_TRUE(ExportRun(restarted.Fetch(), tmp / "m").ok());
  EXPECT_THAT(restarted.asked, ::testing::ElementsAre("records.csv", "metrics.json"));

  FakeRun no_metrics = TwoEpochs();
  no_metrics.files.erase("metrics.json");
  ASSERT_TRUE(ExportRun(no_metrics.Fetch(), tmp / "a").ok());
  EXPECT_THAT(no_metrics.asked, ::testing::ElementsAre("records.csv", "metrics.json"));

  FakeRun no_weights = TwoEpochs();
  no_weights.files.erase("weights/epoch_001.csv");
  auto path = ExportRun(no_weights.Fetch(), tmp / "b");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(no_weights.asked.back(), "weights/epoch_002.csv");
}

}  // namespace
}  // namespace mal::cli
