// `malctl plot`: the paper's figures for finished (or running) experiments, drawn by gnuplot
// (Debian's gnuplot-nox) from data files this command writes: mal draws no pixels itself.
//   Fig. 3: loss per task and the normalised mean AU / FE weight over iterations (records.csv);
//   Fig. 5: FE sample weights by expression, ranked (the last weights/epoch_NNN.csv);
//   Fig. 6: FE weight against annotator consistency, with Spearman's rho (the same CSV);
//   per-AU F1 of the given experiments side by side (GetResults, best trial, mean +- std).

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/service_client.h"
#include "common/metrics/au_metrics.h"
#include "common/util/csv.h"
#include "common/util/files.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"

extern char** environ;

namespace mal::cli {

namespace {

namespace fs = std::filesystem;

// One colour per series, fixed so that figures (and tests) can tell the curves apart.
constexpr const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                    "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

struct PlotOptions {
  RunOptions run;  // run.id unused: ids
  std::vector<std::string> ids;
  std::string out;
  std::vector<std::string> formats{"png", "pdf"};
};

// A gnuplot string literal: single quotes, a quote doubled.
std::string Quote(const std::string& s) {
  return "'" + absl::StrReplaceAll(s, {{"'", "''"}}) + "'";
}
// Text for titles (gnuplot's enhanced text mode would read _ and ^ as sub/superscripts).
std::string Title(const std::string& s) {
  return Quote(absl::StrReplaceAll(s, {{"_", "\\\\_"}, {"^", "\\\\^"}, {"@", "\\\\@"}}));
}

// Runs gnuplot on `script`; its stderr goes to `script`.log. A failure names the log.
absl::Status RunGnuplot(const std::string& script) {
  const std::string log = script + ".log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  std::string bin = "gnuplot";
  std::vector<char*> argv{bin.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::FailedPreconditionError(
        "gnuplot not found: install Debian's gnuplot-nox (deploy/setup.sh does)");
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat("gnuplot failed on ", script, ": ", ReadFile(log).value_or("(no log)")));
  }
  return absl::OkStatus();
}

// Writes `body` (plot commands) as a script that draws it once per format into out/base.FORMAT;
// returns the files written.
absl::StatusOr<std::vector<std::string>> Draw(const PlotOptions& o, const std::string& base,
                                              const std::string& body, int width, int height) {
  const std::string script = absl::StrCat(o.out, "/data/", base, ".gp");
  std::string text = "set encoding utf8\nset datafile separator whitespace\n";
  std::vector<std::string> files;
  for (const std::string& format : o.formats) {
    const std::string file = absl::StrCat(o.out, "/", base, ".", format);
    if (format == "png") {
      absl::StrAppend(&text, "set terminal pngcairo size ", width, ",", height,
                      " font 'Sans,10' noenhanced\n");
    } else {
      absl::StrAppend(&text, "set terminal pdfcairo size ", width / 100.0, "in,", height / 100.0,
                      "in font 'Sans,9' noenhanced\n");
    }
    absl::StrAppend(&text, "set output ", Quote(file), "\nreset session\n", body,
                    "\nunset output\n");
    files.push_back(file);
  }
  if (absl::Status s = WriteFileAtomic(script, text); !s.ok()) return s;
  if (absl::Status s = RunGnuplot(script); !s.ok()) return s;
  return files;
}

double Number(const std::string& s, double otherwise = -1) {
  double v;
  return absl::SimpleAtod(s, &v) ? v : otherwise;
}

absl::StatusOr<std::vector<std::string>> Figure3(const PlotOptions& o, const RunOptions& run,
                                                 const std::string& records,
                                                 const std::string& base) {
  ASSIGN_OR_RETURN(const CsvTable t, ParseCsvTable(records));
  if (t.rows.empty())
    return absl::NotFoundError(absl::StrCat(Where(run), ": records.csv is empty"));
  std::string dat = "# iteration loss_au loss_fe loss_val mean_wn_au mean_wn_fe\n";
  for (size_t r = 0; r < t.rows.size(); ++r) {
    const double val = Number(t.At(r, "loss_val"));
    absl::StrAppend(&dat, t.At(r, "iteration"), " ", t.At(r, "loss_au"), " ", t.At(r, "loss_fe"),
                    " ", val >= 0 ? t.At(r, "loss_val") : "NaN", " ", t.At(r, "mean_wn_au"), " ",
                    t.At(r, "mean_wn_fe"), "\n");
  }
  const std::string file = absl::StrCat(o.out, "/data/", base, ".dat");
  RETURN_IF_ERROR(WriteFileAtomic(file, dat));
  const std::string f = Quote(file);
  const std::string body = absl::StrCat(
      "set multiplot layout 2,1 title ",
      Title(absl::StrCat(Where(run), ": losses and task weights (paper Fig. 3)")), "\n",
      "set grid\nset key outside right\nset ylabel 'loss'\nset xlabel 'iteration'\n", "plot ", f,
      " using 1:2 with lines lw 1.5 lc rgb '", kColours[0], "' title 'AU loss', ", f,
      " using 1:3 with lines lw 1.5 lc rgb '", kColours[1], "' title 'FE loss', ", f,
      " using 1:4 with points pt 7 ps 0.4 lc rgb '", kColours[2], "' title 'validation loss'\n",
      "set ylabel 'normalised mean weight'\nset offsets 0, 0, 0.01, 0.01\n", "plot ", f,
      " using 1:5 with lines lw 1.5 lc rgb '", kColours[3], "' title 'AU task', ", f,
      " using 1:6 with lines lw 1.5 lc rgb '", kColours[4], "' title 'FE task', ",
      "0.5 with lines dt 2 lc rgb '#888888' title 'equal share'\n", "unset multiplot\n");
  return Draw(o, base, body, 900, 700);
}

absl::StatusOr<std::vector<std::string>> Figures5And6(const PlotOptions& o, const RunOptions& run,
                                                      const std::string& csv, int epoch,
                                                      const std::string& base) {
  ASSIGN_OR_RETURN(const CsvTable t, ParseCsvTable(csv));
  std::map<std::string, std::vector<double>> by_expression;  // label: an expression's name
  std::vector<double> consistency, weight;
  std::string scatter;
  for (size_t r = 0; r < t.rows.size(); ++r) {
    if (t.At(r, "task") != "fe") continue;
    const double w = Number(t.At(r, "weight"), -1);
    if (w < 0) continue;
    by_expression[t.At(r, "label").empty() ? "unlabelled" : t.At(r, "label")].push_back(w);
    const double c = Number(t.At(r, "consistency"), -1);
    if (c >= 0) {
      consistency.push_back(c);
      weight.push_back(w);
      absl::StrAppend(&scatter, c, " ", w, "\n");
    }
  }
  if (by_expression.empty()) {
    return absl::NotFoundError(absl::StrCat(
        Where(run), ": no FE sample weights (STL and MTL give every sample the same weight)"));
  }
  std::vector<std::string> files;
  // Fig. 5: per expression, weights from highest to lowest against their rank (0..1).
  std::string plots;
  int series = 0;
  for (auto& [label, weights] : by_expression) {
    std::sort(weights.rbegin(), weights.rend());
    std::string dat;
    for (size_t i = 0; i < weights.size(); ++i) {
      absl::StrAppend(&dat,
                      weights.size() > 1 ? static_cast<double>(i) / (weights.size() - 1) : 0.0, " ",
                      weights[i], "\n");
    }
    const std::string file = absl::StrCat(o.out, "/data/", base, "-fig5-", series, ".dat");
    RETURN_IF_ERROR(WriteFileAtomic(file, dat));
    absl::StrAppend(&plots, plots.empty() ? "plot " : ", ", Quote(file),
                    " using 1:2 with lines lw 1.5 lc rgb '", kColours[series % 8], "' title ",
                    Quote(absl::StrCat(label, " (", weights.size(), ")")));
    ++series;
  }
  const std::string title5 = absl::StrCat(
      Where(run), ", epoch ", epoch, ": FE sample weights by expression, ranked (paper Fig. 5)");
  ASSIGN_OR_RETURN(
      auto fig5, Draw(o, base + "-fig5",
                      absl::StrCat("set title ", Title(title5),
                                   "\nset grid\nset key outside right\nset xlabel 'rank within the "
                                   "expression (0: highest weight)'\nset ylabel 'sample weight'\n",
                                   plots),
                      900, 500));
  files.insert(files.end(), fig5.begin(), fig5.end());
  // Fig. 6: weight against consistency.
  if (!consistency.empty()) {
    const std::string file = absl::StrCat(o.out, "/data/", base, "-fig6.dat");
    RETURN_IF_ERROR(WriteFileAtomic(file, scatter));
    const double rho = SpearmanCorrelation(weight, consistency);
    const std::string title6 = absl::StrFormat(
        "%s, epoch %d: FE weight vs consistency (paper Fig. 6): Spearman rho %.3f, n %d",
        Where(run), epoch, rho, static_cast<int>(consistency.size()));
    ASSIGN_OR_RETURN(
        auto fig6,
        Draw(o, base + "-fig6",
             absl::StrCat("set title ", Title(title6),
                          "\nset grid\nset key off\nset xlabel 'annotator consistency'\nset "
                          "ylabel 'sample weight'\nplot ",
                          Quote(file), " using 1:2 with points pt 7 ps 0.5 lc rgb '", kColours[0],
                          "'\n"),
             900, 600));
    files.insert(files.end(), fig6.begin(), fig6.end());
  }
  return files;
}

// Per-AU F1 (best trial, mean over folds, +- std) of every experiment, grouped by AU.
absl::StatusOr<std::vector<std::string>> FigureF1(const PlotOptions& o,
                                                  const std::vector<v1::ResultsResponse>& results,
                                                  const std::vector<std::string>& names) {
  std::vector<int> aus;
  std::string dat = "# AU";
  for (const std::string& n : names) absl::StrAppend(&dat, " | ", n, ": F1 std");
  dat += "\n";
  std::vector<const v1::TrialResult*> best;
  for (const auto& r : results) {
    const v1::TrialResult* t = nullptr;
    for (const auto& trial : r.trials()) {
      if (trial.trial() == r.best_trial()) t = &trial;
    }
    best.push_back(t);
    if (t != nullptr && aus.empty()) aus.assign(t->aus().begin(), t->aus().end());
  }
  if (aus.empty()) return absl::NotFoundError("no experiment has a finished trial yet");
  for (size_t a = 0; a < aus.size(); ++a) {
    absl::StrAppend(&dat, "AU", aus[a]);
    for (const v1::TrialResult* t : best) {
      int at = -1;
      if (t != nullptr) {
        for (int i = 0; i < t->aus_size(); ++i) {
          if (t->aus(i) == aus[a]) at = i;
        }
      }
      if (at < 0) {
        absl::StrAppend(&dat, " NaN NaN");
      } else {
        absl::StrAppend(&dat, " ", t->au_mean_f1(at), " ",
                        at < t->au_std_f1_size() ? t->au_std_f1(at) : 0.0);
      }
    }
    dat += "\n";
  }
  const std::string file = absl::StrCat(o.out, "/data/au-f1.dat");
  RETURN_IF_ERROR(WriteFileAtomic(file, dat));
  std::string plots;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&plots, i == 0 ? "plot " : ", ", Quote(file), " using ", 2 + 2 * i, ":",
                    3 + 2 * i, ":xtic(1) lc rgb '", kColours[i % 8], "' title ",
                    Quote(absl::StrFormat("%s (mean %.3f)", names[i],
                                          best[i] != nullptr ? best[i]->mean_f1() : 0.0)));
  }
  const std::string body = absl::StrCat(
      "set title 'Per-AU test F1 (best trial, mean +- std over folds)'\n"
      "set style data histogram\nset style histogram errorbars gap 1 lw 1\n"
      "set style fill solid 1.0 border -1\nset boxwidth 0.9\nset grid ytics\n"
      "set yrange [0:1]\nset ylabel 'F1'\nset xlabel 'action unit'\nset key outside right\n",
      plots, "\n");
  return Draw(o, "au-f1", body, 1000, 500);
}

int Plot(const ServiceClient& c, PlotOptions& o) {
  std::error_code ec;
  fs::create_directories(o.out + "/data", ec);
  if (ec) return Fail(kFailed, absl::StrCat("--out ", o.out, ": ", ec.message()));
  std::vector<std::string> written;
  std::vector<v1::ResultsResponse> results;
  std::vector<std::string> names;
  for (const std::string& id : o.ids) {
    RunOptions run = o.run;
    run.id = id;
    // One GetResults serves both the run choice and the F1 figure.
    v1::ResultsResponse r;
    if (grpc::Status s = GetResults(c, id, &r); !s.ok()) return RpcFail(s);
    if (int rc = ChooseRun(r, run); rc != kOk) return rc;
    v1::ExperimentInfo info;
    if (grpc::Status s = GetExperiment(c, id, &info); !s.ok()) return RpcFail(s);
    results.push_back(r);
    names.push_back(absl::StrCat(id, " ", info.name(), " ", v1::Method_Name(info.spec().method())));
    const std::string base = absl::StrCat(id, "-trial", *run.trial, "-fold", *run.fold);
    std::string records;
    if (grpc::Status s = DownloadArtifact(c, Request(run, run_files::kRecords), &records);
        !s.ok()) {
      std::cerr << "malctl: " << Where(run) << ": no records.csv (" << s.error_message()
                << "): no Fig. 3\n";
    } else {
      auto fig = Figure3(o, run, records, base + "-fig3");
      if (!fig.ok()) return Fail(kFailed, std::string(fig.status().message()));
      written.insert(written.end(), fig->begin(), fig->end());
    }
    v1::ListArtifactsResponse list;
    if (grpc::Status s =
            Call(c.stub.get(), &v1::Coordinator::Stub::ListArtifacts, Request(run, ""), &list);
        !s.ok())
      return RpcFail(s);
    const std::vector<int> epochs = WeightEpochs(list);
    const int epoch = epochs.empty() ? 0 : epochs.back();
    std::string csv;
    if (epoch == 0) {
      std::cerr << "malctl: " << Where(run) << ": "
                << (info.spec().method() == v1::MAL
                        ? "no per-sample weights yet"
                        : "no per-sample weights (STL and MTL weight every sample alike)")
                << ": no Fig. 5 and 6\n";
    } else if (grpc::Status s =
                   DownloadArtifact(c, Request(run, run_files::WeightsCsv(epoch)), &csv);
               !s.ok()) {
      return RpcFail(s);
    } else {
      auto figs = Figures5And6(o, run, csv, epoch, base);
      if (figs.ok()) {
        written.insert(written.end(), figs->begin(), figs->end());
      } else if (figs.status().code() == absl::StatusCode::kNotFound) {
        std::cerr << "malctl: " << figs.status().message() << ": no Fig. 5 and 6\n";
      } else {
        return Fail(kFailed, std::string(figs.status().message()));
      }
    }
  }
  auto f1 = FigureF1(o, results, names);
  if (f1.ok()) {
    written.insert(written.end(), f1->begin(), f1->end());
  } else if (f1.status().code() == absl::StatusCode::kNotFound) {
    std::cerr << "malctl: " << f1.status().message() << ": no per-AU F1 figure\n";
  } else {
    return Fail(kFailed, std::string(f1.status().message()));
  }
  if (written.empty()) return Fail(kFailed, "nothing to plot yet");
  for (const std::string& f : written) std::cout << f << "\n";
  return kOk;
}

}  // namespace

void AddPlotCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<PlotOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plot",
      "the paper's figures with gnuplot: losses and task weights (Fig. 3), FE weights by "
      "expression (Fig. 5), weight vs consistency (Fig. 6), per-AU F1 across experiments");
  cmd->add_option("ids", o->ids, "experiment ids (exp-N); several are compared in the F1 figure")
      ->required();
  cmd->add_option("--out", o->out, "directory for the figures (data files and scripts in data/)")
      ->required();
  cmd->add_option("--trial", o->run.trial, "the trial (default: each experiment's best)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--fold", o->run.fold, "the fold (default: the trial's first)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--format", o->formats, "png, pdf or both")
      ->delimiter(',')
      ->check(CLI::IsMember({"png", "pdf"}));
  AddServiceOptions(*cmd, &o->run.service, "MAL_ADDRESS", /*output=*/false);
  cmd->footer(
      "Example: malctl plot exp-1 exp-2 exp-3 --out figures   # STL, MTL, MAL side by side");
  cmd->callback([o, exit_code] {
    auto c = Connect(o->run.service);
    *exit_code = c.ok() ? Plot(*c, *o) : Fail(kUsage, std::string(c.status().message()));
  });
}

}  // namespace mal::cli
