#include "common/tensorboard/run_summaries.h"

#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/util/csv.h"
#include "common/util/status_macros.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace mal::tensorboard {

namespace {

double Number(absl::string_view s, double otherwise) {
  double v;
  return absl::SimpleAtod(s, &v) ? v : otherwise;
}

}  // namespace

absl::Status AddIteration(EventWriter& w, const std::map<std::string, double>& row) {
  auto step = row.find("iteration");
  if (step == row.end()) return absl::InvalidArgumentError("no iteration column");
  static const std::pair<const char*, const char*> kTags[] = {
      {"loss_au", "loss/au"},
      {"loss_fe", "loss/fe"},
      {"loss_val", "loss/validation"},
      {"mean_wn_au", "task_weight/normalised_au"},
      {"mean_wn_fe", "task_weight/normalised_fe"},
      {"mean_w_au", "task_weight/raw_au"},
      {"mean_w_fe", "task_weight/raw_fe"},
      {"lr", "learning_rate/model"},
      {"meta_lr", "learning_rate/meta"}};
  for (const auto& [column, tag] : kTags) {
    auto it = row.find(column);
    if (it == row.end() || it->second < 0 || (std::string(column) == "meta_lr" && it->second == 0))
      continue;
    RETURN_IF_ERROR(w.AddScalar(tag, static_cast<int64_t>(step->second), it->second));
  }
  return absl::OkStatus();
}

absl::Status AddRecordsCsv(EventWriter& w, const std::string& csv) {
  ASSIGN_OR_RETURN(const CsvTable t, ParseCsvTable(csv));
  for (size_t r = 0; r < t.rows.size(); ++r) {
    std::map<std::string, double> row;
    for (const auto& [name, index] : t.column) row[name] = Number(t.At(r, name), -1);
    RETURN_IF_ERROR(AddIteration(w, row));
  }
  return absl::OkStatus();
}

absl::Status AddEpoch(EventWriter& w, const v1::EpochMetrics& m) {
  const int64_t step = m.iteration();
  if (m.test_mean_f1() >= 0) RETURN_IF_ERROR(w.AddScalar("f1_test/mean", step, m.test_mean_f1()));
  RETURN_IF_ERROR(w.AddScalar("f1_validation/mean", step, m.val_mean_f1()));
  RETURN_IF_ERROR(w.AddScalar("loss/validation_epoch", step, m.val_loss()));
  for (int i = 0; i < m.aus_size(); ++i) {
    if (i < m.test_f1_size() && m.test_mean_f1() >= 0)
      RETURN_IF_ERROR(w.AddScalar(absl::StrCat("f1_test/AU", m.aus(i)), step, m.test_f1(i)));
    if (i < m.val_f1_size())
      RETURN_IF_ERROR(w.AddScalar(absl::StrCat("f1_validation/AU", m.aus(i)), step, m.val_f1(i)));
  }
  if (m.mean_fe_weight() >= 0) {
    RETURN_IF_ERROR(w.AddScalar("sample_weight/mean_fe", step, m.mean_fe_weight()));
    RETURN_IF_ERROR(w.AddScalar("sample_weight/mean_au", step, m.mean_au_weight()));
    RETURN_IF_ERROR(w.AddScalar("sample_weight/spearman_fe_weight_consistency", step,
                                m.fe_weight_consistency_spearman()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<int, int64_t>> AddMetricsJson(EventWriter& w, const std::string& json) {
  google::protobuf::Struct root;
  if (!google::protobuf::util::JsonStringToMessage(json, &root).ok() ||
      root.fields().count("epochs") == 0) {
    return absl::InvalidArgumentError("metrics.json: not {\"epochs\": [...]}");
  }
  std::map<int, int64_t> steps;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  for (const auto& entry : root.fields().at("epochs").list_value().values()) {
    std::string text;
    (void)google::protobuf::util::MessageToJsonString(entry.struct_value(), &text);
    v1::EpochMetrics m;
    if (!google::protobuf::util::JsonStringToMessage(text, &m, options).ok()) continue;
    steps[m.epoch()] = m.iteration();
    RETURN_IF_ERROR(AddEpoch(w, m));
  }
  return steps;
}

absl::Status AddWeightsCsv(EventWriter& w, const std::string& csv, int64_t step) {
  ASSIGN_OR_RETURN(const CsvTable t, ParseCsvTable(csv));
  std::map<std::string, std::vector<double>> groups;
  std::vector<double> au_meta;  // the meta net's per-frame AU weights (meta_weight column)
  bool au_meta_differs = false;
  for (size_t r = 0; r < t.rows.size(); ++r) {
    const double weight = Number(t.At(r, "weight"), -1);
    if (weight < 0) continue;
    const std::string& label = t.At(r, "label");
    const bool fe = t.At(r, "task") == "fe";
    groups[fe ? absl::StrCat("fe_weight/", label.empty() ? "unlabelled" : label) : "au_weight/all"]
        .push_back(weight);
    if (const double meta = Number(t.At(r, "meta_weight"), -1); !fe && meta >= 0) {
      au_meta.push_back(meta);
      au_meta_differs = au_meta_differs || t.At(r, "meta_weight") != t.At(r, "weight");
    }
  }
  // Only where training applied other AU weights than the meta net's (mal.au_weighting: task,
  // task_in_base_step); otherwise it would repeat au_weight/all.
  if (au_meta_differs) groups["au_meta_weight/all"] = std::move(au_meta);
  for (const auto& [tag, values] : groups) RETURN_IF_ERROR(w.AddHistogram(tag, step, values));
  return absl::OkStatus();
}

}  // namespace mal::tensorboard
