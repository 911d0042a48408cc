#include "common/spec/model_metadata.h"

#include <google/protobuf/util/json_util.h>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/spec/backbones.h"
#include "common/util/files.h"

namespace mal {

std::string ModelMetadataToJson(const v1::ModelMetadata& metadata) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(metadata, &out, options);
  return out;
}

absl::StatusOr<v1::ModelMetadata> ParseModelMetadata(const std::string& json,
                                                     const std::string& source) {
  v1::ModelMetadata m;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  if (auto s = google::protobuf::util::JsonStringToMessage(json, &m, options); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not model metadata JSON: ", s.message().as_string()));
  }
  auto bad = [&](const char* field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ": ", why));
  };
  if (m.format() != kModelFormat)
    return bad("format", absl::StrCat("\"", m.format(), "\" is not ", kModelFormat));
  if (m.backbone().empty()) return bad("backbone", "required");
  if (!absl::c_linear_search(Backbones(), m.backbone())) {
    return bad("backbone", absl::StrCat("\"", m.backbone(), "\" is not one of ",
                                        absl::StrJoin(Backbones(), ", ")));
  }
  if (m.aus().empty()) return bad("aus", "required");
  for (int i = 0; i < m.aus_size(); ++i) {
    const int au = m.aus(i);
    if (au < 1 || au > 99) return bad("aus", absl::StrCat(au, " is not an AU number 1..99"));
    for (int j = 0; j < i; ++j) {
      if (m.aus(j) == au) return bad("aus", absl::StrCat("AU", au, " listed twice"));
    }
  }
  // The spec's bounds (model.input 32..1024, model.resize up to 2048), with room for models
  // written by hand below them; beyond, one image's tensor alone is gigabytes.
  if (m.input() < 8 || m.input() > 1024)
    return bad("input", absl::StrCat(m.input(), " px: 8..1024"));
  if (m.resize() < m.input() || m.resize() > 2048) {
    return bad("resize",
               absl::StrCat(m.resize(), " px: at least input (", m.input(), "), at most 2048"));
  }
  if (m.feature_grid() < 0 || m.feature_grid() > 8)
    return bad("feature_grid", absl::StrCat(m.feature_grid(), ": 0..8 (0 = 1)"));
  if (m.mean_size() != 3 || m.std_size() != 3) return bad("mean/std", "three values each (RGB)");
  for (float s : m.std()) {
    if (!(s > 0)) return bad("std", "must be > 0");
  }
  if (m.thresholds().empty()) {
    for (int i = 0; i < m.aus_size(); ++i) m.add_thresholds(0.5);
  }
  if (m.thresholds_size() != m.aus_size()) {
    return bad("thresholds",
               absl::StrCat(m.thresholds_size(), " values for ", m.aus_size(), " AUs"));
  }
  for (double t : m.thresholds()) {
    if (!(t > 0 && t < 1)) return bad("thresholds", absl::StrCat(t, " is not in (0, 1)"));
  }
  return m;
}

absl::StatusOr<v1::ModelMetadata> ReadModelMetadata(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseModelMetadata(*text, path);
}

}  // namespace mal
