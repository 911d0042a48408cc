#ifndef MAL_COMMON_UTIL_CSV_H_
#define MAL_COMMON_UTIL_CSV_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal {

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

// CSV text whose first line names the columns (records.csv, weights/epoch_NNN.csv): every other
// non-empty line split with SplitCsvLine.
struct CsvTable {
  std::map<std::string, size_t> column;  // name -> index
  std::vector<std::vector<std::string>> rows;
  // The cell of `row` in column `name`; empty when there is no such column or cell.
  const std::string& At(size_t row, const std::string& name) const;
};
// Errors: SplitCsvLine's (an unterminated quote), naming the line number.
absl::StatusOr<CsvTable> ParseCsvTable(absl::string_view text);

// Parses an integer / float field; the error names `what`. ParseDouble refuses nan and inf.
absl::StatusOr<long> ParseInt(absl::string_view text, absl::string_view what);
absl::StatusOr<double> ParseDouble(absl::string_view text, absl::string_view what);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_CSV_H_
