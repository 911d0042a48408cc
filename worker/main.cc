// mal-worker: the worker daemon (`--coordinator ...`), which runs each fold run it takes as a
// child `mal-worker train --events-fd 3`; `train` also trains a fold standalone, and `bench`
// measures the engine. `mal-worker --help` lists the options.

#include <malloc.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <string>
#include <vector>

#include "common/util/cli.h"
#include "common/util/grpc_channel.h"
#include "common/util/logging.h"
#include "worker/commands.h"

namespace mal::worker {

std::atomic<bool>& StopRequested() {
  static std::atomic<bool> stop{false};
  return stop;
}

namespace {
void OnSignal(int) { StopRequested() = true; }
}  // namespace

void InstallStopSignals() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
}

}  // namespace mal::worker

namespace {

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
  // A write past `ulimit -f` fails with EFBIG, an error naming the file, instead of SIGXFSZ
  // killing the process without a word (a coordinator under a limit crash-looped so).
  std::signal(SIGXFSZ, SIG_IGN);
  mal::rpc::InitClientPolling();  // before any gRPC use
  CLI::App app(
      "mal-worker: with --coordinator, the worker daemon, which takes fold runs from the "
      "coordinator and runs each as a child `mal-worker train`; `train` trains one fold run "
      "standalone; `bench` measures the engine; `predict` detects AUs with a trained model; "
      "`export` and `import` convert models to and from PyTorch state dicts.",
      "mal-worker");
  app.option_defaults()->always_capture_default();
  int exit_code = 0;
  mal::worker::AddTrainCommand(app, &exit_code);
  mal::worker::AddBenchCommand(app, &exit_code);
  mal::worker::AddPredictCommand(app, &exit_code);
  mal::worker::AddExportCommands(app, &exit_code);
  auto daemon = mal::worker::AddDaemonOptions(app);
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  return app.get_subcommands().empty() ? daemon() : exit_code;
}
