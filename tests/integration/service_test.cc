// The distributed service end to end: the real mal-coordinator and mal-worker daemons as
// processes on loopback, driven by malctl and by the gRPC stubs. Every wait is bounded.

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/files.h"
#include "common/util/grpc_channel.h"
#include "common/util/sha256.h"
#include "mal/v1/service.grpc.pb.h"
#include "tests/test_util.h"

namespace mal {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

std::string Bin(const std::string& rel) { return testing::BinaryDir() + "/" + rel; }

// The port a daemon printed as "LABEL N" ("listening on port 7070"); 0 when it has not.
int PortAfter(const std::string& log, const std::string& label) {
  const size_t at = log.find(label + " ");
  return at == std::string::npos ? 0 : std::stoi(log.substr(at + label.size() + 1));
}

// A child process with its output in a log file; killed with SIGKILL if still running at the end.
class Process {
 public:
  Process(const std::string& bin, const std::vector<std::string>& args, const std::string& log)
      : log_(log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(bin.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      FILE* f = std::fopen(log.c_str(), "a");
      ::dup2(::fileno(f), 1);
      ::dup2(::fileno(f), 2);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }
  void Kill(int sig) { ::kill(pid_, sig); }
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_t pid() const { return pid_; }
  std::string Log() const { return ReadFile(log_).value_or(""); }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

using testing::WaitFor;

// Runs a command line, returns its exit code and output.
int Shell(const std::string& command, std::string* output = nullptr) {
  const std::string out_file =
      fs::temp_directory_path() / absl::StrCat("mal-shell-", ::getpid(), ".txt");
  const int rc = std::system((command + " > " + out_file + " 2>&1").c_str());
  if (output) *output = ReadFile(out_file).value_or("");
  fs::remove(out_file);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

// A process whose parent is `parent`, or 0 (scans /proc).
pid_t ChildOf(pid_t parent) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = ReadFile(entry.path().string() + "/stat").value_or("");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
    if (fields.size() > 1 && fields[1] == std::to_string(parent)) return std::stoi(name);
  }
  return 0;
}
bool HasChildren(pid_t parent) { return ChildOf(parent) != 0; }

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string synth =
        Bin("client/malctl") + " data synth --out " + (dir_ / "sf") +
        " --au-subjects 3 --frames 40 --fe-images 60 --fe-subjects 10 --size 40";
    ASSERT_EQ(Shell(synth), 0);
  }
  // A spec on the tiny SynthFace; `epochs` x `iterations` per fold.
  std::string WriteSpec(const std::string& name, int epochs, int iterations,
                        const std::string& extra = "", const std::string& root = "") {
    const std::string path = dir_ / (name + ".yaml");
    const std::string r = root.empty() ? dir_ / "sf" : root;
    testing::WriteText(
        path,
        absl::StrCat("name: ", name, R"(
method: mal
data:
  au: {format: synthface, root: )",
                     r, R"(}
  fe: {format: synthface, root: )",
                     r, R"(}
model: {backbone: small_cnn, input: 32, resize: 36}
train: {epochs: )",
                     epochs, R"(, batch_au: 8, batch_fe: 8, lr: 0.01, threads: 1, data_threads: 1,
        checkpoint_every: 3, log_every: 5, max_iterations: )",
                     iterations, R"(}
mal: {val_fraction: 0.1, val_batch: 8}
)",
                     extra));
    return path;
  }

  void StartCoordinator(int lease_ms = 6000) {
    const std::string listen = port_ == 0 ? "127.0.0.1:0" : absl::StrCat("127.0.0.1:", port_);
    const std::string log = dir_ / absl::StrCat("coordinator-", ++coordinator_starts_, ".log");
    coordinator_ = std::make_unique<Process>(
        Bin("server/mal-coordinator"),
        std::vector<std::string>{"--listen", listen, "--data-dir", dir_ / "data", "--lease-ms",
                                 absl::StrCat(lease_ms), "--heartbeat-ms", "200"},
        log);
    ASSERT_TRUE(
        WaitFor([&] { return coordinator_->Log().find("listening on port") != std::string::npos; },
                std::chrono::seconds(20)))
        << coordinator_->Log();
    if (port_ == 0) {
      const std::string text = coordinator_->Log();
      port_ = PortAfter(text, "listening on port");
    }
    address_ = absl::StrCat("127.0.0.1:", port_);
    auto channel = rpc::MakeChannel(address_);
    stub_ = v1::Coordinator::NewStub(channel);
    gateway_ = v1::WorkerGateway::NewStub(channel);
  }
  // Starts worker `name`; one already running under that name is killed first (SIGKILL).
  Process* StartWorker(const std::string& name, int slots = 1,
                       const std::vector<std::string>& extra = {}) {
    workers_.erase(name);
    std::vector<std::string> args{
        "--coordinator",  address_,    "--slots",          absl::StrCat(slots),
        "--work-dir",     dir_ / name, "--name",           name,
        "--threads",      "1",         "--upload-every-s", "1",
        "--stop-grace-s", "5"};
    args.insert(args.end(), extra.begin(), extra.end());
    workers_[name] =
        std::make_unique<Process>(Bin("worker/mal-worker"), args, dir_ / (name + ".log"));
    return workers_[name].get();
  }
  bool WorkersAlive(size_t n) {
    v1::ListWorkersResponse r;
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, std::chrono::seconds(5));
    if (!stub_->ListWorkers(&ctx, v1::ListWorkersRequest(), &r).ok()) return false;
    size_t alive = 0;
    for (const auto& w : r.workers()) alive += w.alive();
    return alive >= n;
  }
  std::string Malctl(const std::string& args, int* rc = nullptr) {
    std::string out;
    const int code =
        Shell(absl::StrCat("MAL_ADDRESS=", address_, " ", Bin("client/malctl"), " ", args), &out);
    if (rc) *rc = code;
    return out;
  }
  // Once one worker is alive, submits a one-fold spec and waits until its run has finished
  // `epoch` epochs; the experiment's id in *id.
  void SubmitOneRunAndWaitForEpoch(const std::string& spec_path, int epoch, std::string* id) {
    ASSERT_TRUE(WaitFor([&] { return WorkersAlive(1); }, std::chrono::seconds(20)))
        << DiagnosticLogs();
    *id = Submit(spec_path);
    ASSERT_TRUE(
        WaitFor([&] { return Get(*id).runs_size() == 1 && Get(*id).runs(0).epoch() >= epoch; },
                std::chrono::seconds(120)))
        << DiagnosticLogs();
  }

  std::string Submit(const std::string& spec_path) {
    int rc = 0;
    const std::string out = Malctl("submit -f " + spec_path + " -o json", &rc);
    EXPECT_EQ(rc, 0) << out;
    const size_t at = out.find("\"experiment_id\": \"");
    if (at == std::string::npos) return "";
    const size_t start = at + 18;
    return out.substr(start, out.find('"', start) - start);
  }
  v1::ExperimentInfo Get(const std::string& id) {
    v1::GetExperimentRequest req;
    req.set_experiment_id(id);
    v1::ExperimentInfo info;
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, std::chrono::seconds(5));
    (void)stub_->GetExperiment(&ctx, req, &info);
    return info;
  }
  v1::ExperimentInfo WaitDone(const std::string& id, std::chrono::seconds deadline) {
    v1::ExperimentInfo info;
    WaitFor(
        [&] {
          info = Get(id);
          return info.state() != v1::EXPERIMENT_RUNNING &&
                 info.state() != v1::EXPERIMENT_STATE_UNSPECIFIED;
        },
        deadline);
    return info;
  }
  // Every event, replayed from seq `from` until End (or the deadline).
  std::vector<v1::Event> Replay(const std::string& id, int64_t from) {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, std::chrono::seconds(30));
    v1::WatchRequest req;
    req.set_experiment_id(id);
    req.set_from_seq(from);
    auto reader = stub_->Watch(&ctx, req);
    std::vector<v1::Event> out;
    v1::WatchResponse r;
    while (reader->Read(&r)) {
      if (!r.has_event()) continue;
      out.push_back(r.event());
      if (r.event().has_end()) break;
    }
    ctx.TryCancel();
    (void)reader->Finish();
    return out;
  }
  // The engine alone on one fold: its final test mean F1.
  double EngineAlone(const std::string& spec, int fold) {
    std::string out;
    const std::string dir = dir_ / absl::StrCat("alone-", fold);
    EXPECT_EQ(Shell(absl::StrCat(Bin("worker/mal-worker"), " train -f ", spec, " --fold ", fold,
                                 " --out ", dir, " --quiet --threads 1"),
                    &out),
              0)
        << out;
    // The final line ("fold K: test mean F1 X after N iterations"), after the per-epoch lines.
    const size_t at = out.rfind("test mean F1 ");
    return at == std::string::npos ? -1 : std::stod(out.substr(at + 13));
  }
  // Starts worker w1, submits a one-run spec and waits until the run is past two epochs (the first
  // epoch's checkpoint is uploaded by then); returns the experiment id, or "" (with the failure
  // recorded) when that does not happen in time.
  std::string RunPastEpochTwoOnW1(const std::string& spec,
                                  const std::vector<std::string>& worker_args = {}) {
    StartWorker("w1", 1, worker_args);
    EXPECT_TRUE(WaitFor([&] { return WorkersAlive(1); }, std::chrono::seconds(20)))
        << DiagnosticLogs();
    const std::string id = Submit(spec);
    const bool going = WaitFor(
        [&] {
          auto info = Get(id);
          return info.runs_size() == 1 && info.runs(0).epoch() >= 2;
        },
        std::chrono::seconds(120));
    EXPECT_TRUE(going) << DiagnosticLogs();
    return going ? id : "";
  }
  // Runs a MAL spec past epoch 2 on worker w1 (started with `worker_args`), sends its engine
  // child `signal`, and expects the run to resume on w1 as attempt 2 from its checkpoint, with
  // the engine-alone result, the daemon alive and a state event whose message has `message`.
  void ExpectTheRunResumesAfterTheEngineGets(int signal,
                                             const std::vector<std::string>& worker_args,
                                             const std::string& message) {
    const std::string spec = WriteSpec(absl::StrCat("signal", signal), 8, 10, "cv: {only: [1]}\n");
    StartCoordinator();
    const std::string id = RunPastEpochTwoOnW1(spec, worker_args);
    ASSERT_FALSE(id.empty()) << "the run did not get going";
    const pid_t daemon = workers_["w1"]->pid();
    const pid_t engine = ChildOf(daemon);
    ASSERT_GT(engine, 0);
    ASSERT_EQ(::kill(engine, signal), 0);
    const auto info = WaitDone(id, std::chrono::seconds(180));
    ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
    EXPECT_EQ(info.runs(0).attempt(), 1) << DiagnosticLogs();
    EXPECT_EQ(info.runs(0).worker(), "w1");
    EXPECT_EQ(::kill(daemon, 0), 0);  // the daemon is still there
    EXPECT_NEAR(info.runs(0).result().test_mean_f1(), EngineAlone(spec, 1), 1e-6);
    bool reported = false;
    for (const auto& e : Replay(id, 1)) {
      reported =
          reported || (e.has_state() && e.state().message().find(message) != std::string::npos);
    }
    EXPECT_TRUE(reported) << DiagnosticLogs();
  }
  std::string DiagnosticLogs() {
    std::string s = "coordinator:\n" + (coordinator_ ? coordinator_->Log() : "");
    for (auto& [name, w] : workers_) s += "\n" + name + ":\n" + w->Log();
    return s;
  }

  testing::TempDir dir_;
  int port_ = 0;
  int coordinator_starts_ = 0;
  std::string address_;
  std::unique_ptr<Process> coordinator_;
  std::map<std::string, std::unique_ptr<Process>> workers_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  std::unique_ptr<v1::WorkerGateway::Stub> gateway_;
};

TEST_F(ServiceTest, ThreeFoldsOnTwoWorkersMatchTheEngineAlone) {
  const std::string spec = WriteSpec("cv3", 3, 6);
  StartCoordinator();
  StartWorker("w1");
  StartWorker("w2");
  ASSERT_TRUE(WaitFor([&] { return WorkersAlive(2); }, std::chrono::seconds(20)))
      << DiagnosticLogs();
  const std::string id = Submit(spec);
  ASSERT_FALSE(id.empty());
  int rc = 0;
  const std::string waited = Malctl("wait " + id + " --timeout 180", &rc);
  ASSERT_EQ(rc, 0) << waited << DiagnosticLogs();

  v1::ResultsRequest req;
  req.set_experiment_id(id);
  v1::ResultsResponse results;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::seconds(5));
  ASSERT_TRUE(stub_->GetResults(&ctx, req, &results).ok());
  ASSERT_EQ(results.runs_size(), 3);
  std::set<std::string> used;
  for (const auto& run : results.runs()) {
    EXPECT_EQ(run.state(), v1::RUN_SUCCEEDED);
    used.insert(run.worker());
    // The same seed gives the same model whether a worker daemon or the engine alone trains it.
    EXPECT_NEAR(run.result().test_mean_f1(), EngineAlone(spec, run.fold()), 1e-6)
        << "fold " << run.fold();
    EXPECT_EQ(run.result().iterations(), 18);
    EXPECT_TRUE(fs::exists(
        dir_ / absl::StrCat("data/artifacts/", id, "/trial-0/fold-", run.fold(), "/model.pt")));
    EXPECT_TRUE(fs::exists(dir_ / absl::StrCat("data/artifacts/", id, "/trial-0/fold-", run.fold(),
                                               "/weights/epoch_003.csv")));
  }
  EXPECT_EQ(used.size(), 2u);
  ASSERT_EQ(results.trials_size(), 1);
  EXPECT_EQ(results.best_trial(), 0);
  EXPECT_EQ(results.models_size(), 3);
  const std::string text = Malctl("results " + id);
  EXPECT_THAT(text, HasSubstr("trial 0 (best) SUCCEEDED: mean F1"));
  // The event log: losses of every iteration of every fold, each exactly once.
  const auto events = Replay(id, 0);
  std::map<int, std::set<int64_t>> iterations;
  int points = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
    if (events[i].has_point()) {
      ++points;
      iterations[events[i].fold()].insert(events[i].point().iteration());
    }
  }
  EXPECT_EQ(points, 54);
  for (int f = 1; f <= 3; ++f) EXPECT_EQ(iterations[f].size(), 18u);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.back().has_end());
  // A consumer resuming past the End event (from the seq after the last one it stored, or
  // further) gets nothing more, and the watch ends with the experiment's outcome.
  const int64_t last = events.back().seq();
  for (int64_t from : {last + 1, last + 50}) {
    const auto started = std::chrono::steady_clock::now();
    const std::string watched = Malctl(absl::StrCat("watch ", id, " --from-seq ", from), &rc);
    EXPECT_EQ(rc, 0) << watched;
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));
    EXPECT_THAT(watched, HasSubstr(absl::StrCat("its last event is seq ", last))) << watched;
    EXPECT_THAT(watched, Not(HasSubstr(" exp "))) << watched;  // no event line
  }
}

// The model registry end to end: a finished experiment's fold models as versions, aliases moved
// and removed, a version pulled as a model directory, and mal-serve --registry serving NAME@ALIAS
// with the same outputs as the pulled copy in-process, from its disk cache once the coordinator is
// gone.
TEST_F(ServiceTest, RegistryVersionsAliasesPullAndServing) {
  const std::string spec = WriteSpec("reg", 1, 6, "cv: {protocol: standard, only: [1, 2]}\n");
  StartCoordinator();
  StartWorker("w1");
  const std::string id = Submit(spec);
  ASSERT_FALSE(id.empty());
  int rc = 0;
  std::string out = Malctl("wait " + id + " --timeout 180", &rc);
  ASSERT_EQ(rc, 0) << out << DiagnosticLogs();

  out = Malctl("models ls", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("reg:1"));
  EXPECT_THAT(out, HasSubstr("reg:2"));
  EXPECT_THAT(out, HasSubstr(id + " trial 0 fold 2"));
  out = Malctl("models alias set reg:1 champion", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("reg@champion -> reg:1 (@champion)"));
  out = Malctl("models describe reg@champion", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("model reg:1 (@champion)"));
  EXPECT_THAT(out, HasSubstr("backbone small_cnn"));
  EXPECT_THAT(out, HasSubstr("AU1"));
  out = Malctl("models describe nope", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("no model \"nope\""));
  out = Malctl("models describe ../etc", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("\"../etc\""));

  // pull: the registry's bytes, complete or not at all.
  out = Malctl("models pull reg@champion --out " + (dir_ / "pulled"), &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(*ReadFile(dir_ / "pulled/model.pt"),
            *ReadFile(dir_ / absl::StrCat("data/artifacts/", id, "/trial-0/fold-1/model.pt")));
  EXPECT_TRUE(fs::exists(dir_ / "pulled/model.json"));
  out = Malctl("models pull reg:2 --out " + (dir_ / "pulled"), &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("exists"));

  // mal-serve --registry: NAME@ALIAS answers as the pulled copy does in-process.
  std::vector<std::string> frames;
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "sf/au")) {
    if (e.path().extension() == ".jpg" && frames.size() < 6) frames.push_back(e.path().string());
  }
  const std::string inputs = absl::StrJoin(frames, " ");
  std::unique_ptr<Process> serve;
  std::string serve_address;
  auto start_serve = [&](const std::string& log) {
    serve = std::make_unique<Process>(
        Bin("server/mal-serve"),
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--registry", address_, "--cache-dir",
                                 dir_ / "cache", "--alias-ttl-s", "0"},
        dir_ / log);
    if (!WaitFor([&] { return serve->Log().find("listening on port") != std::string::npos; },
                 std::chrono::seconds(20)))
      return false;
    const std::string text = serve->Log();
    serve_address = absl::StrCat("127.0.0.1:", PortAfter(text, "listening on port"));
    return true;
  };
  ASSERT_TRUE(start_serve("serve.log")) << serve->Log();
  auto predict = [&](const std::string& model, const std::string& csv, int* code) {
    return Malctl(absl::StrCat("predict --address ", serve_address, " --model ", model,
                               " --face-crop ", inputs, " --out ", dir_ / csv),
                  code);
  };
  out = predict("reg@champion", "champion.csv", &rc);
  ASSERT_EQ(rc, 0) << out << serve->Log();
  std::string local;
  ASSERT_EQ(Shell(absl::StrCat(Bin("worker/mal-worker"), " predict --model-dir ", dir_ / "pulled",
                               " --face-crop ", inputs, " --out ", dir_ / "local.csv"),
                  &local),
            0)
      << local;
  EXPECT_EQ(*ReadFile(dir_ / "champion.csv"), *ReadFile(dir_ / "local.csv"));
  EXPECT_TRUE(fs::exists(dir_ / "cache/reg/1/model.pt"));
  // The alias moves: the next call serves version 2.
  ASSERT_EQ(Malctl("models alias set reg:2 champion", &rc).empty(), false);
  ASSERT_EQ(rc, 0);
  out = predict("reg@champion", "moved.csv", &rc);
  ASSERT_EQ(rc, 0) << out;
  out = predict("reg:2", "v2.csv", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(*ReadFile(dir_ / "moved.csv"), *ReadFile(dir_ / "v2.csv"));
  EXPECT_NE(*ReadFile(dir_ / "moved.csv"), *ReadFile(dir_ / "champion.csv"));
  // rm takes the version and its aliases; the number is not reused.
  out = Malctl("models rm reg@champion", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("reg:2 (@champion)"));
  out = predict("reg@champion", "gone.csv", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("no alias \"champion\""));
  EXPECT_FALSE(fs::exists(dir_ / "gone.csv"));
  out = Malctl("models ls -o json", &rc);
  EXPECT_THAT(out, Not(HasSubstr("\"version\": 2")));

  // Deleting the experiment: refused while version 1 is registered from it, then its files go and
  // ls no longer lists it (issue 14); mal-serve keeps the cached copy.
  out = Malctl("rm " + id, &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr("reg:1"));
  ASSERT_TRUE(fs::exists(dir_ / ("data/artifacts/" + id))) << out;
  out = Malctl("models rm reg:1", &rc);
  EXPECT_EQ(rc, 0) << out;
  out = Malctl("rm " + id, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("deleted " + id));
  EXPECT_FALSE(fs::exists(dir_ / ("data/artifacts/" + id)));
  out = Malctl("ls", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, Not(HasSubstr(id + " ")));

  // The coordinator gone, a pinned version still comes from the disk cache, also after a restart.
  coordinator_.reset();
  serve.reset();
  ASSERT_TRUE(start_serve("serve2.log")) << serve->Log();
  out = predict("reg:1", "cached.csv", &rc);
  ASSERT_EQ(rc, 0) << out << serve->Log();
  EXPECT_EQ(*ReadFile(dir_ / "cached.csv"), *ReadFile(dir_ / "local.csv"));
}

// Pixels of `image` within 40 of colour #rrggbb (per channel).
int PixelsNear(const cv::Mat& image, const std::string& hex) {
  const int r = std::stoi(hex.substr(1, 2), nullptr, 16),
            g = std::stoi(hex.substr(3, 2), nullptr, 16),
            b = std::stoi(hex.substr(5, 2), nullptr, 16);
  int n = 0;
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x < image.cols; ++x) {
      const cv::Vec3b p = image.at<cv::Vec3b>(y, x);
      n += std::abs(p[2] - r) < 40 && std::abs(p[1] - g) < 40 && std::abs(p[0] - b) < 40;
    }
  }
  return n;
}

// The researcher's commands against a real coordinator: the ablation example (STL / MTL / MAL as
// a grid over `method`) at reduced size through --set, results as JSON and CSV, the paper's
// figures drawn by gnuplot, weights and logs downloaded, watch after the end (also on a terminal,
// under tmux), exit codes, bash completion.
TEST_F(ServiceTest, ResearcherCommandsOnTheAblationExample) {
  StartCoordinator();
  StartWorker("w1");
  const std::string sf = dir_ / "sf";
  const std::string small = absl::StrCat(
      " --set data.au.root=", sf, " --set data.fe.root=", sf,
      " --set cv.only=[1] --set train.epochs=2 --set train.max_iterations=4 --set model.input=32"
      " --set model.resize=36 --set train.batch_au=8 --set train.batch_fe=8 --set mal.val_batch=8"
      " --set mal.val_fraction=0.1 --set search.concurrent=1 --set train.threads=1"
      " --set train.data_threads=1 --set train.tensorboard=true");
  const std::string example = testing::SourceDir() + "/deploy/examples/ablation-synthface.yaml";
  int rc = 0;
  std::string out = Malctl("submit -f " + example + small + " --set train.lrr=1", &rc);
  EXPECT_EQ(rc, 2) << out;  // usage / invalid spec
  EXPECT_THAT(out, HasSubstr("--set train.lrr=1"));
  const std::string id = Submit(example + small);
  ASSERT_FALSE(id.empty());
  out = Malctl("wait " + id + " --timeout 240", &rc);
  ASSERT_EQ(rc, 0) << out << DiagnosticLogs();

  // results: JSON that parses into the proto, three trials, one per method.
  out = Malctl("results " + id + " -o json", &rc);
  ASSERT_EQ(rc, 0) << out;
  v1::ResultsResponse results;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out, &results).ok()) << out;
  ASSERT_EQ(results.trials_size(), 3);
  int mal_trial = -1;
  std::set<std::string> methods;
  for (const auto& t : results.trials()) {
    EXPECT_EQ(t.state(), "SUCCEEDED");
    EXPECT_EQ(t.aus_size(), 12);
    methods.insert(t.params().at("method"));
    if (t.params().at("method") == "mal") mal_trial = t.trial();
  }
  EXPECT_EQ(methods, (std::set<std::string>{"stl", "mtl", "mal"}));
  out = Malctl("results " + id + " -o csv", &rc);
  const std::vector<std::string> rows = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(rows.size(), 10u) << out;  // header + 3 trials x (fold 1, mean, std)
  EXPECT_THAT(rows[0], ::testing::StartsWith("experiment,name,method,trial,fold,AU1,AU2,"));
  EXPECT_THAT(rows[0], ::testing::EndsWith(",mean,params"));
  // Each row names its trial's method, which the search chose (the experiment's spec names one).
  std::set<std::string> csv_methods;
  for (size_t r = 1; r < rows.size(); ++r) {
    const std::vector<std::string> f = absl::StrSplit(rows[r], ',');
    ASSERT_GT(f.size(), 4u) << rows[r];
    csv_methods.insert(f[2]);
    EXPECT_EQ(f.back(), "method=" + f[2]) << rows[r];
  }
  EXPECT_EQ(csv_methods, (std::set<std::string>{"stl", "mtl", "mal"}));
  out = Malctl("results " + id, &rc);
  EXPECT_THAT(out, HasSubstr("#1 trial"));
  EXPECT_THAT(out, HasSubstr("std over folds"));
  out = Malctl("results " + id + " " + id + " -o yaml", &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(out, HasSubstr("---\nexperiment_id: " + id));

  // plot: PNGs (and PDFs) that gnuplot drew, with every series' colour present.
  out = Malctl(absl::StrCat("plot ", id, " --trial ", mal_trial, " --out ", dir_ / "figs"), &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string base = absl::StrCat(dir_ / "figs/", id, "-trial", mal_trial, "-fold1");
  for (const std::string& f :
       {base + "-fig3", base + "-fig5", base + "-fig6", dir_ / "figs/au-f1"}) {
    EXPECT_TRUE(fs::exists(f + ".pdf")) << f;
    const cv::Mat png = cv::imread(f + ".png");
    ASSERT_FALSE(png.empty()) << f;
    cv::Scalar mean, stddev;
    cv::meanStdDev(png, mean, stddev);
    EXPECT_GT(stddev[0], 10) << f << ": an empty canvas";
  }
  const cv::Mat fig3 = cv::imread(base + "-fig3.png");
  EXPECT_EQ(fig3.cols, 900);
  for (const char* colour : {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"})
    EXPECT_GT(PixelsNear(fig3, colour), 20) << "fig. 3 lacks the series drawn in " << colour;
  EXPECT_GT(PixelsNear(cv::imread(dir_ / "figs/au-f1.png"), "#1f77b4"), 100);

  // weights and logs through the client-facing download.
  out =
      Malctl(absl::StrCat("weights ", id, " --trial ", mal_trial, " --out ", dir_ / "w.csv"), &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(*ReadFile(dir_ / "w.csv"),
              ::testing::StartsWith("id,task,label,consistency,weight,normalized_weight"));
  out = Malctl(absl::StrCat("weights ", id, " --trial ", mal_trial, " --epoch 7"), &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("it has epochs 1, 2"));
  out = Malctl(absl::StrCat("logs ", id, " --trial ", mal_trial, " --fold 1"), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("epoch 2: test mean F1"));  // one line per epoch, also --quiet
  EXPECT_THAT(out, HasSubstr("fold 1"));
  out = Malctl(absl::StrCat("logs ", id, " --trial 9 --fold 1"), &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_THAT(out, HasSubstr("no run of trial 9"));

  // TensorBoard: one run per fold run, read back by tensorboard's own reader when it is installed
  // (deploy/test-python-deps.sh; deploy/test.sh passes MAL_TEST_PYTHON).
  out = Malctl(absl::StrCat("export ", id, " --trial ", mal_trial, " --tensorboard ", dir_ / "tb"),
               &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string run_dir = absl::StrCat(dir_ / "tb/", id, "/trial-", mal_trial, "/fold-1");
  ASSERT_TRUE(fs::is_directory(run_dir)) << out;
  const char* python = std::getenv("MAL_TEST_PYTHON");
  if (python != nullptr && Shell(std::string(python) + " -c 'import tensorboard'") == 0) {
    testing::WriteText(dir_ / "tb.py", R"(import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0, 'histograms': 0})
ea.Reload()
tags = ea.Tags()
assert [s.step for s in ea.Scalars('loss/au')] == list(range(1, 9)), ea.Scalars('loss/au')
for t in ('loss/fe', 'loss/validation', 'task_weight/normalised_au', 'task_weight/normalised_fe',
          'learning_rate/model', 'f1_test/AU1', 'f1_test/mean', 'sample_weight/spearman_fe_weight_consistency'):
    assert t in tags['scalars'], (t, tags['scalars'])
fe = [h for h in tags['histograms'] if h.startswith('fe_weight/')]
assert len(fe) >= 3, tags['histograms']
assert len(ea.Histograms(fe[0])) == 2, 'one histogram per epoch'
print('tensorboard read', len(tags['scalars']), 'scalar tags and', len(fe), 'expression histograms')
)");
    std::string read;
    EXPECT_EQ(Shell(absl::StrCat(python, " ", dir_ / "tb.py", " ", run_dir), &read), 0) << read;
    EXPECT_THAT(read, HasSubstr("tensorboard read"));
    // The same summaries written live by the engine (train.tensorboard) and uploaded.
    const std::string live =
        absl::StrCat(dir_ / "data/artifacts/", id, "/trial-", mal_trial, "/fold-1/tensorboard");
    EXPECT_EQ(Shell(absl::StrCat(python, " ", dir_ / "tb.py", " ", live), &read), 0) << read;
  } else {
    std::cerr << "TensorBoard read-back skipped: no MAL_TEST_PYTHON with the tensorboard package "
                 "(deploy/test-python-deps.sh installs it from PyPI)\n";
  }

  // watch after the end: every event as NDJSON, exit 0.
  out = Malctl("watch " + id + " -o json", &rc);
  EXPECT_EQ(rc, 0);
  const std::vector<std::string> events = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_FALSE(events.empty());
  v1::Event last;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(events.back(), &last).ok());
  EXPECT_TRUE(last.has_end());

  // On a terminal: the live view, redrawn in place (no escape codes left in the screen's text).
  std::string tmux;
  if (Shell("command -v tmux", &tmux) == 0) {
    const std::string session = absl::StrCat("malwatch", ::getpid());
    ASSERT_EQ(Shell(absl::StrCat("tmux new-session -d -s ", session,
                                 " -x 160 -y 30 'MAL_ADDRESS=", address_, " ", Bin("client/malctl"),
                                 " watch ", id, "; echo EXIT=$?; sleep 20'"),
                    &tmux),
              0)
        << tmux;
    std::string screen;
    WaitFor(
        [&] {
          Shell("tmux capture-pane -p -t " + session, &screen);
          return screen.find("EXIT=") != std::string::npos;
        },
        std::chrono::seconds(20));
    Shell("tmux kill-session -t " + session, &tmux);
    EXPECT_THAT(screen, HasSubstr("fold runs done 3/3"));
    EXPECT_THAT(screen, HasSubstr("END SUCCEEDED"));
    EXPECT_THAT(screen, HasSubstr("EXIT=0"));
    EXPECT_THAT(screen, Not(HasSubstr("[2K")));
  }

  // Completion: generated from the command tree.
  ASSERT_EQ(Shell(Bin("client/malctl") + " completion bash", &out), 0);
  testing::WriteText(dir_ / "c.sh", out);
  Shell("bash -c 'source " + (dir_ / "c.sh") +
            "; COMP_WORDS=(malctl models al); COMP_CWORD=2; _malctl; echo \"${COMPREPLY[@]}\"'",
        &out);
  EXPECT_EQ(out, "alias\n");
}

TEST_F(ServiceTest, KilledWorkerRunIsLostAndResumesFromItsCheckpointElsewhere) {
  const std::string spec = WriteSpec("kill", 8, 10, "cv: {only: [1]}\n");
  StartCoordinator(4000);
  const std::string id = RunPastEpochTwoOnW1(spec);
  ASSERT_FALSE(id.empty()) << "the run did not get going";
  StartWorker("w2");
  workers_["w1"]->Kill(SIGKILL);
  const auto info = WaitDone(id, std::chrono::seconds(180));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
  ASSERT_EQ(info.runs_size(), 1);
  EXPECT_EQ(info.runs(0).worker(), "w2");
  EXPECT_EQ(info.runs(0).attempt(), 1);
  // Resuming is exact: the same result as an uninterrupted run.
  EXPECT_NEAR(info.runs(0).result().test_mean_f1(), EngineAlone(spec, 1), 1e-6);
  bool lost = false;
  int64_t first_resumed_iteration = 0;
  for (const auto& e : Replay(id, 1)) {
    lost = lost || (e.has_state() && e.state().state() == "LOST");
    if (e.has_point() && e.attempt() == 1 && first_resumed_iteration == 0)
      first_resumed_iteration = e.point().iteration();
  }
  EXPECT_TRUE(lost);
  // Resumed from whichever checkpoint had been uploaded when w1 died: the end of epoch 1
  // (iteration 10) or, on a loaded machine, a periodic one a little earlier (seen: 9); never
  // from the start.
  EXPECT_GT(first_resumed_iteration, 1) << "the second attempt started over instead of resuming";
}

TEST_F(ServiceTest, StoppedWorkerHandsItsRunBackToResumeElsewhere) {
  const std::string spec = WriteSpec("stop", 8, 10, "cv: {only: [1]}\n");
  StartCoordinator();
  const std::string id = RunPastEpochTwoOnW1(spec);
  ASSERT_FALSE(id.empty()) << "the run did not get going";
  StartWorker("w2");
  workers_["w1"]->Kill(SIGTERM);
  EXPECT_EQ(workers_["w1"]->Wait(),
            0);  // it checkpointed, uploaded and handed the run back, then exited
  const auto info = WaitDone(id, std::chrono::seconds(180));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
  EXPECT_EQ(info.runs(0).worker(), "w2");
  EXPECT_EQ(info.runs(0).attempt(), 0);  // a shutdown is no failure of the run
  EXPECT_NEAR(info.runs(0).result().test_mean_f1(), EngineAlone(spec, 1), 1e-6);
}

// The engine child stops making progress (SIGSTOP here; in the field a process spinning in a
// library or blocked on a dead file system): the daemon's watchdog stops it after
// --stall-timeout-s, the run is retried from its checkpoint, and the result is exact.
TEST_F(ServiceTest, StuckEngineIsStoppedByTheWatchdogAndItsRunResumes) {
  ExpectTheRunResumesAfterTheEngineGets(SIGSTOP, {"--stall-timeout-s", "10"},
                                        "engine made no progress for 10 s");
}

// The engine child dies (as the kernel's OOM killer would do it): that run is retried, from its
// checkpoint, and the daemon carries on.
TEST_F(ServiceTest, CrashedEngineIsRetriedAndTheDaemonLives) {
  ExpectTheRunResumesAfterTheEngineGets(SIGKILL, {}, "killed by signal 9");
}

// A worker that stalls past its lease (SIGSTOP) comes back to find its run revoked, stops its old
// task and, having a free slot, may be given the same run again (had the old task not ended yet,
// the new one would wait for it: two tasks never share a run directory); the run resumes from its
// checkpoint, exactly.
TEST_F(ServiceTest, StalledWorkerGetsItsRevokedRunBackSafely) {
  const std::string spec = WriteSpec("stall", 8, 10, "cv: {only: [1]}\n");
  StartCoordinator(2000);
  Process* w1 = StartWorker("w1", 2);
  std::string id;
  ASSERT_NO_FATAL_FAILURE(SubmitOneRunAndWaitForEpoch(spec, 2, &id));
  w1->Kill(SIGSTOP);
  const bool lost =
      WaitFor([&] { return Get(id).runs(0).state() == v1::RUN_PENDING; }, std::chrono::seconds(20));
  w1->Kill(SIGCONT);
  ASSERT_TRUE(lost) << DiagnosticLogs();
  const auto info = WaitDone(id, std::chrono::seconds(180));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
  EXPECT_EQ(info.runs(0).worker(), "w1");
  EXPECT_EQ(info.runs(0).attempt(), 1);
  EXPECT_EQ(::kill(w1->pid(), 0), 0);  // the daemon survived
  EXPECT_NEAR(info.runs(0).result().test_mean_f1(), EngineAlone(spec, 1), 1e-6);
}

// The same, made deterministic with a test double for the engine (`--engine`) that is slow to stop:
// when the revoked run comes back to the worker, its old task is still stopping, and the new
// assignment must wait for it (replacing a running task used to abort the daemon).
TEST_F(ServiceTest, ReassignedRunWaitsForItsOldTaskToStop) {
  // First call: one loss point, then ignore SIGTERM and hang (the daemon SIGKILLs it after
  // --stop-grace-s). Second call: an epoch and success.
  // (The marker lies outside the run's directory, which the daemon removes once the run is
  // revoked.)
  const std::string engine = dir_ / "slow-engine.sh";
  testing::WriteText(engine, "#!/bin/bash\nmarker=" + (dir_ / "first-call") + R"(
if [ ! -e "$marker" ]; then
  touch "$marker"
  echo '{"point": {"epoch": 1, "iteration": 1}}' >&3
  trap '' TERM
  sleep 60
  exit 1
fi
echo '{"epoch": {"epoch": 1, "iteration": 1, "aus": [1], "testF1": [0.5], "testMeanF1": 0.5}}' >&3
echo '{"outcome": {}}' >&3
exit 0
)");
  fs::permissions(engine, fs::perms::owner_all);
  StartCoordinator(1500);
  workers_["w1"] = std::make_unique<Process>(
      Bin("worker/mal-worker"),
      std::vector<std::string>{"--coordinator", address_, "--slots", "2", "--work-dir", dir_ / "w1",
                               "--name", "w1", "--engine", engine, "--stop-grace-s", "3"},
      dir_ / "w1.log");
  Process* w1 = workers_["w1"].get();
  ASSERT_TRUE(WaitFor([&] { return WorkersAlive(1); }, std::chrono::seconds(20)))
      << DiagnosticLogs();
  const std::string id = Submit(WriteSpec("slow", 1, 1, "cv: {only: [1]}\n"));
  ASSERT_TRUE(WaitFor(
      [&] { return Get(id).runs_size() == 1 && Get(id).runs(0).state() == v1::RUN_RUNNING; },
      std::chrono::seconds(20)))
      << DiagnosticLogs();
  w1->Kill(SIGSTOP);
  const bool lost =
      WaitFor([&] { return Get(id).runs(0).state() == v1::RUN_PENDING; }, std::chrono::seconds(20));
  w1->Kill(SIGCONT);
  ASSERT_TRUE(lost) << DiagnosticLogs();
  const auto info = WaitDone(id, std::chrono::seconds(60));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
  EXPECT_EQ(info.runs(0).worker(), "w1");
  EXPECT_EQ(info.runs(0).attempt(), 1);
  EXPECT_NEAR(info.runs(0).result().test_mean_f1(), 0.5, 1e-9);
  EXPECT_EQ(::kill(w1->pid(), 0), 0) << DiagnosticLogs();
  EXPECT_THAT(w1->Log(), HasSubstr("revoked by the coordinator"));
}

TEST_F(ServiceTest, CoordinatorKilledMidRunRestartsAndTheLogHasNoGap) {
  const std::string spec = WriteSpec("restart", 5, 8);
  StartCoordinator();
  StartWorker("w1");
  StartWorker("w2");
  ASSERT_TRUE(WaitFor([&] { return WorkersAlive(2); }, std::chrono::seconds(20)))
      << DiagnosticLogs();
  const std::string id = Submit(spec);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto info = Get(id);
        return info.runs_size() == 3 && info.runs(0).epoch() >= 1;
      },
      std::chrono::seconds(120)))
      << DiagnosticLogs();
  coordinator_->Kill(SIGKILL);
  coordinator_->Wait();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  StartCoordinator();  // same port, same data directory
  const auto info = WaitDone(id, std::chrono::seconds(180));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
  const auto events = Replay(id, 0);
  ASSERT_FALSE(events.empty());
  for (size_t i = 0; i < events.size(); ++i)
    ASSERT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
  EXPECT_TRUE(events.back().has_end());
  int ends = 0;
  for (const auto& e : events) ends += e.has_end();
  EXPECT_EQ(ends, 1);
  // The workers re-registered claiming their runs.
  EXPECT_THAT(coordinator_->Log(), HasSubstr("registered"));
}

// The coordinator stopped (SIGSTOP: a suspended VM, a debugger) for more than two leases while a
// run trains: on resume it does not take its own absence for the worker's, the run keeps its first
// attempt, and its result is the engine alone's.
TEST_F(ServiceTest, APausedCoordinatorKeepsItsWorkersRuns) {
  const std::string spec = WriteSpec("pause", 4, 10, "cv: {only: [1]}\n");
  StartCoordinator(2000);
  StartWorker("w1");
  std::string id;
  ASSERT_NO_FATAL_FAILURE(SubmitOneRunAndWaitForEpoch(spec, 1, &id));
  coordinator_->Kill(SIGSTOP);
  std::this_thread::sleep_for(std::chrono::seconds(5));
  coordinator_->Kill(SIGCONT);
  const auto info = WaitDone(id, std::chrono::seconds(180));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << DiagnosticLogs();
  EXPECT_EQ(info.runs(0).attempt(), 0) << DiagnosticLogs();
  EXPECT_THAT(coordinator_->Log(), HasSubstr("coordinator did not run for"));
  EXPECT_THAT(coordinator_->Log(), Not(HasSubstr("lease lapsed")));
  EXPECT_NEAR(info.runs(0).result().test_mean_f1(), EngineAlone(spec, 1), 1e-6);
}

// Processes killed at random moments (seeded): the coordinator and the workers, again and again
// while three folds train. The experiment still completes, every fold's result equals the engine
// alone (resumes are exact), and the event log has every seq once and one End.
TEST_F(ServiceTest, RandomKillsLoseNothing) {
  const std::string spec = WriteSpec("chaos", 6, 10, "max_restarts: 50\n");
  StartCoordinator(3000);
  StartWorker("w1");
  StartWorker("w2");
  ASSERT_TRUE(WaitFor([&] { return WorkersAlive(2); }, std::chrono::seconds(20)))
      << DiagnosticLogs();
  const std::string id = Submit(spec);
  ASSERT_FALSE(id.empty());
  // MAL_CHAOS_SEED explores other kill sequences (the default is what CI runs).
  const char* seed = std::getenv("MAL_CHAOS_SEED");
  std::mt19937 rng(seed != nullptr ? static_cast<unsigned>(std::atoi(seed)) : 7u);
  std::string kills;
  for (int i = 0; i < 10; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(700 + rng() % 2000));
    if (Get(id).state() == v1::EXPERIMENT_SUCCEEDED) break;
    switch (rng() % 3) {
      case 0:
        coordinator_->Kill(SIGKILL);
        coordinator_->Wait();
        StartCoordinator(3000);
        kills += " coordinator";
        break;
      case 1:
        StartWorker("w1");  // kills the running one with SIGKILL first
        kills += " w1";
        break;
      default:
        StartWorker("w2");
        kills += " w2";
        break;
    }
  }
  const auto info = WaitDone(id, std::chrono::seconds(240));
  ASSERT_EQ(info.state(), v1::EXPERIMENT_SUCCEEDED) << "killed:" << kills << "\n"
                                                    << DiagnosticLogs();
  for (const auto& run : info.runs()) {
    EXPECT_NEAR(run.result().test_mean_f1(), EngineAlone(spec, run.fold()), 1e-6)
        << "fold " << run.fold() << ", killed:" << kills;
  }
  const auto events = Replay(id, 0);
  int ends = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
    ends += events[i].has_end();
  }
  EXPECT_EQ(ends, 1);
}

TEST_F(ServiceTest, CancelStopsRunningWorkPromptly) {
  const std::string spec = WriteSpec("cancel", 50, 10, "cv: {only: [1]}\n");
  StartCoordinator();
  Process* w1 = StartWorker("w1");
  ASSERT_TRUE(WaitFor([&] { return WorkersAlive(1); }, std::chrono::seconds(20)))
      << DiagnosticLogs();
  const std::string id = Submit(spec);
  ASSERT_TRUE(WaitFor([&] { return Get(id).runs_size() == 1 && Get(id).runs(0).epoch() >= 1; },
                      std::chrono::seconds(120)))
      << DiagnosticLogs();
  int rc = 0;
  const std::string out = Malctl("cancel " + id, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("CANCELLED"));
  // The engine child of the worker is gone within a few seconds; the daemon lives on.
  EXPECT_TRUE(WaitFor([&] { return !HasChildren(w1->pid()); }, std::chrono::seconds(15)))
      << DiagnosticLogs();
  EXPECT_EQ(::kill(w1->pid(), 0), 0);
  EXPECT_EQ(Get(id).state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_EQ(Malctl("wait " + id, &rc).find("CANCELLED") != std::string::npos, true);
  EXPECT_EQ(rc, 1);
  // Resuming past the End event of a cancelled experiment ends at once with its outcome.
  Malctl(absl::StrCat("watch ", id, " --from-seq ", Get(id).last_seq() + 1), &rc);
  EXPECT_EQ(rc, 1);
}

TEST_F(ServiceTest, BadSpecsAndMissingDatasetsFailClearly) {
  StartCoordinator();
  StartWorker("w1");
  // Rejected by malctl, naming the field.
  int rc = 0;
  std::string out = Malctl("submit -f " + WriteSpec("bad", 1, 1, "", "") + ".missing", &rc);
  EXPECT_EQ(rc, 2);
  // Writes a spec file and submits it; malctl's output (its exit code in rc).
  auto submit_spec = [&](const std::string& name, const std::string& yaml) {
    testing::WriteText(dir_ / name, yaml);
    return Malctl("submit -f " + (dir_ / name), &rc);
  };
  out = submit_spec("lr.yaml",
                    "name: x\nmethod: stl\ndata: {au: {format: synthface, root: /x}}\ntrain: {lr: "
                    "-1}\n");
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(out, HasSubstr("train.lr"));
  // The search as a whole too, before anything is sent: a grid of 2000 trials over 100 folds, and
  // a trial whose combination is invalid although each value alone is valid (lookahead needs
  // exact with jvp: exact_method vjp in one trial).
  out = submit_spec("grid.yaml",
                    "name: x\nmethod: stl\ndata: {au: {format: synthface, root: /x}}\n"
                    "cv: {folds: 100}\nsearch: {algorithm: grid, space: {train.epochs: "
                    "{int_uniform: [1, 2000]}}}\n");
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(out, HasSubstr("2000 trials x 100 folds is over 100000 fold runs"));
  out = submit_spec("combo.yaml",
                    "name: x\nmethod: mal\ndata: {au: {format: synthface, root: /x}, fe: {format: "
                    "synthface, root: /x}}\nsearch: {algorithm: grid, space: "
                    "{mal.lookahead_steps: {choice: ['1', '4']}, mal.exact_method: {choice: [jvp, "
                    "vjp]}}}\n");
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(out, HasSubstr("mal.lookahead_steps"));
  EXPECT_THAT(out, HasSubstr("trial 3"));
  // Rejected by the coordinator too, for a client that skips malctl.
  v1::SubmitExperimentRequest req;
  req.mutable_spec()->set_name("raw");
  req.mutable_spec()->set_method(v1::STL);
  req.mutable_spec()->mutable_data()->mutable_au()->set_format("synthface");
  req.mutable_spec()->mutable_data()->mutable_au()->set_root("/x");
  req.mutable_spec()->mutable_train()->set_lr(-1);
  v1::SubmitExperimentResponse resp;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::seconds(5));
  grpc::Status s = stub_->SubmitExperiment(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("train.lr"));

  // An STL spec without data.fe means the same through malctl as through mal-worker train.
  testing::WriteText(
      dir_ / "stl.yaml",
      absl::StrCat("name: stl-no-fe\nmethod: stl\ndata: {au: {format: synthface, root: ",
                   dir_ / "sf", "}}\ntrain: {epochs: 1, max_iterations: 1}\n"));
  out = Malctl("submit -f " + (dir_ / "stl.yaml") + " --request-id stl-1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("submitted exp-"));
  // The same request id: the same payload returns the first experiment, an edited one is refused.
  out = Malctl("submit -f " + (dir_ / "stl.yaml") + " --request-id stl-1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("already submitted as exp-"));
  testing::WriteText(
      dir_ / "stl2.yaml",
      absl::StrCat("name: stl-no-fe\nmethod: stl\ndata: {au: {format: synthface, root: ",
                   dir_ / "sf", "}}\ntrain: {epochs: 1, max_iterations: 1, lr: 0.05}\n"));
  out = Malctl("submit -f " + (dir_ / "stl2.yaml") + " --request-id stl-1", &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("request id stl-1 was used for exp-"));
  EXPECT_THAT(out, HasSubstr("train.lr"));
  Malctl("cancel exp-1", &rc);  // its runs would hold the worker
  EXPECT_EQ(rc, 0);

  // A dataset that is not there fails the run at once, without retries, naming the path.
  // (SynthFace would be generated where it is missing: take a licensed format.)
  testing::WriteText(
      dir_ / "missing.yaml",
      "name: missing\nmethod: mal\ndata: {au: {format: bp4d, root: /nonexistent/BP4D}, "
      "fe: {format: rafdb, root: /nonexistent/RAF-DB}}\ncv: {only: [1]}\n");
  const std::string id = Submit(dir_ / "missing.yaml");
  const auto info = WaitDone(id, std::chrono::seconds(60));
  EXPECT_EQ(info.state(), v1::EXPERIMENT_FAILED) << DiagnosticLogs();
  ASSERT_EQ(info.runs_size(), 1);
  EXPECT_EQ(info.runs(0).state(), v1::RUN_FAILED);
  EXPECT_EQ(info.runs(0).attempt(), 0);
  EXPECT_THAT(info.runs(0).message(), HasSubstr("/nonexistent/BP4D"));
  EXPECT_THAT(info.message(), HasSubstr("/nonexistent/BP4D"));
  // No fold finished: `malctl results` says so, not a mean F1 of 0.0000.
  const std::string results = Malctl("results " + id, &rc);
  EXPECT_EQ(rc, 0) << results;
  EXPECT_THAT(results, HasSubstr("trial 0 FAILED: no fold finished"));
  EXPECT_THAT(results, Not(HasSubstr("0.0000")));

  // A worker with data roots refuses a run whose dataset lies outside them (links resolved),
  // before opening anything, without retries (issue 14).
  fs::create_directories(dir_ / "allowed");
  fs::create_directory_symlink(dir_ / "sf", dir_ / "allowed/sf-link");
  StartWorker("w1", 1, {"--data-root", dir_ / "allowed"});
  const std::string outside =
      Submit(WriteSpec("outside", 1, 1, "cv: {only: [1]}\n", dir_ / "allowed/sf-link"));
  const auto refused = WaitDone(outside, std::chrono::seconds(60));
  EXPECT_EQ(refused.state(), v1::EXPERIMENT_FAILED) << DiagnosticLogs();
  ASSERT_EQ(refused.runs_size(), 1);
  EXPECT_EQ(refused.runs(0).attempt(), 0);
  EXPECT_THAT(refused.runs(0).message(), HasSubstr("data.au.root: " + (dir_ / "allowed/sf-link")));
  EXPECT_THAT(refused.runs(0).message(), HasSubstr("outside the data roots"));
  // Two experiments without a finished trial side by side: '-', not a mean of 0.000; and their
  // CSV has no mean or std rows (only finished folds', and there are none).
  const std::string compared = Malctl("results " + id + " " + outside, &rc);
  EXPECT_EQ(rc, 0) << compared;
  EXPECT_THAT(compared, Not(HasSubstr("0.000"))) << compared;
  EXPECT_THAT(compared, HasSubstr("- no trial succeeded")) << compared;
  const std::string csv = Malctl("results " + id + " " + outside + " -o csv", &rc);
  EXPECT_EQ(rc, 0) << csv;
  const std::vector<std::string> csv_rows = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  for (size_t r = 1; r < csv_rows.size(); ++r) {  // the header names a mean column
    EXPECT_EQ(csv_rows[r].find(",mean,"), std::string::npos) << csv;
    EXPECT_EQ(csv_rows[r].find(",std,"), std::string::npos) << csv;
  }
}

TEST_F(ServiceTest, StaleEpochsAndBadChecksumsAreRejected) {
  StartCoordinator(1000);
  const std::string id = Submit(WriteSpec("fence", 1, 1, "cv: {only: [1]}\n"));
  // A hand-made worker speaking the protocol, with the session Register gives it.
  std::string session;
  auto call = [&](auto method, const auto& request, auto* response) {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, std::chrono::seconds(5));
    if (!session.empty()) {
      ctx.AddMetadata("mal-worker", "fake");
      ctx.AddMetadata("mal-worker-session", session);
    }
    return ((*gateway_).*method)(&ctx, request, response);
  };
  v1::RegisterRequest reg;
  reg.set_name("fake");
  reg.set_slots(1);
  v1::RegisterResponse reg_resp;
  ASSERT_TRUE(call(&v1::WorkerGateway::Stub::Register, reg, &reg_resp).ok());
  session = reg_resp.session();
  v1::HeartbeatRequest hb;
  hb.set_name("fake");
  hb.set_free_slots(1);
  v1::HeartbeatResponse hb_resp;
  ASSERT_TRUE(call(&v1::WorkerGateway::Stub::Heartbeat, hb, &hb_resp).ok());
  ASSERT_EQ(hb_resp.assignments_size(), 1);
  const v1::Assignment a = hb_resp.assignments(0);

  v1::ReportEventsRequest report;
  report.set_run_id(a.run_id());
  report.set_lease_epoch(a.lease_epoch() + 1);
  report.set_first_index(1);
  report.add_events()->mutable_point()->set_iteration(1);
  v1::ReportEventsResponse report_resp;
  grpc::Status s = call(&v1::WorkerGateway::Stub::ReportEvents, report, &report_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("stale lease epoch"));
  report.set_lease_epoch(a.lease_epoch());
  EXPECT_TRUE(call(&v1::WorkerGateway::Stub::ReportEvents, report, &report_resp).ok());

  // An upload whose checksum does not match is refused and leaves nothing.
  {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, std::chrono::seconds(5));
    v1::UploadArtifactResponse up;
    ctx.AddMetadata("mal-worker", "fake");
    ctx.AddMetadata("mal-worker-session", session);
    auto writer = gateway_->UploadArtifact(&ctx, &up);
    v1::ArtifactChunk chunk;
    chunk.set_run_id(a.run_id());
    chunk.set_lease_epoch(a.lease_epoch());
    chunk.set_name("checkpoint.pt");
    chunk.set_data("bytes");
    chunk.set_sha256("0000");
    writer->Write(chunk);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::DATA_LOSS);
    EXPECT_FALSE(
        fs::exists(dir_ / absl::StrCat("data/artifacts/", id, "/trial-0/fold-1/checkpoint.pt")));
  }
  // The fake worker goes silent; after its lease the run is LOST and its epoch is dead.
  ASSERT_TRUE(WaitFor([&] { return Get(id).runs(0).state() == v1::RUN_PENDING; },
                      std::chrono::seconds(20)));
  report.set_first_index(2);
  s = call(&v1::WorkerGateway::Stub::ReportEvents, report, &report_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::CompleteRunRequest complete;
  complete.set_run_id(a.run_id());
  complete.set_lease_epoch(a.lease_epoch());
  v1::Ack ack;
  EXPECT_EQ(call(&v1::WorkerGateway::Stub::CompleteRun, complete, &ack).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// grpc.health.v1.Health/Check for the whole server (""): the status byte of the answer
// (1 SERVING, 2 NOT_SERVING), or -1 when the call fails.
int HealthOf(const std::string& address) {
  grpc::GenericStub generic(rpc::MakeChannel(address));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::seconds(5));
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1);  // HealthCheckRequest{service: ""}
  auto call = generic.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::vector<grpc::Slice> slices;
  if (!status.ok() || !response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const auto& slice : slices)
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;  // field 1, varint
}

// Both daemons serve the standard health service, as probes use it: the coordinator when up, a
// worker while it is registered with and reaching its coordinator.
TEST_F(ServiceTest, HealthServicesAnswer) {
  StartCoordinator();
  EXPECT_EQ(HealthOf(address_), 1);
  Process worker(Bin("worker/mal-worker"),
                 {"--coordinator", address_, "--work-dir", dir_ / "hw", "--name", "hw", "--listen",
                  "127.0.0.1:0"},
                 dir_ / "hw.log");
  ASSERT_TRUE(WaitFor([&] { return worker.Log().find("health on port") != std::string::npos; },
                      std::chrono::seconds(20)))
      << worker.Log();
  const std::string text = worker.Log();
  const std::string worker_address = absl::StrCat("127.0.0.1:", PortAfter(text, "health on port"));
  EXPECT_TRUE(WaitFor([&] { return HealthOf(worker_address) == 1; }, std::chrono::seconds(20)))
      << worker.Log();
  coordinator_->Kill(SIGKILL);
  coordinator_->Wait();
  EXPECT_TRUE(WaitFor([&] { return HealthOf(worker_address) == 2; }, std::chrono::seconds(20)))
      << worker.Log();
  StartCoordinator();  // same port: the worker registers again
  EXPECT_TRUE(WaitFor([&] { return HealthOf(worker_address) == 1; }, std::chrono::seconds(20)))
      << worker.Log();
  worker.Kill(SIGTERM);
  EXPECT_EQ(worker.Wait(), 0);

  // --health-listen: health alone on a plaintext port, for Kubernetes' grpc probe (which cannot
  // do TLS); the mal services are not there.
  Process probed(
      Bin("server/mal-coordinator"),
      {"--listen", "127.0.0.1:0", "--data-dir", dir_ / "probed", "--health-listen", "127.0.0.1:0"},
      dir_ / "probed.log");
  ASSERT_TRUE(WaitFor([&] { return probed.Log().find("listening on port") != std::string::npos; },
                      std::chrono::seconds(20)))
      << probed.Log();
  const std::string log = probed.Log();
  const std::string health_address = absl::StrCat("127.0.0.1:", PortAfter(log, "health on port"));
  EXPECT_EQ(HealthOf(health_address), 1);
  auto other = v1::Coordinator::NewStub(rpc::MakeChannel(health_address));
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::seconds(5));
  v1::ListExperimentsResponse list;
  EXPECT_EQ(other->ListExperiments(&ctx, {}, &list).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  probed.Kill(SIGTERM);
  EXPECT_EQ(probed.Wait(), 0);
}

// systemd's readiness protocol (Type=notify units): READY=1 once listening (the coordinator) or
// registered (a worker), STOPPING=1 at SIGTERM, then exit 0. A datagram socket stands in for
// systemd's $NOTIFY_SOCKET.
TEST_F(ServiceTest, SystemdReadinessNotifications) {
  const std::string path = dir_ / "notify.sock";
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof(addr.sun_path));
  std::copy(path.begin(), path.end(), addr.sun_path);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  auto next = [fd]() -> std::string {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20000) != 1) return "(nothing within 20 s)";
    char buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, n) : "(recv failed)";
  };
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  StartCoordinator();
  const std::string ready = next();
  StartWorker("w1");
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_THAT(ready, HasSubstr("READY=1"));
  EXPECT_THAT(ready, HasSubstr("STATUS=listening on port"));
  const std::string worker_ready = next();
  EXPECT_THAT(worker_ready, HasSubstr("READY=1"));
  EXPECT_THAT(worker_ready, HasSubstr("STATUS=registered with " + address_ + " as w1"));
  workers_["w1"]->Kill(SIGTERM);
  EXPECT_THAT(next(), HasSubstr("STOPPING=1"));
  EXPECT_EQ(workers_["w1"]->Wait(), 0);
  coordinator_->Kill(SIGTERM);
  EXPECT_THAT(next(), HasSubstr("STOPPING=1"));
  EXPECT_EQ(coordinator_->Wait(), 0);
  ::close(fd);
}

TEST_F(ServiceTest, ASecondCoordinatorOnTheSameDataDirectoryIsRefused) {
  StartCoordinator();
  std::string out;
  EXPECT_EQ(
      Shell(Bin("server/mal-coordinator") + " --listen 127.0.0.1:0 --data-dir " + (dir_ / "data"),
            &out),
      2);
  EXPECT_THAT(out, HasSubstr("another mal-coordinator is using this data directory"));
  EXPECT_EQ(HealthOf(address_), 1);  // the first one is untouched
}

// Server reflection answers (what grpcurl and grpc_cli use): ListServices names our services.
std::string ReflectionServices(const std::string& address) {
  grpc::GenericStub generic(rpc::MakeChannel(address));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::seconds(5));
  auto call = generic.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](intptr_t t) {
    return cq.Next(&tag, &ok) && tag == reinterpret_cast<void*>(t) && ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  std::string answer;
  if (step(1)) {
    const std::string request("\x3a\x00", 2);  // ServerReflectionRequest{list_services: ""}
    grpc::Slice slice(request.data(), request.size());
    grpc::ByteBuffer buffer(&slice, 1);
    call->Write(buffer, reinterpret_cast<void*>(2));
    if (step(2)) {
      grpc::ByteBuffer response;
      call->Read(&response, reinterpret_cast<void*>(3));
      std::vector<grpc::Slice> slices;
      if (step(3) && response.Dump(&slices).ok()) {
        for (const auto& sl : slices)
          answer.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
      }
    }
  }
  ctx.TryCancel();
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return answer;
}

TEST_F(ServiceTest, ReflectionListsTheServices) {
  StartCoordinator();
  const std::string services = ReflectionServices(address_);
  EXPECT_THAT(services, HasSubstr("mal.v1.Coordinator"));
  EXPECT_THAT(services, HasSubstr("mal.v1.WorkerGateway"));
  EXPECT_THAT(services, HasSubstr("grpc.health.v1.Health"));
}

// GET on a loopback port; returns the whole response ("" when the connection fails).
std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\n\r\n";
    (void)::send(fd, request.data(), request.size(), 0);
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

TEST_F(ServiceTest, PrometheusMetricsOnTheirOwnPort) {
  Process coordinator(
      Bin("server/mal-coordinator"),
      {"--listen", "127.0.0.1:0", "--data-dir", dir_ / "m", "--metrics-listen", "127.0.0.1:0"},
      dir_ / "m.log");
  ASSERT_TRUE(
      WaitFor([&] { return coordinator.Log().find("metrics on port") != std::string::npos; },
              std::chrono::seconds(20)))
      << coordinator.Log();
  ASSERT_TRUE(
      WaitFor([&] { return coordinator.Log().find("listening on port") != std::string::npos; },
              std::chrono::seconds(20)))
      << coordinator.Log();
  const std::string text = coordinator.Log();
  const int port = PortAfter(text, "metrics on port");
  const int grpc_port = PortAfter(text, "listening on port");
  // One call, so that the RPC latency histogram has a series.
  auto stub = v1::Coordinator::NewStub(rpc::MakeChannel(absl::StrCat("127.0.0.1:", grpc_port)));
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::seconds(5));
  v1::ListExperimentsResponse list;
  ASSERT_TRUE(stub->ListExperiments(&ctx, {}, &list).ok());
  const std::string metrics = HttpGet(port, "/metrics");
  EXPECT_THAT(metrics, HasSubstr(" 200 OK"));
  EXPECT_THAT(metrics, HasSubstr("mal_queue_length 0"));
  EXPECT_THAT(metrics, HasSubstr("mal_watch_subscribers 0"));
  EXPECT_THAT(metrics, HasSubstr("# TYPE mal_rpc_duration_seconds histogram"));
  EXPECT_THAT(metrics, HasSubstr("mal_rpc_duration_seconds_count{code=\"OK\",method=\"/mal.v1."
                                 "Coordinator/ListExperiments\"} 1"));
  EXPECT_THAT(HttpGet(port, "/other"), HasSubstr("404"));
  // Prometheus' own checker accepts the exposition (Debian's prometheus package: promtool).
  const size_t body = metrics.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  testing::WriteText(dir_ / "metrics.txt", metrics.substr(body + 4));
  std::string out;
  EXPECT_EQ(Shell("promtool check metrics < " + (dir_ / "metrics.txt"), &out), 0) << out;
}

// TLS (mutual) and bearer tokens: a client without the CA cannot connect, one without a token or
// with a wrong one is refused, and with both a worker trains and malctl sees the result. Off
// loopback, plaintext needs --insecure.
TEST_F(ServiceTest, TlsAndTokens) {
  const std::string d = dir_ / "pki";
  fs::create_directories(d);
  const std::string openssl = "cd " + d + " && openssl ";
  ASSERT_EQ(Shell(openssl + "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
                            "-subj /CN=mal-test-ca"),
            0);
  testing::WriteText(d + "/san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  for (const std::string who : {"server", "client"}) {
    ASSERT_EQ(Shell(openssl + "req -newkey rsa:2048 -nodes -keyout " + who + ".key -out " + who +
                    ".csr -subj /CN=" + who),
              0);
    ASSERT_EQ(Shell(openssl + "x509 -req -in " + who +
                    ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out " + who + ".pem" +
                    (who == "server" ? " -extfile san.ext" : "")),
              0);
  }
  testing::WriteText(d + "/tokens", "# one per line\ns3cret-token\n");
  testing::WriteText(d + "/token", "s3cret-token\n");

  int rc = 0;
  std::string out;
  rc = Shell(Bin("server/mal-coordinator") + " --listen 0.0.0.0:0 --data-dir " + (dir_ / "plain"),
             &out);
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(out, HasSubstr("plaintext off loopback"));

  Process coordinator(
      Bin("server/mal-coordinator"),
      {"--listen", "127.0.0.1:0", "--data-dir", dir_ / "tls", "--lease-ms", "6000",
       "--heartbeat-ms", "200", "--tls-cert", d + "/server.pem", "--tls-key", d + "/server.key",
       "--tls-client-ca", d + "/ca.pem", "--token-file", d + "/tokens"},
      dir_ / "tls.log");
  ASSERT_TRUE(
      WaitFor([&] { return coordinator.Log().find("listening on port") != std::string::npos; },
              std::chrono::seconds(20)))
      << coordinator.Log();
  const std::string text = coordinator.Log();
  const std::string address = absl::StrCat("127.0.0.1:", PortAfter(text, "listening on port"));
  const std::string malctl = "MAL_ADDRESS=" + address + " " + Bin("client/malctl");
  const std::string tls =
      " --tls-ca " + d + "/ca.pem --tls-cert " + d + "/client.pem --tls-key " + d + "/client.key";

  // Exit 4: unreachable or unauthenticated (docs/service.md).
  EXPECT_EQ(Shell(malctl + " ls", &out), 4) << out;  // plaintext to a TLS port: no connection
  EXPECT_EQ(Shell(malctl + " ls" + tls, &out), 4);
  EXPECT_THAT(out, HasSubstr("bearer token is required"));
  EXPECT_EQ(Shell("MAL_TOKEN=guess " + malctl + " ls" + tls, &out), 4);
  EXPECT_THAT(out, HasSubstr("not accepted"));
  // A stream refused for its token ends at once (watch resumes only after transient errors).
  EXPECT_EQ(Shell("MAL_TOKEN=guess " + malctl + " watch exp-1" + tls, &out), 4);
  EXPECT_THAT(out, HasSubstr("not accepted"));
  EXPECT_EQ(Shell(malctl + " ls" + tls + " --tls-ca /nonexistent/ca.pem", &out), 2);
  EXPECT_THAT(out, HasSubstr("/nonexistent/ca.pem"));

  Process worker(Bin("worker/mal-worker"),
                 {"--coordinator", address, "--work-dir", dir_ / "tw", "--name", "tw", "--threads",
                  "1", "--tls-ca", d + "/ca.pem", "--tls-cert", d + "/client.pem", "--tls-key",
                  d + "/client.key", "--token-file", d + "/token"},
                 dir_ / "tw.log");
  out.clear();
  EXPECT_EQ(Shell(malctl + " submit -f " + WriteSpec("tls", 1, 2, "cv: {only: [1]}\n") + tls +
                      " --token-file " + d + "/token",
                  &out),
            0)
      << out;
  EXPECT_EQ(Shell("MAL_TOKEN=s3cret-token " + malctl + " wait exp-1 --timeout 120" + tls, &out), 0)
      << out << worker.Log() << coordinator.Log();
}

}  // namespace
}  // namespace mal
