// Generic CSV manifest for anyone else's data. Header names (case-insensitive):
//   image (required; relative to root or absolute), subject, split, expression (name or 0..6),
//   consistency (0..1), and AU columns AU1 / AU01 / au_1 (0, 1; 9, -1 or empty = unknown).

#include <filesystem>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/data/expression.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/files.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

namespace {

// The manifest's header: named columns (lower case) and AU columns.
struct ManifestColumns {
  std::map<std::string, int> named;
  std::map<int, int> of_au;
  size_t count = 0;
  bool has_expression = false;

  // The trimmed field `name` of a row, or "" without that column.
  std::string Field(const std::vector<std::string>& f, const char* name) const {
    auto it = named.find(name);
    return it == named.end() ? std::string()
                             : std::string(absl::StripAsciiWhitespace(f[it->second]));
  }
};

// Reads the header and sets index.aus (the requested AUs, or every AU column). Errors name the
// header line: no image column, a requested AU without a column, neither AUs nor expressions.
absl::StatusOr<ManifestColumns> ParseManifestHeader(const std::vector<std::string>& header,
                                                    const TextLines& lines,
                                                    const ReaderOptions& options,
                                                    DatasetIndex& index) {
  ManifestColumns cols;
  cols.count = header.size();
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(header[c]));
    const int au = absl::StartsWith(name, "au") ? ParseAuColumn(name) : -1;
    if (au > 0) {
      cols.of_au[au] = static_cast<int>(c);
    } else {
      cols.named[name] = static_cast<int>(c);
    }
  }
  if (!cols.named.count("image")) {
    return absl::InvalidArgumentError(
        absl::StrCat(lines.Where(0), ": header has no 'image' column"));
  }
  if (options.aus.empty()) {
    for (const auto& [au, c] : cols.of_au) index.aus.push_back(au);
  } else {
    index.aus = options.aus;
    std::vector<std::string> absent;
    for (int au : index.aus) {
      if (!cols.of_au.count(au)) absent.push_back(absl::StrCat("AU", au));
    }
    if (!absent.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(lines.Where(0), ": no column for requested ", absl::StrJoin(absent, ", ")));
    }
  }
  cols.has_expression = cols.named.count("expression") > 0;
  if (index.aus.empty() && !cols.has_expression) {
    return absl::InvalidArgumentError(
        absl::StrCat(lines.Where(0), ": neither AU columns (AU1, AU01, ...) nor 'expression'"));
  }
  return cols;
}

// One row's sample (its image path still relative), or why the row is malformed.
absl::StatusOr<Sample> ParseManifestRow(const std::vector<std::string>& f,
                                        const ManifestColumns& cols, const std::vector<int>& aus) {
  if (f.size() != cols.count) {
    return absl::InvalidArgumentError(absl::StrCat(f.size(), " fields, header has ", cols.count));
  }
  Sample s;
  s.id = cols.Field(f, "image");
  s.subject = cols.Field(f, "subject");
  s.split = absl::AsciiStrToLower(cols.Field(f, "split"));
  for (int au : aus) {
    auto v = ParseAuCell(f[cols.of_au.at(au)]);
    if (!v.ok())
      return absl::InvalidArgumentError(absl::StrCat("AU", au, ": ", v.status().message()));
    s.au.push_back(*v);
  }
  if (cols.has_expression && !cols.Field(f, "expression").empty()) {
    ASSIGN_OR_RETURN(s.expression, ParseExpression(cols.Field(f, "expression")));
  }
  if (!cols.Field(f, "consistency").empty()) {
    auto c = ParseDouble(cols.Field(f, "consistency"), "consistency");
    if (!c.ok() || *c < 0 || *c > 1)
      return absl::InvalidArgumentError("consistency is not a number in 0..1");
    s.consistency = static_cast<float>(*c);
  }
  if (s.id.empty()) return absl::InvalidArgumentError("empty image");
  return s;
}

}  // namespace

absl::StatusOr<DatasetIndex> ReadCsvManifest(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("csv", options, /*au_format=*/false);
  LoadReport& report = index.report;
  const std::string path =
      ResolvePath(options.root, options.manifest.empty() ? "manifest.csv" : options.manifest);
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(path));
  if (lines.lines.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  ASSIGN_OR_RETURN(std::vector<std::string> header, SplitCsvLine(lines.lines[0]));
  DropTrailingEmptyFields(header);
  ASSIGN_OR_RETURN(ManifestColumns cols, ParseManifestHeader(header, lines, options, index));
  // A split asked for (data.split, --split) selects the rows whose 'split' column names it; none
  // or "all" reads every row. Rows with an empty split are in no partition but "unassigned".
  const std::string want = absl::AsciiStrToLower(options.split);
  const bool filter = !want.empty() && want != "all";
  const bool has_split = cols.named.count("split") > 0;
  if (filter && !has_split) {
    return absl::InvalidArgumentError(absl::StrCat(lines.Where(0), ": split '", options.split,
                                                   "' asked for, but the header has no 'split' "
                                                   "column (set split: all or add the column)"));
  }
  for (size_t i = 1; i < lines.lines.size(); ++i) {
    if (IsBlankRecord(lines.lines[i])) continue;
    auto f = SplitCsvLine(lines.lines[i]);
    if (f.ok()) DropTrailingEmptyFields(*f, header.size());
    absl::StatusOr<Sample> s =
        f.ok() ? ParseManifestRow(*f, cols, index.aus) : absl::StatusOr<Sample>(f.status());
    if (!s.ok()) {
      RETURN_IF_ERROR(
          report.Skip("malformed_line", absl::StrCat(lines.Where(i), ": ", s.status().message())));
      continue;
    }
    if (has_split) {
      const bool used = !filter || s->split == want;
      index.CountPartition(s->split.empty() ? "unassigned" : s->split, 1, "rows", used);
      if (!used) continue;
    }
    if (!index.aus.empty() && s->expression < 0) {
      if (!KeepAuSample(*s, lines.Where(i), options, report)) continue;
    }
    const std::string image = ResolvePath(options.root, s->id);
    ASSIGN_OR_RETURN(bool found, CheckImage(image, lines.Where(i), options, report));
    if (!found) continue;
    s->image = image;
    index.samples.push_back(std::move(*s));
  }
  return index;
}

}  // namespace mal::data
