#ifndef MAL_COMMON_UTIL_CSV_H_
#define MAL_COMMON_UTIL_CSV_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal {

// One CSV field as RFC 4180 writes it: quoted when it holds a comma, quote or line break, its
// quotes doubled.
std::string CsvField(absl::string_view s);

// Splits one CSV record on `sep`, honouring double quotes ("a,b" and "" escapes). Trailing CR
// is stripped. Fails on an unterminated quote.
absl::StatusOr<std::vector<std::string>> SplitCsvLine(absl::string_view line, char sep = ',');

// A text file read line by line, keeping 1-based line numbers for error messages.
struct TextLines {
  std::string path;
  std::vector<std::string> lines;  // without line terminators
  // "path:line" for messages.
  std::string Where(size_t index) const;
};

// Lines end at "\n", "\r\n" or a lone "\r" (old Mac and Excel "CSV (Macintosh)" files); a UTF-8
// byte-order mark is dropped. Errors: ReadFile's (NotFound, PermissionDenied ... naming the path).
absl::StatusOr<TextLines> ReadLines(const std::string& path);

// Spreadsheet exports differ in trailing separators between header and rows ("a,b," over "1,2"
// or the reverse): drops empty fields from the end of `fields` while it has more than `keep`.
void DropTrailingEmptyFields(std::vector<std::string>& fields, size_t keep = 0);

// True when `line` holds no data: only whitespace and `sep` characters (a spreadsheet's row of
// emptied cells, ",,,,"), or nothing. Readers skip such lines as they skip blank ones.
bool IsBlankRecord(absl::string_view line, char sep = ',');

// CSV text whose first line with data names the columns (records.csv, weights/epoch_NNN.csv),
// then one row per record, each with its line number. Lines end as in ReadLines ("\n", "\r\n" or
// a lone "\r"), a UTF-8 byte-order mark is dropped, and blank records (IsBlankRecord: nothing, or
// only separators and whitespace) are skipped. A column named twice is found at its first place.
struct CsvTable {
  std::string path;  // where the text came from ("" for text parsed without one); for Where
  std::vector<std::string> header;       // the column names, in order
  std::map<std::string, size_t> column;  // name -> index
  size_t header_line = 0;                // 1-based; 0: no header (no line with data)
  std::vector<std::vector<std::string>> rows;
  std::vector<size_t> line;  // rows[i]'s 1-based line number
  // The cell of `row` in column `name`; empty when there is no such column or cell.
  const std::string& At(size_t row, const std::string& name) const;
  // "path:N" (or "line N" without a path) for row `row`'s line, for messages.
  std::string Where(size_t row) const;
  // The same for the header's line.
  std::string WhereHeader() const;
};
// Errors: SplitCsvLine's (an unterminated quote), InvalidArgument naming the path and line.
// `path` only names the text in messages.
absl::StatusOr<CsvTable> ParseCsvTable(absl::string_view text, absl::string_view path = "");
// ParseCsvTable of the file at `path`. Errors: ReadFile's (NotFound, PermissionDenied ... naming
// the path), then ParseCsvTable's.
absl::StatusOr<CsvTable> ReadCsvTable(const std::string& path);

// Parses an integer / float field; the error names `what`. ParseDouble refuses nan and inf.
absl::StatusOr<long> ParseInt(absl::string_view text, absl::string_view what);
absl::StatusOr<double> ParseDouble(absl::string_view text, absl::string_view what);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_CSV_H_
