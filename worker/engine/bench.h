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
  int input = 112;  // image side, pixels
  int batch = 16;   // AU and FE batch each
  int val_batch = 16;
  int iterations = 5;
  int warmup = 2;
  int threads = 0;             // 0 = all cores
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  // bf16 autocast around every iteration (convolutions and matrix products in bfloat16, losses
  // in float32; torch_compat.h AutocastGuard), and the meta-gradients' cosine to float32 ones.
  bool bf16 = false;
  bool channels_last = false;  // parameters and images in NHWC memory format
  // Names of the methods to time (see BenchReport::results); empty = all.
  std::vector<std::string> methods;
};

struct BenchResult {
  std::string name;
  double seconds_per_iteration = 0;
  double ratio_to_mtl = 0;     // 0 when MTL was not timed
  double peak_memory_mib = 0;  // resident-set high-water mark of the process that ran it (CPU)
  // CUDA: peak MiB allocated by tensors on the device during this method (-1 elsewhere).
  double peak_device_memory_mib = -1;
  std::optional<double> cosine_to_exact;
  // With bf16: cosine of this method's meta-gradient under autocast to its float32 one.
  std::optional<double> cosine_to_fp32;
  std::vector<std::pair<std::string, double>> phases;  // seconds per iteration
  // Why this method could not be timed (the other fields are then 0), or its bf16 meta-gradient
  // not computed; empty when it ran.
  std::string error;
};

struct BenchReport {
  BenchOptions options;
  // stl, mtl, mal_exact (JVP), mal_exact_vjp, mal_finite_difference, mal_heads_only,
  // mal_exact_lookahead4, mal_exact_lookahead4_interval4 (those of options.methods, in this order)
  std::vector<BenchResult> results;
};

// Times the methods on random input (12 AUs, 7 expressions). CPU methods run in child processes
// (own peak memory); CUDA ones in this process, with cuDNN's autotuner on. A method that fails
// has its BenchResult::error set and the others still run. Errors: InvalidArgument for an unknown
// method or device, FailedPrecondition for CUDA without a GPU, Internal for LibTorch errors
// outside the methods (the message says which).
absl::StatusOr<BenchReport> RunBench(const BenchOptions& options);
// The report as text (a table and the time per phase) or one JSON object.
std::string FormatBench(const BenchReport& report, bool json);

// `s` as a JSON string literal: quotes, backslashes and control characters (\u00XX) escaped.
// For the engine's hand-written JSON (bench and mal-engine-check depend on no JSON library).
std::string JsonQuoted(const std::string& s);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_BENCH_H_
