// Scale benchmark of the coordinator (run on demand, never in ctest): the real mal-coordinator
// process, `--workers` simulated workers speaking the worker protocol over loopback with a fake
// engine (each run reports `--points` loss points and a weight summary, then completes), and
// `--watchers` clients following the experiments, `--stalled` of which never read.
//
//   build/tests/coordinator_bench [--workers 50] [--runs 1000] [--watchers 100] [--stalled 0]
//       [--points 40] [--data-dir DIR]
//
// Reports runs dispatched per second, events per second, event delivery latency (worker send ->
// watcher receive) and the coordinator's peak resident memory.

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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/util/cli.h"
#include "common/util/grpc_channel.h"
#include "mal/v1/service.grpc.pb.h"
#include "tests/bench/bench_process.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
      .count();
}

struct Shared {
  std::atomic<bool> done{false};
  std::atomic<int64_t> runs_completed{0}, events_sent{0}, events_seen{0}, ended_watchers{0};
  std::mutex mu;
  std::vector<int64_t> latencies_us;
};

void FakeWorker(const std::string& address, int index, int points, Shared* shared) {
  auto stub = mal::v1::WorkerGateway::NewStub(mal::rpc::MakeChannel(address));
  const std::string name = absl::StrCat("sim-", index);
  std::string session;
  {
    mal::v1::RegisterRequest req;
    req.set_name(name);
    req.set_slots(1);
    req.add_devices("fake");
    mal::v1::RegisterResponse resp;
    grpc::ClientContext ctx;
    if (!stub->Register(&ctx, req, &resp).ok()) return;
    session = resp.session();
  }
  // Every later call carries the worker's credential (RegisterResponse.session).
  auto sign = [&](grpc::ClientContext& ctx) {
    ctx.AddMetadata("mal-worker", name);
    ctx.AddMetadata("mal-worker-session", session);
  };
  while (!shared->done) {
    mal::v1::HeartbeatRequest hb;
    hb.set_name(name);
    hb.set_free_slots(1);
    mal::v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    sign(ctx);
    if (!stub->Heartbeat(&ctx, hb, &resp).ok() || resp.assignments_size() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    const mal::v1::Assignment& a = resp.assignments(0);
    int64_t index_next = 1;
    for (int sent = 0; sent < points;) {
      mal::v1::ReportEventsRequest report;
      report.set_run_id(a.run_id());
      report.set_lease_epoch(a.lease_epoch());
      report.set_first_index(index_next);
      for (int i = 0; i < 10 && sent < points; ++i, ++sent) {
        mal::v1::TrainingPoint* p = report.add_events()->mutable_point();
        p->set_iteration(sent + 1);
        p->set_seconds(static_cast<double>(NowUs()));  // the send time, for the latency
      }
      mal::v1::WeightSummary* w = report.add_events()->mutable_weights();
      w->set_iteration(sent);
      for (int q = 0; q < 7; ++q) w->add_fe_quantiles(0.1 * q);
      mal::v1::ReportEventsResponse rr;
      grpc::ClientContext rctx;
      sign(rctx);
      if (!stub->ReportEvents(&rctx, report, &rr).ok()) break;
      index_next += report.events_size();
      shared->events_sent += report.events_size();
    }
    mal::v1::CompleteRunRequest complete;
    complete.set_run_id(a.run_id());
    complete.set_lease_epoch(a.lease_epoch());
    complete.mutable_result()->add_aus(1);
    complete.mutable_result()->add_test_f1(0.5);
    complete.mutable_result()->set_test_mean_f1(0.5);
    mal::v1::Ack ack;
    grpc::ClientContext cctx;
    sign(cctx);
    if (stub->CompleteRun(&cctx, complete, &ack).ok()) ++shared->runs_completed;
  }
}

void Watcher(const std::string& address, const std::string& experiment, bool stalled,
             Shared* shared) {
  auto stub = mal::v1::Coordinator::NewStub(mal::rpc::MakeChannel(address));
  grpc::ClientContext ctx;
  mal::v1::WatchRequest req;
  req.set_experiment_id(experiment);
  req.set_from_seq(1);
  auto reader = stub->Watch(&ctx, req);
  if (stalled) {  // opens the stream and never reads
    while (!shared->done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ctx.TryCancel();
    (void)reader->Finish();
    return;
  }
  std::vector<int64_t> latencies;
  mal::v1::WatchResponse r;
  const int64_t start = NowUs();
  while (reader->Read(&r)) {
    if (!r.has_event()) continue;
    ++shared->events_seen;
    const auto& e = r.event();
    // Live events only (the replay of what was written before this watcher started is not latency).
    if (e.has_point() && e.point().seconds() > static_cast<double>(start)) {
      latencies.push_back(NowUs() - static_cast<int64_t>(e.point().seconds()));
    }
    if (e.has_end()) break;
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) ++shared->ended_watchers;
  std::lock_guard<std::mutex> lock(shared->mu);
  shared->latencies_us.insert(shared->latencies_us.end(), latencies.begin(), latencies.end());
}

}  // namespace

int main(int argc, char** argv) {
  int workers = 50, runs = 1000, watchers = 100, stalled = 0, points = 40;
  const std::string self = fs::read_symlink("/proc/self/exe").parent_path().string();
  std::string coordinator = self + "/../server/mal-coordinator";
  std::string dir = absl::StrCat("/tmp/mal-coordinator-bench-", ::getpid());
  CLI::App app("coordinator_bench: the coordinator under many workers and watchers",
               "coordinator_bench");
  app.option_defaults()->always_capture_default();
  app.add_option("--workers", workers, "simulated worker daemons")->check(CLI::Range(1, 100000));
  app.add_option("--runs", runs, "fold runs (a multiple of 100)")->check([](const std::string& v) {
    int64_t n = 0;
    return absl::SimpleAtoi(v, &n) && n > 0 && n % 100 == 0
               ? std::string()
               : std::string("a positive multiple of 100");
  });
  app.add_option("--watchers", watchers, "clients watching")->check(CLI::Range(0, 100000));
  app.add_option("--stalled", stalled, "watchers that never read")->check(CLI::Range(0, 100000));
  app.add_option("--points", points, "loss points per run")->check(CLI::Range(0, 1000000));
  app.add_option("--data-dir", dir, "the coordinator's data directory (emptied first)");
  app.add_option("--coordinator", coordinator, "the mal-coordinator binary");
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const mal::bench::StartedCoordinator started = mal::bench::StartCoordinator(
      coordinator, dir, {"--heartbeat-ms", "100", "--lease-ms", "60000", "--watch-queue", "1024"});
  const pid_t pid = started.pid;
  const int port = started.port;
  if (port == 0) {
    std::cerr << "coordinator_bench: the coordinator did not start (" << dir
              << "/coordinator.log)\n";
    return 1;
  }
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto client = mal::v1::Coordinator::NewStub(mal::rpc::MakeChannel(address));
  const int64_t rss_idle = mal::bench::RssKb(pid, "VmRSS:");

  // runs / 100 experiments of 10 trials x 10 folds; the fake engine never reads the data.
  const int experiments = runs / 100;
  std::vector<std::string> ids;
  Shared shared;
  const auto t0 = Clock::now();
  for (int e = 0; e < experiments; ++e) {
    mal::v1::SubmitExperimentRequest req;
    mal::v1::ExperimentSpec* spec = req.mutable_spec();
    spec->set_name(absl::StrCat("bench-", e));
    spec->set_method(mal::v1::MAL);
    spec->mutable_data()->mutable_au()->set_format("synthface");
    spec->mutable_data()->mutable_au()->set_root("/nonexistent");
    spec->mutable_data()->mutable_fe()->set_format("synthface");
    spec->mutable_data()->mutable_fe()->set_root("/nonexistent");
    spec->mutable_cv()->set_protocol("kfold");
    spec->mutable_cv()->set_folds(10);
    spec->mutable_model()->set_backbone("small_cnn");
    spec->mutable_search()->set_algorithm("grid");
    spec->mutable_search()->set_concurrent(10);
    auto& domain = (*spec->mutable_search()->mutable_space())["train.epochs"];
    domain.add_int_uniform(1);
    domain.add_int_uniform(10);
    mal::v1::SubmitExperimentResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = client->SubmitExperiment(&ctx, req, &resp);
    if (!s.ok()) {
      std::cerr << "submit: " << s.error_message() << "\n";
      ::kill(pid, SIGKILL);
      return 1;
    }
    ids.push_back(resp.experiment_id());
  }
  const double submit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<std::thread> threads;
  for (int w = 0; w < watchers; ++w) {
    threads.emplace_back(Watcher, address, ids[static_cast<size_t>(w) % ids.size()], w < stalled,
                         &shared);
  }
  const auto t1 = Clock::now();
  for (int w = 0; w < workers; ++w) threads.emplace_back(FakeWorker, address, w, points, &shared);
  int64_t rss_peak = 0;
  while (shared.runs_completed < runs) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    rss_peak = std::max(rss_peak, mal::bench::RssKb(pid, "VmRSS:"));
    if (std::chrono::duration<double>(Clock::now() - t1).count() > 600) {
      std::cerr << "coordinator_bench: gave up after 600 s (" << shared.runs_completed
                << " runs done)\n";
      break;
    }
  }
  const double run_s = std::chrono::duration<double>(Clock::now() - t1).count();
  // Let live watchers reach their End events, then stop everything.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  rss_peak = std::max(rss_peak, mal::bench::RssKb(pid, "VmRSS:"));
  shared.done = true;
  for (auto& t : threads) t.join();
  const int64_t hwm = mal::bench::RssKb(pid, "VmHWM:");
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);

  auto& l = shared.latencies_us;
  std::sort(l.begin(), l.end());
  auto pct = [&](double q) {
    return l.empty() ? 0.0 : l[static_cast<size_t>(q * (l.size() - 1))] / 1000.0;
  };
  std::printf(
      "coordinator bench: %d runs (%d experiments x 10 trials x 10 folds), %d simulated workers, "
      "%d watchers "
      "(%d stalled), %d loss points per run\n",
      runs, experiments, workers, watchers, stalled, points);
  std::printf("  submit: %.2f s for %d experiments\n", submit_s, experiments);
  std::printf("  dispatch+complete: %lld runs in %.2f s = %.1f runs/s\n",
              static_cast<long long>(shared.runs_completed.load()), run_s,
              shared.runs_completed / run_s);
  std::printf("  events: %lld reported by workers (%.0f/s), %lld delivered to watchers (%.0f/s)\n",
              static_cast<long long>(shared.events_sent.load()), shared.events_sent / run_s,
              static_cast<long long>(shared.events_seen.load()), shared.events_seen / run_s);
  std::printf(
      "  delivery latency (live loss points, worker send -> watcher receive): median %.1f ms, p99 "
      "%.1f ms, "
      "max %.1f ms over %zu samples\n",
      pct(0.5), pct(0.99), pct(1.0), l.size());
  std::printf("  watchers ended early (behind / error): %lld\n",
              static_cast<long long>(shared.ended_watchers.load()));
  std::printf("  coordinator memory: %.1f MB idle, peak RSS %.1f MB (VmHWM %.1f MB)\n",
              rss_idle / 1024.0, rss_peak / 1024.0, hwm / 1024.0);
  fs::remove_all(dir);
  return shared.runs_completed >= runs ? 0 : 1;
}
