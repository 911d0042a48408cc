// mal-serve: AU inference over gRPC (the Inference service, proto/mal/v1/inference.proto) for the
// models in a directory or a coordinator's model registry. `mal-serve --help` lists the options;
// docs/serving.md describes them.

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "common/util/cli.h"
#include "common/util/grpc_channel.h"
#include "common/util/logging.h"
#include "common/util/server_cli.h"
#include "common/util/systemd_notify.h"
#include "server/serve/serve_server.h"

namespace {

// $XDG_CACHE_HOME/mal-serve, else ~/.cache/mal-serve, else ./mal-serve-cache.
std::string DefaultCacheDir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return std::string(xdg) + "/mal-serve";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return std::string(home) + "/.cache/mal-serve";
  return "mal-serve-cache";
}

}  // namespace

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
  // A write past `ulimit -f` fails with EFBIG, an error naming the file, instead of SIGXFSZ
  // killing the process without a word (a coordinator under a limit crash-looped so).
  std::signal(SIGXFSZ, SIG_IGN);
  mal::rpc::InitClientPolling();  // before any gRPC use (its registry client)
  mal::serve::ServeServer::Options o;
  o.registry.cache_dir = DefaultCacheDir();
  int64_t budget_mb = o.memory_budget >> 20;
  CLI::App app(
      "mal-serve: AU detection over gRPC (mal.v1.Inference and the Open Inference Protocol) "
      "with the trained models in a directory or in a coordinator's registry.",
      "mal-serve");
  app.option_defaults()->always_capture_default();
  app.add_option("--listen", o.listen, "HOST:PORT to serve on (port 0: a free one, printed)");
  auto* model_dir = app.add_option("--model-dir", o.model_dir,
                                   "the models: DIR/NAME/{model.json,model.pt}, e.g. run "
                                   "directories or `malctl models pull` output");
  auto* registry =
      app.add_option("--registry", o.registry.address,
                     "or: the coordinator (HOST:PORT) whose model registry to serve; a model is "
                     "NAME, NAME:VERSION or NAME@ALIAS")
          ->excludes(model_dir);
  model_dir->excludes(registry);
  app.add_option("--cache-dir", o.registry.cache_dir,
                 "with --registry: where downloaded models are kept (NAME/VERSION/)")
      ->capture_default_str();
  int64_t alias_ttl_s = o.registry.alias_ttl.count() / 1000;
  app.add_option("--alias-ttl-s", alias_ttl_s,
                 "with --registry: how long a resolved alias or name is trusted, s (a moved alias "
                 "takes effect after at most this)")
      ->check(CLI::Range(int64_t{0}, int64_t{86400}));
  std::string registry_token_file;
  app.add_option("--registry-tls-ca", o.registry.security.ca_file,
                 "with --registry: CA certificate of the coordinator (TLS)")
      ->envname("MAL_TLS_CA");
  app.add_option("--registry-tls-cert", o.registry.security.cert_file,
                 "with --registry: client certificate (mutual TLS)")
      ->envname("MAL_TLS_CERT");
  app.add_option("--registry-tls-key", o.registry.security.key_file,
                 "with --registry: client key (mutual TLS)")
      ->envname("MAL_TLS_KEY");
  app.add_option("--registry-token-file", registry_token_file,
                 "with --registry: bearer token file for the coordinator (default: MAL_TOKEN)");
  app.add_option("--device", o.device, "cpu, cuda or cuda:N");
  app.add_option("--memory-budget-mb", budget_mb,
                 "loaded models past this are dropped, least recently used first")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--face-cascade", o.face_cascade,
                 "an OpenCV cascade file (default: opencv-data's frontal face)");
  app.add_option("--metrics-listen", o.metrics_listen,
                 "serve Prometheus metrics at HOST:PORT/metrics (default: none)");
  app.add_option("--max-images", o.limits.max_images, "images per request")
      ->check(CLI::Range(1, 100000));
  app.add_option("--max-faces", o.limits.max_faces_per_image, "faces per image (the largest kept)")
      ->check(CLI::Range(1, 1000));
  app.add_option(
         "--max-batch", o.batching.max_batch,
         "faces per model call, gathered across concurrent requests (1: no dynamic batching)")
      ->check(CLI::Range(1, 4096));
  int64_t delay_us = o.batching.max_delay.count();
  app.add_option("--batch-delay-us", delay_us,
                 "how long a request waits for others to share its model call, us")
      ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
  mal::cli::AddServerSecurityOptions(app, &o.security);
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  if (o.model_dir.empty() && o.registry.address.empty()) {
    std::cerr << "mal-serve: give --model-dir DIR or --registry HOST:PORT\n";
    return 2;
  }
  if (!o.registry.address.empty()) {
    auto token = mal::rpc::LoadToken(registry_token_file, "MAL_TOKEN");
    if (!token.ok()) {
      std::cerr << "mal-serve: " << token.status().message() << "\n";
      return 2;
    }
    o.registry.security.token = *token;
    o.registry.alias_ttl = std::chrono::seconds(alias_ttl_s);
  }
  o.memory_budget = budget_mb << 20;
  o.batching.max_delay = std::chrono::microseconds(delay_us);

  auto server = mal::serve::ServeServer::Start(o);
  if (!server.ok()) {
    std::cerr << "mal-serve: " << server.status().message() << "\n";
    return 2;
  }
  if ((*server)->metrics_port() > 0)
    std::cout << "mal-serve metrics on port " << (*server)->metrics_port() << std::endl;
  std::cout << "mal-serve listening on port " << (*server)->port() << std::endl;
  mal::NotifySystemd("READY=1\nSTATUS=listening on port " + std::to_string((*server)->port()));
  mal::cli::WaitForTerminationSignal();
  mal::NotifySystemd("STOPPING=1");
  (*server)->Shutdown();
  return 0;
}
