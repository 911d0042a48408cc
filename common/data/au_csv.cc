#include "common/data/au_csv.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/status_macros.h"

namespace mal::data {

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
  int frame_col = -1;
  std::map<int, int> col_of_au;
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(header[c]));
    if (name == "0" || name == "frame") {
      if (frame_col < 0) frame_col = static_cast<int>(c);
      continue;
    }
    const int au = ParseAuColumn(name);
    if (au > 0) col_of_au.emplace(au, static_cast<int>(c));
  }
  if (frame_col < 0) {
    return report.Skip("malformed_header",
                       absl::StrCat(lines.Where(0), ": no frame column (named 0 or frame)"));
  }
  std::vector<int> cols;
  for (int au : index.aus) {
    auto it = col_of_au.find(au);
    if (it == col_of_au.end()) {
      if (options.strict) {
        return absl::InvalidArgumentError(
            absl::StrCat(lines.Where(0), ": no column for AU", au, " in the header"));
      }
      missing_columns[au].push_back(video.label_file);
      cols.push_back(-1);
    } else {
      cols.push_back(it->second);
    }
  }

  size_t needed = static_cast<size_t>(frame_col) + 1;
  for (int c : cols) needed = std::max(needed, static_cast<size_t>(c) + 1);

  // First the labels, then the images: the image naming is decided from all the video's frames.
  struct Row {
    Sample sample;
    long frame;
    size_t line;
  };
  std::vector<Row> rows;
  for (size_t i = 1; i < lines.lines.size(); ++i) {
    if (absl::StripAsciiWhitespace(lines.lines[i]).empty()) continue;
    auto fields_or = SplitCsvLine(lines.lines[i]);
    if (!fields_or.ok()) {
      RETURN_IF_ERROR(report.Skip("malformed_line", absl::StrCat(lines.Where(i), ": ",
                                                                 fields_or.status().message())));
      continue;
    }
    const std::vector<std::string>& f = *fields_or;
    // Exported files differ in trailing separators between header and rows: a row is malformed
    // when it lacks a column this reader uses, or has more fields than the header and one more.
    if (f.size() < needed || f.size() > header.size() + 1) {
      RETURN_IF_ERROR(report.Skip(
          "malformed_line", absl::StrCat(lines.Where(i), ": ", f.size(), " fields, header has ",
                                         header.size())));
      continue;
    }
    auto frame_or = ParseInt(f[frame_col], "frame");
    if (!frame_or.ok()) {
      RETURN_IF_ERROR(report.Skip("malformed_line", absl::StrCat(lines.Where(i), ": ",
                                                                 frame_or.status().message())));
      continue;
    }
    Sample s;
    s.id = absl::StrCat(video.key, "/", *frame_or);
    s.subject = video.subject;
    s.split = video.split;
    s.au.reserve(cols.size());
    absl::Status bad;
    for (size_t k = 0; k < cols.size() && bad.ok(); ++k) {
      if (cols[k] < 0) {
        s.au.push_back(kAuUnknown);
        continue;
      }
      auto v = ParseAuCell(f[cols[k]]);
      if (!v.ok()) {
        bad = absl::InvalidArgumentError(absl::StrCat(lines.Where(i), ": column ", header[cols[k]],
                                                      ": ", v.status().message()));
      } else {
        s.au.push_back(*v);
      }
    }
    if (!bad.ok()) {
      RETURN_IF_ERROR(report.Skip("malformed_line", bad.message()));
      continue;
    }
    ASSIGN_OR_RETURN(bool keep, KeepAuSample(s, options, report));
    if (!keep) continue;
    rows.push_back(Row{std::move(s), static_cast<long>(*frame_or), i});
  }

  // Image numbers equal the label frames in BP4D's and GFT's releases; frames re-extracted from
  // the videos are often numbered from 0 or from 1 instead: take what the directory holds.
  FrameNaming naming;
  if (video.images != nullptr && video.images->exists()) {
    std::vector<long> frames;
    for (const Row& r : rows) frames.push_back(r.frame);
    naming = DetectFrameNaming(*video.images, frames, {0, -1, 1});
    if (naming_tally != nullptr) naming_tally->Add(naming.offset);
  }
  int64_t kept = 0;
  for (Row& r : rows) {
    const long number = r.frame + naming.offset;
    const std::string* image = video.images ? video.images->Find(number) : nullptr;
    ASSIGN_OR_RETURN(bool found,
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
  if (kept == 0) {
    index.report.Note(absl::StrCat(video.label_file, ": no usable frame"));
  }
  return absl::OkStatus();
}

}  // namespace mal::data
