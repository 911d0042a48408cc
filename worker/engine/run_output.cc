#include "worker/engine/run_output.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/data/expression.h"
#include "common/tensorboard/run_summaries.h"
#include "common/util/files.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace mal::engine {

namespace fs = std::filesystem;

namespace {

// A resumed run keeps the lines of a log file that `keep` accepts (those up to its checkpoint).
absl::Status FilterLines(const std::string& path,
                         const std::function<bool(absl::string_view line, bool first)>& keep) {
  if (!fs::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::string kept;
  bool first = true;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (keep(line, first)) absl::StrAppend(&kept, line, "\n");
    first = false;
  }
  return WriteFileAtomic(path, kept);
}

// A number field of a JSON object on one line, read with protobuf's JSON parser; -1 when the
// line is not a JSON object or has no such number.
int64_t JsonNumber(absl::string_view line, const std::string& key) {
  google::protobuf::Struct object;
  if (!google::protobuf::util::JsonStringToMessage(std::string(line), &object).ok()) return -1;
  auto it = object.fields().find(key);
  if (it == object.fields().end() || !it->second.has_number_value()) return -1;
  return static_cast<int64_t>(it->second.number_value());
}

std::string RecordsHeader() {
  return "epoch,iteration,loss_au,loss_fe,loss_val,mean_w_au,mean_w_fe,mean_wn_au,mean_wn_fe,lr,"
         "meta_lr,seconds\n";
}

// Keeps the header and the rows of records.csv up to `resume_iteration` (rows with the header's
// number of fields: a row torn by a kill goes). A file without its header (its first rows lost
// with an earlier attempt's upload) gets it back; a missing file is created. Logs a warning when
// the rows end before the checkpoint's iteration: those records were lost, and a plot or export
// shows the gap rather than failing.
absl::Status TrimRecords(const std::string& path, int64_t resume_iteration) {
  std::string text;
  if (fs::exists(path)) {
    ASSIGN_OR_RETURN(text, ReadFile(path));
  }
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  const bool has_header = !lines.empty() && absl::StartsWith(lines[0], "epoch,");
  std::string kept = has_header ? absl::StrCat(lines[0], "\n") : RecordsHeader();
  const size_t fields = std::vector<absl::string_view>(absl::StrSplit(kept, ',')).size();
  int64_t last = 0;
  for (size_t i = has_header ? 1 : 0; i < lines.size(); ++i) {
    const std::vector<absl::string_view> f = absl::StrSplit(lines[i], ',');
    int64_t it = 0;
    if (f.size() != fields || !absl::SimpleAtoi(f[1], &it) || it > resume_iteration) continue;
    absl::StrAppend(&kept, lines[i], "\n");
    last = std::max(last, it);
  }
  if (last < resume_iteration) {
    LOG(WARNING) << path << ": the records end at iteration " << last
                 << " and the checkpoint resumed from is at iteration " << resume_iteration
                 << ": the records of iterations " << last + 1 << " to " << resume_iteration
                 << " were lost with an earlier attempt";
  }
  return WriteFileAtomic(path, kept);
}

std::string RecordsRow(const IterationRecord& r) {
  return absl::StrFormat("%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6g,%.6g,%.4f\n", r.epoch,
                         r.iteration, r.loss_au, r.loss_fe, r.loss_val, r.mean_w_au, r.mean_w_fe,
                         r.mean_wn_au, r.mean_wn_fe, r.lr, r.meta_lr, r.seconds);
}

std::string SummaryJson(const WeightSummary& s) {
  auto samples = [](const std::vector<SampleWeight>& v) {
    std::vector<std::string> out;
    for (const auto& x : v) {
      out.push_back(
          absl::StrFormat("{\"id\": \"%s\", \"label\": \"%s\", \"consistency\": %.4f, "
                          "\"weight\": %.6f}",
                          x.id, data::ExpressionName(x.label), x.consistency, x.weight));
    }
    return absl::StrCat("[", absl::StrJoin(out, ", "), "]");
  };
  return absl::StrFormat(
      "{\"epoch\": %d, \"iteration\": %d, \"au_quantiles\": %s, \"fe_quantiles\": %s, "
      "\"lowest_fe\": %s, \"highest_fe\": %s}\n",
      s.epoch, s.iteration, JsonList(s.au_quantiles), JsonList(s.fe_quantiles),
      samples(s.lowest_fe), samples(s.highest_fe));
}

}  // namespace

std::string JsonList(const std::vector<double>& v) {
  std::vector<std::string> s;
  for (double x : v) s.push_back(absl::StrFormat("%.6g", x));
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

std::string EpochJson(const EpochRecord& e) {
  return absl::StrFormat(
      "{\"epoch\": %d, \"iteration\": %d, \"aus\": [%s], \"test_f1\": %s, \"test_mean_f1\": %.6f, "
      "\"val_f1\": %s, \"val_mean_f1\": %.6f, \"val_loss\": %.6f, \"mean_au_weight\": %.6f, "
      "\"mean_fe_weight\": %.6f, \"fe_weight_consistency_spearman\": %.6f, \"seconds\": %.3f, "
      "\"train_failed_images\": %d, \"test_failed_images\": %d, \"val_failed_images\": %d}",
      e.epoch, e.iteration, absl::StrJoin(e.aus, ", "), JsonList(e.test_f1), e.test_mean_f1,
      JsonList(e.val_f1), e.val_mean_f1, e.val_loss, e.mean_au_weight, e.mean_fe_weight,
      e.fe_weight_consistency_spearman, e.seconds, e.train_failed_images, e.test_failed_images,
      e.val_failed_images);
}

absl::StatusOr<std::unique_ptr<RunLog>> RunLog::Open(const std::string& out_dir,
                                                     int64_t resume_iteration, int64_t resume_epoch,
                                                     bool tensorboard) {
  std::unique_ptr<RunLog> log(new RunLog());
  const std::string records_path = (fs::path(out_dir) / run_files::kRecords).string();
  const std::string summaries_path = (fs::path(out_dir) / run_files::kSummaries).string();
  log->metrics_path_ = (fs::path(out_dir) / run_files::kMetrics).string();
  if (resume_iteration >= 0) {
    RETURN_IF_ERROR(TrimRecords(records_path, resume_iteration));
    RETURN_IF_ERROR(FilterLines(summaries_path, [&](absl::string_view line, bool) {
      // A line torn by a kill is not JSON (-1) and goes too.
      const int64_t it = JsonNumber(line, "iteration");
      return it >= 0 && it <= resume_iteration;
    }));
    // metrics.json has one epoch per line: keep the epochs finished before the checkpoint.
    if (fs::exists(log->metrics_path_)) {
      ASSIGN_OR_RETURN(std::string text, ReadFile(log->metrics_path_));
      for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
        std::string l(absl::StripAsciiWhitespace(line));
        if (!l.empty() && l.back() == ',') l.pop_back();
        const int64_t e = JsonNumber(l, "epoch");
        if (e >= 1 && e < resume_epoch) log->epochs_.push_back(l);
      }
    }
  } else {
    RETURN_IF_ERROR(WriteFileAtomic(records_path, RecordsHeader()));
    RETURN_IF_ERROR(WriteFileAtomic(summaries_path, ""));
  }
  log->records_.open(records_path, std::ios::app);
  log->summaries_.open(summaries_path, std::ios::app);
  if (!log->records_ || !log->summaries_) {
    return absl::PermissionDeniedError(absl::StrCat(
        out_dir, ": cannot append to ", run_files::kRecords, " or ", run_files::kSummaries));
  }
  if (tensorboard) {
    ASSIGN_OR_RETURN(log->tensorboard_,
                     tensorboard::EventWriter::Create((fs::path(out_dir) / "tensorboard").string(),
                                                      /*atomic=*/false));
  }
  return log;
}

void RunLog::Iteration(const IterationRecord& r) {
  records_ << RecordsRow(r);
  records_.flush();
  if (tensorboard_) {
    // The same vocabulary as malctl export (common/tensorboard/run_summaries.h). A full disk here
    // is reported by the next checkpoint's write; the curves are not worth failing a run for.
    (void)tensorboard::AddIteration(*tensorboard_, {{"iteration", static_cast<double>(r.iteration)},
                                                    {"loss_au", r.loss_au},
                                                    {"loss_fe", r.loss_fe},
                                                    {"loss_val", r.loss_val},
                                                    {"mean_w_au", r.mean_w_au},
                                                    {"mean_w_fe", r.mean_w_fe},
                                                    {"mean_wn_au", r.mean_wn_au},
                                                    {"mean_wn_fe", r.mean_wn_fe},
                                                    {"lr", r.lr},
                                                    {"meta_lr", r.meta_lr}});
    (void)tensorboard_->Flush();
  }
}

void RunLog::Summary(const WeightSummary& s) {
  summaries_ << SummaryJson(s);
  summaries_.flush();
}

const std::string& RunLog::LastEpochJson() const {
  static const std::string kNone;
  return epochs_.empty() ? kNone : epochs_.back();
}

absl::Status RunLog::Epoch(const EpochRecord& e) {
  epochs_.push_back(EpochJson(e));
  if (tensorboard_) {
    v1::EpochMetrics m;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (google::protobuf::util::JsonStringToMessage(epochs_.back(), &m, options).ok())
      (void)tensorboard::AddEpoch(*tensorboard_, m);
    if (!e.weights_csv.empty()) {
      if (auto csv = ReadFile(e.weights_csv); csv.ok())
        (void)tensorboard::AddWeightsCsv(*tensorboard_, *csv, e.iteration);
    }
    (void)tensorboard_->Flush();
  }
  return WriteFileAtomic(
      metrics_path_, absl::StrCat("{\"epochs\": [\n  ", absl::StrJoin(epochs_, ",\n  "), "\n]}\n"));
}

Progress::Progress(bool enabled, int64_t per_epoch, int epochs)
    : enabled_(enabled), tty_(::isatty(2)), per_epoch_(per_epoch), epochs_(epochs) {}

void Progress::Iteration(const IterationRecord& r, int64_t in_epoch, int log_every) {
  if (!enabled_) return;
  if (tty_) {
    const int width = 30;
    const int filled = static_cast<int>(width * in_epoch / std::max<int64_t>(1, per_epoch_));
    std::fprintf(stderr, "\repoch %d/%d [%s%s] %lld/%lld  loss au %.4f fe %.4f  w au %.3f fe %.3f ",
                 r.epoch, epochs_, std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), static_cast<long long>(in_epoch),
                 static_cast<long long>(per_epoch_), r.loss_au, r.loss_fe, r.mean_wn_au,
                 r.mean_wn_fe);
  } else if (r.iteration % log_every == 0) {
    std::fprintf(
        stderr, "epoch %d iteration %lld: loss au %.4f fe %.4f val %.4f, weights au %.3f fe %.3f\n",
        r.epoch, static_cast<long long>(r.iteration), r.loss_au, r.loss_fe, r.loss_val,
        r.mean_wn_au, r.mean_wn_fe);
  }
}
void Progress::Epoch(const EpochRecord& e) {
  // Always, also with --quiet: one line per epoch is the run's log (log.txt under a worker daemon,
  // `malctl logs`).
  const int64_t failed = e.train_failed_images + e.test_failed_images + e.val_failed_images;
  std::fprintf(
      stderr, "%sepoch %d: test mean F1 %.4f, val mean F1 %.4f, val loss %.4f%s%s (%.1f s)\n",
      enabled_ && tty_ ? "\n" : "", e.epoch, e.test_mean_f1, e.val_mean_f1, e.val_loss,
      e.mean_fe_weight >= 0
          ? absl::StrFormat(", mean FE weight %.3f, rho(FE weight, consistency) %+.2f",
                            e.mean_fe_weight, e.fe_weight_consistency_spearman)
                .c_str()
          : "",
      failed > 0 ? absl::StrFormat(", images not decoded: %d training, %d test, %d "
                                   "validation (left out)",
                                   e.train_failed_images, e.test_failed_images, e.val_failed_images)
                       .c_str()
                 : "",
      e.seconds);
}

}  // namespace mal::engine
