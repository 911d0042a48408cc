// `malctl export ID --tensorboard DIR`: an experiment's fold runs as TensorBoard event files, one
// run directory per fold run (DIR/ID/trial-T/fold-K): per-iteration scalars from records.csv
// (losses per task, normalised and raw mean AU / FE weights, learning rates), per-epoch F1 per AU
// from metrics.json, and per epoch a histogram of the FE sample weights per expression from
// weights/epoch_NNN.csv.

#include "client/export_command.h"

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "client/service_client.h"
#include "common/tensorboard/event_writer.h"
#include "common/tensorboard/run_summaries.h"
#include "common/util/grpc_status.h"
#include "common/util/run_files.h"

namespace mal::cli {

namespace {

namespace fs = std::filesystem;

struct ExportOptions {
  ServiceOptions service;
  std::string id, dir;
  std::optional<int> trial;
};

// A download's failure, named with the file ("records.csv: ...").
absl::Status Named(const std::string& name, const absl::Status& s) {
  return s.ok() ? s : absl::Status(s.code(), absl::StrCat(name, ": ", s.message()));
}

int Export(const ServiceClient& c, const ExportOptions& o) {
  v1::ExperimentInfo info;
  if (grpc::Status s = GetExperiment(c, o.id, &info); !s.ok()) return RpcFail(s);
  int written = 0, failed = 0;
  for (const auto& run : info.runs()) {
    if (o.trial && run.trial() != *o.trial) continue;
    RunOptions ro;
    ro.id = o.id;
    ro.trial = run.trial();
    ro.fold = run.fold();
    const std::string dir =
        absl::StrCat(o.dir, "/", o.id, "/trial-", run.trial(), "/",
                     run.fold() == 0 ? "final-fit" : absl::StrCat("fold-", run.fold()));
    auto path = ExportRun(
        [&](const std::string& name, std::string* out) {
          return FromGrpcStatus(DownloadArtifact(c, Request(ro, name), out));
        },
        dir);
    if (absl::IsNotFound(path.status())) {
      std::cerr << "malctl: " << Where(ro) << ": nothing uploaded yet, skipped\n";
      continue;
    }
    if (!path.ok()) {
      // One run that cannot be exported does not cost the others theirs: it is named, its earlier
      // export (if any) is kept, the rest are written, and the exit says it failed.
      std::cerr << "malctl: " << Where(ro) << ": " << path.status().message() << "; not exported\n";
      ++failed;
      continue;
    }
    std::cout << *path << "\n";
    ++written;
  }
  if (written == 0 && failed == 0)
    return Fail(kFailed, absl::StrCat(o.id, ": no fold run has uploaded anything yet"));
  if (written > 0) std::cerr << "view with: tensorboard --logdir " << o.dir << "\n";
  if (failed > 0) {
    return Fail(kFailed,
                absl::StrCat(o.id, ": ", failed, " fold run(s) not exported (named above), ",
                             written, " exported"));
  }
  return kOk;
}

}  // namespace

absl::StatusOr<std::string> ExportRun(const FetchArtifact& fetch, const std::string& dir) {
  std::string records;
  if (absl::Status s = fetch(run_files::kRecords, &records); !s.ok())
    return absl::IsNotFound(s) ? s : Named(run_files::kRecords, s);
  // Empty: emptied by an out-of-memory restart (train.oom_retries) before the new run's first rows.
  if (records.empty()) return absl::NotFoundError(absl::StrCat(run_files::kRecords, ": empty"));
  auto writer = tensorboard::EventWriter::Create(dir, /*atomic=*/true);
  if (!writer.ok()) return writer.status();
  // The event file stays a temporary one until Close; on any error the writer's destructor drops
  // it, so `dir` keeps what it had.
  absl::Status s = Named(run_files::kRecords, tensorboard::AddRecordsCsv(**writer, records));
  std::map<int, int64_t> steps;
  std::string metrics;
  if (s.ok()) {
    // Empty: the run started over after running out of memory (train.oom_retries) and has not
    // ended an epoch since; as for a run that has not uploaded one.
    if (absl::Status got = fetch(run_files::kMetrics, &metrics); got.ok() && !metrics.empty()) {
      auto written_steps = tensorboard::AddMetricsJson(**writer, metrics);
      if (written_steps.ok())
        steps = *written_steps;
      else
        s = written_steps.status();
    } else if (!got.ok() && !absl::IsNotFound(got)) {
      s = Named(run_files::kMetrics, got);
    }
  }
  for (const auto& [epoch, step] : steps) {
    if (!s.ok()) break;
    const std::string name = run_files::WeightsCsv(epoch);
    std::string csv;
    if (absl::Status got = fetch(name, &csv); !got.ok()) {
      if (!absl::IsNotFound(got)) s = Named(name, got);
      continue;
    }
    s = Named(name, tensorboard::AddWeightsCsv(**writer, csv, step));
  }
  if (!s.ok()) return s;
  if (s = (*writer)->Close(); !s.ok()) return s;
  // A new file replaces the run's earlier exports (TensorBoard would show both).
  const fs::path path = (*writer)->path();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path() != path && e.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
      fs::remove(e.path(), ec);
  }
  return path.string();
}

void AddExportCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<ExportOptions>();
  CLI::App* cmd = app.add_subcommand(
      "export", "an experiment's curves as TensorBoard event files, one run per fold run");
  cmd->add_option("id", o->id, "the experiment id (exp-N)")->required();
  cmd->add_option("--tensorboard", o->dir, "the log directory (DIR/ID/trial-T/fold-K/)")
      ->required();
  cmd->add_option("--trial", o->trial, "only this trial")->check(CLI::NonNegativeNumber);
  AddServiceOptions(*cmd, &o->service, "MAL_ADDRESS", /*output=*/false);
  cmd->footer("Example: malctl export exp-3 --tensorboard tb && tensorboard --logdir tb");
  cmd->callback([o, exit_code] {
    auto c = Connect(o->service);
    *exit_code = c.ok() ? Export(*c, *o) : Fail(kUsage, std::string(c.status().message()));
  });
}

}  // namespace mal::cli
