// serve_bench: AU detection throughput through mal-serve's RPC against the same model called
// in-process, at one batch size; then many single-image clients at once, with latency percentiles,
// with dynamic batching and without.
//   build/tests/serve_bench [--model-dir DIR/NAME] [--batch 32] [--seconds 5] [--clients 16]
//   [--threads 0]
// Without --model-dir a small_cnn at the quickstart's size (64 px input, 12 AUs) is made up with
// random weights (the speed does not depend on what the weights learned). Images are 112 px
// SynthFace faces sent as JPEG with face_crop (no detection), so both paths measure decode +
// preprocessing + the network; the RPC adds serialisation, HTTP/2 and thread hand-offs.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <opencv2/imgcodecs.hpp>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/synth/face_renderer.h"
#include "common/util/cli.h"
#include "common/util/grpc_channel.h"
#include "common/util/random.h"
#include "mal/v1/inference.grpc.pb.h"
#include "server/serve/au_detection.h"
#include "server/serve/serve_server.h"
#include "tests/test_util.h"
#include "tests/worker/engine/model_fixture.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

std::string FaceJpeg(uint64_t seed) {
  mal::Rng rng(seed);
  mal::synth::FaceState state;
  state.identity = mal::synth::RandomIdentity(rng);
  std::vector<uchar> bytes;
  cv::imencode(".jpg", mal::synth::RenderFace(state, 112), bytes);
  return std::string(bytes.begin(), bytes.end());
}

// Calls `call` for `seconds`; returns calls per second.
template <typename F>
double Rate(double seconds, F call) {
  for (int i = 0; i < 3; ++i) call();  // warm-up
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  int n = 0;
  const auto start = Clock::now();
  while (Clock::now() < end) {
    call();
    ++n;
  }
  return n / std::chrono::duration<double>(Clock::now() - start).count();
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir;
  int batch = 32, clients = 16;
  double seconds = 5;
  CLI::App app("serve_bench: AU detection through mal-serve's RPC vs in-process", "serve_bench");
  app.option_defaults()->always_capture_default();
  app.add_option("--model-dir", model_dir,
                 "a model directory (model.pt + model.json); default: a made-up small_cnn");
  app.add_option("--batch", batch, "images per request")->check(CLI::Range(1, 256));
  app.add_option("--seconds", seconds, "per measurement")->check(CLI::Range(0.5, 600.0));
  app.add_option("--clients", clients, "concurrent single-image clients")
      ->check(CLI::Range(1, 256));
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;

  mal::testing::TempDir tmp;
  if (model_dir.empty()) {
    model_dir = tmp / "models/bench";
    mal::testing::WriteTestModel(model_dir, {1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24}, 64, 72);
  }
  auto model = mal::engine::AuModel::Load(model_dir);
  if (!model.ok()) {
    std::cerr << "serve_bench: " << model.status().message() << "\n";
    return 1;
  }
  mal::v1::DetectActionUnitsRequest request;
  request.set_model(fs::path(model_dir).filename().string());
  request.set_face_crop(true);
  for (int i = 0; i < batch; ++i)
    request.add_images()->set_encoded(FaceJpeg(static_cast<uint64_t>(i + 1)));

  const double local = batch * Rate(seconds, [&] {
                         (void)mal::serve::DetectActionUnits(**model, nullptr, request).ok();
                       });

  // One server per batching setting; the same calls against each.
  struct Figures {
    double rpc = 0, single = 0, concurrent = 0, p50 = 0, p99 = 0;
  };
  std::atomic<int> failures{0};
  auto measure = [&](int max_batch) -> absl::StatusOr<Figures> {
    mal::serve::ServeServer::Options o;
    o.listen = "127.0.0.1:0";
    o.model_dir = fs::path(model_dir).parent_path().string();
    o.batching.max_batch = max_batch;
    auto server = mal::serve::ServeServer::Start(o);
    if (!server.ok()) return server.status();
    auto stub = mal::v1::Inference::NewStub(
        mal::rpc::MakeChannel(absl::StrCat("127.0.0.1:", (*server)->port())));
    auto call = [&](const mal::v1::DetectActionUnitsRequest& r) {
      mal::v1::DetectActionUnitsResponse response;
      grpc::ClientContext ctx;
      if (!stub->DetectActionUnits(&ctx, r, &response).ok()) ++failures;
    };
    Figures f;
    f.rpc = batch * Rate(seconds, [&] { call(request); });
    mal::v1::DetectActionUnitsRequest one = request;
    one.mutable_images()->DeleteSubrange(1, one.images_size() - 1);
    f.single = Rate(seconds, [&] { call(one); });
    std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
    std::vector<std::thread> threads;
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    const auto start = Clock::now();
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        while (Clock::now() < end) {
          const auto t0 = Clock::now();
          call(one);
          latencies[static_cast<size_t>(c)].push_back(
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
      });
    }
    for (auto& t : threads) t.join();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<double> all;
    for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
    f.concurrent = static_cast<double>(all.size()) / elapsed;
    f.p50 = Percentile(all, 0.5);
    f.p99 = Percentile(all, 0.99);
    (*server)->Shutdown();
    return f;
  };
  auto batched = measure(32);
  auto unbatched = measure(1);
  if (!batched.ok() || !unbatched.ok()) {
    std::cerr << "serve_bench: " << (batched.ok() ? unbatched.status() : batched.status()).message()
              << "\n";
    return 1;
  }

  std::cout << absl::StrFormat("model %s (%s, %d px), %d hardware threads, %.0f s per figure\n",
                               model_dir, (*model)->metadata().backbone(),
                               (*model)->metadata().input(), std::thread::hardware_concurrency(),
                               seconds);
  std::cout << absl::StrFormat("in-process, batch %d:              %8.1f images/s\n", batch, local);
  std::cout << absl::StrFormat(
      "RPC, batch %d:                     %8.1f images/s  (%.0f%% of in-process)\n", batch,
      batched->rpc, 100 * batched->rpc / local);
  for (const auto& [name, f] : {std::pair{"dynamic batching (32, 2 ms)", *batched},
                                std::pair{"no dynamic batching      ", *unbatched}}) {
    std::cout << absl::StrFormat(
        "%s: 1 client %6.1f images/s; %d single-image clients %6.1f images/s, "
        "latency p50 %.1f ms, p99 %.1f ms\n",
        name, f.single, clients, f.concurrent, f.p50, f.p99);
  }
  std::cout << absl::StrFormat("dynamic batching gain with %d clients: %.2fx\n", clients,
                               batched->concurrent / unbatched->concurrent);
  if (failures > 0) {
    std::cerr << "serve_bench: " << failures << " call(s) failed\n";
    return 1;
  }
  return 0;
}
