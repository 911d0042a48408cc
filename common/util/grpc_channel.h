#ifndef MAL_COMMON_UTIL_GRPC_CHANNEL_H_
#define MAL_COMMON_UTIL_GRPC_CHANNEL_H_

// gRPC settings both sides agree on (keepalive, message sizes) and the deadlines of unary calls.
// Clients ping an idle connection every 20 s and give up on it after 10 s without an answer; the
// server accepts pings every 10 s even without calls in flight, so it never answers a client's
// keepalive with GOAWAY (too_many_pings).

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mal::rpc {

constexpr int kKeepaliveTimeMs = 20000;
constexpr int kKeepaliveTimeoutMs = 10000;
constexpr int kServerMinPingIntervalMs = 10000;
constexpr int kMaxMessageBytes = 64 << 20;
constexpr int kArtifactChunkBytes = 1 << 20;

// How a client connects: TLS when `ca_file` is set (with a client certificate for mutual TLS
// when `cert_file` and `key_file` are), and a bearer token sent with every call when `token` is
// set (over TLS or, on loopback, plaintext).
struct ClientSecurity {
  std::string ca_file, cert_file, key_file;
  std::string token;
};
// Reads the token from `token_file` (first line) when given, else from the environment variable
// `token_env` when set; errors name the file.
absl::StatusOr<std::string> LoadToken(const std::string& token_file, const char* token_env);

// A channel to `address` with the agreed keepalive; plaintext unless `security` asks for TLS.
// Files that cannot be read are an error naming them.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeSecureChannel(const std::string& address,
                                                                 const ClientSecurity& security);
// A plaintext channel (loopback, tests).
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

// Called first in main, before any gRPC use. gRPC learns how a connection attempt ended only while
// a call polls the channel or when its backup poller runs
// (GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS, 5000 ms by default): a worker daemon between
// heartbeats, whose fail-fast calls do not wait on a reconnecting channel, learnt of a restarted
// coordinator up to 5 s late (docs/service.md, "Durability and failures"). Sets it to 100 ms unless
// the environment sets it already.
void InitClientPolling();

// How a server listens: TLS with `cert_file` + `key_file`, requiring client certificates signed by
// `client_ca_file` when set (mutual TLS); bearer tokens from `token_file` (one per line) required
// on every call of the mal services when set. Without TLS, only loopback addresses are accepted
// unless `insecure` says the network is trusted.
struct ServerSecurity {
  std::string cert_file, key_file, client_ca_file;
  std::string token_file;
  bool insecure = false;
};
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const std::string& address, const ServerSecurity& security);
// True when every address `address` (HOST:PORT, [V6]:PORT or unix:PATH) resolves to is in
// 127.0.0.0/8 or ::1 (a name is resolved: "127.example.com" is not loopback unless it resolves
// there); an empty host (every interface) or a name that does not resolve is not.
bool IsLoopbackAddress(const std::string& address);
// What a bearer token may do. user: submit, watch, results, registry reads and aliases,
// predict; worker: the WorkerGateway API only; admin: everything a user may, and deleting
// experiments and model versions. A role is a bit; a token may hold several.
enum class Role : unsigned { kUser = 1, kWorker = 2, kAdmin = 4 };
// "user", "worker" or "admin".
const char* RoleName(Role role);

// The accepted tokens and their roles. Empty: no token required (every call has every role).
struct TokenTable {
  struct Entry {
    std::string token;
    unsigned roles = 0;  // bits of Role
    int line = 0;        // line in the token file, for messages
  };
  std::vector<Entry> entries;
  // Lines without a role (the flat format before roles): they hold every role (LoadTokens warns).
  int legacy_lines = 0;
  bool empty() const { return entries.empty(); }
};
// Reads a token file: one token per line, `ROLE[,ROLE...] TOKEN` (roles user, worker, admin),
// `#` comments (whole lines, or after a space) and blank lines ignored, a UTF-8 byte order mark
// skipped. A line with the token alone (the format before roles) holds every role;
// `legacy_lines` counts them, and a warning names how many. Errors (INVALID_ARGUMENT) name the file
// and line: an unknown role, a role without a token ("user" alone would otherwise be a token
// holding every role), more than two fields, a token with a control character or over 1024
// characters, a token given twice, a file without tokens; an empty `token_file` gives an empty
// table.
absl::StatusOr<TokenTable> LoadTokens(const std::string& token_file);
// OK when the table is empty, or the call carries `authorization: Bearer <token>` for a token
// of the table holding `role` (admin also passes for user). UNAUTHENTICATED without a token or
// with one not in the table; PERMISSION_DENIED for a known token without the role, naming the
// role needed and the roles held. Tokens are compared in constant time (every entry, no early
// exit).
// `token_line`, when given, receives the matched entry's line in the token file (0 when the
// table is empty), an identity for per-client limits.
grpc::Status CheckToken(const grpc::ServerContext& context, const TokenTable& tokens, Role role,
                        int* token_line = nullptr);

// Applies the agreed keepalive and message limits to a server.
void ConfigureServer(grpc::ServerBuilder& builder);
// A context whose deadline is `timeout` from now.
void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout);

}  // namespace mal::rpc

#endif  // MAL_COMMON_UTIL_GRPC_CHANNEL_H_
