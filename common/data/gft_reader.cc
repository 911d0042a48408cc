// GFT (our documented layout; the public one is not confirmed):
//   <root>/split.txt          lines "<subject> train|test" (comma or space separated, # comments)
//   <root>/AU_OCC/<video>.csv per-video CSV, video = <subject> or <subject>_<anything>,
//                             header: frame column ("frame" or "0") and AU columns ("1" or "AU01")
//   <images>/<video>/<frame>.jpg

#include <filesystem>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data/au_csv.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

namespace {

absl::StatusOr<std::map<std::string, std::string>> ReadSplitFile(const std::string& path) {
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(path));
  std::map<std::string, std::string> split;
  for (size_t i = 0; i < lines.lines.size(); ++i) {
    absl::string_view line = absl::StripAsciiWhitespace(lines.lines[i]);
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(", \t"), absl::SkipEmpty());
    if (f.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(lines.Where(i), ": expected '<subject> train|test'"));
    }
    const std::string part = absl::AsciiStrToLower(f[1]);
    if (part != "train" && part != "test") {
      return absl::InvalidArgumentError(
          absl::StrCat(lines.Where(i), ": split '", f[1], "' is not train or test"));
    }
    if (!split.emplace(f[0], part).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(lines.Where(i), ": subject ", f[0], " listed twice"));
    }
  }
  return split;
}

}  // namespace

absl::StatusOr<DatasetIndex> ReadGft(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("gft", options, /*au_format=*/true);
  const std::string label_dir = (fs::path(options.root) / "AU_OCC").string();
  RETURN_IF_ERROR(RequireDirectory(label_dir, "GFT layout AU_OCC/<video>.csv and split.txt"));
  ASSIGN_OR_RETURN(auto split, ReadSplitFile((fs::path(options.root) / "split.txt").string()));
  const std::string image_root = options.images.empty() ? options.root : options.images;
  const std::string want = options.split.empty() ? "all" : options.split;

  std::map<int, std::vector<std::string>> missing_columns;
  FrameNamingTally naming;
  std::map<std::string, int64_t> per_subject;
  std::vector<std::string> special;
  const std::vector<std::string> files = ListDirectory(label_dir, /*directories=*/false, &special);
  RETURN_IF_ERROR(ReportSpecialFiles(label_dir, special, ".csv", index.report));
  for (const std::string& name : files) {
    if (!absl::EndsWithIgnoreCase(name, ".csv")) continue;
    const std::string path = (fs::path(label_dir) / name).string();
    const std::string video = fs::path(name).stem().string();
    const std::string subject = video.substr(0, video.find('_'));
    auto it = split.find(subject);
    if (it == split.end()) {
      RETURN_IF_ERROR(index.report.Skip(
          "subject_not_in_split", absl::StrCat(path, ": subject ", subject, " not in split.txt")));
      continue;
    }
    index.CountPartition(it->second, 1, "videos", want == "all" || it->second == want);
    if (want != "all" && it->second != want) continue;
    const std::string image_dir = (fs::path(image_root) / video).string();
    FrameDirectory images(image_dir);
    const size_t before = index.samples.size();
    RETURN_IF_ERROR(ReadAuVideoCsv(AuVideo{path, subject, video, it->second, image_dir, &images},
                                   options, index, missing_columns, &naming));
    per_subject[subject] += static_cast<int64_t>(index.samples.size() - before);
  }
  NoteMissingAuColumns(missing_columns, index.report);
  naming.Note("GFT videos", 0, index.report);
  for (const auto& [subject, part] : split) {
    if (want != "all" && part != want) continue;
    auto it = per_subject.find(subject);
    if (it == per_subject.end() || it->second == 0) {
      RETURN_IF_ERROR(index.report.Skip(
          "empty_subject", absl::StrCat(subject, " (", part, "): no usable frame in AU_OCC/")));
    }
  }
  return index;
}

}  // namespace mal::data
