#ifndef MAL_CLIENT_SERVICE_CLIENT_H_
#define MAL_CLIENT_SERVICE_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/util/grpc_channel.h"
#include "mal/v1/service.grpc.pb.h"

namespace CLI {
class App;
}

namespace mal::cli {

// Exit codes of the service commands: 0 ok, 1 failed (or the experiment failed), 2 usage,
// 3 coordinator unreachable, 4 (wait) still running at the timeout.
inline constexpr int kOk = 0, kFailed = 1, kUsage = 2, kUnavailable = 3, kStillRunning = 4;
inline constexpr std::chrono::milliseconds kRpcTimeout{15000};
// watch and wait ride out coordinator restarts this long, s.
inline constexpr int kReconnectSeconds = 120;

// The options every service command takes: where the coordinator is, how to reach it, how to
// print. Flags override the environment (MAL_ADDRESS, MAL_TLS_CA, MAL_TLS_CERT, MAL_TLS_KEY,
// MAL_TOKEN).
struct ServiceOptions {
  std::string address = "127.0.0.1:7070";
  std::string output = "text";  // text | json
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
  bool json = false;
  std::unique_ptr<v1::Coordinator::Stub> stub;
  std::unique_ptr<v1::ModelRegistry::Stub> registry;  // the same channel's ModelRegistry service
};

// Reads the token and the TLS files and makes the channel. Errors (INVALID_ARGUMENT, NOT_FOUND)
// name the file that could not be read; no call is made yet.
absl::StatusOr<ServiceClient> Connect(ServiceOptions options);

// Prints "malctl: MESSAGE" to stderr and returns `code`.
int Fail(int code, const std::string& message);
// An RPC's failure as an exit code: kUnavailable (with a hint about --address) or kFailed.
int RpcFail(const grpc::Status& status);
// A proto as JSON with the .proto field names; one line unless `pretty`.
std::string Json(const google::protobuf::Message& message, bool pretty = true);
// State names without their enum prefix: "RUNNING", "SUCCEEDED".
std::string Name(v1::ExperimentState state);
std::string Name(v1::RunState state);
// A Unix time in ms as local "YYYY-MM-DD HH:MM:SS".
std::string Time(int64_t unix_ms);

// One event as one line of text, as `malctl watch` prints it.
std::string FormatEvent(const v1::Event& event);
// Streams the events of experiment `id` from `from_seq` (>= 1) to stdout until its End event;
// reconnects from the next seq when the stream breaks or the coordinator ends it for falling
// behind, for up to kReconnectSeconds without contact. `kinds` filters (empty: all). Returns
// kOk when the experiment succeeded, kFailed when it failed or was cancelled, or RpcFail's code.
int Follow(const ServiceClient& client, const std::string& id, int64_t from_seq,
           const std::vector<std::string>& kinds);

// Adds `watch` to malctl's command tree.
void AddWatchCommand(CLI::App& app, int* exit_code);
// Adds `models` (ls, describe, alias set|rm, rm, pull: the coordinator's model registry).
void AddModelsCommand(CLI::App& app, int* exit_code);

}  // namespace mal::cli

#endif  // MAL_CLIENT_SERVICE_CLIENT_H_
