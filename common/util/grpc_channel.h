#ifndef MAL_COMMON_UTIL_GRPC_CHANNEL_H_
#define MAL_COMMON_UTIL_GRPC_CHANNEL_H_

// gRPC settings both sides agree on (keepalive, message sizes) and the deadlines of unary calls.
// Clients ping an idle connection every 20 s and give up on it after 10 s without an answer; the
// server accepts pings every 10 s even without calls in flight, so it never answers a client's
// keepalive with GOAWAY (too_many_pings).

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server_builder.h>

namespace mal::rpc {

constexpr int kKeepaliveTimeMs = 20000;
constexpr int kKeepaliveTimeoutMs = 10000;
constexpr int kServerMinPingIntervalMs = 10000;
constexpr int kMaxMessageBytes = 64 << 20;
constexpr int kArtifactChunkBytes = 1 << 20;

// An insecure channel to `address` (loopback or a trusted network) with the agreed keepalive.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);
// Applies the agreed keepalive and message limits to a server.
void ConfigureServer(grpc::ServerBuilder& builder);
// A context whose deadline is `timeout` from now.
void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout);

}  // namespace mal::rpc

#endif  // MAL_COMMON_UTIL_GRPC_CHANNEL_H_
