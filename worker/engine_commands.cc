// `mal-worker train`, `bench` and `predict`: the engine's commands.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "common/image/face_detector.h"
#include "common/predict/predict_command.h"
#include "common/spec/backbones.h"
#include "common/spec/spec.h"
#include "server/serve/au_detection.h"
#include "worker/commands.h"
#include "worker/daemon/event_pipe.h"
#include "worker/engine/au_model.h"
#include "worker/engine/bench.h"
#include "worker/engine/trainer.h"

namespace mal::worker {

namespace {

int Fail(int code, const std::string& message) {
  std::cerr << "mal-worker: " << message << "\n";
  return code;
}

struct TrainArgs {
  std::string file, out, device;
  int fold = 1, trial = 0;
  std::optional<int> threads, events_fd;
  bool resume = false, quiet = false;
};

int Train(const TrainArgs& a) {
  auto spec = LoadSpecFile(a.file);
  if (!spec.ok()) return Fail(2, std::string(spec.status().message()));
  if (a.threads) spec->mutable_train()->set_threads(*a.threads);
  if (!a.device.empty()) spec->mutable_train()->set_device(a.device);

  engine::TrainOptions options;
  options.spec = *spec;
  options.fold = a.fold;
  options.trial = a.trial;
  options.out_dir = a.out;
  options.resume = a.resume;
  options.progress = !a.quiet;
  InstallStopSignals();
  options.should_stop = [] { return StopRequested().load(); };
  // Under the worker daemon: every record also goes to the daemon as a JSON line.
  std::unique_ptr<PipeSink> sink;
  if (a.events_fd) {
    std::signal(SIGPIPE, SIG_IGN);
    sink = std::make_unique<PipeSink>(*a.events_fd);
    options.sink = sink.get();
    // Between records too (evaluation, data generation): the daemon's stall watchdog.
    sink->StartProgressReports(std::chrono::seconds(1));
  }
  auto result = engine::Train(options);
  if (sink) sink->Finish(result.status(), result.ok() ? &result->final_epoch : nullptr);
  if (!result.ok()) {
    const bool stopped = result.status().code() == absl::StatusCode::kCancelled;
    std::cerr << "mal-worker: " << (stopped ? "" : "training failed: ") << result.status().message()
              << (stopped ? " (continue with --resume)" : "") << "\n";
    return stopped ? 130 : 1;
  }
  if (options.fold == 0) {
    std::cout << "final fit on all subjects: validation mean F1 "
              << result->final_epoch.val_mean_f1;
  } else {
    std::cout << "fold " << options.fold << ": test mean F1 " << result->final_epoch.test_mean_f1;
  }
  std::cout << " after " << result->iterations << " iterations; model " << result->model_path
            << ", metadata " << result->metadata_path << "\n";
  if (result->oom_halvings > 0) {
    std::cout << "the batches were halved " << result->oom_halvings
              << " time(s) after running out of memory (train.oom_retries); model.json "
                 "records the ones trained with\n";
  }
  return 0;
}

int Bench(const engine::BenchOptions& o, const std::string& output) {
  auto report = engine::RunBench(o);
  if (!report.ok()) return Fail(1, std::string(report.status().message()));
  std::cout << engine::FormatBench(*report, output == "json");
  for (const auto& r : report->results) {
    if (!r.error.empty()) return 1;  // the table says which method failed and why
  }
  return 0;
}

}  // namespace

void AddTrainCommand(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd =
      app.add_subcommand("train", "train one fold run (checkpoints, logs, the model in --out)");
  cmd->add_option("-f,--file", a->file, "the experiment spec (YAML, or the daemon's spec.pb)")
      ->required();
  cmd->add_option("--fold", a->fold, "the fold to train, 1..K; 0: the final fit on all subjects")
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--trial", a->trial,
                  "the trial of the experiment this run belongs to (recorded in model.json)")
      ->check(CLI::Range(0, 1000000));
  cmd->add_option("--out", a->out, "the run directory")->required();
  cmd->add_flag("--resume", a->resume, "continue from --out's checkpoint.pt");
  cmd->add_option("--threads", a->threads,
                  "intra-op threads (overrides train.threads; 0: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (overrides train.device)");
  cmd->add_flag("--quiet", a->quiet, "no per-iteration progress (one line per epoch stays)");
  cmd->add_option("--events-fd", a->events_fd,
                  "under the daemon: write every record as a JSON line to this fd")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([a, exit_code] { *exit_code = Train(*a); });
}

void AddBenchCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<engine::BenchOptions>();
  auto output = std::make_shared<std::string>("text");
  CLI::App* cmd =
      app.add_subcommand("bench", "ms per iteration and peak memory of STL, MTL and the MAL modes");
  cmd->add_option("--backbone", o->backbone)->check(CLI::IsMember(Backbones()));
  cmd->add_option("--input", o->input, "image side, px")->check(CLI::Range(32, 1024));
  cmd->add_option("--batch", o->batch, "AU and FE batch each")->check(CLI::Range(1, 100000));
  cmd->add_option("--val-batch", o->val_batch, "meta validation batch")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--iterations", o->iterations, "timed iterations per method")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--warmup", o->warmup, "untimed iterations first")->check(CLI::Range(0, 100000));
  cmd->add_option("--threads", o->threads, "0: all cores")->check(CLI::Range(0, 1024));
  cmd->add_option("--device", o->device, "cpu, cuda or cuda:N");
  cmd->add_option("--methods", o->methods, "only these, e.g. stl,mal_exact (default: all)")
      ->delimiter(',');
  cmd->add_flag("--bf16", o->bf16,
                "bf16 autocast (and the meta-gradients' cosine to float32 ones)");
  cmd->add_flag("--channels-last", o->channels_last, "parameters and images in NHWC");
  cmd->add_option("-o,--output", *output, "text or json")->check(CLI::IsMember({"text", "json"}));
  cmd->callback([o, output, exit_code] { *exit_code = Bench(*o, *output); });
}

void AddPredictCommand(CLI::App& app, int* exit_code) {
  struct Options {
    predict::PredictCommandOptions predict;
    std::string device = "cpu", cascade;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "predict",
      "AUs of the faces in images, folders, videos or a camera, in this process (no server)");
  cmd->add_option("--model-dir", o->predict.predict.model,
                  "a run directory holding model.json and model.pt")
      ->required();
  cmd->add_option("--device", o->device, "cpu, cuda or cuda:N");
  cmd->add_option("--face-cascade", o->cascade,
                  "an OpenCV cascade file (default: opencv-data's frontal face)");
  predict::AddPredictOptions(*cmd, &o->predict);
  cmd->callback([o, exit_code] {
    auto model = engine::AuModel::Load(o->predict.predict.model, o->device);
    if (!model.ok()) {
      *exit_code = Fail(2, std::string(model.status().message()));
      return;
    }
    std::unique_ptr<image::FaceDetector> detector;
    if (!o->predict.predict.face_crop) {
      auto loaded = image::FaceDetector::Load(o->cascade);
      if (!loaded.ok()) {
        *exit_code = Fail(2, std::string(loaded.status().message()));
        return;
      }
      detector = std::move(*loaded);
    }
    const engine::AuModel* m = model->get();
    const image::FaceDetector* d = detector.get();
    *exit_code = predict::RunPredictCommand(
        o->predict,
        [m, d](const v1::DetectActionUnitsRequest& r) {
          return serve::DetectActionUnits(*m, d, r);
        },
        "mal-worker");
  });
}

void AddExportCommands(CLI::App& app, int* exit_code) {
  auto model_dir = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("export",
                                     "a model as a PyTorch state dict (torch.load) with its "
                                     "metadata JSON beside it (docs/serving.md)");
  cmd->add_option("--model-dir", *model_dir, "a run directory holding model.json and model.pt")
      ->required();
  cmd->add_option("--out", *out,
                  "the state dict file, e.g. model.pth (the metadata goes beside it, as NAME.json)")
      ->required();
  cmd->callback([model_dir, out, exit_code] {
    auto model = engine::AuModel::Load(*model_dir);
    if (!model.ok()) {
      *exit_code = Fail(2, std::string(model.status().message()));
      return;
    }
    absl::Status s = (*model)->ExportStateDict(*out);
    *exit_code = s.ok() ? 0 : Fail(1, std::string(s.message()));
    if (s.ok())
      std::cout << "wrote " << *out << " and "
                << std::filesystem::path(*out).replace_extension(".json").string() << "\n";
  });

  auto state_dict = std::make_shared<std::string>();
  auto metadata = std::make_shared<std::string>();
  auto into = std::make_shared<std::string>();
  CLI::App* import_cmd = app.add_subcommand(
      "import", "a PyTorch state dict and its metadata JSON as a model directory mal-serve serves");
  import_cmd->add_option("--state-dict", *state_dict, "the file torch.save wrote (export's naming)")
      ->required();
  import_cmd->add_option("--metadata", *metadata,
                         "its metadata JSON (default: the state dict's name with .json)");
  import_cmd->add_option("--out", *into, "the model directory to write (model.pt, model.json)")
      ->required();
  import_cmd->callback([state_dict, metadata, into, exit_code] {
    const std::string meta =
        metadata->empty() ? std::filesystem::path(*state_dict).replace_extension(".json").string()
                          : *metadata;
    absl::Status s = engine::AuModel::ImportStateDict(*state_dict, meta, *into);
    const bool bad_input =
        s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound;
    *exit_code = s.ok() ? 0 : Fail(bad_input ? 2 : 1, std::string(s.message()));
    if (s.ok()) std::cout << "wrote " << *into << " (model.pt, model.json)\n";
  });
}

}  // namespace mal::worker
