#ifndef MAL_COMMON_UTIL_SERVER_CLI_H_
#define MAL_COMMON_UTIL_SERVER_CLI_H_

#include "common/util/grpc_channel.h"

namespace CLI {
class App;
}

namespace mal::cli {

// What the servers' command lines share (mal-coordinator, mal-serve).

// Adds --tls-cert, --tls-key, --tls-client-ca, --token-file and --insecure, filling `security`.
void AddServerSecurityOptions(CLI::App& app, rpc::ServerSecurity* security);

// Ignores SIGPIPE, then blocks until SIGINT or SIGTERM arrives (the caller then shuts down).
void WaitForTerminationSignal();

}  // namespace mal::cli

#endif  // MAL_COMMON_UTIL_SERVER_CLI_H_
