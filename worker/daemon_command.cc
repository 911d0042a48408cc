// The worker daemon's command line: `mal-worker --coordinator HOST:PORT --work-dir DIR ...`.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <csignal>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/spec/spec_paths.h"
#include "common/util/grpc_channel.h"
#include "worker/commands.h"
#include "worker/daemon/daemon.h"

namespace mal::worker {

namespace {

int Fail(const std::string& message) {
  std::cerr << "mal-worker: " << message << "\n";
  return 2;
}

bool IsGpu(const std::string& d) {
  return d == "cuda" || (absl::StartsWith(d, "cuda:") && d.size() > 5 && d.size() <= 8 &&
                         std::all_of(d.begin() + 5, d.end(), absl::ascii_isdigit));
}

}  // namespace

std::function<int()> AddDaemonOptions(CLI::App& app) {
  auto o = std::make_shared<DaemonOptions>();
  auto token_file = std::make_shared<std::string>();
  CLI::Option_group* g = app.add_option_group("daemon", "the worker daemon (no subcommand)");
  CLI::Option* coordinator =
      g->add_option("--coordinator", o->coordinator, "the coordinator, HOST:PORT");
  CLI::Option* work_dir =
      g->add_option("--work-dir", o->work_dir, "where fold runs and their checkpoints live");
  CLI::Option* slots =
      g->add_option("--slots", o->slots, "fold runs at once (default: one per --devices entry)")
          ->check(CLI::Range(1, 1024))
          ->default_str("");  // the variable's 1 is not the default
  g->add_option("--name", o->name, "a stable worker name (default: HOST-PID)");
  g->add_option("--devices", o->devices,
                "cpu, or GPUs: cuda:0,cuda:1 (slot i trains on device i mod n)")
      ->delimiter(',');
  g->add_option("--threads", o->threads, "engine threads per run (0: cores / slots)")
      ->check(CLI::Range(0, 1024));
  g->add_option("--upload-every-s", o->upload_every_s,
                "checkpoint upload interval, s (also at every epoch end)")
      ->check(CLI::Range(1, 86400));
  g->add_option("--stop-grace-s", o->stop_grace_s, "SIGTERM to SIGKILL for a child told to stop, s")
      ->check(CLI::Range(0, 3600));
  g->add_option("--stall-timeout-s", o->stall_timeout_s,
                "stop and retry a run whose engine shows no progress (no batch trained or "
                "evaluated, no image file checked) for this long, s (0: never)")
      ->check(CLI::Range(0, 604800));
  g->add_option("--keep-failed-runs", o->keep_failed_runs,
                "failed runs' directories kept for inspection, the newest (older ones are "
                "removed; their logs stay on the coordinator)")
      ->check(CLI::Range(0, 100000));
  g->add_option("--listen", o->listen,
                "serve grpc.health.v1 and reflection at HOST:PORT (default: not served)");
  g->add_option("--engine", o->engine,
                "what runs a fold run: a wrapper (nice, numactl, a container) or a test "
                "double (default: this binary)");
  g->add_option("--data-root", o->data_roots,
                "absolute directory every dataset and weight path of a run must lie under, "
                "symbolic links resolved (repeatable; default: no containment)");
  g->add_option("--tls-ca", o->tls_ca, "CA bundle (PEM) for TLS to the coordinator");
  g->add_option("--tls-cert", o->tls_cert, "client certificate (PEM) for mutual TLS");
  g->add_option("--tls-key", o->tls_key, "client key (PEM) for mutual TLS");
  g->add_option("--token-file", *token_file, "bearer token file (default: the MAL_TOKEN variable)");
  return [o, token_file, coordinator, work_dir, slots]() -> int {
    if (coordinator->count() == 0 || work_dir->count() == 0) {
      return Fail(
          "the daemon needs --coordinator HOST:PORT and --work-dir DIR (mal-worker --help)");
    }
    auto token = rpc::LoadToken(*token_file, "MAL_TOKEN");
    if (!token.ok()) return Fail(std::string(token.status().message()));
    o->token = *token;
    auto roots = NormalizeDataRoots(o->data_roots, /*resolve_links=*/true);
    if (!roots.ok()) return Fail(std::string(roots.status().message()));
    o->data_roots = *roots;
    if (o->devices.empty()) return Fail("--devices: list at least one device");
    // One run per listed device by default: slot i trains on devices[i % size].
    if (slots->count() == 0) o->slots = static_cast<int>(o->devices.size());
    bool any_gpu = false;
    for (const std::string& d : o->devices) {
      if (d != "cpu" && !IsGpu(d))
        return Fail("--devices: \"" + d + "\" is not cpu, cuda or cuda:N");
      any_gpu = any_gpu || IsGpu(d);
    }
    if (any_gpu && o->slots > static_cast<int>(o->devices.size())) {
      return Fail(
          absl::StrCat("--slots ", o->slots, " is more than the ", o->devices.size(),
                       " devices of --devices: one run per GPU at a time (list a GPU twice to "
                       "let two runs share it)"));
    }
    InstallStopSignals();
    std::signal(SIGPIPE, SIG_IGN);
    return RunDaemon(*o, &StopRequested());
  };
}

}  // namespace mal::worker
