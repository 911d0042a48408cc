// Runs the real mal-worker: trains on a tiny SynthFace, is stopped by SIGTERM and killed with
// SIGKILL mid-run, and resumes to the end; times its methods with `bench`.

#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string Worker() { return testing::BinaryDir() + "/worker/mal-worker"; }

// Starts mal-worker with `args` (output to `log`); returns its pid.
pid_t Start(const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    const std::string bin = Worker();
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    FILE* f = std::fopen(log.c_str(), "w");
    ::dup2(::fileno(f), 1);
    ::dup2(::fileno(f), 2);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int RecordRows(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  int n = -1;  // header
  while (std::getline(in, line)) ++n;
  return n;
}

// Polls until `path` has at least `rows` records, with a deadline (every 50 ms: the tests stop
// the run right after, well before its last row).
bool WaitForRows(const std::string& path, int rows, std::chrono::seconds deadline) {
  return testing::WaitFor([&] { return RecordRows(path) >= rows; }, deadline,
                          std::chrono::milliseconds(50));
}

class MalWorkerTrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteText(dir_ / "spec.yaml", R"(
name: it
method: mal
data:
  au: {format: synthface, root: )" + (dir_ / "sf") +
                                               R"(}
  fe: {format: synthface, root: )" + (dir_ / "sf") +
                                               R"(}
model: {backbone: small_cnn, input: 32, resize: 36}
train: {epochs: 3, batch_au: 8, batch_fe: 8, lr: 0.01, threads: 1, data_threads: 1,
        checkpoint_every: 2, log_every: 5, max_iterations: 6}
mal: {val_fraction: 0.1, val_batch: 8}
)");
    const std::string synth =
        testing::BinaryDir() + "/client/malctl data synth --out " + (dir_ / "sf") +
        " --au-subjects 3 --frames 40 --fe-images 60 --fe-subjects 10 --size 40 > /dev/null";
    ASSERT_EQ(std::system(synth.c_str()), 0);
  }
  testing::TempDir dir_;
};

TEST_F(MalWorkerTrainTest, FinalFitTrainsOnEverySubject) {
  const int code = Wait(
      Start({"train", "-f", dir_ / "spec.yaml", "--fold", "0", "--out", dir_ / "all", "--quiet"},
            dir_ / "log"));
  const std::string text = ReadFile(dir_ / "log").value_or("");
  ASSERT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("final fit on all subjects: validation mean F1"));
  EXPECT_TRUE(fs::exists(dir_ / "all/model.pt"));
  EXPECT_EQ(RecordRows(dir_ / "all/records.csv"), 18);
}

TEST_F(MalWorkerTrainTest, TrainsToTheEnd) {
  const int code = Wait(
      Start({"train", "-f", dir_ / "spec.yaml", "--out", dir_ / "run", "--quiet"}, dir_ / "log"));
  const std::string text = ReadFile(dir_ / "log").value_or("");
  ASSERT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("test mean F1"));
  EXPECT_TRUE(fs::exists(dir_ / "run/model.pt"));
  EXPECT_TRUE(fs::exists(dir_ / "run/weights/epoch_003.csv"));
  EXPECT_EQ(RecordRows(dir_ / "run/records.csv"), 18);
}

TEST_F(MalWorkerTrainTest, SigtermCheckpointsAndResumeFinishes) {
  const pid_t pid =
      Start({"train", "-f", dir_ / "spec.yaml", "--out", dir_ / "run", "--quiet"}, dir_ / "log");
  ASSERT_TRUE(WaitForRows(dir_ / "run/records.csv", 4, std::chrono::seconds(120)));
  ::kill(pid, SIGTERM);
  EXPECT_EQ(Wait(pid), 130);
  EXPECT_TRUE(fs::exists(dir_ / "run/checkpoint.pt"));
  EXPECT_FALSE(fs::exists(dir_ / "run/model.pt"));
  EXPECT_EQ(
      Wait(Start({"train", "-f", dir_ / "spec.yaml", "--out", dir_ / "run", "--resume", "--quiet"},
                 dir_ / "log2")),
      0);
  EXPECT_EQ(RecordRows(dir_ / "run/records.csv"), 18);
  EXPECT_TRUE(fs::exists(dir_ / "run/model.pt"));
}

TEST_F(MalWorkerTrainTest, KillNineThenResumeFromLastCheckpoint) {
  const pid_t pid =
      Start({"train", "-f", dir_ / "spec.yaml", "--out", dir_ / "run", "--quiet"}, dir_ / "log");
  ASSERT_TRUE(WaitForRows(dir_ / "run/records.csv", 9, std::chrono::seconds(120)));
  ::kill(pid, SIGKILL);
  Wait(pid);
  // No temporary file is left where a reader would take it for the checkpoint.
  ASSERT_TRUE(fs::exists(dir_ / "run/checkpoint.pt"));
  EXPECT_EQ(
      Wait(Start({"train", "-f", dir_ / "spec.yaml", "--out", dir_ / "run", "--resume", "--quiet"},
                 dir_ / "log2")),
      0);
  // Iterations after the last checkpoint were redone, none is recorded twice.
  EXPECT_EQ(RecordRows(dir_ / "run/records.csv"), 18);
  EXPECT_TRUE(fs::exists(dir_ / "run/model.pt"));
}

TEST_F(MalWorkerTrainTest, BadSpecAndMissingDataExitWithTheirMessage) {
  testing::WriteText(dir_ / "bad.yaml",
                     "name: x\nmethod: mal\ndata: {au: {format: bp4d, root: /nonexistent/BP4D}, "
                     "fe: {format: rafdb, root: /r}}\ntrain: {lr: -1}\n");
  EXPECT_EQ(Wait(Start({"train", "-f", dir_ / "bad.yaml", "--out", dir_ / "bad"}, dir_ / "log")),
            2);
  EXPECT_THAT(ReadFile(dir_ / "log").value_or(""), HasSubstr("train.lr: must be > 0"));
  testing::WriteText(dir_ / "missing.yaml",
                     "name: x\nmethod: stl\ndata: {au: {format: bp4d, root: /nonexistent/BP4D}}\n");
  EXPECT_EQ(
      Wait(Start({"train", "-f", dir_ / "missing.yaml", "--out", dir_ / "missing"}, dir_ / "log3")),
      1);
  EXPECT_THAT(ReadFile(dir_ / "log3").value_or(""), HasSubstr("/nonexistent/BP4D"));
}

// The daemon refuses a device it cannot use and more GPU runs than GPUs, before it registers.
TEST_F(MalWorkerTrainTest, DaemonRefusesBadDevicesAndMoreSlotsThanGpus) {
  const std::vector<std::string> base = {"--coordinator", "127.0.0.1:1", "--work-dir", dir_ / "w"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  EXPECT_EQ(Wait(Start(with({"--devices", "cuda0"}), dir_ / "d1")), 2);
  EXPECT_THAT(ReadFile(dir_ / "d1").value_or(""),
              HasSubstr("\"cuda0\" is not cpu, cuda or cuda:N"));
  EXPECT_EQ(Wait(Start(with({"--devices", "cuda:0,cuda:1", "--slots", "3"}), dir_ / "d2")), 2);
  EXPECT_THAT(ReadFile(dir_ / "d2").value_or(""),
              HasSubstr("--slots 3 is more than the 2 devices"));
  EXPECT_EQ(Wait(Start(with({"--devices", "cpu,cuda:x"}), dir_ / "d3")), 2);
  EXPECT_THAT(ReadFile(dir_ / "d3").value_or(""),
              HasSubstr("\"cuda:x\" is not cpu, cuda or cuda:N"));
}

// `mal-worker bench` times every method on a tiny network, each in its own process, the meta
// update every fourth iteration (mal_exact_lookahead4_interval4: no validation batch between) too.
TEST_F(MalWorkerTrainTest, BenchTimesEveryMethodWithoutAnError) {
  ASSERT_EQ(Wait(Start(
                {"bench", "--backbone", "small_cnn", "--input", "32", "--batch", "2", "--val-batch",
                 "2", "--iterations", "4", "--warmup", "1", "--threads", "1", "-o", "json"},
                dir_ / "bench.json")),
            0)
      << ReadFile(dir_ / "bench.json").value_or("");
  const std::string text = ReadFile(dir_ / "bench.json").value_or("");
  google::protobuf::Struct report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(text, &report).ok()) << text;
  std::vector<std::string> names;
  for (const auto& row : report.fields().at("results").list_value().values()) {
    const auto& f = row.struct_value().fields();
    names.push_back(f.at("name").string_value());
    EXPECT_GT(f.at("seconds_per_iteration").number_value(), 0) << names.back();
    EXPECT_TRUE(f.at("error").has_null_value()) << names.back() << ": " << text;
  }
  EXPECT_THAT(names,
              ::testing::ElementsAre("stl", "mtl", "mal_exact", "mal_exact_vjp",
                                     "mal_finite_difference", "mal_heads_only",
                                     "mal_exact_lookahead4", "mal_exact_lookahead4_interval4"));
}

}  // namespace
}  // namespace mal
