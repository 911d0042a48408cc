#ifndef MAL_WORKER_COMMANDS_H_
#define MAL_WORKER_COMMANDS_H_

#include <atomic>
#include <functional>

namespace CLI {
class App;
}

namespace mal::worker {

// mal-worker's command line (CLI11). The commands write their exit code to `*exit_code`: 0 ok,
// 1 failed, 2 bad options (the parser's own errors are 2 too), 130 `train` stopped by a signal.

// Set by SIGINT / SIGTERM once InstallStopSignals ran; train checkpoints and stops, the daemon
// hands its runs back and stops.
std::atomic<bool>& StopRequested();
void InstallStopSignals();

// `mal-worker train`: one fold run standalone or, with --events-fd, as the daemon's child.
void AddTrainCommand(CLI::App& app, int* exit_code);
// `mal-worker bench`: ms per iteration and peak memory of STL, MTL and the MAL modes.
void AddBenchCommand(CLI::App& app, int* exit_code);
// `mal-worker predict`: AU inference with a run directory's model in this process.
void AddPredictCommand(CLI::App& app, int* exit_code);
// `mal-worker export` and `mal-worker import`: a model to and from a PyTorch state dict.
void AddExportCommands(CLI::App& app, int* exit_code);
// The daemon's options (--coordinator, --work-dir, ...) on the top-level app: `mal-worker
// --coordinator HOST:PORT --work-dir DIR`. Returns what runs the daemon once parsed (its exit
// code).
std::function<int()> AddDaemonOptions(CLI::App& app);

}  // namespace mal::worker

#endif  // MAL_WORKER_COMMANDS_H_
