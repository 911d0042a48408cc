// AffectNet: Manually_Annotated_file_lists/{training,validation}.csv, columns by header name
// (subDirectory_filePath, face_x, face_y, face_width, face_height, expression, ...), images under
// Manually_Annotated_Images/. Codes map to the canonical order through expression.h.

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/data/expression.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

namespace {

absl::Status ReadList(const std::string& path, const std::string& part, const std::string& image_root,
                      const ReaderOptions& options, DatasetIndex& index) {
  LoadReport& report = index.report;
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(path));
  if (lines.lines.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  ASSIGN_OR_RETURN(std::vector<std::string> header, SplitCsvLine(lines.lines[0]));
  DropTrailingEmptyFields(header);
  std::map<std::string, int> col;
  for (size_t c = 0; c < header.size(); ++c) {
    col[absl::AsciiStrToLower(absl::StripAsciiWhitespace(header[c]))] = static_cast<int>(c);
  }
  for (const char* required : {"subdirectory_filepath", "expression"}) {
    if (!col.count(required)) {
      return absl::InvalidArgumentError(
          absl::StrCat(lines.Where(0), ": header has no column '", required, "'"));
    }
  }
  const int path_col = col["subdirectory_filepath"];
  const int expr_col = col["expression"];
  const bool has_box = col.count("face_x") && col.count("face_y") && col.count("face_width") &&
                       col.count("face_height");
  for (size_t i = 1; i < lines.lines.size(); ++i) {
    if (IsBlankRecord(lines.lines[i])) continue;
    auto f = SplitCsvLine(lines.lines[i]);
    if (f.ok()) DropTrailingEmptyFields(*f, header.size());
    if (!f.ok() || f->size() != header.size()) {
      RETURN_IF_ERROR(report.Skip(
          "malformed_line",
          absl::StrCat(lines.Where(i), ": ",
                       f.ok() ? absl::StrCat(f->size(), " fields, header has ", header.size())
                              : std::string(f.status().message()))));
      continue;
    }
    auto code = ParseInt((*f)[expr_col], "expression");
    if (!code.ok() || *code < 0 || *code > 10) {
      RETURN_IF_ERROR(report.Skip(
          "malformed_line", absl::StrCat(lines.Where(i), ": expression '", (*f)[expr_col],
                                         "' is not a code 0..10")));
      continue;
    }
    const int expression = ExpressionFromAffectNet(static_cast<int>(*code));
    if (expression < 0) {
      static const char* kNonBasic[] = {"contempt", "none", "uncertain", "non-face"};
      // Not an error: these codes are simply outside the 7 basic expressions.
      report.Exclude(*code == 7 ? "contempt_not_basic" : "no_basic_expression",
                        absl::StrCat(lines.Where(i), ": code ", *code, " (", kNonBasic[*code - 7],
                                     ")"));
      continue;
    }
    Sample s;
    s.id = (*f)[path_col];
    s.split = part;
    s.expression = expression;
    if (has_box) {
      const char* names[4] = {"face_x", "face_y", "face_width", "face_height"};
      for (int k = 0; k < 4; ++k) {
        auto v = ParseInt((*f)[col[names[k]]], names[k]);
        s.box[k] = v.ok() ? static_cast<int>(*v) : 0;
      }
      if (s.box[2] <= 0 || s.box[3] <= 0) std::fill(std::begin(s.box), std::end(s.box), 0);
    }
    const std::string image = (fs::path(image_root) / (*f)[path_col]).string();
    ASSIGN_OR_RETURN(bool found, CheckImage(image, lines.Where(i), options, report));
    if (!found) continue;
    s.image = image;
    index.samples.push_back(std::move(s));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DatasetIndex> ReadAffectNet(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("affectnet", options, /*au_format=*/false);
  const std::string list_dir = (fs::path(options.root) / "Manually_Annotated_file_lists").string();
  RETURN_IF_ERROR(RequireDirectory(
      list_dir, "AffectNet layout Manually_Annotated_file_lists/{training,validation}.csv"));
  const std::string image_root =
      options.images.empty() ? (fs::path(options.root) / "Manually_Annotated_Images").string()
                             : options.images;
  const std::string want = options.split.empty() ? "train" : options.split;
  for (const auto& [file, part] :
       {std::pair<const char*, const char*>{"training.csv", "train"}, {"validation.csv", "test"}}) {
    const std::string path = (fs::path(list_dir) / file).string();
    const bool used = want == "all" || want == part;
    // Every list is counted (its data lines, after the header), read or not.
    if (auto lines = ReadLines(path); lines.ok()) {
      int64_t n = 0;
      for (const std::string& l : lines->lines) n += !absl::StripAsciiWhitespace(l).empty();
      index.CountPartition(part, std::max<int64_t>(n - 1, 0), "images", used);
    }
    if (!used) continue;
    RETURN_IF_ERROR(ReadList(path, part, image_root, options, index));
  }
  return index;
}

}  // namespace mal::data
