#ifndef MAL_CLIENT_SERVICE_CLIENT_H_
#define MAL_CLIENT_SERVICE_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/output.h"
#include "common/util/grpc_channel.h"
#include "mal/v1/service.grpc.pb.h"

namespace CLI {
class App;
}

namespace mal::cli {

// The event kinds a watch can ask for (docs/service.md), for --kinds: state, point, weights,
// epoch, restart, fold_result, trial_result, end.
const std::vector<std::string>& EventKinds();

// malctl's exit codes (docs/service.md): 0 success; 1 failed, or the followed or awaited experiment
// failed or was cancelled; 2 usage or invalid spec; 3 interrupted (SIGINT, SIGTERM); 4 server
// unreachable or the call unauthenticated; 5 (wait) still running at --timeout.
inline constexpr int kOk = 0, kFailed = 1, kUsage = 2, kInterrupted = 3, kUnavailable = 4,
                     kStillRunning = 5;
inline constexpr std::chrono::milliseconds kRpcTimeout{15000};
// watch and wait ride out coordinator restarts this long, s.
inline constexpr int kReconnectSeconds = 120;
// How long `malctl submit` resends a submission the coordinator did not answer (unreachable or
// restarting), s.
inline constexpr int kSubmitRetrySeconds = 30;

// The options every service command takes: where the coordinator is, how to reach it, how to
// print. Flags override the environment (MAL_ADDRESS, MAL_TLS_CA, MAL_TLS_CERT, MAL_TLS_KEY,
// MAL_TOKEN).
struct ServiceOptions {
  std::string address = "127.0.0.1:7070";
  std::string output = "table";  // table (or "text") | json | yaml
  std::string token_file;
  rpc::ClientSecurity security;  // token filled by Connect
};

// Adds --address (falling back to the variable `address_env`), -o/--output when `output`,
// --tls-ca, --tls-cert, --tls-key, --token-file to `command`.
void AddServiceOptions(CLI::App& command, ServiceOptions* options,
                       const char* address_env = "MAL_ADDRESS", bool output = true);

// Reads the token and the TLS files and makes a channel to options.address (no call yet). Errors
// name the file that could not be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(ServiceOptions options);

// A connected client of the Coordinator service.
struct ServiceClient {
  std::string output = "table";  // table | json | yaml
  bool structured() const { return output == "json" || output == "yaml"; }
  bool json = false;  // output == "json"
  bool live = false;  // watch / --follow: the live view on a terminal (client/live_view.h)
  std::unique_ptr<v1::Coordinator::Stub> stub;
  std::unique_ptr<v1::ModelRegistry::Stub> registry;  // the same channel's ModelRegistry service
};

// Reads the token and the TLS files and makes the channel. Errors (INVALID_ARGUMENT, NOT_FOUND)
// name the file that could not be read; no call is made yet.
absl::StatusOr<ServiceClient> Connect(ServiceOptions options);

// One unary call of `stub` with malctl's deadline (kRpcTimeout), e.g.
//   Call(c.stub.get(), &v1::Coordinator::Stub::ListWorkers, request, &response).
template <typename Stub, typename Request, typename Response>
grpc::Status Call(Stub* stub,
                  grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                  const Request& request, Response* response) {
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kRpcTimeout);
  return (stub->*method)(&ctx, request, response);
}
// GetExperiment and GetResults of experiment `id`.
grpc::Status GetExperiment(const ServiceClient& client, const std::string& id,
                           v1::ExperimentInfo* info);
grpc::Status GetResults(const ServiceClient& client, const std::string& id,
                        v1::ResultsResponse* results);

// Prints "malctl: MESSAGE" to stderr and returns `code`.
int Fail(int code, const std::string& message);
// An RPC's failure as an exit code: kUnavailable (unreachable, with a hint about --address, or
// UNAUTHENTICATED / PERMISSION_DENIED, with a hint about the token) or kFailed.
int RpcFail(const grpc::Status& status);
// State names without their enum prefix: "RUNNING", "SUCCEEDED".
std::string Name(v1::ExperimentState state);
std::string Name(v1::RunState state);
// A Unix time in ms as local "YYYY-MM-DD HH:MM:SS".
std::string Time(int64_t unix_ms);

// A fold run's short label in watch output: "t0/f2", "t0/all" for the final fit.
std::string RunLabel(int trial, int fold);
// One event as one line of text, as `malctl watch` prints it.
std::string FormatEvent(const v1::Event& event);
// Streams the events of experiment `id` from `from_seq` (>= 1) to stdout until its End event;
// reconnects from the next seq when the stream breaks or the coordinator ends it for falling
// behind, for up to kReconnectSeconds without contact. `kinds` filters (empty: all). Returns
// kOk when the experiment succeeded, kFailed when it failed or was cancelled, or RpcFail's code.
int Follow(const ServiceClient& client, const std::string& id, int64_t from_seq,
           const std::vector<std::string>& kinds);

// Whether watch / submit --follow show the live view: a table on a terminal, no --plain, every
// event kind.
bool LiveWanted(const ServiceClient& client, bool plain, const std::vector<std::string>& kinds);

// Adds `watch` to malctl's command tree.
void AddWatchCommand(CLI::App& app, int* exit_code);
// One fold run of an experiment, as the commands that read its files take it.
struct RunOptions {
  ServiceOptions service;
  std::string id;
  std::optional<int> trial, fold;
};
// Fills in the trial (the best one, else 0) and the fold (the trial's first cross-validation fold,
// else the final fit) the user left out, from the experiment's results. kOk or an exit code.
int ChooseRun(const ServiceClient& c, RunOptions& o);
// The same from results already fetched (no call).
int ChooseRun(const v1::ResultsResponse& results, RunOptions& o);
// The epochs that have a per-sample weight CSV (weights/epoch_NNN.csv) in `list`, ascending.
std::vector<int> WeightEpochs(const v1::ListArtifactsResponse& list);
// The request for artifact `name` of that run (trial and fold chosen).
v1::ArtifactRequest Request(const RunOptions& o, const std::string& name);
// "exp-3 trial 0 fold 2" ("final fit" for fold 0).
std::string Where(const RunOptions& o);
// A whole artifact in memory, checked against its SHA-256 (DATA_LOSS otherwise).
grpc::Status DownloadArtifact(const ServiceClient& c, const v1::ArtifactRequest& request,
                              std::string* out);

// Adds `results` (one experiment in full, or several side by side; client/results_command.cc).
void AddResultsCommand(CLI::App& app, int* exit_code);
// Adds `export --tensorboard` (client/export_command.cc).
void AddExportCommand(CLI::App& app, int* exit_code);
// Adds `plot` (the paper's figures with gnuplot; client/plot_command.cc).
void AddPlotCommand(CLI::App& app, int* exit_code);
// Adds `weights` and `logs` (a fold run's files through the Coordinator service).
void AddArtifactCommands(CLI::App& app, int* exit_code);
// Adds `models` (ls, describe, alias set|rm, rm, pull: the coordinator's model registry).
void AddModelsCommand(CLI::App& app, int* exit_code);

}  // namespace mal::cli

#endif  // MAL_CLIENT_SERVICE_CLIENT_H_
