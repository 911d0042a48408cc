// `malctl weights` and `malctl logs`: a fold run's files through the Coordinator service's
// client-facing ListArtifacts / DownloadArtifact (the worker API is not for clients).

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/service_client.h"
#include "common/util/artifact_transfer.h"
#include "common/util/run_files.h"
#include "common/util/sha256.h"

namespace mal::cli {

int ChooseRun(const ServiceClient& c, RunOptions& o) {
  if (o.trial && o.fold) return kOk;
  v1::ResultsResponse r;
  if (grpc::Status s = GetResults(c, o.id, &r); !s.ok()) return RpcFail(s);
  return ChooseRun(r, o);
}

int ChooseRun(const v1::ResultsResponse& r, RunOptions& o) {
  if (!o.trial) o.trial = r.best_trial() >= 0 ? r.best_trial() : 0;
  if (!o.fold) {
    int fold = -1;
    for (const auto& run : r.runs()) {
      if (run.trial() != *o.trial) continue;
      if (fold == -1 || (run.fold() != 0 && (fold == 0 || run.fold() < fold))) fold = run.fold();
    }
    if (fold == -1) return Fail(kFailed, absl::StrCat(o.id, " has no runs of trial ", *o.trial));
    o.fold = fold;
  }
  return kOk;
}

std::vector<int> WeightEpochs(const v1::ListArtifactsResponse& list) {
  std::vector<int> epochs;
  for (const auto& a : list.artifacts()) {
    int e = 0;
    if (std::sscanf(a.name().c_str(), "weights/epoch_%d.csv", &e) == 1 &&
        a.name() == run_files::WeightsCsv(e))
      epochs.push_back(e);
  }
  // Listed by name: epoch_1000.csv sorts before epoch_101.csv.
  std::sort(epochs.begin(), epochs.end());
  return epochs;
}

v1::ArtifactRequest Request(const RunOptions& o, const std::string& name) {
  v1::ArtifactRequest req;
  req.set_experiment_id(o.id);
  req.set_trial(*o.trial);
  req.set_fold(*o.fold);
  req.set_name(name);
  return req;
}

grpc::Status DownloadArtifact(const ServiceClient& c, const v1::ArtifactRequest& req,
                              std::string* out) {
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::minutes(10));
  auto reader = c.stub->DownloadArtifact(&ctx, req);
  v1::ArtifactChunk chunk;
  std::string expected;
  out->clear();
  while (reader->Read(&chunk)) {
    if (!chunk.sha256().empty()) expected = chunk.sha256();
    out->append(chunk.data());
  }
  grpc::Status s = reader->Finish();
  if (s.ok()) {
    Sha256 hash;
    hash.Update(*out);
    if (hash.HexDigest() != expected) {
      return grpc::Status(grpc::StatusCode::DATA_LOSS, req.name() + ": checksum mismatch");
    }
  }
  return s;
}

std::string Where(const RunOptions& o) {
  return absl::StrCat(o.id, " trial ", *o.trial, " ",
                      *o.fold == 0 ? "final fit" : absl::StrCat("fold ", *o.fold));
}

namespace {

int Weights(const ServiceClient& c, RunOptions& o, std::optional<int> epoch,
            const std::string& out) {
  if (int rc = ChooseRun(c, o); rc != kOk) return rc;
  v1::ListArtifactsResponse list;
  if (grpc::Status s =
          Call(c.stub.get(), &v1::Coordinator::Stub::ListArtifacts, Request(o, ""), &list);
      !s.ok())
    return RpcFail(s);
  const std::vector<int> epochs = WeightEpochs(list);
  if (epochs.empty()) {
    return Fail(kFailed, absl::StrCat(Where(o),
                                      " has no per-sample weights (MAL runs write them, one "
                                      "CSV per finished epoch: an STL or MTL run has none, a "
                                      "MAL run in its first epoch none yet)"));
  }
  const int chosen = epoch ? *epoch : epochs.back();
  if (std::find(epochs.begin(), epochs.end(), chosen) == epochs.end()) {
    return Fail(kFailed, absl::StrCat(Where(o), " has no weights for epoch ", chosen,
                                      "; it has epochs ", absl::StrJoin(epochs, ", ")));
  }
  const v1::ArtifactRequest req = Request(o, run_files::WeightsCsv(chosen));
  if (out.empty()) {
    std::string data;
    if (grpc::Status s = DownloadArtifact(c, req, &data); !s.ok()) return RpcFail(s);
    std::cout << data << std::flush;
    return kOk;
  }
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::minutes(10));
  auto reader = c.stub->DownloadArtifact(&ctx, req);
  if (grpc::Status s = rpc::ReceiveFile(*reader, out); !s.ok()) return RpcFail(s);
  std::cerr << "per-sample weights of " << Where(o) << ", epoch " << chosen << " -> " << out
            << "\n";
  return kOk;
}

// The run's state now, or nullopt when it cannot be read; `gone` is set when the experiment no
// longer exists (deleted while followed).
std::optional<v1::RunState> RunState(const ServiceClient& c, const RunOptions& o,
                                     grpc::Status* gone) {
  v1::ExperimentInfo info;
  grpc::Status s = GetExperiment(c, o.id, &info);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) *gone = s;
  if (!s.ok()) return std::nullopt;
  for (const auto& r : info.runs()) {
    if (r.trial() == *o.trial && r.fold() == *o.fold) return r.state();
  }
  return std::nullopt;
}

bool Finished(v1::RunState s) {
  return s == v1::RUN_SUCCEEDED || s == v1::RUN_FAILED || s == v1::RUN_CANCELLED;
}

int Logs(const ServiceClient& c, RunOptions& o, bool follow) {
  if (int rc = ChooseRun(c, o); rc != kOk) return rc;
  const v1::ArtifactRequest req = Request(o, run_files::kLog);
  size_t printed = 0;
  for (;;) {
    // Read the state first: a log downloaded after the run finished is its last.
    grpc::Status gone;
    const auto state = follow ? RunState(c, o, &gone) : std::nullopt;
    if (!gone.ok()) return RpcFail(gone);
    std::string data;
    grpc::Status s = DownloadArtifact(c, req, &data);
    if (s.ok() && data.size() > printed) {
      std::cout << data.substr(printed) << std::flush;
      printed = data.size();
    } else if (!s.ok() && !(follow && s.error_code() == grpc::StatusCode::NOT_FOUND)) {
      return RpcFail(s);
    }
    if (!follow || (state && Finished(*state))) return kOk;
    // The worker uploads the log with every epoch's files.
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
}

}  // namespace

void AddArtifactCommands(CLI::App& app, int* exit_code) {
  auto add_run_options = [](CLI::App* cmd, RunOptions* o) {
    cmd->add_option("id", o->id, "the experiment id (exp-N)")->required();
    cmd->add_option("--trial", o->trial, "the trial (default: the best one)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--fold", o->fold,
                    "the fold (default: the trial's first; 0: the final fit on all subjects)")
        ->check(CLI::NonNegativeNumber);
    AddServiceOptions(*cmd, &o->service, "MAL_ADDRESS", /*output=*/false);
  };

  struct WeightsOptions {
    RunOptions run;
    std::optional<int> epoch;
    std::string out;
  };
  auto w = std::make_shared<WeightsOptions>();
  CLI::App* weights = app.add_subcommand(
      "weights",
      "download a fold run's per-sample weights (CSV: id, task, label, consistency, "
      "weight ...; docs/engine.md)");
  add_run_options(weights, &w->run);
  weights->add_option("--epoch", w->epoch, "the epoch (default: the latest uploaded)")
      ->check(CLI::PositiveNumber);
  weights->add_option("--out", w->out, "write to this file (atomically; default: stdout)");
  weights->footer("Example: malctl weights exp-3 --fold 2 --epoch 8 --out w.csv");
  weights->callback([w, exit_code] {
    auto c = Connect(w->run.service);
    *exit_code = c.ok() ? Weights(*c, w->run, w->epoch, w->out)
                        : Fail(kUsage, std::string(c.status().message()));
  });

  struct LogsOptions {
    RunOptions run;
    bool follow = false;
  };
  auto l = std::make_shared<LogsOptions>();
  CLI::App* logs = app.add_subcommand("logs", "the engine's log of a fold run");
  add_run_options(logs, &l->run);
  logs->add_flag("-f,--follow", l->follow,
                 "keep printing as the worker uploads more (every epoch), until the run ends");
  logs->footer("Example: malctl logs exp-3 --fold 1 --follow");
  logs->callback([l, exit_code] {
    auto c = Connect(l->run.service);
    *exit_code =
        c.ok() ? Logs(*c, l->run, l->follow) : Fail(kUsage, std::string(c.status().message()));
  });
}

}  // namespace mal::cli
