// Over 400 lines on purpose: one benchmark, built into the engine-only core (LibTorch and Abseil,
// nothing else: deploy/gpu-check.sh), so its set-up, per-phase timing in a child process, the
// meta-gradient cosines and its text and JSON report (no JSON library there) stay together.

#include "worker/engine/bench.h"

#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/status_macros.h"
#include "worker/engine/device.h"
#include "worker/engine/mal_step.h"
#include "worker/engine/models.h"
#include "worker/engine/torch_compat.h"

namespace mal::engine {

std::string JsonQuoted(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
      continue;
    }
    out += c;
  }
  return out + "\"";
}

namespace {

using Clock = std::chrono::steady_clock;

// Peak resident memory of this process, in MiB (Linux: VmHWM).
double PeakMemoryMiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

struct Variant {
  std::string name;
  Method method;
  MetaMode mode;
  bool exact_jvp = true;
  int lookahead_steps = 1;  // mal.lookahead_steps
  int meta_interval = 1;    // mal.meta_interval: a meta update every k-th iteration, as the trainer
};

struct Setup {
  BaseNet model{nullptr}, shadow{nullptr};
  MetaNet meta{nullptr};
  TrainBatch batch;
  ValBatch val;
};

// Parameters of 4-D shape (convolution weights) and the images in NHWC memory format.
void ToChannelsLast(Setup& s) {
  torch::NoGradGuard no_grad;
  for (BaseNet* net : {&s.model, &s.shadow}) engine::ToChannelsLast(**net);
  for (torch::Tensor* t : {&s.batch.au_images, &s.batch.fe_images, &s.val.images}) {
    *t = t->contiguous(torch::MemoryFormat::ChannelsLast);
  }
}

// Autocast to bfloat16 on the device while alive, when the options ask for it.
class MaybeAutocast {
 public:
  MaybeAutocast(const BenchOptions& o, const torch::Device& device) {
    if (o.bf16) guard_.emplace(device.type(), torch::kBFloat16);
  }

 private:
  std::optional<AutocastGuard> guard_;
};

Setup MakeSetup(const BenchOptions& o, const torch::Device& device) {
  torch::manual_seed(1);
  Setup s;
  BaseNetImpl::Config c;
  c.backbone = o.backbone;
  c.num_aus = 12;
  c.input = o.input;
  s.model = BaseNet(c);
  s.shadow = BaseNet(c);
  s.meta = MetaNet(s.model->feature_dim());
  s.model->to(device);
  s.shadow->to(device);
  s.meta->to(device);
  auto f = torch::TensorOptions().device(device);
  s.batch.au_images = torch::randn({o.batch, 3, o.input, o.input}, f);
  s.batch.au_labels = torch::randint(0, 2, {o.batch, 12}, f);
  s.batch.au_mask = torch::ones({o.batch, 12}, f);
  s.batch.fe_images = torch::randn({o.batch, 3, o.input, o.input}, f);
  s.batch.fe_labels = torch::randint(0, 7, {o.batch}, f.dtype(torch::kLong));
  s.val.images = torch::randn({o.val_batch, 3, o.input, o.input}, f);
  s.val.labels = torch::randint(0, 2, {o.val_batch, 12}, f);
  s.val.mask = torch::ones({o.val_batch, 12}, f);
  s.val.pos_weight = torch::ones({12}, f);
  if (o.channels_last) ToChannelsLast(s);
  return s;
}

torch::Tensor Flat(const std::vector<torch::Tensor>& v) {
  std::vector<torch::Tensor> parts;
  for (const auto& t : v) parts.push_back(t.reshape(-1).to(torch::kDouble).cpu());
  return torch::cat(parts);
}

// Times one method: warm-up, then `iterations` iterations with per-phase timing.
absl::StatusOr<BenchResult> RunVariant(const BenchOptions& o, const Variant& v,
                                       const torch::Device& device) {
  at::set_num_threads(o.threads > 0
                          ? o.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  Setup s = MakeSetup(o, device);
  torch::optim::SGD base(s.model->parameters(),
                         torch::optim::SGDOptions(1e-3).momentum(0.9).weight_decay(5e-4));
  torch::optim::Adam meta(s.meta->parameters(), torch::optim::AdamOptions(1e-3));
  MalStep step(s.model, s.shadow, s.meta);
  StepOptions so;
  so.method = v.method;
  so.mode = v.mode;
  so.exact_jvp = v.exact_jvp;
  so.lookahead_steps = v.lookahead_steps;
  so.profile = true;
  MaybeAutocast autocast(o, device);
  // The trainer's rule (global iteration % meta_interval == 0), so the timed mean is the amortised
  // cost per iteration; the iteration count should be a multiple of meta_interval.
  auto run = [&](int i) {
    so.update_meta = i % v.meta_interval == 0;  // read by MAL only
    return step.Run(s.batch, so.update_meta ? &s.val : nullptr, 1e-3, so, base, &meta);
  };
  for (int i = 0; i < o.warmup; ++i) {
    auto r = run(i);
    if (!r.ok()) return r.status();
  }
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
  ResetPeakDeviceMemory(device);
  BenchResult result;
  result.name = v.name;
  std::map<std::string, double> phases;
  std::vector<std::string> order;
  const auto start = Clock::now();
  for (int i = 0; i < o.iterations; ++i) {
    auto r = run(i);
    if (!r.ok()) return r.status();
    for (const auto& [name, sec] : r->phases) {
      if (!phases.count(name)) order.push_back(name);
      phases[name] += sec / o.iterations;
    }
  }
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
  result.seconds_per_iteration =
      std::chrono::duration<double>(Clock::now() - start).count() / o.iterations;
  result.peak_memory_mib = PeakMemoryMiB();
  const int64_t device_bytes = PeakDeviceMemoryBytes(device);
  if (device_bytes >= 0) result.peak_device_memory_mib = device_bytes / (1024.0 * 1024.0);
  for (const auto& name : order) result.phases.emplace_back(name, phases[name]);
  return result;
}

// RunVariant with LibTorch's exceptions as a status on one line (a child must never let one
// escape into the caller's code, which it shares after fork).
absl::StatusOr<BenchResult> RunVariantCaught(const BenchOptions& o, const Variant& v,
                                             const torch::Device& device) {
  std::string message;
  try {
    return RunVariant(o, v, device);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  } catch (const std::exception& e) {
    message = e.what();
  }
  std::replace(message.begin(), message.end(), '\n', ' ');
  return absl::InternalError(message);
}

// Runs RunVariant in a child process, so the method's peak memory is its own (the allocator keeps
// what an earlier method freed) and no thread pool is shared. The caller must not have run torch
// code yet (fork after OpenMP or CUDA initialisation is unsafe); CUDA runs stay in-process.
absl::StatusOr<BenchResult> RunVariantInChild(const BenchOptions& o, const Variant& v,
                                              const torch::Device& device) {
  int fds[2];
  if (::pipe(fds) != 0) return absl::InternalError("bench: pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("bench: fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    auto result = RunVariantCaught(o, v, device);
    if (result.ok()) {
      out =
          absl::StrFormat("ok %.9f %.3f\n", result->seconds_per_iteration, result->peak_memory_mib);
      for (const auto& [name, sec] : result->phases)
        absl::StrAppendFormat(&out, "%s\t%.9f\n", name, sec);
    } else {
      out = absl::StrCat("error ", result.status().message(), "\n");
    }
    (void)!::write(fds[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) text.append(buf, n);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0].rfind("ok ", 0) != 0) {
    return absl::InternalError(
        absl::StrCat("bench ", v.name, ": ", lines.empty() ? "the process died" : lines[0]));
  }
  BenchResult result;
  result.name = v.name;
  std::vector<std::string> head = absl::StrSplit(lines[0], ' ');
  result.seconds_per_iteration = std::stod(head[1]);
  result.peak_memory_mib = std::stod(head[2]);
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string> f = absl::StrSplit(lines[i], '\t');
    if (f.size() == 2) result.phases.emplace_back(f[0], std::stod(f[1]));
  }
  return result;
}

// The variants `methods` names, in the order below (all of them when empty); InvalidArgument
// naming an unknown one.
absl::StatusOr<std::vector<Variant>> SelectVariants(const std::vector<std::string>& methods) {
  const std::vector<Variant> all = {
      {"stl", Method::kStl, MetaMode::kExact},
      {"mtl", Method::kMtl, MetaMode::kExact},
      {"mal_exact", Method::kMal, MetaMode::kExact},
      {"mal_exact_vjp", Method::kMal, MetaMode::kExact, /*exact_jvp=*/false},
      {"mal_finite_difference", Method::kMal, MetaMode::kFiniteDifference},
      {"mal_heads_only", Method::kMal, MetaMode::kHeadsOnly},
      // Four virtual steps ahead (a different meta-gradient: no cosine to the one-step exact).
      {"mal_exact_lookahead4", Method::kMal, MetaMode::kExact, /*exact_jvp=*/true,
       /*lookahead_steps=*/4},
      // The same with a meta update every fourth iteration (mal.meta_interval: 4): the amortised
      // cost of a four-step lookahead at about one step's (measured in docs/benchmarks.md).
      {"mal_exact_lookahead4_interval4", Method::kMal, MetaMode::kExact, /*exact_jvp=*/true,
       /*lookahead_steps=*/4, /*meta_interval=*/4},
  };
  for (const std::string& name : methods) {
    if (std::none_of(all.begin(), all.end(), [&](const Variant& v) { return v.name == name; })) {
      return absl::InvalidArgumentError(absl::StrCat("bench: unknown method ", name));
    }
  }
  std::vector<Variant> chosen;
  for (const Variant& v : all) {
    if (methods.empty() || std::find(methods.begin(), methods.end(), v.name) != methods.end())
      chosen.push_back(v);
  }
  return chosen;
}

absl::Status AddCosines(const BenchOptions& o, const torch::Device& device, BenchReport& report);

}  // namespace

absl::StatusOr<BenchReport> RunBench(const BenchOptions& o) {
  try {
    const int threads = o.threads > 0
                            ? o.threads
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    ASSIGN_OR_RETURN(const torch::Device device, ParseDevice(o.device, "--device"));
    if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
    BenchReport report;
    report.options = o;
    ASSIGN_OR_RETURN(const std::vector<Variant> variants, SelectVariants(o.methods));
    for (const Variant& v : variants) {
      absl::StatusOr<BenchResult> result =
          device.is_cuda() ? RunVariantCaught(o, v, device) : RunVariantInChild(o, v, device);
      if (!result.ok()) {
        // One method failing (bf16 autocast and forward-mode AD on the CPU, say) leaves the others.
        BenchResult failed;
        failed.name = v.name;
        failed.error = std::string(result.status().message());
        report.results.push_back(failed);
        continue;
      }
      report.results.push_back(*result);
    }
    at::set_num_threads(threads);
    double mtl = 0;
    for (const auto& r : report.results) {
      if (r.name == "mtl") mtl = r.seconds_per_iteration;
    }
    for (auto& r : report.results) r.ratio_to_mtl = mtl > 0 ? r.seconds_per_iteration / mtl : 0;
    RETURN_IF_ERROR(AddCosines(o, device, report));
    return report;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("bench failed: ", e.what_without_backtrace()));
  }
}

namespace {

// Cosine of each approximate meta-gradient to the exact one, at the same state (and of each bf16
// meta-gradient to its float32 one with --bf16). The meta net is moved off its zero init first (a
// few exact steps), so the bias gradient is not trivially 0.
absl::Status AddCosines(const BenchOptions& o, const torch::Device& device, BenchReport& report) {
  Setup s = MakeSetup(o, device);
  MalStep step(s.model, s.shadow, s.meta);
  {
    torch::optim::SGD base(s.model->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
    torch::optim::Adam meta(s.meta->parameters(), torch::optim::AdamOptions(1e-2));
    for (int i = 0; i < 3; ++i) {
      auto r = step.Run(s.batch, &s.val, 1e-3, StepOptions{}, base, &meta);
      if (!r.ok()) return r.status();
    }
  }
  // Running statistics would move with every MetaGradient call: compare at frozen buffers.
  std::vector<torch::Tensor> buffers;
  for (const auto& b : s.model->buffers()) buffers.push_back(b.clone());
  auto gradient = [&](MetaMode mode, bool jvp, bool bf16) {
    auto live = s.model->buffers();
    {
      torch::NoGradGuard g;
      for (size_t i = 0; i < live.size(); ++i) live[i].copy_(buffers[i]);
    }
    StepOptions so;
    so.mode = mode;
    so.exact_jvp = jvp;
    std::optional<AutocastGuard> autocast;
    if (bf16) autocast.emplace(device.type(), torch::kBFloat16);
    return Flat(step.MetaGradient(s.batch, s.val, 1e-3, so));
  };
  auto cosine = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a.dot(b) / (a.norm() * b.norm() + 1e-30)).item<double>();
  };
  // The reference: mal.md's double-backward VJP, in float32.
  const torch::Tensor exact = gradient(MetaMode::kExact, /*jvp=*/false, /*bf16=*/false);
  for (auto& r : report.results) {
    MetaMode mode = MetaMode::kExact;
    bool jvp = true;
    if (r.name == "mal_exact_vjp")
      jvp = false;
    else if (r.name == "mal_finite_difference")
      mode = MetaMode::kFiniteDifference;
    else if (r.name == "mal_heads_only")
      mode = MetaMode::kHeadsOnly;
    else if (r.name != "mal_exact")
      continue;
    const torch::Tensor g = r.name == "mal_exact_vjp" ? exact : gradient(mode, jvp, false);
    r.cosine_to_exact = cosine(g, exact);
    if (!o.bf16) continue;
    try {
      r.cosine_to_fp32 = cosine(gradient(mode, jvp, true), g);
    } catch (const c10::Error& e) {
      if (r.error.empty())
        r.error = absl::StrCat("bf16 meta-gradient: ", e.what_without_backtrace());
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string FormatBench(const BenchReport& r, bool json) {
  const BenchOptions& o = r.options;
  if (json) {
    std::vector<std::string> items;
    for (const auto& x : r.results) {
      std::vector<std::string> phases;
      for (const auto& [name, sec] : x.phases)
        phases.push_back(absl::StrFormat("\"%s\": %.6f", name, sec));
      items.push_back(absl::StrFormat(
          "{\"name\": \"%s\", \"seconds_per_iteration\": %.6f, \"ratio_to_mtl\": %.4f, "
          "\"peak_memory_mib\": %.1f, \"peak_device_memory_mib\": %.1f, \"cosine_to_exact\": %s, "
          "\"cosine_to_fp32\": %s, \"error\": %s, \"phases\": {%s}}",
          x.name, x.seconds_per_iteration, x.ratio_to_mtl, x.peak_memory_mib,
          x.peak_device_memory_mib,
          x.cosine_to_exact ? absl::StrFormat("%.6f", *x.cosine_to_exact) : "null",
          x.cosine_to_fp32 ? absl::StrFormat("%.6f", *x.cosine_to_fp32) : "null",
          x.error.empty() ? "null" : JsonQuoted(x.error), absl::StrJoin(phases, ", ")));
    }
    return absl::StrFormat(
        "{\"backbone\": \"%s\", \"input\": %d, \"batch\": %d, \"val_batch\": %d, \"iterations\": "
        "%d, "
        "\"threads\": %d, \"device\": \"%s\", \"bf16\": %s, \"channels_last\": %s, "
        "\"results\": [\n  %s\n]}\n",
        o.backbone, o.input, o.batch, o.val_batch, o.iterations, at::get_num_threads(), o.device,
        o.bf16 ? "true" : "false", o.channels_last ? "true" : "false",
        absl::StrJoin(items, ",\n  "));
  }
  // Columns for the device memory and the bf16 cosine only where they apply, so a CPU float32
  // table reads as it always has.
  const bool device_memory = o.device.rfind("cuda", 0) == 0;
  std::string out = absl::StrFormat(
      "%s, input %d, batch %d AU + %d FE, validation batch %d, %d timed iterations, %d threads, "
      "%s%s%s\n\n",
      o.backbone, o.input, o.batch, o.batch, o.val_batch, o.iterations, at::get_num_threads(),
      o.device, o.bf16 ? ", bf16 autocast" : "", o.channels_last ? ", channels_last" : "");
  absl::StrAppendFormat(&out, "%-30s %10s %10s %14s %16s", "method", "ms/iter", "x MTL",
                        "peak RSS MiB", "cosine to exact");
  if (device_memory) absl::StrAppendFormat(&out, " %14s", "peak GPU MiB");
  if (o.bf16) absl::StrAppendFormat(&out, " %16s", "cosine bf16/fp32");
  absl::StrAppend(&out, "\n");
  for (const auto& x : r.results) {
    absl::StrAppendFormat(&out, "%-30s %10.1f %10.2f %14.0f %16s", x.name,
                          1000 * x.seconds_per_iteration, x.ratio_to_mtl, x.peak_memory_mib,
                          x.cosine_to_exact ? absl::StrFormat("%.4f", *x.cosine_to_exact) : "-");
    if (device_memory) absl::StrAppendFormat(&out, " %14.0f", x.peak_device_memory_mib);
    if (o.bf16) {
      absl::StrAppendFormat(&out, " %16s",
                            x.cosine_to_fp32 ? absl::StrFormat("%.4f", *x.cosine_to_fp32) : "-");
    }
    absl::StrAppend(&out, "\n");
  }
  for (const auto& x : r.results) {
    if (!x.error.empty()) absl::StrAppendFormat(&out, "%s failed: %s\n", x.name, x.error);
  }
  absl::StrAppend(&out, "\nwhere the time goes (ms per iteration)\n");
  for (const auto& x : r.results) {
    absl::StrAppendFormat(&out, "  %s\n", x.name);
    for (const auto& [name, sec] : x.phases)
      absl::StrAppendFormat(&out, "    %-48s %8.1f\n", name, 1000 * sec);
  }
  return out;
}

}  // namespace mal::engine
