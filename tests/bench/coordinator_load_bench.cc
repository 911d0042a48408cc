// Load benchmark of the coordinator's client API (run on demand, never in ctest): the real
// mal-coordinator process on loopback, `--submitters` clients submitting small experiments in a
// loop, `--readers` clients alternating GetExperiment and ListExperiments (one page of 100), and
// `--watchers` clients following experiments, for `--seconds`. Reports GetExperiment latency
// idle (before the load) and under load (p50 / p99 / max, ms), List and Submit latency under
// load, submissions per second, and the coordinator's resident memory (idle, peak).
//
//   build/tests/coordinator_load_bench [--submitters 20] [--readers 4] [--watchers 20]
//       [--seconds 20] [--data-dir DIR]

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/util/cli.h"
#include "common/util/grpc_channel.h"
#include "mal/v1/service.grpc.pb.h"
#include "tests/bench/bench_process.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Latencies in microseconds, appended by many threads.
struct Samples {
  std::mutex mu;
  std::vector<int64_t> us;
  void Add(Clock::duration d) {
    std::lock_guard<std::mutex> lock(mu);
    us.push_back(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
  }
  std::string Summary() {
    std::lock_guard<std::mutex> lock(mu);
    std::sort(us.begin(), us.end());
    if (us.empty()) return "no samples";
    auto pct = [&](double q) { return us[static_cast<size_t>(q * (us.size() - 1))] / 1000.0; };
    char buf[160];
    std::snprintf(buf, sizeof(buf), "p50 %.2f ms, p99 %.2f ms, max %.2f ms over %zu calls",
                  pct(0.5), pct(0.99), pct(1.0), us.size());
    return buf;
  }
};

mal::v1::SubmitExperimentRequest SmallExperiment(int i) {
  mal::v1::SubmitExperimentRequest req;
  mal::v1::ExperimentSpec* spec = req.mutable_spec();
  spec->set_name(absl::StrCat("load-", i));
  spec->set_method(mal::v1::STL);
  spec->mutable_data()->mutable_au()->set_format("synthface");
  spec->mutable_data()->mutable_au()->set_root("/nonexistent");
  spec->mutable_model()->set_backbone("small_cnn");
  return req;  // 1 trial x 3 folds (the standard protocol)
}

}  // namespace

int main(int argc, char** argv) {
  int submitters = 20, readers = 4, watchers = 20, seconds = 20;
  const std::string self = fs::read_symlink("/proc/self/exe").parent_path().string();
  std::string coordinator = self + "/../server/mal-coordinator";
  std::string dir = absl::StrCat("/tmp/mal-coordinator-load-", ::getpid());
  CLI::App app("coordinator_load_bench: reads under concurrent submissions",
               "coordinator_load_bench");
  app.option_defaults()->always_capture_default();
  app.add_option("--submitters", submitters, "clients submitting")->check(CLI::Range(0, 1000));
  app.add_option("--readers", readers, "clients reading")->check(CLI::Range(1, 1000));
  app.add_option("--watchers", watchers, "clients watching")->check(CLI::Range(0, 1000));
  app.add_option("--seconds", seconds, "load duration, s")->check(CLI::Range(1, 3600));
  app.add_option("--data-dir", dir, "the coordinator's data directory (emptied first)");
  app.add_option("--coordinator", coordinator, "the mal-coordinator binary");
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const mal::bench::StartedCoordinator started = mal::bench::StartCoordinator(coordinator, dir, {});
  const pid_t pid = started.pid;
  const int port = started.port;
  if (port == 0) {
    std::cerr << "coordinator_load_bench: the coordinator did not start (" << dir
              << "/coordinator.log)\n";
    return 1;
  }
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto stub = mal::v1::Coordinator::NewStub(mal::rpc::MakeChannel(address));
  std::string first_id;
  {
    mal::v1::SubmitExperimentResponse resp;
    grpc::ClientContext ctx;
    if (!stub->SubmitExperiment(&ctx, SmallExperiment(0), &resp).ok()) return 1;
    first_id = resp.experiment_id();
  }
  auto get = [&](mal::v1::Coordinator::Stub& s, Samples& samples) {
    mal::v1::GetExperimentRequest req;
    req.set_experiment_id(first_id);
    mal::v1::ExperimentInfo info;
    grpc::ClientContext ctx;
    const auto t = Clock::now();
    const bool ok = s.GetExperiment(&ctx, req, &info).ok();
    samples.Add(Clock::now() - t);
    return ok;
  };
  Samples idle;
  for (int i = 0; i < 500; ++i) get(*stub, idle);
  const int64_t rss_idle = mal::bench::RssKb(pid, "VmRSS:");

  std::atomic<bool> done{false};
  std::atomic<int64_t> submitted{0}, refused{0};
  Samples gets, lists, submits;
  std::vector<std::thread> threads;
  for (int i = 0; i < submitters; ++i) {
    threads.emplace_back([&, i] {
      auto s = mal::v1::Coordinator::NewStub(mal::rpc::MakeChannel(address));
      for (int n = 0; !done; ++n) {
        mal::v1::SubmitExperimentResponse resp;
        grpc::ClientContext ctx;
        const auto t = Clock::now();
        const bool ok = s->SubmitExperiment(&ctx, SmallExperiment(i * 100000 + n), &resp).ok();
        submits.Add(Clock::now() - t);
        (ok ? submitted : refused)++;
      }
    });
  }
  for (int i = 0; i < watchers; ++i) {
    threads.emplace_back([&] {
      auto s = mal::v1::Coordinator::NewStub(mal::rpc::MakeChannel(address));
      while (!done) {
        mal::v1::WatchRequest req;
        req.set_experiment_id(first_id);
        grpc::ClientContext ctx;
        mal::rpc::SetDeadline(ctx, std::chrono::seconds(2));
        auto reader = s->Watch(&ctx, req);
        mal::v1::WatchResponse r;
        while (!done && reader->Read(&r)) {
        }
        ctx.TryCancel();
        reader->Finish();
      }
    });
  }
  for (int i = 0; i < readers; ++i) {
    threads.emplace_back([&] {
      auto s = mal::v1::Coordinator::NewStub(mal::rpc::MakeChannel(address));
      for (int n = 0; !done; ++n) {
        get(*s, gets);
        if (n % 10 == 0) {
          mal::v1::ListExperimentsRequest req;
          req.set_page_size(100);
          mal::v1::ListExperimentsResponse resp;
          grpc::ClientContext ctx;
          const auto t = Clock::now();
          s->ListExperiments(&ctx, req, &resp);
          lists.Add(Clock::now() - t);
        }
      }
    });
  }
  int64_t rss_peak = 0;
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(seconds)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    rss_peak = std::max(rss_peak, mal::bench::RssKb(pid, "VmRSS:"));
  }
  done = true;
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::printf("coordinator load bench: %d submitters, %d readers, %d watchers, %d s\n", submitters,
              readers, watchers, seconds);
  std::printf("  GetExperiment idle:       %s\n", idle.Summary().c_str());
  std::printf("  GetExperiment under load: %s\n", gets.Summary().c_str());
  std::printf("  ListExperiments (100):    %s\n", lists.Summary().c_str());
  std::printf("  SubmitExperiment:         %s\n", submits.Summary().c_str());
  std::printf("  submissions: %lld (%.1f/s), refused %lld\n",
              static_cast<long long>(submitted.load()), submitted / elapsed,
              static_cast<long long>(refused.load()));
  std::printf("  coordinator memory: %.1f MB idle, peak RSS %.1f MB\n", rss_idle / 1024.0,
              rss_peak / 1024.0);
  fs::remove_all(dir);
  return 0;
}
