#ifndef MAL_WORKER_ENGINE_BENCH_H_
#define MAL_WORKER_ENGINE_BENCH_H_

// `mal-worker bench`: the cost of one iteration of STL, MTL and each MAL mode, in one run, as
// ratios to MTL, with peak memory, the time per phase, and how close each approximate
// meta-gradient is to the exact one (no torch in this header).

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mal::engine {

struct BenchOptions {
  std::string backbone = "resnet18";
  int input = 112;
  int batch = 16;       // AU and FE batch each
  int val_batch = 16;
  int iterations = 5;
  int warmup = 2;
  int threads = 0;      // 0 = all cores
  std::string device = "cpu";
};

struct BenchResult {
  std::string name;
  double seconds_per_iteration = 0;
  double ratio_to_mtl = 0;
  double peak_memory_mib = 0;  // resident-set high-water mark of the process that ran it (CPU)
  std::optional<double> cosine_to_exact;
  std::vector<std::pair<std::string, double>> phases;  // seconds per iteration
};

struct BenchReport {
  BenchOptions options;
  // stl, mtl, mal_exact (JVP), mal_exact_vjp, mal_finite_difference, mal_heads_only
  std::vector<BenchResult> results;
};

absl::StatusOr<BenchReport> RunBench(const BenchOptions& options);
std::string FormatBench(const BenchReport& report, bool json);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_BENCH_H_
