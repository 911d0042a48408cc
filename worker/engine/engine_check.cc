// Over 400 lines on purpose: a standalone program (the prepared device check, docs/gpu.md) that
// must build without the rest of mal, so its flags, report writing and checks are all here.

// mal-engine-check: the training engine on one device, checked against the CPU and timed, with
// nothing but LibTorch and Abseil (deploy/gpu-check.sh runs it; docs/gpu.md).
//
//   mal-engine-check --part correctness [--device cuda|cuda:N|cpu] --out DIR
//       The exact meta-gradient (JVP and VJP), finite_difference and heads_only gradients of a small
//       BatchNorm network in double precision on the device against the CPU; parameters and
//       BatchNorm running statistics after three MAL steps against the CPU; a training smoke:
//       STL, MTL and every MAL mode for N iterations on synthetic float32 tensors on the device,
//       without a non-finite value, fitting the fixed batch. Writes DIR/correctness.{json,txt}.
//   mal-engine-check --part speed [--device ...] --out DIR [--backbone resnet34] [--input 224]
//       [--batch 64] [--val-batch 256] [--iterations 10] [--warmup 3] [--bf16] [--channels-last]
//       ms per iteration of STL, MTL and each MAL mode (RunBench), peak memory, and the hours of
//       one BP4D fold (--epochs 30 x --iterations-per-epoch 1480). Writes DIR/speed_<tag>.{json,txt}.
//
// Each part is its own process: CPU timing forks one child per method, which is only safe before
// the process has run torch code. Exit status: 0 all checks passed, 1 a check failed or the run
// failed (the message says which), 2 usage.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/engine/bench.h"
#include "worker/engine/device.h"
#include "worker/engine/mal_step.h"
#include "worker/engine/models.h"
#include "worker/engine/torch_compat.h"

namespace mal::engine {
namespace {

struct Options {
  std::string part;
  std::string device = "cuda";
  std::string out;
  int smoke_iterations = 20;
  BenchOptions bench;
  int epochs = 30;
  int iterations_per_epoch = 1480;  // BP4D fold: ~95k training frames / batch 64
};

struct Check {
  std::string name;
  bool passed = false;
  std::string detail;
};

constexpr const char* kUsage =
    "usage: mal-engine-check --part correctness|speed [--device cuda|cuda:N|cpu] --out DIR\n"
    "  correctness: [--smoke-iterations 20]\n"
    "  speed: [--backbone resnet34] [--input 224] [--batch 64] [--val-batch 256] [--iterations 10]\n"
    "         [--warmup 3] [--threads 0] [--bf16] [--channels-last] [--methods a,b,..]\n"
    "         [--epochs 30] [--iterations-per-epoch 1480]\n";

bool ParseInt(const std::string& s, int* out) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0 || v > 1000000) return false;
  *out = static_cast<int>(v);
  return true;
}

// Parses argv into `o`; false (with a message on stderr) for a usage error.
bool ParseArgs(int argc, char** argv, Options* o) {
  o->bench.backbone = "resnet34";
  o->bench.input = 224;
  o->bench.batch = 64;
  o->bench.val_batch = 256;
  o->bench.iterations = 10;
  o->bench.warmup = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--bf16") { o->bench.bf16 = true; continue; }
    if (a == "--channels-last") { o->bench.channels_last = true; continue; }
    if (i + 1 >= argc) {
      std::cerr << "mal-engine-check: " << a << " needs a value\n" << kUsage;
      return false;
    }
    const std::string v = argv[++i];
    bool ok = true;
    if (a == "--part") o->part = v;
    else if (a == "--device") o->device = v;
    else if (a == "--out") o->out = v;
    else if (a == "--backbone") o->bench.backbone = v;
    else if (a == "--methods") o->bench.methods = absl::StrSplit(v, ',', absl::SkipEmpty());
    else if (a == "--smoke-iterations") ok = ParseInt(v, &o->smoke_iterations);
    else if (a == "--input") ok = ParseInt(v, &o->bench.input);
    else if (a == "--batch") ok = ParseInt(v, &o->bench.batch);
    else if (a == "--val-batch") ok = ParseInt(v, &o->bench.val_batch);
    else if (a == "--iterations") ok = ParseInt(v, &o->bench.iterations);
    else if (a == "--warmup") ok = ParseInt(v, &o->bench.warmup);
    else if (a == "--threads") ok = ParseInt(v, &o->bench.threads);
    else if (a == "--epochs") ok = ParseInt(v, &o->epochs);
    else if (a == "--iterations-per-epoch") ok = ParseInt(v, &o->iterations_per_epoch);
    else {
      std::cerr << "mal-engine-check: unknown flag " << a << "\n" << kUsage;
      return false;
    }
    if (!ok) {
      std::cerr << "mal-engine-check: " << a << " " << v << ": not a count\n";
      return false;
    }
  }
  if (o->bench.iterations < 1 || o->smoke_iterations < 1 || o->bench.warmup < 0 || o->epochs < 1 ||
      o->iterations_per_epoch < 1) {
    std::cerr << "mal-engine-check: --iterations, --smoke-iterations, --epochs and "
                 "--iterations-per-epoch must be >= 1, --warmup >= 0\n";
    return false;
  }
  if ((o->part != "correctness" && o->part != "speed") || o->out.empty()) {
    std::cerr << kUsage;
    return false;
  }
  o->bench.device = o->device;
  return true;
}

// Through a temporary file and a rename, so a report is whole or absent (this engine-only
// program does not link common/util's WriteFileAtomic).
bool WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f.flush()) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (!ec) return true;
  std::filesystem::remove(tmp, ec);
  return false;
}

// ---- correctness ----------------------------------------------------------------------------

struct Nets {
  BaseNet model{nullptr}, shadow{nullptr};
  MetaNet meta{nullptr};
  TrainBatch batch;
  ValBatch val;
};

// The small double-precision network of the exact-gradient tests ("tiny": conv + BatchNorm +
// ReLU + pool), a meta net moved off its zero init (with task bias and centring, the trainer's
// defaults), 6 AU frames, 5 FE images and 7 validation frames, on the CPU. Same seed, same nets.
Nets MakeTiny() {
  torch::manual_seed(11);
  Nets n;
  BaseNetImpl::Config c;
  c.backbone = "tiny";
  c.num_aus = 4;
  c.input = 8;
  n.model = BaseNet(c);
  n.shadow = BaseNet(c);
  n.meta = MetaNet(n.model->feature_dim(), /*with_task_bias=*/true, /*center=*/true);
  n.model->to(torch::kDouble);
  n.shadow->to(torch::kDouble);
  n.meta->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    n.meta->linear->weight.normal_(0, 0.5);
    n.meta->linear->bias.fill_(0.2);
    n.meta->task_bias.copy_(torch::tensor({0.3, -0.4}, torch::kDouble));
  }
  const auto d = torch::TensorOptions().dtype(torch::kDouble);
  n.batch.au_images = torch::randn({6, 3, 8, 8}, d);
  n.batch.au_labels = torch::randint(0, 2, {6, 4}, d);
  n.batch.au_mask = torch::ones({6, 4}, d);
  n.batch.fe_images = torch::randn({5, 3, 8, 8}, d);
  n.batch.fe_labels = torch::randint(0, 7, {5}, torch::kLong);
  n.val.images = torch::randn({7, 3, 8, 8}, d);
  n.val.labels = torch::randint(0, 2, {7, 4}, d);
  n.val.mask = torch::ones({7, 4}, d);
  n.val.pos_weight = torch::tensor({0.5, 1.0, 1.5, 2.0}, d);
  return n;
}

// A copy of `from` on `device`: the same parameters, buffers and batches.
Nets CopyTo(Nets& from, const torch::Device& device) {
  Nets n;
  n.model = BaseNet(from.model->config());
  n.shadow = BaseNet(from.model->config());
  n.meta = MetaNet(from.model->feature_dim(), true, true);
  for (torch::nn::Module* m : {n.model.ptr().get(), n.shadow.ptr().get()}) m->to(device, torch::kDouble);
  n.meta->to(device, torch::kDouble);
  CopyState(*from.model, *n.model);
  CopyState(*from.shadow, *n.shadow);
  CopyState(*from.meta, *n.meta);
  auto to = [&](const torch::Tensor& t) { return t.to(device); };
  n.batch = {to(from.batch.au_images), to(from.batch.au_labels), to(from.batch.au_mask),
             to(from.batch.fe_images), to(from.batch.fe_labels)};
  n.val = {to(from.val.images), to(from.val.labels), to(from.val.mask), to(from.val.pos_weight)};
  return n;
}

// Largest |a - b| over the pairs, relative to the largest |b| (both as double, on the CPU).
// NaN when either side holds a non-finite value or the lists differ in length, so a check that
// requires a finite, small difference fails on it.
double RelativeDifference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return std::nan("");
  double diff = 0, scale = 1e-300;
  for (size_t i = 0; i < a.size(); ++i) {
    const torch::Tensor x = a[i].detach().to(torch::kCPU, torch::kDouble);
    const torch::Tensor y = b[i].detach().to(torch::kCPU, torch::kDouble);
    if (x.numel() == 0) continue;
    if (!torch::isfinite(x).all().item<bool>() || !torch::isfinite(y).all().item<bool>()) {
      return std::nan("");
    }
    diff = std::max(diff, (x - y).abs().max().item<double>());
    scale = std::max(scale, y.abs().max().item<double>());
  }
  return diff / scale;
}

// The floating-point buffers (BatchNorm running means and variances) of `net`.
std::vector<torch::Tensor> RunningStats(BaseNet& net) {
  std::vector<torch::Tensor> out;
  for (const auto& b : net->named_buffers()) {
    if (b.value().is_floating_point()) out.push_back(b.value());
  }
  return out;
}

std::vector<Check> CheckAgainstCpu(const torch::Device& device) {
  std::vector<Check> checks;
  Nets cpu = MakeTiny();
  Nets dev = CopyTo(cpu, device);
  MalStep cpu_step(cpu.model, cpu.shadow, cpu.meta);
  MalStep dev_step(dev.model, dev.shadow, dev.meta);
  const double alpha = 0.1;
  std::vector<torch::Tensor> initial_stats;
  for (const auto& b : RunningStats(cpu.model)) initial_stats.push_back(b.clone());

  struct Mode {
    const char* name;
    MetaMode mode;
    bool jvp;
    double tolerance;
  };
  // finite_difference divides by its step (1e-3 of |r|): rounding differences grow ~1e3-fold.
  const Mode modes[] = {{"exact_jvp", MetaMode::kExact, true, 1e-9},
                        {"exact_vjp", MetaMode::kExact, false, 1e-9},
                        {"finite_difference", MetaMode::kFiniteDifference, true, 1e-6},
                        {"heads_only", MetaMode::kHeadsOnly, true, 1e-9}};
  for (const Mode& m : modes) {
    StepOptions so;
    so.mode = m.mode;
    so.exact_jvp = m.jvp;
    const auto g_cpu = cpu_step.MetaGradient(cpu.batch, cpu.val, alpha, so);
    const auto g_dev = dev_step.MetaGradient(dev.batch, dev.val, alpha, so);
    const double rel = RelativeDifference(g_dev, g_cpu);
    double norm = 0;
    for (const auto& g : g_cpu) norm += g.pow(2).sum().item<double>();
    Check c;
    c.name = absl::StrCat("meta_gradient_", m.name, "_equals_cpu");
    c.passed = rel <= m.tolerance && std::sqrt(norm) > 0 && std::isfinite(rel);
    c.detail = absl::StrFormat("double precision, max relative difference %.3g (tolerance %.0g), "
                               "|gradient| %.4g", rel, m.tolerance, std::sqrt(norm));
    checks.push_back(c);
  }

  // Three full MAL steps (SGD with momentum, Adam meta): parameters, meta net and every
  // BatchNorm buffer (running mean, variance, batch count) as on the CPU.
  torch::optim::SGD cpu_base(cpu.model->parameters(), torch::optim::SGDOptions(alpha).momentum(0.9));
  torch::optim::SGD dev_base(dev.model->parameters(), torch::optim::SGDOptions(alpha).momentum(0.9));
  torch::optim::Adam cpu_meta(cpu.meta->parameters(), torch::optim::AdamOptions(1e-2));
  torch::optim::Adam dev_meta(dev.meta->parameters(), torch::optim::AdamOptions(1e-2));
  std::string error;
  for (int i = 0; i < 3 && error.empty(); ++i) {
    auto a = cpu_step.Run(cpu.batch, &cpu.val, alpha, StepOptions{}, cpu_base, &cpu_meta);
    auto b = dev_step.Run(dev.batch, &dev.val, alpha, StepOptions{}, dev_base, &dev_meta);
    if (!a.ok()) error = absl::StrCat("cpu step: ", a.status().message());
    if (!b.ok()) error = absl::StrCat("device step: ", b.status().message());
  }
  const double params = RelativeDifference(dev.model->parameters(), cpu.model->parameters());
  const double meta = RelativeDifference(dev.meta->parameters(), cpu.meta->parameters());
  // Every buffer, the batch counts included; "moved": the running statistics left their init.
  const double buffers = RelativeDifference(dev.model->buffers(), cpu.model->buffers());
  const double moved = RelativeDifference(RunningStats(cpu.model), initial_stats);
  checks.push_back({"parameters_after_3_mal_steps_equal_cpu",
                    error.empty() && params <= 1e-9 && meta <= 1e-9,
                    error.empty() ? absl::StrFormat("max relative difference: base net %.3g, meta "
                                                    "net %.3g (tolerance 1e-9)", params, meta)
                                  : error});
  checks.push_back({"batchnorm_running_stats_advance_as_on_cpu",
                    error.empty() && buffers <= 1e-9 && moved > 1e-3,
                    absl::StrFormat("after 4 meta-gradients and 3 steps: max relative difference "
                                    "to the CPU %.3g (tolerance 1e-9); moved %.3g from their init",
                                    buffers, moved)});
  return checks;
}

// STL, MTL and every MAL mode for `iterations` steps on one fixed float32 batch of synthetic
// tensors on `device` (small CNN, 32 px): every loss and parameter finite, and the AU loss lower
// at the end than at the start (the batch is being fitted).
std::vector<Check> Smoke(const torch::Device& device, int iterations) {
  struct Variant {
    const char* name;
    Method method;
    MetaMode mode;
    bool jvp;
  };
  const Variant variants[] = {{"stl", Method::kStl, MetaMode::kExact, true},
                              {"mtl", Method::kMtl, MetaMode::kExact, true},
                              {"mal_exact", Method::kMal, MetaMode::kExact, true},
                              {"mal_exact_vjp", Method::kMal, MetaMode::kExact, false},
                              {"mal_finite_difference", Method::kMal, MetaMode::kFiniteDifference, true},
                              {"mal_heads_only", Method::kMal, MetaMode::kHeadsOnly, true}};
  std::vector<Check> checks;
  for (const Variant& v : variants) {
    torch::manual_seed(5);
    BaseNetImpl::Config c;
    c.backbone = "small_cnn";
    c.num_aus = 12;
    c.input = 32;
    BaseNet model(c), shadow(c);
    MetaNet meta(model->feature_dim(), true, true);
    model->to(device);
    shadow->to(device);
    meta->to(device);
    const auto f = torch::TensorOptions().device(device);
    TrainBatch batch{torch::randn({8, 3, 32, 32}, f), torch::randint(0, 2, {8, 12}, f),
                     torch::ones({8, 12}, f), torch::randn({8, 3, 32, 32}, f),
                     torch::randint(0, 7, {8}, f.dtype(torch::kLong))};
    ValBatch val{torch::randn({8, 3, 32, 32}, f), torch::randint(0, 2, {8, 12}, f),
                 torch::ones({8, 12}, f), torch::ones({12}, f)};
    torch::optim::SGD base(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    torch::optim::Adam meta_opt(meta->parameters(), torch::optim::AdamOptions(1e-3));
    MalStep step(model, shadow, meta);
    StepOptions so;
    so.method = v.method;
    so.mode = v.mode;
    so.exact_jvp = v.jvp;
    Check check;
    check.name = absl::StrCat("smoke_", v.name, "_", iterations, "_iterations");
    double first = 0, last = 0;
    std::string error;
    for (int i = 0; i < iterations && error.empty(); ++i) {
      auto r = step.Run(batch, &val, 0.05, so, base, &meta_opt);
      if (!r.ok()) {
        error = absl::StrCat("iteration ", i + 1, ": ", r.status().message());
      } else if (!std::isfinite(r->loss_total) || !std::isfinite(r->loss_au) ||
                 (v.method == Method::kMal && !std::isfinite(r->loss_val))) {
        error = absl::StrCat("iteration ", i + 1, ": a non-finite loss");
      } else {
        if (i == 0) first = r->loss_au;
        last = r->loss_au;
      }
    }
    if (error.empty()) {
      for (const auto& p : model->parameters()) {
        if (!torch::isfinite(p).all().item<bool>()) error = "a non-finite parameter";
      }
      for (const auto& p : meta->parameters()) {
        if (!torch::isfinite(p).all().item<bool>()) error = "a non-finite meta parameter";
      }
    }
    check.passed = error.empty() && last < first;
    check.detail = error.empty() ? absl::StrFormat("AU loss %.4f -> %.4f", first, last) : error;
    checks.push_back(check);
  }
  return checks;
}

int RunCorrectness(const Options& o, const torch::Device& device) {
  // The networks here are tiny: more CPU threads only add synchronisation, and on a loaded
  // machine OpenMP's spinning threads made the part 20 times slower (27 s against 1.5 s).
  at::set_num_threads(1);
  std::vector<Check> checks;
  try {
    checks = CheckAgainstCpu(device);
    for (Check& c : Smoke(device, o.smoke_iterations)) checks.push_back(std::move(c));
  } catch (const c10::Error& e) {
    checks.push_back({"run", false, e.what_without_backtrace()});
  }
  bool all = true;
  std::vector<std::string> items;
  std::string text = absl::StrFormat("correctness on %s (LibTorch %s%s)\n", o.device, TORCH_VERSION,
                                     kTorchHasCuda ? ", CUDA build" : ", CPU build");
  for (const Check& c : checks) {
    all = all && c.passed;
    items.push_back(absl::StrFormat("{\"name\": %s, \"passed\": %s, \"detail\": %s}",
                                    JsonQuoted(c.name), c.passed ? "true" : "false",
                                    JsonQuoted(c.detail)));
    absl::StrAppendFormat(&text, "  %-4s %-48s %s\n", c.passed ? "ok" : "FAIL", c.name, c.detail);
  }
  if (device.is_cpu()) {
    absl::StrAppend(&text, "  (device is the CPU: the comparisons are CPU against CPU)\n");
  }
  const std::string json = absl::StrFormat(
      "{\"device\": %s, \"torch\": %s, \"torch_cuda_build\": %s, \"passed\": %s, \"checks\": [\n  %s\n]}\n",
      JsonQuoted(o.device), JsonQuoted(TORCH_VERSION), kTorchHasCuda ? "true" : "false",
      all ? "true" : "false", absl::StrJoin(items, ",\n  "));
  std::cout << text;
  if (!WriteFile(o.out + "/correctness.json", json) || !WriteFile(o.out + "/correctness.txt", text)) {
    std::cerr << "mal-engine-check: cannot write under " << o.out << "\n";
    return 1;
  }
  return all ? 0 : 1;
}

// ---- speed ----------------------------------------------------------------------------------

int RunSpeed(const Options& o) {
  absl::StatusOr<BenchReport> report = RunBench(o.bench);
  if (!report.ok()) {
    std::cerr << "mal-engine-check: " << report.status().message() << "\n";
    return 1;
  }
  const std::string tag = absl::StrCat(o.bench.bf16 ? "bf16" : "fp32",
                                       o.bench.channels_last ? "_channels_last" : "");
  std::string text = absl::StrCat("speed (", tag, ")\n", FormatBench(*report, false));
  absl::StrAppendFormat(&text, "\nhours for one fold of %d epochs x %d iterations (training steps only)\n",
                        o.epochs, o.iterations_per_epoch);
  std::vector<std::string> hours;
  for (const BenchResult& r : report->results) {
    if (!r.error.empty()) {  // a failed method has no time
      absl::StrAppendFormat(&text, "  %-24s   failed\n", r.name);
      hours.push_back(absl::StrFormat("\"%s\": null", r.name));
      continue;
    }
    const double h = r.seconds_per_iteration * o.epochs * o.iterations_per_epoch / 3600.0;
    absl::StrAppendFormat(&text, "  %-24s %8.2f h\n", r.name, h);
    hours.push_back(absl::StrFormat("\"%s\": %.3f", r.name, h));
  }
  const std::string json = absl::StrFormat(
      "{\"tag\": \"%s\", \"torch\": %s, \"epochs\": %d, \"iterations_per_epoch\": %d, "
      "\"hours_per_fold\": {%s},\n\"bench\": %s}\n",
      tag, JsonQuoted(TORCH_VERSION), o.epochs, o.iterations_per_epoch, absl::StrJoin(hours, ", "),
      FormatBench(*report, true));
  std::cout << text;
  if (!WriteFile(absl::StrCat(o.out, "/speed_", tag, ".json"), json) ||
      !WriteFile(absl::StrCat(o.out, "/speed_", tag, ".txt"), text)) {
    std::cerr << "mal-engine-check: cannot write under " << o.out << "\n";
    return 1;
  }
  for (const BenchResult& r : report->results) {
    if (!r.error.empty()) return 1;
  }
  return 0;
}

int Main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, &o)) return 2;
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) {
    std::cerr << "mal-engine-check: --out " << o.out << ": " << ec.message() << "\n";
    return 2;
  }
  // The speed part forks for CPU methods: no torch call before it.
  if (o.part == "speed") return RunSpeed(o);
  try {
    auto device = ParseDevice(o.device, "--device");
    if (!device.ok()) {
      std::cerr << "mal-engine-check: " << device.status().message() << "\n";
      return device.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
    return RunCorrectness(o, *device);
  } catch (const c10::Error& e) {
    std::cerr << "mal-engine-check: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}

}  // namespace
}  // namespace mal::engine

int main(int argc, char** argv) { return mal::engine::Main(argc, argv); }
