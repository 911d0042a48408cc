#include "client/service_commands.h"

#include <google/protobuf/stubs/common.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/service_client.h"
#include "common/spec/spec.h"
#include "common/util/grpc_status.h"
#include "common/util/random.h"
#include "server/core/searcher.h"

namespace mal::cli {

namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

struct SubmitOptions {
  ServiceOptions service;
  std::string file, request_id;
  std::optional<int> priority;
  bool follow = false;
  std::vector<std::string> kinds, overrides;
  bool plain = false;
};

void PrintExperiment(const v1::ExperimentInfo& e) {
  std::cout << "experiment " << e.id() << " (" << e.name() << "): " << Name(e.state())
            << (e.message().empty() ? "" : ": " + e.message()) << "\n"
            << "  created " << Time(e.created_ms()) << ", priority " << e.priority() << ", runs "
            << e.runs_done() << "/" << e.runs_total() << " done, " << e.runs_running()
            << " running, last event seq " << e.last_seq() << "\n";
  if (e.runs_size() == 0) return;
  std::cout << absl::StrFormat("  %-6s %-5s %-4s %-10s %-7s %-5s %-9s %-20s %s\n", "RUN", "TRIAL",
                               "FOLD", "STATE", "ATTEMPT", "EPOCH", "TEST F1", "WORKER", "MESSAGE");
  for (const auto& r : e.runs()) {
    std::cout << absl::StrFormat("  %-6d %-5d %-4s %-10s %-7d %-5d %-9s %-20s %s\n", r.id(),
                                 r.trial(), r.fold() == 0 ? "all" : absl::StrCat(r.fold()),
                                 Name(r.state()), r.attempt() + 1, r.epoch(),
                                 r.state() == v1::RUN_SUCCEEDED && r.fold() != 0
                                     ? absl::StrFormat("%.4f", r.result().test_mean_f1())
                                     : "-",
                                 r.worker().empty() ? "-" : r.worker(), r.message());
  }
}

int Submit(const SubmitOptions& o) {
  auto c = Connect(o.service);
  if (!c.ok()) return Fail(kUsage, std::string(c.status().message()));
  auto spec = LoadSpecFile(o.file, o.overrides);
  if (!spec.ok()) return Fail(kUsage, std::string(spec.status().message()));
  // The coordinator's check of the search as a whole, here, so a grid too large or a trial whose
  // combination of values is invalid is a usage error before anything is sent.
  if (auto trials = server::CheckExperimentSize(*spec); !trials.ok()) {
    return Fail(kUsage, absl::StrCat(o.file, ": ", trials.status().message()));
  }
  // Relative dataset and model paths mean "from where malctl runs": absolute before the spec
  // leaves this machine.
  ResolveSpecPaths(*spec, fs::current_path().string());
  if (o.priority) {
    spec->set_priority(*o.priority);
    if (absl::Status s = ValidateSpec(*spec); !s.ok()) {
      return Fail(kUsage, absl::StrCat("--priority: ", s.message()));
    }
  }
  if (!google::protobuf::internal::IsStructurallyValidUTF8(o.request_id.data(),
                                                           static_cast<int>(o.request_id.size()))) {
    return Fail(kUsage, "--request-id: not valid UTF-8");
  }
  v1::SubmitExperimentRequest req;
  *req.mutable_spec() = *spec;
  // One id for every retry of this submission, so a lost answer never creates two experiments.
  req.set_request_id(
      !o.request_id.empty()
          ? o.request_id
          : absl::StrCat("malctl-", ::getpid(), "-",
                         MixSeed(static_cast<uint64_t>(
                                     std::chrono::system_clock::now().time_since_epoch().count()),
                                 ::getpid())));
  v1::SubmitExperimentResponse resp;
  grpc::Status s;
  // Resent while the coordinator is unreachable or restarting, for up to kSubmitRetrySeconds (one
  // with 180,000 fold runs takes about 9 s to start): safe, the request id makes Submit
  // idempotent. No wait after the last try.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(kSubmitRetrySeconds);
  for (int backoff_ms = 500;; backoff_ms = std::min(backoff_ms * 2, 4000)) {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, kRpcTimeout);
    s = c->stub->SubmitExperiment(&ctx, req, &resp);
    if (!IsTransient(s) || std::chrono::steady_clock::now() + milliseconds(backoff_ms) > give_up) {
      break;
    }
    std::this_thread::sleep_for(milliseconds(backoff_ms));
  }
  if (!s.ok()) return RpcFail(s);
  if (c->structured()) {
    PrintStructured(c->output, resp);
  } else {
    std::cout << (resp.existing() ? "already submitted as " : "submitted ") << resp.experiment_id()
              << ": " << resp.trials() << " trial(s), " << resp.runs() << " fold run(s)\n";
  }
  if (!o.follow) return kOk;
  c->live = LiveWanted(*c, o.plain, o.kinds);
  return Follow(*c, resp.experiment_id(), 1, o.kinds);
}

// Every page of ListExperiments (summaries, 500 a page), as one response.
int Ls(const ServiceClient& c) {
  v1::ListExperimentsResponse resp;
  v1::ListExperimentsRequest req;
  req.set_page_size(500);
  do {
    v1::ListExperimentsResponse page;
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, kRpcTimeout);
    grpc::Status s = c.stub->ListExperiments(&ctx, req, &page);
    if (!s.ok()) return RpcFail(s);
    for (v1::ExperimentInfo& e : *page.mutable_experiments())
      *resp.add_experiments() = std::move(e);
    resp.set_total(page.total());
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  if (c.structured()) {
    PrintStructured(c.output, resp);
    return kOk;
  }
  std::cout << absl::StrFormat("%-10s %-24s %-10s %-9s %-8s %s\n", "ID", "NAME", "STATE", "RUNS",
                               "RUNNING", "CREATED");
  for (const auto& e : resp.experiments()) {
    std::cout << absl::StrFormat("%-10s %-24s %-10s %-9s %-8d %s\n", e.id(), e.name(),
                                 Name(e.state()), absl::StrCat(e.runs_done(), "/", e.runs_total()),
                                 e.runs_running(), Time(e.created_ms()));
  }
  return kOk;
}

int Rm(const ServiceClient& c, const std::string& id) {
  v1::DeleteExperimentRequest req;
  req.set_experiment_id(id);
  v1::DeleteExperimentResponse resp;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kRpcTimeout);
  grpc::Status s = c.stub->DeleteExperiment(&ctx, req, &resp);
  if (!s.ok()) return RpcFail(s);
  if (c.structured()) {
    PrintStructured(c.output, resp);
  } else {
    std::cout << "deleted " << resp.experiment_id() << " ("
              << absl::StrFormat("%.1f", resp.artifact_bytes() / 1048576.0)
              << " MiB of artifacts removed)\n";
  }
  return kOk;
}

// describe, cancel: one experiment id, an ExperimentInfo back.
int OneExperiment(const ServiceClient& c, const std::string& id, const std::string& command) {
  v1::ExperimentInfo info;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kRpcTimeout);
  grpc::Status s;
  if (command == "cancel") {
    v1::CancelExperimentRequest req;
    req.set_experiment_id(id);
    s = c.stub->CancelExperiment(&ctx, req, &info);
  } else {
    v1::GetExperimentRequest req;
    req.set_experiment_id(id);
    s = c.stub->GetExperiment(&ctx, req, &info);
  }
  if (!s.ok()) return RpcFail(s);
  if (c.structured()) {
    PrintStructured(c.output, info);
  } else {
    PrintExperiment(info);
  }
  return kOk;
}

int Wait(const ServiceClient& c, const std::string& id, double timeout_s) {
  const auto end =
      std::chrono::steady_clock::now() + milliseconds(static_cast<int64_t>(timeout_s * 1000));
  v1::ExperimentInfo info;
  bool reached = false;
  auto last_contact = std::chrono::steady_clock::now();
  for (;;) {
    int64_t slice = 30000;
    if (timeout_s > 0) {
      slice = std::min<int64_t>(
          slice,
          std::chrono::duration_cast<milliseconds>(end - std::chrono::steady_clock::now()).count());
      if (slice <= 0 && reached) break;
      slice = std::max<int64_t>(slice, 0);
    }
    v1::WaitExperimentRequest req;
    req.set_experiment_id(id);
    req.set_timeout_ms(slice);
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, milliseconds(slice + 10000));
    grpc::Status s = c.stub->WaitExperiment(&ctx, req, &info);
    // A coordinator restarting (the call cancelled by its shutdown, then unreachable): keep
    // waiting.
    const bool restarting = IsTransient(s);
    if (restarting && reached &&
        std::chrono::steady_clock::now() - last_contact < std::chrono::seconds(kReconnectSeconds)) {
      std::this_thread::sleep_for(milliseconds(1000));  // a coordinator restart: keep waiting
      continue;
    }
    if (!s.ok()) return RpcFail(s);
    reached = true;
    last_contact = std::chrono::steady_clock::now();
    if (info.state() != v1::EXPERIMENT_RUNNING) break;
  }
  if (c.structured()) {
    PrintStructured(c.output, info);
  } else {
    std::cout << info.id() << ": " << Name(info.state())
              << (info.message().empty() ? "" : ": " + info.message()) << "\n";
  }
  if (info.state() == v1::EXPERIMENT_RUNNING) return kStillRunning;
  return info.state() == v1::EXPERIMENT_SUCCEEDED ? kOk : kFailed;
}

int Workers(const ServiceClient& c) {
  v1::ListWorkersResponse r;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kRpcTimeout);
  grpc::Status s = c.stub->ListWorkers(&ctx, v1::ListWorkersRequest(), &r);
  if (!s.ok()) return RpcFail(s);
  if (c.structured()) {
    PrintStructured(c.output, r);
    return kOk;
  }
  std::cout << absl::StrFormat("%-28s %-16s %-5s %-6s %-12s %-20s %s\n", "NAME", "HOST", "SLOTS",
                               "ALIVE", "DEVICES", "LAST HEARTBEAT", "RUNS");
  for (const auto& w : r.workers()) {
    std::cout << absl::StrFormat("%-28s %-16s %-5d %-6s %-12s %-20s %s\n", w.name(), w.host(),
                                 w.slots(), w.alive() ? "yes" : "no",
                                 absl::StrJoin(w.devices(), ","), Time(w.last_heartbeat_ms()),
                                 absl::StrJoin(w.runs(), ","));
  }
  return kOk;
}

// Adds a command that takes the service options and, when `with_id`, one experiment id, and
// runs `run` on the connected client.
CLI::App* AddCommand(CLI::App& app, int* exit_code, const std::string& name,
                     const std::string& help, bool with_id,
                     std::function<int(const ServiceClient&, const std::string& id)> run) {
  struct Options {
    ServiceOptions service;
    std::string id;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(name, help);
  if (with_id) cmd->add_option("id", o->id, "the experiment id (exp-N)")->required();
  AddServiceOptions(*cmd, &o->service);
  cmd->callback([o, run, exit_code] {
    auto client = Connect(o->service);
    *exit_code =
        client.ok() ? run(*client, o->id) : Fail(kUsage, std::string(client.status().message()));
  });
  return cmd;
}

}  // namespace

void AddServiceCommands(CLI::App& app, int* exit_code) {
  auto submit = std::make_shared<SubmitOptions>();
  CLI::App* cmd = app.add_subcommand("submit", "submit an experiment");
  cmd->add_option("-f,--file", submit->file, "the experiment spec (YAML, docs/spec.md)")
      ->required();
  cmd->add_option("--set", submit->overrides,
                  "FIELD.PATH=VALUE over the file's value (YAML value; repeatable), e.g. "
                  "--set train.lr=0.01 --set cv.only=[1,2]");
  cmd->add_flag("--follow", submit->follow, "then stream its events until it ends, as watch does");
  cmd->add_flag("--plain", submit->plain, "with --follow: one line per event even on a terminal");
  cmd->add_option("--kinds", submit->kinds,
                  "with --follow: only these event kinds (see watch --help)")
      ->delimiter(',')
      ->check(CLI::IsMember(EventKinds()));
  cmd->add_option("--request-id", submit->request_id,
                  "idempotency key: resubmitting with it returns the same experiment");
  cmd->add_option("--priority", submit->priority,
                  "higher runs first (overrides the spec's priority)");
  AddServiceOptions(*cmd, &submit->service);
  cmd->footer(
      "Example: malctl submit -f deploy/examples/quickstart.yaml --set train.epochs=4 --follow");
  cmd->callback([submit, exit_code] { *exit_code = Submit(*submit); });

  AddCommand(app, exit_code, "ls", "list experiments", false,
             [](const ServiceClient& c, const std::string&) { return Ls(c); })
      ->footer("Example: malctl ls -o json");
  AddCommand(app, exit_code, "rm",
             "delete a finished experiment with its runs, events and artifacts (admin token; "
             "delete its registered models first)",
             true, [](const ServiceClient& c, const std::string& id) { return Rm(c, id); })
      ->footer(
          "Example: malctl rm exp-3   (a running one: malctl cancel exp-3 first; its models: "
          "malctl models rm NAME:VERSION first)");
  AddCommand(app, exit_code, "describe", "an experiment and its fold runs", true,
             [](const ServiceClient& c, const std::string& id) {
               return OneExperiment(c, id, "describe");
             })
      ->footer("Example: malctl describe exp-3");
  AddCommand(
      app, exit_code, "cancel", "stop an experiment", true,
      [](const ServiceClient& c, const std::string& id) { return OneExperiment(c, id, "cancel"); })
      ->footer("Example: malctl cancel exp-3");
  AddWatchCommand(app, exit_code);
  AddModelsCommand(app, exit_code);
  AddArtifactCommands(app, exit_code);
  AddPlotCommand(app, exit_code);
  AddExportCommand(app, exit_code);
  auto timeout = std::make_shared<double>(0);
  CLI::App* wait = AddCommand(
      app, exit_code, "wait",
      "wait until an experiment ends (exit 0 succeeded, 1 failed or cancelled, 5 still running)",
      true,
      [timeout](const ServiceClient& c, const std::string& id) { return Wait(c, id, *timeout); });
  wait->add_option("--timeout", *timeout, "give up after this long, s (0: no limit)")
      ->check(CLI::NonNegativeNumber);
  wait->footer("Example: malctl wait exp-3 --timeout 3600 && malctl results exp-3");
  AddResultsCommand(app, exit_code);
  AddCommand(app, exit_code, "workers", "the worker daemons", false,
             [](const ServiceClient& c, const std::string&) { return Workers(c); })
      ->footer("Example: malctl workers --address coordinator:7070");
}

}  // namespace mal::cli
