// mal-worker: the worker daemon (`--coordinator ...`), which runs each fold run it takes as a
// child `mal-worker train --events-fd 3`; `train` also trains a fold standalone, and `bench`
// measures the engine.

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <atomic>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/util/args.h"
#include "common/util/grpc_channel.h"
#include "common/spec/spec.h"
#include "common/util/logging.h"
#include "worker/engine/bench.h"
#include "worker/engine/trainer.h"
#include "worker/daemon/daemon.h"
#include "worker/daemon/event_pipe.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop = true; }

int Fail(int code, const std::string& message) {
  std::cerr << "mal-worker: " << message << "\n";
  return code;
}

int Train(const std::vector<std::string>& argv) {
  auto args = mal::cli::Args::Parse(argv, {"file", "fold", "out", "threads", "device", "events-fd"},
                                    {"resume", "help", "quiet"}, {{"f", "file"}});
  if (!args.ok()) return Fail(2, std::string(args.status().message()));
  if (args->Flag("help") || !args->Has("file") || !args->Has("out")) {
    std::cerr << "usage: mal-worker train -f SPEC.yaml [--fold K (0: all subjects)] --out DIR [--resume] "
                 "[--threads N] [--device cpu|cuda:N] [--quiet]\n";
    return args->Flag("help") ? 0 : 2;
  }
  auto spec = mal::LoadSpecFile(args->Get("file"));
  if (!spec.ok()) return Fail(2, std::string(spec.status().message()));
  if (args->Has("threads")) {
    auto threads = args->GetInt("threads", 0);
    if (!threads.ok()) return Fail(2, std::string(threads.status().message()));
    spec->mutable_train()->set_threads(static_cast<int>(*threads));
  }
  if (args->Has("device")) spec->mutable_train()->set_device(args->Get("device"));
  auto fold = args->GetInt("fold", 1);
  if (!fold.ok()) return Fail(2, std::string(fold.status().message()));

  mal::engine::TrainOptions options;
  options.spec = *spec;
  options.fold = static_cast<int>(*fold);
  options.out_dir = args->Get("out");
  options.resume = args->Flag("resume");
  options.progress = !args->Flag("quiet");
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  options.should_stop = [] { return g_stop.load(); };
  // Under the worker daemon: every record also goes to the daemon as a JSON line.
  std::unique_ptr<mal::worker::PipeSink> sink;
  if (args->Has("events-fd")) {
    auto fd = args->GetInt("events-fd", -1);
    if (!fd.ok() || *fd < 0) return Fail(2, "--events-fd: needs an open file descriptor number");
    std::signal(SIGPIPE, SIG_IGN);
    sink = std::make_unique<mal::worker::PipeSink>(static_cast<int>(*fd));
    options.sink = sink.get();
  }
  auto result = mal::engine::Train(options);
  if (sink) sink->Finish(result.status());
  if (!result.ok()) {
    const bool stopped = result.status().code() == absl::StatusCode::kCancelled;
    std::cerr << "mal-worker: " << (stopped ? "" : "training failed: ") << result.status().message()
              << (stopped ? " (continue with --resume)" : "") << "\n";
    return stopped ? 130 : 1;
  }
  if (options.fold == 0) {
    std::cout << "final fit on all subjects: validation mean F1 " << result->final_epoch.val_mean_f1;
  } else {
    std::cout << "fold " << options.fold << ": test mean F1 " << result->final_epoch.test_mean_f1;
  }
  std::cout << " after " << result->iterations << " iterations; model " << result->model_path << ", metadata "
            << result->metadata_path << "\n";
  return 0;
}

int Bench(const std::vector<std::string>& argv) {
  auto args = mal::cli::Args::Parse(
      argv, {"backbone", "input", "batch", "val-batch", "iterations", "warmup", "threads", "device", "output"},
      {"help", "bf16", "channels-last"}, {{"o", "output"}});
  if (!args.ok()) return Fail(2, std::string(args.status().message()));
  if (args->Flag("help")) {
    std::cerr << "usage: mal-worker bench [--backbone resnet18] [--input 112] [--batch 16] "
                 "[--val-batch 16] [--iterations 5] [--warmup 2] [--threads N] [--device cpu] "
                 "[--bf16] [--channels-last] [-o json]\n";
    return 0;
  }
  mal::engine::BenchOptions o;
  o.bf16 = args->Flag("bf16");
  o.channels_last = args->Flag("channels-last");
  o.backbone = args->Get("backbone", o.backbone);
  o.device = args->Get("device", o.device);
  if (absl::Status s = args->ReadInts({{"input", &o.input}, {"batch", &o.batch},
                                       {"val-batch", &o.val_batch}, {"iterations", &o.iterations},
                                       {"warmup", &o.warmup}, {"threads", &o.threads}});
      !s.ok()) {
    return Fail(2, std::string(s.message()));
  }
  if (o.backbone != "small_cnn" && o.backbone != "resnet18" && o.backbone != "resnet34") {
    return Fail(2, "--backbone: small_cnn, resnet18 or resnet34");
  }
  if (o.iterations < 1 || o.batch < 1 || o.val_batch < 1 || o.input < 32) {
    return Fail(2, "--iterations, --batch, --val-batch must be >= 1 and --input >= 32");
  }
  const std::string output = args->Get("output", "text");
  auto report = mal::engine::RunBench(o);
  if (!report.ok()) return Fail(1, std::string(report.status().message()));
  std::cout << mal::engine::FormatBench(*report, output == "json");
  for (const auto& r : report->results) {
    if (!r.error.empty()) return 1;  // the table says which method failed and why
  }
  return 0;
}

// mal-worker --coordinator HOST:PORT --slots N --work-dir DIR: the daemon.
int Daemon(const std::vector<std::string>& argv) {
  auto args = mal::cli::Args::Parse(argv,
                                    {"coordinator", "slots", "work-dir", "name", "devices", "threads",
                                     "upload-every-s", "stop-grace-s", "listen", "engine", "tls-ca", "tls-cert",
                                     "tls-key", "token-file"},
                                    {"help"});
  if (!args.ok()) return Fail(2, std::string(args.status().message()));
  if (args->Flag("help") || !args->Has("coordinator") || !args->Has("work-dir")) {
    std::cerr << "usage: mal-worker --coordinator HOST:PORT --work-dir DIR [--slots N] [--name NAME] "
                 "[--devices cpu|cuda:0,cuda:1 (default slots: one per device)] [--threads N] [--upload-every-s 15] [--stop-grace-s 10] "
                 "[--listen HOST:PORT (health)] [--engine PATH (default: this binary)]\n"
                 "       [--tls-ca PEM [--tls-cert PEM --tls-key PEM]] [--token-file FILE (or MAL_TOKEN)]\n";
    return args->Flag("help") ? 0 : 2;
  }
  mal::worker::DaemonOptions o;
  o.coordinator = args->Get("coordinator");
  o.work_dir = args->Get("work-dir");
  o.name = args->Get("name");
  o.listen = args->Get("listen");
  o.engine = args->Get("engine");  // a wrapper (nice, numactl, a container) or a test double
  o.tls_ca = args->Get("tls-ca");
  o.tls_cert = args->Get("tls-cert");
  o.tls_key = args->Get("tls-key");
  auto token = mal::rpc::LoadToken(args->Get("token-file"), "MAL_TOKEN");
  if (!token.ok()) return Fail(2, std::string(token.status().message()));
  o.token = *token;
  if (args->Has("devices")) {
    o.devices = absl::StrSplit(args->Get("devices"), ',', absl::SkipEmpty());
    // One run per listed device by default: slot i trains on devices[i % size].
    if (!args->Has("slots")) o.slots = static_cast<int>(o.devices.size());
  }
  if (absl::Status s = args->ReadInts({{"slots", &o.slots}, {"threads", &o.threads},
                                       {"upload-every-s", &o.upload_every_s}, {"stop-grace-s", &o.stop_grace_s}});
      !s.ok()) {
    return Fail(2, std::string(s.message()));
  }
  if (o.slots < 1 || o.devices.empty()) return Fail(2, "--slots must be >= 1 and --devices not empty");
  bool any_gpu = false;
  for (const std::string& d : o.devices) {
    const bool gpu = d == "cuda" || (absl::StartsWith(d, "cuda:") && d.size() > 5 && d.size() <= 8 &&
                                     std::all_of(d.begin() + 5, d.end(), absl::ascii_isdigit));
    if (d != "cpu" && !gpu) return Fail(2, "--devices: \"" + d + "\" is not cpu, cuda or cuda:N");
    any_gpu = any_gpu || gpu;
  }
  if (any_gpu && o.slots > static_cast<int>(o.devices.size())) {
    return Fail(2, absl::StrCat("--slots ", o.slots, " is more than the ", o.devices.size(),
                                " devices of --devices: one run per GPU at a time (list a GPU twice to "
                                "let two runs share it)"));
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  return mal::worker::RunDaemon(o, &g_stop);
}

// glibc hands large blocks back to the kernel on free and faults them in again on the next
// allocation: with tensors of a few MB allocated every step that cost a third of the CPU time
// (measured with mal-worker bench). Keep them in the heap instead.
void TuneMalloc() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace

int main(int argc, char** argv) {
  TuneMalloc();
  mal::InitLogging(argv[0]);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "train") return Train({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "bench") return Bench({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "daemon") return Daemon({args.begin() + 1, args.end()});
  if (!args.empty() && args[0].rfind("--coordinator", 0) == 0) return Daemon(args);
  std::cerr << "usage: mal-worker --coordinator HOST:PORT --work-dir DIR [--slots N]   (the daemon)\n"
               "       mal-worker train -f SPEC.yaml [--fold K] --out DIR [--resume]\n"
               "       mal-worker bench [--backbone resnet18] [--input 112] [--batch 16] [-o json]\n";
  return args.empty() || args[0] == "--help" ? (args.empty() ? 2 : 0) : 2;
}
