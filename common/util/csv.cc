#include "common/util/csv.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/util/files.h"
#include "common/util/status_macros.h"

namespace mal {

std::string CsvField(absl::string_view s) {
  if (s.find_first_of(",\"\r\n") == absl::string_view::npos) return std::string(s);
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

absl::StatusOr<std::vector<std::string>> SplitCsvLine(absl::string_view line, char sep) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < line.size() && line[i + 1] == '"') {
          field.push_back('"');
          ++i;
        } else {
          quoted = false;
        }
      } else {
        field.push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == sep) {
      fields.push_back(std::move(field));
      field.clear();
    } else {
      field.push_back(c);
    }
  }
  if (quoted) return absl::InvalidArgumentError("unterminated quoted field");
  fields.push_back(std::move(field));
  return fields;
}

std::string TextLines::Where(size_t index) const { return absl::StrCat(path, ":", index + 1); }

namespace {

// `contents` split into lines as ReadLines documents it.
std::vector<std::string> SplitTextLines(std::string contents) {
  if (contents.find('\r') != std::string::npos) {
    // A lone CR ends a line too; CRLF stays one line end.
    contents = absl::StrReplaceAll(contents, {{"\r\n", "\n"}});
    std::replace(contents.begin(), contents.end(), '\r', '\n');
  }
  std::vector<std::string> lines = absl::StrSplit(contents, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  // A UTF-8 byte-order mark before the first line is not data.
  if (!lines.empty() && absl::StartsWith(lines[0], "\xEF\xBB\xBF")) lines[0].erase(0, 3);
  return lines;
}

}  // namespace

absl::StatusOr<TextLines> ReadLines(const std::string& path) {
  auto contents = ReadFile(path);
  if (!contents.ok()) return contents.status();
  TextLines out;
  out.path = path;
  out.lines = SplitTextLines(std::move(*contents));
  return out;
}

absl::StatusOr<long> ParseInt(absl::string_view text, absl::string_view what) {
  long v;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not an integer"));
  }
  return v;
}

absl::StatusOr<double> ParseDouble(absl::string_view text, absl::string_view what) {
  double v;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(text), &v)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not a number"));
  }
  if (!std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not a finite number"));
  }
  return v;
}

void DropTrailingEmptyFields(std::vector<std::string>& fields, size_t keep) {
  while (fields.size() > keep && absl::StripAsciiWhitespace(fields.back()).empty()) {
    fields.pop_back();
  }
}

bool IsBlankRecord(absl::string_view line, char sep) {
  for (char c : line) {
    if (c != sep && !absl::ascii_isspace(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

const std::string& CsvTable::At(size_t row, const std::string& name) const {
  static const std::string empty;
  auto it = column.find(name);
  return it == column.end() || it->second >= rows[row].size() ? empty : rows[row][it->second];
}

namespace {

// "path:N", or "line N" for text without a path.
std::string WhereLine(absl::string_view path, size_t line) {
  return path.empty() ? absl::StrCat("line ", line) : absl::StrCat(path, ":", line);
}

}  // namespace

std::string CsvTable::Where(size_t row) const { return WhereLine(path, line[row]); }

std::string CsvTable::WhereHeader() const { return WhereLine(path, header_line); }

absl::StatusOr<CsvTable> ParseCsvTable(absl::string_view text, absl::string_view path) {
  CsvTable t;
  t.path = std::string(path);
  const std::vector<std::string> lines = SplitTextLines(std::string(text));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (IsBlankRecord(lines[i])) continue;
    auto cells = SplitCsvLine(lines[i]);
    if (!cells.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(WhereLine(path, i + 1), ": ", cells.status().message()));
    }
    if (t.header_line == 0) {
      t.header_line = i + 1;
      t.header = std::move(*cells);
      for (size_t c = 0; c < t.header.size(); ++c) t.column.emplace(t.header[c], c);
    } else {
      t.rows.push_back(std::move(*cells));
      t.line.push_back(i + 1);
    }
  }
  return t;
}

absl::StatusOr<CsvTable> ReadCsvTable(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string contents, ReadFile(path));
  return ParseCsvTable(contents, path);
}

}  // namespace mal
