// `malctl results ID [ID ...]`: one experiment's trials (ranked by mean F1) with per-AU F1 per fold
// and mean +- std; several experiments side by side (each one's best trial), the best value per AU
// marked and the difference to the first; -o table|json|yaml|csv.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/service_client.h"
#include "common/util/csv.h"

namespace mal::cli {

namespace {

const v1::TrialResult* BestTrial(const v1::ResultsResponse& r) {
  for (const auto& t : r.trials()) {
    if (t.trial() == r.best_trial() && t.state() == "SUCCEEDED") return &t;
  }
  return nullptr;
}

std::string Params(const v1::TrialResult& t) {
  std::vector<std::string> params;
  for (const auto& [k, v] : t.params()) params.push_back(absl::StrCat(k, "=", v));
  std::sort(params.begin(), params.end());
  return absl::StrJoin(params, " ");
}

struct AuRow {
  std::string label;
  std::vector<double> values;  // per AU
  double summary = 0;          // the last column: the mean over AUs (std row: over folds)
};

// The AU row header and one row per series, values %7.3f.
void PrintAuRows(const std::vector<int>& aus, const std::vector<AuRow>& rows) {
  std::cout << absl::StrFormat("    %-14s", "");
  for (int a : aus) std::cout << absl::StrFormat("%7s", absl::StrCat("AU", a));
  std::cout << absl::StrFormat("%8s\n", "mean F1");
  for (const AuRow& row : rows) {
    std::cout << absl::StrFormat("    %-14s", row.label);
    for (double v : row.values) std::cout << absl::StrFormat("%7.3f", v);
    std::cout << absl::StrFormat("%8.3f\n", row.summary);
  }
}

void PrintOne(const v1::ResultsResponse& r) {
  std::cout << r.experiment_id() << ": " << Name(r.state()) << "\n";
  std::vector<const v1::TrialResult*> ranked;
  for (const auto& t : r.trials()) ranked.push_back(&t);
  // Ranked: finished trials by mean F1, then the rest by number.
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto* a, const auto* b) {
    const bool fa = a->state() == "SUCCEEDED", fb = b->state() == "SUCCEEDED";
    if (fa != fb) return fa;
    return fa && a->mean_f1() > b->mean_f1();
  });
  int rank = 0;
  for (const v1::TrialResult* t : ranked) {
    const std::string params = Params(*t);
    // A trial that did not succeed: its mean over the folds that finished, if any (not a 0.0000
    // that reads like a result).
    std::string f1 = absl::StrFormat("mean F1 %.4f +- %.4f", t->mean_f1(), t->std_f1());
    if (t->state() != "SUCCEEDED") {
      int folds_done = 0;
      for (const auto& run : r.runs()) {
        folds_done +=
            run.trial() == t->trial() && run.state() == v1::RUN_SUCCEEDED && run.fold() != 0;
      }
      f1 = folds_done == 0
               ? "no fold finished"
               : absl::StrFormat("%s over the %d fold(s) that finished", f1, folds_done);
    }
    std::cout << absl::StrFormat("#%d trial %d%s %s: %s", ++rank, t->trial(),
                                 t->trial() == r.best_trial() ? " (best)" : "",
                                 t->state().empty() ? "RUNNING" : t->state(), f1)
              << (params.empty() ? "" : "  [" + params + "]")
              << (t->message().empty() ? "" : "  " + t->message()) << "\n";
    if (t->aus_size() == 0) continue;
    std::vector<AuRow> rows;
    std::vector<std::pair<int, const v1::FoldResult*>> folds;
    for (const auto& run : r.runs()) {
      if (run.trial() == t->trial() && run.state() == v1::RUN_SUCCEEDED && run.fold() != 0)
        folds.emplace_back(run.fold(), &run.result());
    }
    std::sort(folds.begin(), folds.end());
    for (const auto& [fold, result] : folds) {
      rows.push_back({absl::StrCat("fold ", fold),
                      std::vector<double>(result->test_f1().begin(), result->test_f1().end()),
                      result->test_mean_f1()});
    }
    rows.push_back({"mean", std::vector<double>(t->au_mean_f1().begin(), t->au_mean_f1().end()),
                    t->mean_f1()});
    rows.push_back({"std over folds",
                    std::vector<double>(t->au_std_f1().begin(), t->au_std_f1().end()),
                    t->std_f1()});
    PrintAuRows(std::vector<int>(t->aus().begin(), t->aus().end()), rows);
  }
  for (const auto& run : r.runs()) {
    if (run.state() == v1::RUN_SUCCEEDED && run.fold() == 0) {
      std::cout << absl::StrFormat(
          "trial %d final fit on all subjects: validation mean F1 %.4f (%d iterations)\n",
          run.trial(), run.result().val_mean_f1(), run.result().iterations());
    }
  }
  for (const auto& m : r.models()) {
    std::cout << absl::StrFormat(
        "model %s:%d: trial %d %s, %s %.4f\n", m.name(), m.version(), m.trial(),
        m.fold() == 0 ? "final fit" : absl::StrCat("fold ", m.fold()),
        m.fold() == 0 ? "cross-validated mean F1" : "test mean F1", m.test_mean_f1());
  }
}

// Several experiments: their best trials' per-AU mean F1 side by side. '*' marks the best value
// per AU; the last columns are each experiment's difference to the first.
void PrintComparison(const std::vector<v1::ResultsResponse>& all,
                     const std::vector<std::string>& labels) {
  std::vector<int> aus;
  std::vector<std::map<int, double>> f1(all.size());
  std::vector<double> mean(all.size(), 0), std(all.size(), 0);
  std::vector<bool> has(all.size(), false);  // a best trial (none: no trial succeeded)
  for (size_t i = 0; i < all.size(); ++i) {
    const v1::TrialResult* t = BestTrial(all[i]);
    if (t == nullptr) continue;
    has[i] = true;
    for (int k = 0; k < t->aus_size(); ++k) {
      f1[i][t->aus(k)] = t->au_mean_f1(k);
      if (std::find(aus.begin(), aus.end(), t->aus(k)) == aus.end()) aus.push_back(t->aus(k));
    }
    mean[i] = t->mean_f1();
    std[i] = t->std_f1();
  }
  std::cout << absl::StrFormat("%-6s", "AU");
  for (const auto& l : labels) std::cout << absl::StrFormat(" %14s", l);
  for (size_t i = 1; i < labels.size(); ++i)
    std::cout << absl::StrFormat(" %14s", absl::StrCat("d(", labels[i], ")"));
  std::cout << "\n";
  auto cell = [&](size_t i, int au) -> std::optional<double> {
    auto it = f1[i].find(au);
    return it == f1[i].end() ? std::nullopt : std::optional<double>(it->second);
  };
  for (int au : aus) {
    double best = -1;
    for (size_t i = 0; i < all.size(); ++i) best = std::max(best, cell(i, au).value_or(-1));
    std::cout << absl::StrFormat("%-6s", absl::StrCat("AU", au));
    for (size_t i = 0; i < all.size(); ++i) {
      const auto v = cell(i, au);
      std::cout << (v ? absl::StrFormat(" %13.3f%s", *v, *v == best ? "*" : " ")
                      : absl::StrFormat(" %14s", "-"));
    }
    for (size_t i = 1; i < all.size(); ++i) {
      const auto v = cell(i, au), first = cell(0, au);
      std::cout << (v && first ? absl::StrFormat(" %+14.3f", *v - *first)
                               : absl::StrFormat(" %14s", "-"));
    }
    std::cout << "\n";
  }
  double best = -1;
  for (size_t i = 0; i < all.size(); ++i) best = has[i] ? std::max(best, mean[i]) : best;
  std::cout << absl::StrFormat("%-6s", "mean");
  for (size_t i = 0; i < all.size(); ++i) {
    std::cout << (has[i] ? absl::StrFormat(" %7.3f+-%.3f%s", mean[i], std[i],
                                           mean[i] == best ? "*" : " ")
                         : absl::StrFormat(" %14s", "-"));
  }
  for (size_t i = 1; i < all.size(); ++i) {
    std::cout << (has[i] && has[0] ? absl::StrFormat(" %+14.3f", mean[i] - mean[0])
                                   : absl::StrFormat(" %14s", "-"));
  }
  std::cout << "\n(each experiment's best trial: per-AU test F1, mean over folds; * the best; "
               "d() the difference to the first; - no trial succeeded)\n";
}

// experiment,name,method,trial,fold,AU..,mean,params: one row per finished fold run, then "mean"
// and "std" rows for each trial that succeeded (a failed or unfinished trial has only its folds'
// rows: a mean over the folds that happened to finish is not the trial's result).
void PrintCsv(const std::vector<v1::ResultsResponse>& all,
              const std::vector<v1::ExperimentInfo>& infos) {
  std::vector<int> aus;
  for (const auto& r : all) {
    for (const auto& t : r.trials()) {
      for (int a : t.aus())
        if (std::find(aus.begin(), aus.end(), a) == aus.end()) aus.push_back(a);
    }
  }
  std::cout << "experiment,name,method,trial,fold";
  for (int a : aus) std::cout << ",AU" << a;
  std::cout << ",mean,params\n";
  auto row = [&](const v1::ExperimentInfo& info, const v1::TrialResult& t, const std::string& fold,
                 const google::protobuf::RepeatedField<int>& row_aus,
                 const google::protobuf::RepeatedField<double>& values, double mean) {
    // The trial's own method where the search chose it (an STL / MTL / MAL ablation in one
    // experiment), and its searched values as "key=value" pairs, sorted, ';'-separated.
    const auto searched = t.params().find("method");
    const std::string method = searched != t.params().end()
                                   ? searched->second
                                   : absl::AsciiStrToLower(v1::Method_Name(info.spec().method()));
    const std::map<std::string, std::string> params(t.params().begin(), t.params().end());
    std::string pairs;
    for (const auto& [key, value] : params)
      absl::StrAppend(&pairs, pairs.empty() ? "" : ";", key, "=", value);
    std::cout << CsvField(info.id()) << "," << CsvField(info.name()) << "," << CsvField(method)
              << "," << t.trial() << "," << fold;
    for (int a : aus) {
      std::cout << ",";
      for (int k = 0; k < row_aus.size() && k < values.size(); ++k)
        if (row_aus[k] == a) std::cout << absl::StrFormat("%.4f", values[k]);
    }
    std::cout << absl::StrFormat(",%.4f,", mean) << CsvField(pairs) << "\n";
  };
  for (size_t i = 0; i < all.size(); ++i) {
    for (const auto& t : all[i].trials()) {
      for (const auto& run : all[i].runs()) {
        if (run.trial() == t.trial() && run.state() == v1::RUN_SUCCEEDED && run.fold() != 0)
          row(infos[i], t, absl::StrCat(run.fold()), run.result().aus(), run.result().test_f1(),
              run.result().test_mean_f1());
      }
      if (t.aus_size() == 0 || t.state() != "SUCCEEDED") continue;
      row(infos[i], t, "mean", t.aus(), t.au_mean_f1(), t.mean_f1());
      row(infos[i], t, "std", t.aus(), t.au_std_f1(), t.std_f1());
    }
  }
}

int Results(const ServiceClient& c, const std::vector<std::string>& ids,
            const std::string& format) {
  std::vector<v1::ResultsResponse> all;
  std::vector<v1::ExperimentInfo> infos;
  for (const std::string& id : ids) {
    v1::ResultsResponse r;
    if (grpc::Status s = GetResults(c, id, &r); !s.ok()) return RpcFail(s);
    v1::ExperimentInfo info;
    if (grpc::Status s = GetExperiment(c, id, &info); !s.ok()) return RpcFail(s);
    all.push_back(std::move(r));
    infos.push_back(std::move(info));
  }
  if (format == "csv") {
    PrintCsv(all, infos);
  } else if (format == "json") {
    if (all.size() == 1) {
      std::cout << Json(all[0]) << "\n";
    } else {
      std::vector<std::string> parts;
      for (const auto& r : all) parts.push_back(Json(r, false));
      std::cout << "[" << absl::StrJoin(parts, ",\n ") << "]\n";
    }
  } else if (format == "yaml") {
    for (const auto& r : all) std::cout << (all.size() > 1 ? "---\n" : "") << Yaml(r);
  } else if (all.size() == 1) {
    PrintOne(all[0]);
  } else {
    std::vector<std::string> labels;
    for (const auto& info : infos) {
      labels.push_back(absl::StrCat(info.id(), " ",
                                    absl::AsciiStrToLower(v1::Method_Name(info.spec().method()))));
    }
    PrintComparison(all, labels);
  }
  return kOk;
}

}  // namespace

void AddResultsCommand(CLI::App& app, int* exit_code) {
  struct Options {
    ServiceOptions service;
    std::vector<std::string> ids;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "results",
      "per-AU F1 per fold, mean +- std, trials ranked, models; several experiments side by side");
  cmd->add_option("ids", o->ids, "experiment ids (exp-N)")->required();
  AddServiceOptions(*cmd, &o->service, "MAL_ADDRESS", /*output=*/false);
  cmd->add_option("-o,--output", o->service.output, "table (or text), json, yaml or csv")
      ->check(CLI::IsMember({"table", "text", "json", "yaml", "csv"}));
  cmd->footer("Example: malctl results exp-1 exp-2 exp-3   # STL, MTL, MAL compared per AU");
  cmd->callback([o, exit_code] {
    auto c = Connect(o->service);
    *exit_code = c.ok() ? Results(*c, o->ids, o->service.output)
                        : Fail(kUsage, std::string(c.status().message()));
  });
}

}  // namespace mal::cli
