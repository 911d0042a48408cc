#include "common/data/au_csv.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace {

// The columns of an AU label file's header: the frame column and, per wanted AU, its column (-1:
// absent, its labels unknown). nullopt after a Skip recorded in `report` (or its error, strict).
struct AuColumns {
  int frame = -1;
  std::vector<int> au;  // by index.aus
  size_t needed = 0;    // fields a row must have
};

// Why a header has no frame column, where the bytes say: "" when they do not.
std::string HeaderHint(const std::string& line, const std::vector<std::string>& header) {
  if (line.find('\0') != std::string::npos || absl::StartsWith(line, "\xff\xfe") ||
      absl::StartsWith(line, "\xfe\xff")) {
    return "; the file is UTF-16 text (Excel's 'Unicode Text'): save it as CSV (UTF-8 or ASCII)";
  }
  if (header.size() == 1) {
    for (const char* sep : {";", "\t", "|"}) {
      if (line.find(sep) != std::string::npos) {
        return absl::StrCat("; the header is one field: are the columns separated by '",
                            sep[0] == '\t' ? "\\t" : sep, "'? AU label files are comma-separated");
      }
    }
  }
  return "";
}

// Whether the header line is a frame's labels where the header belongs: its cells after the first
// (the frame number) are all AU values (0, 1, 9, -1 or empty) and an AU value repeats (BP4D codes
// AUs >= 40 as 9, so a frame's line repeats 9 at least). A real header names columns by number
// and repeats none; a header with a name repeated but not label-like is read as before (the first
// column of a name counts).
std::string LabelLikeRepeat(const std::vector<std::string>& header) {
  std::set<std::string> seen;
  std::string repeated;
  for (size_t c = 1; c < header.size(); ++c) {
    const std::string cell(absl::StripAsciiWhitespace(header[c]));
    if (cell.empty()) continue;
    if (cell != "0" && cell != "1" && cell != "9" && cell != "-1") return "";
    if (!seen.insert(cell).second && repeated.empty()) repeated = cell;
  }
  return repeated;
}

absl::StatusOr<std::optional<AuColumns>> ParseAuHeader(
    const std::vector<std::string>& header, const TextLines& lines, const AuVideo& video,
    const ReaderOptions& options, DatasetIndex& index,
    std::map<int, std::vector<std::string>>& missing_columns) {
  if (const std::string twice = LabelLikeRepeat(header); !twice.empty()) {
    RETURN_IF_ERROR(index.report.Skip(
        "malformed_header",
        absl::StrCat(lines.Where(0), ": column '", twice,
                     "' is named twice: the first line looks like a frame's labels, and the file "
                     "has no header (BP4D's files start with one of column numbers: 0 the frame, "
                     "k AU k)")));
    return std::nullopt;
  }
  AuColumns cols;
  std::map<int, int> col_of_au;
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(header[c]));
    if (name == "0" || name == "frame") {
      if (cols.frame < 0) cols.frame = static_cast<int>(c);
      continue;
    }
    const int au = ParseAuColumn(name);
    if (au > 0) col_of_au.emplace(au, static_cast<int>(c));
  }
  if (cols.frame < 0) {
    RETURN_IF_ERROR(index.report.Skip(
        "malformed_header", absl::StrCat(lines.Where(0), ": no frame column (named 0 or frame)",
                                         HeaderHint(lines.lines[0], header))));
    return std::nullopt;
  }
  for (int au : index.aus) {
    auto it = col_of_au.find(au);
    if (it == col_of_au.end()) {
      if (options.strict) {
        return absl::InvalidArgumentError(
            absl::StrCat(lines.Where(0), ": no column for AU", au, " in the header"));
      }
      missing_columns[au].push_back(video.label_file);
      cols.au.push_back(-1);
    } else {
      cols.au.push_back(it->second);
    }
  }
  cols.needed = static_cast<size_t>(cols.frame) + 1;
  for (int c : cols.au) cols.needed = std::max(cols.needed, static_cast<size_t>(c) + 1);
  return cols;
}

// One label row's sample (without its image) and frame number, or the reason it is malformed.
absl::StatusOr<std::pair<Sample, long>> ParseAuRow(const std::vector<std::string>& f,
                                                   const std::vector<std::string>& header,
                                                   const AuColumns& cols, const AuVideo& video,
                                                   const std::string& where) {
  // Exported files differ in trailing separators between header and rows: a row is malformed
  // when it lacks a column this reader uses, or has more fields than the header and one more.
  if (f.size() < cols.needed || f.size() > header.size() + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", f.size(), " fields, header has ", header.size()));
  }
  auto frame_or = ParseInt(f[cols.frame], "frame");
  if (!frame_or.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", frame_or.status().message()));
  Sample s;
  s.id = absl::StrCat(video.key, "/", *frame_or);
  s.subject = video.subject;
  s.split = video.split;
  s.au.reserve(cols.au.size());
  for (int c : cols.au) {
    if (c < 0) {
      s.au.push_back(kAuUnknown);
      continue;
    }
    auto v = ParseAuCell(f[c]);
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": column ", header[c], ": ", v.status().message()));
    }
    s.au.push_back(*v);
  }
  return std::make_pair(std::move(s), static_cast<long>(*frame_or));
}

}  // namespace

absl::Status ReadAuVideoCsv(const AuVideo& video, const ReaderOptions& options, DatasetIndex& index,
                            std::map<int, std::vector<std::string>>& missing_columns,
                            FrameNamingTally* naming_tally) {
  LoadReport& report = index.report;
  auto lines_or = ReadLines(video.label_file);
  if (!lines_or.ok()) {
    return report.Skip("unreadable_label_file", lines_or.status().message());
  }
  const TextLines& lines = *lines_or;
  if (lines.lines.empty()) return report.Skip("empty_label_file", video.label_file);
  auto header_or = SplitCsvLine(lines.lines[0]);
  if (!header_or.ok()) {
    return report.Skip("malformed_header",
                       absl::StrCat(lines.Where(0), ": ", header_or.status().message()));
  }
  const std::vector<std::string>& header = *header_or;
  ASSIGN_OR_RETURN(std::optional<AuColumns> cols,
                   ParseAuHeader(header, lines, video, options, index, missing_columns));
  if (!cols) return absl::OkStatus();

  // First the labels, then the images: the image naming is decided from all the video's frames.
  struct Row {
    Sample sample;
    long frame;
    size_t line;
  };
  std::vector<Row> rows;
  std::map<long, size_t> first_line;  // frame -> its first label line
  size_t data_lines = 0;
  for (size_t i = 1; i < lines.lines.size(); ++i) {
    if (IsBlankRecord(lines.lines[i])) continue;
    ++data_lines;
    auto fields_or = SplitCsvLine(lines.lines[i]);
    if (!fields_or.ok()) {
      RETURN_IF_ERROR(report.Skip(
          "malformed_line", absl::StrCat(lines.Where(i), ": ", fields_or.status().message())));
      continue;
    }
    auto row = ParseAuRow(*fields_or, header, *cols, video, lines.Where(i));
    if (!row.ok()) {
      RETURN_IF_ERROR(report.Skip("malformed_line", row.status().message()));
      continue;
    }
    // A frame coded twice (a pasted block, a merge of two exports): the first line is kept.
    if (auto [it, first] = first_line.emplace(row->second, i); !first) {
      RETURN_IF_ERROR(report.Skip(
          "duplicate_frame",
          absl::StrCat(lines.Where(i), ": frame ", row->second, " is listed again (first at line ",
                       it->second + 1, "); the first line is kept")));
      continue;
    }
    if (KeepAuSample(row->first, lines.Where(i), options, report))
      rows.push_back(Row{std::move(row->first), row->second, i});
  }

  if (data_lines == 0) {
    return report.Skip("empty_label_file",
                       absl::StrCat(video.label_file, ": a header and no frame rows"));
  }
  if (video.images != nullptr && !video.images->error().empty()) {
    return SkipUnreadableImageDirectory(video.image_dir, video.images->error(),
                                        static_cast<int64_t>(rows.size()), report);
  }
  // Image numbers equal the label frames in BP4D's and GFT's releases; frames re-extracted from
  // the videos are often numbered from 0 or from 1 instead: take what the directory holds.
  FrameNaming naming;
  if (video.images != nullptr && video.images->exists()) {
    std::vector<long> frames;
    for (const Row& r : rows) frames.push_back(r.frame);
    naming = DetectFrameNaming(*video.images, frames, {0, -1, 1});
    if (naming_tally != nullptr) naming_tally->Add(naming.offset);
    if (!naming.ambiguity.empty()) {
      std::string note = absl::StrCat(video.image_dir, ": ", naming.ambiguity);
      if (naming_tally != nullptr) {
        naming_tally->AddAmbiguity(std::move(note));
      } else {
        index.report.Note(std::move(note));
      }
    }
  }
  int64_t kept = 0;
  for (Row& r : rows) {
    const long number = r.frame + naming.offset;
    const std::string* image = video.images ? video.images->Find(number) : nullptr;
    ASSIGN_OR_RETURN(
        bool found,
        CheckImage(image ? *image : "",
                   absl::StrCat(lines.Where(r.line), ": frame ", r.frame,
                                naming.offset == 0 ? "" : absl::StrCat(" (image ", number, ")"),
                                " in ", video.image_dir),
                   options, report));
    if (!found) continue;
    r.sample.image = *image;
    index.samples.push_back(std::move(r.sample));
    ++kept;
  }
  if (kept == 0) index.report.Note(absl::StrCat(video.label_file, ": no usable frame"));
  return absl::OkStatus();
}

}  // namespace mal::data
