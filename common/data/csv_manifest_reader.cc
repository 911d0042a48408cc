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

absl::StatusOr<DatasetIndex> ReadCsvManifest(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("csv", options, /*au_format=*/false);
  LoadReport& report = index.report;
  const std::string path =
      ResolvePath(options.root, options.manifest.empty() ? "manifest.csv" : options.manifest);
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(path));
  if (lines.lines.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  ASSIGN_OR_RETURN(std::vector<std::string> header, SplitCsvLine(lines.lines[0]));
  std::map<std::string, int> col;
  std::map<int, int> col_of_au;
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(header[c]));
    const int au = absl::StartsWith(name, "au") ? ParseAuColumn(name) : -1;
    if (au > 0) {
      col_of_au[au] = static_cast<int>(c);
    } else {
      col[name] = static_cast<int>(c);
    }
  }
  if (!col.count("image")) {
    return absl::InvalidArgumentError(absl::StrCat(lines.Where(0), ": header has no 'image' column"));
  }
  if (options.aus.empty()) {
    for (const auto& [au, c] : col_of_au) index.aus.push_back(au);
  } else {
    index.aus = options.aus;
    std::vector<std::string> absent;
    for (int au : index.aus) {
      if (!col_of_au.count(au)) absent.push_back(absl::StrCat("AU", au));
    }
    if (!absent.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          lines.Where(0), ": no column for requested ", absl::StrJoin(absent, ", ")));
    }
  }
  const bool has_expr = col.count("expression") > 0;
  if (index.aus.empty() && !has_expr) {
    return absl::InvalidArgumentError(
        absl::StrCat(lines.Where(0), ": neither AU columns (AU1, AU01, ...) nor 'expression'"));
  }
  auto field = [&](const std::vector<std::string>& f, const char* name) -> std::string {
    auto it = col.find(name);
    return it == col.end() ? std::string() : std::string(absl::StripAsciiWhitespace(f[it->second]));
  };

  for (size_t i = 1; i < lines.lines.size(); ++i) {
    if (absl::StripAsciiWhitespace(lines.lines[i]).empty()) continue;
    auto f = SplitCsvLine(lines.lines[i]);
    absl::Status bad;
    if (!f.ok()) {
      bad = f.status();
    } else if (f->size() != header.size()) {
      bad = absl::InvalidArgumentError(
          absl::StrCat(f->size(), " fields, header has ", header.size()));
    }
    Sample s;
    if (bad.ok()) {
      s.id = field(*f, "image");
      s.subject = field(*f, "subject");
      s.split = absl::AsciiStrToLower(field(*f, "split"));
      for (int au : index.aus) {
        if (!bad.ok()) break;
        auto v = ParseAuCell((*f)[col_of_au[au]]);
        if (v.ok()) {
          s.au.push_back(*v);
        } else {
          bad = absl::InvalidArgumentError(absl::StrCat("AU", au, ": ", v.status().message()));
        }
      }
      if (bad.ok() && has_expr && !field(*f, "expression").empty()) {
        auto e = ParseExpression(field(*f, "expression"));
        if (e.ok()) {
          s.expression = *e;
        } else {
          bad = e.status();
        }
      }
      if (bad.ok() && !field(*f, "consistency").empty()) {
        auto c = ParseDouble(field(*f, "consistency"), "consistency");
        if (!c.ok() || *c < 0 || *c > 1) {
          bad = absl::InvalidArgumentError("consistency is not a number in 0..1");
        } else {
          s.consistency = static_cast<float>(*c);
        }
      }
      if (bad.ok() && s.id.empty()) bad = absl::InvalidArgumentError("empty image");
    }
    if (!bad.ok()) {
      RETURN_IF_ERROR(
          report.Skip("malformed_line", absl::StrCat(lines.Where(i), ": ", bad.message())));
      continue;
    }
    if (!index.aus.empty() && s.expression < 0) {
      ASSIGN_OR_RETURN(bool keep, KeepAuSample(s, options, report));
      if (!keep) continue;
    }
    const std::string image = ResolvePath(options.root, s.id);
    ASSIGN_OR_RETURN(bool found, CheckImage(image, lines.Where(i), options, report));
    if (!found) continue;
    s.image = image;
    index.samples.push_back(std::move(s));
  }
  return index;
}

}  // namespace mal::data
