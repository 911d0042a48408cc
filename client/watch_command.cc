#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/live_view.h"
#include "client/service_client.h"
#include "common/util/grpc_status.h"

namespace mal::cli {

using std::chrono::milliseconds;

std::string RunLabel(int trial, int fold) {
  return fold == 0 ? absl::StrFormat("t%d/all", trial) : absl::StrFormat("t%d/f%d", trial, fold);
}

namespace {
// "  images not decoded: 3 training, 2 test" (empty when every image decoded).
std::string FailedImages(const v1::EpochMetrics& m) {
  std::vector<std::string> parts;
  if (m.train_failed_images() > 0)
    parts.push_back(absl::StrCat(m.train_failed_images(), " training"));
  if (m.test_failed_images() > 0) parts.push_back(absl::StrCat(m.test_failed_images(), " test"));
  if (m.val_failed_images() > 0)
    parts.push_back(absl::StrCat(m.val_failed_images(), " validation"));
  return parts.empty() ? "" : absl::StrCat("  images not decoded: ", absl::StrJoin(parts, ", "));
}
}  // namespace

std::string FormatEvent(const v1::Event& e) {
  std::string where = e.trial() < 0 ? "exp" : RunLabel(e.trial(), e.fold());
  std::string head = absl::StrFormat("%6d %-8s ", e.seq(), where);
  switch (e.body_case()) {
    case v1::Event::kState:
      return absl::StrCat(
          head, e.state().scope(), " ", e.state().state(),
          e.state().worker().empty() ? "" : absl::StrCat(" on ", e.state().worker()),
          e.state().attempt() > 0 ? absl::StrCat(" (attempt ", e.state().attempt() + 1, ")") : "",
          e.state().message().empty() ? "" : absl::StrCat(": ", e.state().message()));
    case v1::Event::kPoint: {
      const auto& p = e.point();
      return absl::StrCat(
          head, absl::StrFormat(
                    "it %d ep %d  L_au %.4f  L_fe %.4f  L_val %s  w_au %.3f  w_fe %.3f  lr %.2g",
                    p.iteration(), p.epoch(), p.loss_au(), p.loss_fe(),
                    p.loss_val() < 0 ? "-" : absl::StrFormat("%.4f", p.loss_val()), p.mean_wn_au(),
                    p.mean_wn_fe(), p.lr()));
    }
    case v1::Event::kWeights: {
      const auto& w = e.weights();
      std::string q;
      for (int i = 0; i < w.fe_quantiles_size(); ++i)
        absl::StrAppend(&q, i ? " " : "", absl::StrFormat("%.3f", w.fe_quantiles(i)));
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
      return absl::StrCat(
          head,
          absl::StrFormat("epoch %d  test F1 %.4f  val F1 %.4f  val loss %.4f", m.epoch(),
                          m.test_mean_f1(), m.val_mean_f1(), m.val_loss()),
          m.mean_fe_weight() >= 0
              ? absl::StrFormat("  mean FE weight %.3f  rho(w, consistency) %+.2f",
                                m.mean_fe_weight(), m.fe_weight_consistency_spearman())
              : "",
          FailedImages(m));
    }
    case v1::Event::kFoldResult:
      if (e.fold() == 0) {
        return absl::StrCat(
            head, absl::StrFormat("final fit result: validation mean F1 %.4f after %d iterations",
                                  e.fold_result().val_mean_f1(), e.fold_result().iterations()));
      }
      return absl::StrCat(
          head, absl::StrFormat("fold result: test mean F1 %.4f after %d iterations",
                                e.fold_result().test_mean_f1(), e.fold_result().iterations()));
    case v1::Event::kTrialResult: {
      const auto& t = e.trial_result();
      std::vector<std::string> params;
      for (const auto& [k, v] : t.params()) params.push_back(absl::StrCat(k, "=", v));
      std::sort(params.begin(), params.end());
      return absl::StrCat(head,
                          absl::StrFormat("trial %d %s: mean F1 %.4f +- %.4f", t.trial(), t.state(),
                                          t.mean_f1(), t.std_f1()),
                          params.empty() ? "" : absl::StrCat(" [", absl::StrJoin(params, " "), "]"),
                          t.message().empty() ? "" : absl::StrCat(": ", t.message()));
    }
    case v1::Event::kRestart: {
      const auto& r = e.restart();
      return absl::StrCat(
          head,
          absl::StrFormat("starting over from iteration 1 with batch %d AU + %d FE", r.batch_au(),
                          r.batch_fe()),
          r.val_batch() > 0 ? absl::StrFormat(", validation batch %d", r.val_batch()) : "",
          absl::StrFormat(" (train.oom_retries: halving %d)", r.halving()),
          r.reason().empty() ? "" : absl::StrCat(": ", r.reason()));
    }
    case v1::Event::kEnd:
      return absl::StrCat(
          head, "END ", Name(e.end().state()),
          e.end().best_trial() >= 0 ? absl::StrFormat(": best trial %d, mean F1 %.4f",
                                                      e.end().best_trial(), e.end().best_mean_f1())
                                    : "",
          e.end().message().empty() ? "" : absl::StrCat(" (", e.end().message(), ")"));
    default:
      return head + "?";
  }
}

// Streams that end in INTERNAL or UNKNOWN one after the other, with no message between them,
// after which watch gives up (exit 1).
constexpr int kMaxInternalFailures = 5;

int Follow(const ServiceClient& c, const std::string& id, int64_t from_seq,
           const std::vector<std::string>& kinds) {
  v1::Coordinator::Stub* stub = c.stub.get();
  int64_t next = std::max<int64_t>(from_seq, 1);
  // The experiment first: an address that never answers is not waited for (exit 4), and once
  // the coordinator has answered, a stream broken by its restart is resumed, also before a
  // filtered stream's first message (which may take seconds).
  v1::ExperimentInfo info;
  if (grpc::Status s = GetExperiment(c, id, &info); !s.ok()) return RpcFail(s);
  std::unique_ptr<LiveView> view;
  if (c.live) {
    view = std::make_unique<LiveView>(std::cout,
                                      absl::StrCat(info.id(), " (", info.name(), ", ",
                                                   v1::Method_Name(info.spec().method()), ")"),
                                      info.spec().train().epochs(), info.runs_total());
  }
  int backoff = 200;
  int failures = 0;  // failed streams since the last message; an error that persists is final
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
      failures = 0;
      last_contact = std::chrono::steady_clock::now();
      if (resp.has_progress()) continue;  // keeps the stream alive; carries the latest seq
      const v1::Event& e = resp.event();
      next = e.seq() + 1;
      if (view) {
        view->Add(e);
        view->Draw(e.has_end());
      } else if (c.output == "yaml") {
        std::cout << "---\n" << Yaml(e) << std::flush;
      } else {
        std::cout << (c.json ? Json(e, false) : FormatEvent(e)) << std::endl;
      }
      if (e.has_end()) {
        ctx.TryCancel();
        reader->Finish().IgnoreError();
        return e.end().state() == v1::EXPERIMENT_SUCCEEDED ? kOk : kFailed;
      }
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) {
      // Filtered streams end without the End event being sent: ask for the state.
      if (GetExperiment(c, id, &info).ok() && info.state() != v1::EXPERIMENT_RUNNING) {
        if (!c.structured() && next > info.last_seq()) {
          std::cerr << "malctl: " << id << " is " << Name(info.state())
                    << "; its last event is seq " << info.last_seq() << ", nothing at or after seq "
                    << next << "\n";
        }
        return info.state() == v1::EXPERIMENT_SUCCEEDED ? kOk : kFailed;
      }
      continue;
    }
    // Resume after falling behind (RESOURCE_EXHAUSTED), a coordinator shutdown (UNAVAILABLE,
    // CANCELLED) or a broken stream; anything else (not found, not authenticated...) is final.
    if (!IsTransient(s)) return RpcFail(s);
    // INTERNAL and UNKNOWN are also how a broken stream can end, so they are retried, but not
    // for ever: a coordinator that answers with the same failure (a damaged state store) ends it.
    if ((s.error_code() == grpc::StatusCode::INTERNAL ||
         s.error_code() == grpc::StatusCode::UNKNOWN) &&
        ++failures >= kMaxInternalFailures) {
      return RpcFail(s);
    }
    // Reconnect across a coordinator restart, for up to kReconnectSeconds without contact.
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        std::chrono::steady_clock::now() - last_contact > std::chrono::seconds(kReconnectSeconds)) {
      return RpcFail(s);
    }
    const std::string resuming =
        absl::StrCat("watch interrupted (", s.error_message(), "); resuming from seq ", next);
    if (view) {
      view->Status(resuming);
      view->Draw(true);
    } else if (!c.structured()) {
      std::cerr << "malctl: " << resuming << "\n";
    }
    std::this_thread::sleep_for(milliseconds(backoff));
    backoff = std::min(backoff * 2, 5000);
  }
}

bool LiveWanted(const ServiceClient& c, bool plain, const std::vector<std::string>& kinds) {
  return !plain && kinds.empty() && c.output == "table" && ::isatty(STDOUT_FILENO) != 0;
}

void AddWatchCommand(CLI::App& app, int* exit_code) {
  struct Options {
    ServiceOptions service;
    std::string id;
    int64_t from_seq = 1;
    std::vector<std::string> kinds;
    bool plain = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "watch", "stream an experiment's events (losses, weights, metrics) until it ends");
  cmd->add_option("id", o->id, "the experiment id (exp-N)")->required();
  cmd->add_option("--from-seq", o->from_seq, "the first event to show (events are numbered from 1)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kinds", o->kinds,
                  absl::StrCat("only these kinds: ", absl::StrJoin(EventKinds(), ",")))
      ->delimiter(',')
      ->check(CLI::IsMember(EventKinds()));
  cmd->add_flag("--plain", o->plain,
                "one line per event even on a terminal (the default when stdout is not one)");
  AddServiceOptions(*cmd, &o->service);
  cmd->footer(
      "On a terminal: a live view of the fold runs under way and the FE samples' weights;\n"
      "piped: one line per event; -o json: one JSON object per line (NDJSON).\n"
      "Example: malctl watch exp-3");
  cmd->callback([o, exit_code] {
    auto client = Connect(o->service);
    if (client.ok()) client->live = LiveWanted(*client, o->plain, o->kinds);
    *exit_code = client.ok() ? Follow(*client, o->id, o->from_seq, o->kinds)
                             : Fail(kUsage, std::string(client.status().message()));
  });
}

}  // namespace mal::cli
