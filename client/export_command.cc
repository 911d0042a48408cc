// `malctl export ID --tensorboard DIR`: an experiment's fold runs as TensorBoard event files, one
// run directory per fold run (DIR/ID/trial-T/fold-K): per-iteration scalars from records.csv
// (losses per task, normalised and raw mean AU / FE weights, learning rates), per-epoch F1 per AU
// from metrics.json, and per epoch a histogram of the FE sample weights per expression from
// weights/epoch_NNN.csv.

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "client/service_client.h"
#include "common/tensorboard/event_writer.h"
#include "common/tensorboard/run_summaries.h"
#include "common/util/run_files.h"

namespace mal::cli {

namespace {

namespace fs = std::filesystem;

struct ExportOptions {
  ServiceOptions service;
  std::string id, dir;
  std::optional<int> trial;
};

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
    std::string records;
    if (!DownloadArtifact(c, Request(ro, run_files::kRecords), &records).ok()) {
      std::cerr << "malctl: " << Where(ro) << ": nothing uploaded yet, skipped\n";
      continue;
    }
    const std::string dir =
        absl::StrCat(o.dir, "/", o.id, "/trial-", run.trial(), "/",
                     run.fold() == 0 ? "final-fit" : absl::StrCat("fold-", run.fold()));
    // A new file replaces the run's earlier export (TensorBoard would show both).
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
        fs::remove(e.path(), ec);
    }
    auto writer = tensorboard::EventWriter::Create(dir, /*atomic=*/true);
    if (!writer.ok()) return Fail(kFailed, std::string(writer.status().message()));
    absl::Status s = tensorboard::AddRecordsCsv(**writer, records);
    std::map<int, int64_t> steps;
    std::string metrics;
    if (s.ok() && DownloadArtifact(c, Request(ro, run_files::kMetrics), &metrics).ok()) {
      auto written_steps = tensorboard::AddMetricsJson(**writer, metrics);
      if (written_steps.ok())
        steps = *written_steps;
      else
        s = written_steps.status();
    }
    for (const auto& [epoch, step] : steps) {
      std::string csv;
      if (!s.ok() || !DownloadArtifact(c, Request(ro, run_files::WeightsCsv(epoch)), &csv).ok())
        continue;
      s = tensorboard::AddWeightsCsv(**writer, csv, step);
    }
    if (s.ok()) s = (*writer)->Close();
    if (!s.ok()) {
      // One run's unreadable files do not cost the others their export: it is named and left
      // out (no half-written event file), the rest are written, and the exit says it failed.
      const std::string path = (*writer)->path();
      writer->reset();
      fs::remove(path, ec);
      std::cerr << "malctl: " << Where(ro) << ": " << s.message() << "; not exported\n";
      ++failed;
      continue;
    }
    std::cout << (*writer)->path() << "\n";
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
