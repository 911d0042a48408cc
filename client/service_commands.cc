#include "client/service_commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/args.h"
#include "common/spec/spec.h"
#include "common/util/grpc_channel.h"
#include "common/util/grpc_status.h"
#include "common/util/random.h"
#include "mal/v1/service.grpc.pb.h"

namespace mal::cli {

namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr int kOk = 0, kFailed = 1, kUsage = 2, kUnavailable = 3;
constexpr milliseconds kTimeout{15000};
constexpr int kReconnectSeconds = 120;  // watch and wait ride out coordinator restarts this long

int Fail(int code, const std::string& message) {
  std::cerr << "malctl: " << message << "\n";
  return code;
}

int RpcFail(const grpc::Status& s) {
  const bool down = s.error_code() == grpc::StatusCode::UNAVAILABLE;
  return Fail(down ? kUnavailable : kFailed,
              down ? absl::StrCat("the coordinator is unreachable: ", s.error_message(),
                                  " (set --address or MAL_ADDRESS)")
                   : s.error_message());
}

std::string Json(const google::protobuf::Message& m, bool pretty = true) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = pretty;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// Options every service command takes.
struct Common {
  std::string address;
  bool json = false;
  rpc::ClientSecurity security;
  std::shared_ptr<grpc::Channel> channel;  // made once the options are read
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

absl::StatusOr<Args> ParseWith(const std::vector<std::string>& argv, std::set<std::string> valued,
                               std::set<std::string> flags, Common* common) {
  valued.insert({"address", "output", "tls-ca", "tls-cert", "tls-key", "token-file"});
  flags.insert("help");
  auto args = Args::Parse(argv, valued, flags, {{"o", "output"}, {"f", "file"}});
  if (!args.ok()) return args.status();
  const char* env = std::getenv("MAL_ADDRESS");
  common->address = args->Get("address", env != nullptr && *env ? env : "127.0.0.1:7070");
  const std::string output = args->Get("output", "text");
  if (output != "text" && output != "json") return absl::InvalidArgumentError("-o: must be text or json");
  common->json = output == "json";
  common->security.ca_file = args->Get("tls-ca", Env("MAL_TLS_CA"));
  common->security.cert_file = args->Get("tls-cert", Env("MAL_TLS_CERT"));
  common->security.key_file = args->Get("tls-key", Env("MAL_TLS_KEY"));
  auto token = rpc::LoadToken(args->Get("token-file"), "MAL_TOKEN");
  if (!token.ok()) return token.status();
  common->security.token = *token;
  // Fail here, naming the file, rather than at the first call.
  auto channel = rpc::MakeSecureChannel(common->address, common->security);
  if (!channel.ok()) return channel.status();
  common->channel = *channel;
  return args;
}

std::unique_ptr<v1::Coordinator::Stub> Connect(const Common& c) { return v1::Coordinator::NewStub(c.channel); }

std::string Name(v1::ExperimentState s) {
  std::string n = v1::ExperimentState_Name(s);
  return n.rfind("EXPERIMENT_", 0) == 0 ? n.substr(11) : n;
}
std::string Name(v1::RunState s) {
  std::string n = v1::RunState_Name(s);
  return n.rfind("RUN_", 0) == 0 ? n.substr(4) : n;
}

std::string Time(int64_t ms) {
  const time_t t = static_cast<time_t>(ms / 1000);
  char buf[32];
  std::tm tm;
  localtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string FormatEvent(const v1::Event& e) {
  std::string where = e.trial() < 0 ? "exp"
                      : e.fold() == 0 ? absl::StrFormat("t%d/all", e.trial())
                                      : absl::StrFormat("t%d/f%d", e.trial(), e.fold());
  std::string head = absl::StrFormat("%6d %-8s ", e.seq(), where);
  switch (e.body_case()) {
    case v1::Event::kState:
      return absl::StrCat(head, e.state().scope(), " ", e.state().state(),
                          e.state().worker().empty() ? "" : absl::StrCat(" on ", e.state().worker()),
                          e.state().attempt() > 0 ? absl::StrCat(" (attempt ", e.state().attempt() + 1, ")") : "",
                          e.state().message().empty() ? "" : absl::StrCat(": ", e.state().message()));
    case v1::Event::kPoint: {
      const auto& p = e.point();
      return absl::StrCat(head, absl::StrFormat("it %d ep %d  L_au %.4f  L_fe %.4f  L_val %s  w_au %.3f  w_fe %.3f  lr %.2g",
                                                p.iteration(), p.epoch(), p.loss_au(), p.loss_fe(),
                                                p.loss_val() < 0 ? "-" : absl::StrFormat("%.4f", p.loss_val()),
                                                p.mean_wn_au(), p.mean_wn_fe(), p.lr()));
    }
    case v1::Event::kWeights: {
      const auto& w = e.weights();
      std::string q;
      for (int i = 0; i < w.fe_quantiles_size(); ++i) absl::StrAppend(&q, i ? " " : "", absl::StrFormat("%.3f", w.fe_quantiles(i)));
      std::string low;
      for (const auto& s : w.lowest_fe()) {
        absl::StrAppend(&low, low.empty() ? "" : ", ", s.id(), absl::StrFormat(" %.3f", s.weight()),
                        s.consistency() >= 0 ? absl::StrFormat(" (c=%.2f)", s.consistency()) : "");
      }
      return absl::StrCat(head, "weights it ", w.iteration(), "  FE quantiles [", q, "]",
                          low.empty() ? "" : absl::StrCat("  lowest: ", low));
    }
    case v1::Event::kEpoch: {
      const auto& m = e.epoch();
      return absl::StrCat(head, absl::StrFormat("epoch %d  test F1 %.4f  val F1 %.4f  val loss %.4f", m.epoch(),
                                                m.test_mean_f1(), m.val_mean_f1(), m.val_loss()),
                          m.mean_fe_weight() >= 0 ? absl::StrFormat("  mean FE weight %.3f  rho(w, consistency) %+.2f",
                                                                    m.mean_fe_weight(),
                                                                    m.fe_weight_consistency_spearman())
                                                  : "");
    }
    case v1::Event::kFoldResult:
      if (e.fold() == 0) {
        return absl::StrCat(head, absl::StrFormat("final fit result: validation mean F1 %.4f after %d iterations",
                                                  e.fold_result().val_mean_f1(), e.fold_result().iterations()));
      }
      return absl::StrCat(head, absl::StrFormat("fold result: test mean F1 %.4f after %d iterations",
                                                e.fold_result().test_mean_f1(), e.fold_result().iterations()));
    case v1::Event::kTrialResult: {
      const auto& t = e.trial_result();
      std::vector<std::string> params;
      for (const auto& [k, v] : t.params()) params.push_back(absl::StrCat(k, "=", v));
      std::sort(params.begin(), params.end());
      return absl::StrCat(head, absl::StrFormat("trial %d %s: mean F1 %.4f +- %.4f", t.trial(), t.state(), t.mean_f1(),
                                                t.std_f1()),
                          params.empty() ? "" : absl::StrCat(" [", absl::StrJoin(params, " "), "]"),
                          t.message().empty() ? "" : absl::StrCat(": ", t.message()));
    }
    case v1::Event::kEnd:
      return absl::StrCat(head, "END ", Name(e.end().state()),
                          e.end().best_trial() >= 0 ? absl::StrFormat(": best trial %d, mean F1 %.4f",
                                                                      e.end().best_trial(), e.end().best_mean_f1())
                                                    : "",
                          e.end().message().empty() ? "" : absl::StrCat(" (", e.end().message(), ")"));
    default:
      return head + "?";
  }
}

// Streams events from `from_seq` until the End event; reconnects (from the next seq) when the
// stream breaks or the coordinator ends it for falling behind. Returns the experiment's exit code.
int Follow(const Common& c, const std::string& id, int64_t from_seq, const std::vector<std::string>& kinds) {
  auto stub = Connect(c);
  int64_t next = std::max<int64_t>(from_seq, 1);
  int backoff = 200;
  bool reached = false;
  auto last_contact = std::chrono::steady_clock::now();
  for (;;) {
    grpc::ClientContext ctx;
    v1::WatchRequest req;
    req.set_experiment_id(id);
    req.set_from_seq(next);
    for (const auto& k : kinds) req.add_kinds(k);
    auto reader = stub->Watch(&ctx, req);
    v1::WatchResponse resp;
    while (reader->Read(&resp)) {
      backoff = 200;
      reached = true;
      last_contact = std::chrono::steady_clock::now();
      if (resp.has_progress()) continue;  // keeps the stream alive; carries the latest seq
      const v1::Event& e = resp.event();
      next = e.seq() + 1;
      std::cout << (c.json ? Json(resp.event(), false) : FormatEvent(e)) << std::endl;
      if (e.has_end()) {
        ctx.TryCancel();
        reader->Finish().IgnoreError();
        return e.end().state() == v1::EXPERIMENT_SUCCEEDED ? kOk : kFailed;
      }
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) {
      // Filtered streams end without the End event being sent: ask for the state.
      v1::GetExperimentRequest g;
      g.set_experiment_id(id);
      v1::ExperimentInfo info;
      grpc::ClientContext gctx;
      rpc::SetDeadline(gctx, kTimeout);
      if (stub->GetExperiment(&gctx, g, &info).ok() && info.state() != v1::EXPERIMENT_RUNNING) {
        if (!c.json && next > info.last_seq()) {
          std::cerr << "malctl: " << id << " is " << Name(info.state()) << "; its last event is seq "
                    << info.last_seq() << ", nothing at or after seq " << next << "\n";
        }
        return info.state() == v1::EXPERIMENT_SUCCEEDED ? kOk : kFailed;
      }
      continue;
    }
    // Resume after falling behind (RESOURCE_EXHAUSTED), a coordinator shutdown (UNAVAILABLE,
    // CANCELLED) or a broken stream; anything else (not found, not authenticated...) is final.
    if (!IsTransient(s)) return RpcFail(s);
    // Reconnect across a coordinator restart, but not to an address that never answered.
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        (!reached || std::chrono::steady_clock::now() - last_contact > std::chrono::seconds(kReconnectSeconds))) {
      return RpcFail(s);
    }
    if (!c.json) std::cerr << "malctl: watch interrupted (" << s.error_message() << "); resuming from seq " << next << "\n";
    std::this_thread::sleep_for(milliseconds(backoff));
    backoff = std::min(backoff * 2, 5000);
  }
}

void PrintExperiment(const v1::ExperimentInfo& e) {
  std::cout << "experiment " << e.id() << " (" << e.name() << "): " << Name(e.state())
            << (e.message().empty() ? "" : ": " + e.message()) << "\n"
            << "  created " << Time(e.created_ms()) << ", priority " << e.priority() << ", runs " << e.runs_done()
            << "/" << e.runs_total() << " done, " << e.runs_running() << " running, last event seq " << e.last_seq()
            << "\n";
  if (e.runs_size() == 0) return;
  std::cout << absl::StrFormat("  %-6s %-5s %-4s %-10s %-7s %-5s %-9s %-20s %s\n", "RUN", "TRIAL", "FOLD", "STATE",
                               "ATTEMPT", "EPOCH", "TEST F1", "WORKER", "MESSAGE");
  for (const auto& r : e.runs()) {
    std::cout << absl::StrFormat("  %-6d %-5d %-4s %-10s %-7d %-5d %-9s %-20s %s\n", r.id(), r.trial(),
                                 r.fold() == 0 ? "all" : absl::StrCat(r.fold()),
                                 Name(r.state()), r.attempt() + 1, r.epoch(),
                                 r.state() == v1::RUN_SUCCEEDED && r.fold() != 0
                                     ? absl::StrFormat("%.4f", r.result().test_mean_f1())
                                     : "-",
                                 r.worker().empty() ? "-" : r.worker(), r.message());
  }
}

int Submit(const std::vector<std::string>& argv) {
  Common c;
  auto args = ParseWith(argv, {"file", "request-id", "priority", "kinds"}, {"follow"}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help") || !args->Has("file")) {
    std::cerr << "usage: malctl submit -f SPEC.yaml [--follow [--kinds state,epoch,...]] [--request-id ID] "
                 "[--priority N] [--address HOST:PORT] [-o json]\n";
    return args->Flag("help") ? kOk : kUsage;
  }
  auto spec = LoadSpecFile(args->Get("file"));
  if (!spec.ok()) return Fail(kUsage, std::string(spec.status().message()));
  // Relative dataset and model paths mean "from where malctl runs": absolute before the spec
  // leaves this machine.
  ResolveSpecPaths(*spec, fs::current_path().string());
  if (args->Has("priority")) {
    auto p = args->GetInt("priority", 0);
    if (!p.ok()) return Fail(kUsage, std::string(p.status().message()));
    spec->set_priority(static_cast<int>(*p));
  }
  v1::SubmitExperimentRequest req;
  *req.mutable_spec() = *spec;
  // One id for every retry of this submission, so a lost answer never creates two experiments.
  req.set_request_id(args->Get("request-id", absl::StrCat("malctl-", ::getpid(), "-",
                                                          MixSeed(static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()), ::getpid()))));
  auto stub = Connect(c);
  v1::SubmitExperimentResponse resp;
  grpc::Status s;
  for (int attempt = 0; attempt < 4; ++attempt) {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, kTimeout);
    s = stub->SubmitExperiment(&ctx, req, &resp);
    if (!IsTransient(s)) break;  // safe to resend: the request id makes Submit idempotent
    std::this_thread::sleep_for(milliseconds(500 << attempt));
  }
  if (!s.ok()) return RpcFail(s);
  if (c.json) {
    std::cout << Json(resp) << "\n";
  } else {
    std::cout << (resp.existing() ? "already submitted as " : "submitted ") << resp.experiment_id() << ": "
              << resp.trials() << " trial(s), " << resp.runs() << " fold run(s)\n";
  }
  if (!args->Flag("follow")) return kOk;
  std::vector<std::string> kinds;
  if (args->Has("kinds")) kinds = absl::StrSplit(args->Get("kinds"), ',', absl::SkipEmpty());
  return Follow(c, resp.experiment_id(), 1, kinds);
}

int Ls(const std::vector<std::string>& argv) {
  Common c;
  auto args = ParseWith(argv, {}, {}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help")) {
    std::cerr << "usage: malctl ls [-o json]\n";
    return kOk;
  }
  v1::ListExperimentsResponse resp;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kTimeout);
  grpc::Status s = Connect(c)->ListExperiments(&ctx, v1::ListExperimentsRequest(), &resp);
  if (!s.ok()) return RpcFail(s);
  if (c.json) {
    std::cout << Json(resp) << "\n";
    return kOk;
  }
  std::cout << absl::StrFormat("%-10s %-24s %-10s %-9s %-8s %s\n", "ID", "NAME", "STATE", "RUNS", "RUNNING", "CREATED");
  for (const auto& e : resp.experiments()) {
    std::cout << absl::StrFormat("%-10s %-24s %-10s %-9s %-8d %s\n", e.id(), e.name(), Name(e.state()),
                                 absl::StrCat(e.runs_done(), "/", e.runs_total()), e.runs_running(),
                                 Time(e.created_ms()));
  }
  return kOk;
}

// describe, cancel: one experiment id, an ExperimentInfo back.
int OneExperiment(const std::vector<std::string>& argv, const std::string& command) {
  Common c;
  auto args = ParseWith(argv, {}, {}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help") || args->positional().size() != 1) {
    std::cerr << "usage: malctl " << command << " EXPERIMENT_ID [-o json]\n";
    return args->Flag("help") ? kOk : kUsage;
  }
  auto stub = Connect(c);
  v1::ExperimentInfo info;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kTimeout);
  grpc::Status s;
  if (command == "cancel") {
    v1::CancelExperimentRequest req;
    req.set_experiment_id(args->positional()[0]);
    s = stub->CancelExperiment(&ctx, req, &info);
  } else {
    v1::GetExperimentRequest req;
    req.set_experiment_id(args->positional()[0]);
    s = stub->GetExperiment(&ctx, req, &info);
  }
  if (!s.ok()) return RpcFail(s);
  if (c.json) {
    std::cout << Json(info) << "\n";
  } else {
    PrintExperiment(info);
  }
  return kOk;
}

int Watch(const std::vector<std::string>& argv) {
  Common c;
  auto args = ParseWith(argv, {"from-seq", "kinds"}, {}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help") || args->positional().size() != 1) {
    std::cerr << "usage: malctl watch EXPERIMENT_ID [--from-seq N] [--kinds state,point,weights,epoch,"
                 "fold_result,trial_result,end] [-o json]\n";
    return args->Flag("help") ? kOk : kUsage;
  }
  auto from = args->GetInt("from-seq", 1);
  if (!from.ok()) return Fail(kUsage, std::string(from.status().message()));
  std::vector<std::string> kinds;
  if (args->Has("kinds")) kinds = absl::StrSplit(args->Get("kinds"), ',', absl::SkipEmpty());
  return Follow(c, args->positional()[0], *from, kinds);
}

int Wait(const std::vector<std::string>& argv) {
  Common c;
  auto args = ParseWith(argv, {"timeout"}, {}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help") || args->positional().size() != 1) {
    std::cerr << "usage: malctl wait EXPERIMENT_ID [--timeout SECONDS] [-o json]\n"
                 "exit status: 0 succeeded, 1 failed or cancelled, 4 still running at the timeout\n";
    return args->Flag("help") ? kOk : kUsage;
  }
  auto timeout = args->GetDouble("timeout", 0);
  if (!timeout.ok()) return Fail(kUsage, std::string(timeout.status().message()));
  const auto end = std::chrono::steady_clock::now() + milliseconds(static_cast<int64_t>(*timeout * 1000));
  auto stub = Connect(c);
  v1::ExperimentInfo info;
  bool reached = false;
  auto last_contact = std::chrono::steady_clock::now();
  for (;;) {
    int64_t slice = 30000;
    if (*timeout > 0) {
      slice = std::min<int64_t>(slice, std::chrono::duration_cast<milliseconds>(end - std::chrono::steady_clock::now()).count());
      if (slice <= 0 && reached) break;
      slice = std::max<int64_t>(slice, 0);
    }
    v1::WaitExperimentRequest req;
    req.set_experiment_id(args->positional()[0]);
    req.set_timeout_ms(slice);
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, milliseconds(slice + 10000));
    grpc::Status s = stub->WaitExperiment(&ctx, req, &info);
    // A coordinator restarting (the call cancelled by its shutdown, then unreachable): keep waiting.
    const bool restarting = IsTransient(s);
    if (restarting && reached &&
        std::chrono::steady_clock::now() - last_contact < std::chrono::seconds(kReconnectSeconds)) {
      std::this_thread::sleep_for(milliseconds(1000));  // a coordinator restart: keep waiting
      continue;
    }
    if (!s.ok()) return RpcFail(s);
    reached = true;
    last_contact = std::chrono::steady_clock::now();
    if (info.state() != v1::EXPERIMENT_RUNNING) break;
  }
  if (c.json) {
    std::cout << Json(info) << "\n";
  } else {
    std::cout << info.id() << ": " << Name(info.state()) << (info.message().empty() ? "" : ": " + info.message())
              << "\n";
  }
  if (info.state() == v1::EXPERIMENT_RUNNING) return 4;
  return info.state() == v1::EXPERIMENT_SUCCEEDED ? kOk : kFailed;
}

int Results(const std::vector<std::string>& argv) {
  Common c;
  auto args = ParseWith(argv, {}, {}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help") || args->positional().size() != 1) {
    std::cerr << "usage: malctl results EXPERIMENT_ID [-o json]\n";
    return args->Flag("help") ? kOk : kUsage;
  }
  v1::ResultsRequest req;
  req.set_experiment_id(args->positional()[0]);
  v1::ResultsResponse r;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kTimeout);
  grpc::Status s = Connect(c)->GetResults(&ctx, req, &r);
  if (!s.ok()) return RpcFail(s);
  if (c.json) {
    std::cout << Json(r) << "\n";
    return kOk;
  }
  std::cout << r.experiment_id() << ": " << Name(r.state()) << "\n";
  for (const auto& t : r.trials()) {
    std::vector<std::string> params;
    for (const auto& [k, v] : t.params()) params.push_back(absl::StrCat(k, "=", v));
    std::sort(params.begin(), params.end());
    std::cout << absl::StrFormat("trial %d%s %s: mean F1 %.4f +- %.4f", t.trial(), t.trial() == r.best_trial() ? " (best)" : "",
                                 t.state().empty() ? "RUNNING" : t.state(), t.mean_f1(), t.std_f1())
              << (params.empty() ? "" : "  [" + absl::StrJoin(params, " ") + "]")
              << (t.message().empty() ? "" : "  " + t.message()) << "\n";
    if (t.aus_size() > 0) {
      std::cout << "  AU   ";
      for (int a : t.aus()) std::cout << absl::StrFormat("%7s", absl::StrCat("AU", a));
      std::cout << "\n  F1   ";
      for (double f : t.au_mean_f1()) std::cout << absl::StrFormat("%7.3f", f);
      std::cout << "\n  std  ";
      for (double f : t.au_std_f1()) std::cout << absl::StrFormat("%7.3f", f);
      std::cout << "\n";
    }
  }
  for (const auto& run : r.runs()) {
    if (run.state() != v1::RUN_SUCCEEDED) continue;
    if (run.fold() == 0) {
      std::cout << absl::StrFormat("  trial %d final fit on all subjects: validation mean F1 %.4f (%d iterations)\n",
                                   run.trial(), run.result().val_mean_f1(), run.result().iterations());
      continue;
    }
    std::cout << absl::StrFormat("  trial %d fold %d: test mean F1 %.4f (%d iterations)\n", run.trial(), run.fold(),
                                 run.result().test_mean_f1(), run.result().iterations());
  }
  for (const auto& m : r.models()) {
    std::cout << absl::StrFormat("model %s@%d: trial %d %s, %s %.4f, %s\n", m.name(), m.version(), m.trial(),
                                 m.fold() == 0 ? "final fit" : absl::StrCat("fold ", m.fold()),
                                 m.fold() == 0 ? "cross-validated mean F1" : "test mean F1", m.test_mean_f1(),
                                 m.artifact());
  }
  return kOk;
}

int Workers(const std::vector<std::string>& argv) {
  Common c;
  auto args = ParseWith(argv, {}, {}, &c);
  if (!args.ok()) return Fail(kUsage, std::string(args.status().message()));
  if (args->Flag("help")) {
    std::cerr << "usage: malctl workers [-o json]\n";
    return kOk;
  }
  v1::ListWorkersResponse r;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kTimeout);
  grpc::Status s = Connect(c)->ListWorkers(&ctx, v1::ListWorkersRequest(), &r);
  if (!s.ok()) return RpcFail(s);
  if (c.json) {
    std::cout << Json(r) << "\n";
    return kOk;
  }
  std::cout << absl::StrFormat("%-28s %-16s %-5s %-6s %-12s %-20s %s\n", "NAME", "HOST", "SLOTS", "ALIVE", "DEVICES",
                               "LAST HEARTBEAT", "RUNS");
  for (const auto& w : r.workers()) {
    std::cout << absl::StrFormat("%-28s %-16s %-5d %-6s %-12s %-20s %s\n", w.name(), w.host(), w.slots(),
                                 w.alive() ? "yes" : "no", absl::StrJoin(w.devices(), ","), Time(w.last_heartbeat_ms()),
                                 absl::StrJoin(w.runs(), ","));
  }
  return kOk;
}

}  // namespace

bool IsServiceCommand(const std::string& command) {
  for (const char* c : {"submit", "ls", "describe", "watch", "cancel", "wait", "results", "workers"}) {
    if (command == c) return true;
  }
  return false;
}

int RunServiceCommand(const std::string& command, const std::vector<std::string>& args) {
  if (command == "submit") return Submit(args);
  if (command == "ls") return Ls(args);
  if (command == "describe" || command == "cancel") return OneExperiment(args, command);
  if (command == "watch") return Watch(args);
  if (command == "wait") return Wait(args);
  if (command == "results") return Results(args);
  if (command == "workers") return Workers(args);
  return Fail(kUsage, "unknown command " + command);
}

}  // namespace mal::cli
