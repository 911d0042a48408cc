#include "common/util/server_cli.h"

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>

namespace mal::cli {

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

void AddServerSecurityOptions(CLI::App& app, rpc::ServerSecurity* security) {
  app.add_option("--tls-cert", security->cert_file, "server certificate (PEM)");
  app.add_option("--tls-key", security->key_file, "server key (PEM)");
  app.add_option("--tls-client-ca", security->client_ca_file,
                 "require client certificates signed by this CA");
  app.add_option("--token-file", security->token_file, "accepted bearer tokens, one per line");
  app.add_flag("--insecure", security->insecure, "allow plaintext on a non-loopback --listen");
}

void WaitForTerminationSignal() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

}  // namespace mal::cli
