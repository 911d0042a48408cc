// mal-serve: AU inference over gRPC (the Inference service, proto/mal/v1/inference.proto) for the
// models in a directory. `mal-serve --help` lists the options; docs/serving.md describes them.

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "common/util/cli.h"
#include "common/util/logging.h"
#include "common/util/server_cli.h"
#include "server/serve/serve_server.h"

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
  mal::serve::ServeServer::Options o;
  int64_t budget_mb = o.memory_budget >> 20;
  CLI::App app(
      "mal-serve: AU detection over gRPC (mal.v1.Inference) with the trained models in a "
      "directory.",
      "mal-serve");
  app.option_defaults()->always_capture_default();
  app.add_option("--listen", o.listen, "HOST:PORT to serve on (port 0: a free one, printed)");
  app.add_option("--model-dir", o.model_dir,
                 "the models: DIR/NAME/{model.json,model.pt}, e.g. run directories")
      ->required();
  app.add_option("--device", o.device, "cpu, cuda or cuda:N");
  app.add_option("--memory-budget-mb", budget_mb,
                 "loaded models past this are dropped, least recently used first")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--face-cascade", o.face_cascade,
                 "an OpenCV cascade file (default: opencv-data's frontal face)");
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
  o.memory_budget = budget_mb << 20;
  o.batching.max_delay = std::chrono::microseconds(delay_us);

  auto server = mal::serve::ServeServer::Start(o);
  if (!server.ok()) {
    std::cerr << "mal-serve: " << server.status().message() << "\n";
    return 2;
  }
  std::cout << "mal-serve listening on port " << (*server)->port() << std::endl;
  mal::cli::WaitForTerminationSignal();
  (*server)->Shutdown();
  return 0;
}
