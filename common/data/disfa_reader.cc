// DISFA: ActionUnit_Labels/SN0xx/SN0xx_au<k>.txt (lines "frame,intensity", frames 1-based),
// images <images>/SN0xx/<frame-1>.png|jpg (0-based, the documented layout) or <frame>.png|jpg
// (1-based, as ffmpeg's %d numbers extracted frames): detected per subject from the files on
// disk and reported in a note. Active when intensity >= 2.

#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

namespace {

constexpr int kActiveIntensity = 2;

// Frame (1-based) -> intensity for one AU file; malformed lines are skipped or fail (strict).
absl::StatusOr<std::map<long, int>> ReadIntensities(const std::string& path, LoadReport& report,
                                                    size_t* line_count) {
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(path));
  std::map<long, int> out;
  *line_count = 0;
  for (size_t i = 0; i < lines.lines.size(); ++i) {
    if (absl::StripAsciiWhitespace(lines.lines[i]).empty()) continue;
    ++*line_count;
    auto fields = SplitCsvLine(lines.lines[i]);
    absl::Status bad;
    if (!fields.ok()) {
      bad = fields.status();
    } else if (fields->size() != 2) {
      bad = absl::InvalidArgumentError(
          absl::StrCat(fields->size(), " fields, expected frame,intensity"));
    } else {
      auto frame = ParseInt((*fields)[0], "frame");
      auto intensity = ParseInt((*fields)[1], "intensity");
      if (!frame.ok()) {
        bad = frame.status();
      } else if (!intensity.ok()) {
        bad = intensity.status();
      } else if (*frame < 1) {
        bad = absl::InvalidArgumentError(absl::StrCat("frame ", *frame, " (frames are 1-based)"));
      } else if (*intensity < 0 || *intensity > 5) {
        bad = absl::InvalidArgumentError(absl::StrCat("intensity ", *intensity, " not in 0..5"));
      } else if (out.count(*frame)) {
        bad = absl::InvalidArgumentError(absl::StrCat(
            "frame ", *frame, " is listed again (intensity ", *intensity, ", first ", out[*frame],
            "); the first line is kept"));
      } else {
        out[*frame] = static_cast<int>(*intensity);
      }
    }
    if (!bad.ok()) {
      RETURN_IF_ERROR(
          report.Skip("malformed_line", absl::StrCat(lines.Where(i), ": ", bad.message())));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<DatasetIndex> ReadDisfa(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("disfa", options, /*au_format=*/true);
  LoadReport& report = index.report;
  const std::string label_dir = (fs::path(options.root) / "ActionUnit_Labels").string();
  RETURN_IF_ERROR(RequireDirectory(label_dir, "DISFA layout ActionUnit_Labels/SN0xx/SN0xx_au<k>.txt"));
  const std::string image_root = options.images.empty() ? options.root : options.images;
  FrameNamingTally tally;

  for (const std::string& subject : ListDirectory(label_dir, /*directories=*/true)) {
    const fs::path subject_dir = fs::path(label_dir) / subject;
    std::vector<std::map<long, int>> per_au;
    std::vector<std::string> counts;
    std::set<size_t> line_counts;
    std::set<long> frames;
    for (int au : index.aus) {
      const std::string path = (subject_dir / absl::StrCat(subject, "_au", au, ".txt")).string();
      std::error_code ec;
      if (!fs::is_regular_file(path, ec)) {
        RETURN_IF_ERROR(report.Skip("missing_label_file",
                                    absl::StrCat(path, ": no such file; AU", au, " masked for ",
                                                 subject)));
        per_au.emplace_back();
        continue;
      }
      size_t n = 0;
      ASSIGN_OR_RETURN(auto intensities, ReadIntensities(path, report, &n));
      line_counts.insert(n);
      counts.push_back(absl::StrCat("au", au, "=", n));
      for (const auto& [f, v] : intensities) frames.insert(f);
      per_au.push_back(std::move(intensities));
    }
    if (line_counts.size() > 1) {
      RETURN_IF_ERROR(report.Skip(
          "line_count_mismatch",
          absl::StrCat(subject_dir.string(), ": AU files differ in line count (",
                       absl::StrJoin(counts, " "), "); subject skipped (", frames.size(),
                       " labelled frames)"),
          static_cast<int64_t>(frames.size())));
      continue;
    }
    std::string image_dir = (fs::path(image_root) / subject).string();
    // One public list names SN013 where others have SN033 (datasets.md): labels and frames may
    // have been obtained under the two names.
    // Only when the other name has no labels of its own (then they would be two subjects).
    if (std::error_code ec;
        !fs::exists(image_dir, ec) && (subject == "SN013" || subject == "SN033")) {
      const std::string other_name = subject == "SN013" ? "SN033" : "SN013";
      const std::string other = (fs::path(image_root) / other_name).string();
      if (fs::is_directory(other, ec) && !fs::exists(fs::path(label_dir) / other_name, ec)) {
        report.Note(absl::StrCat(subject, ": images read from ", other, " (SN013 and SN033 name "
                                 "the same subject in different lists)"));
        image_dir = other;
      }
    }
    FrameDirectory images(image_dir);
    if (!images.error().empty()) {
      RETURN_IF_ERROR(SkipUnreadableImageDirectory(image_dir, images.error(),
                                                   static_cast<int64_t>(frames.size()), report));
      continue;
    }
    const FrameNaming naming =
        DetectFrameNaming(images, std::vector<long>(frames.begin(), frames.end()), {-1, 0},
                          /*whole_video=*/true);
    if (images.exists()) tally.Add(naming.offset);
    if (!naming.ambiguity.empty()) tally.AddAmbiguity(absl::StrCat(image_dir, ": ", naming.ambiguity));
    int64_t kept = 0;
    for (long frame : frames) {
      const long image_number = frame + naming.offset;
      Sample s;
      s.id = absl::StrCat(subject, "/", image_number);
      s.subject = subject;
      for (const auto& m : per_au) {
        auto it = m.find(frame);
        s.au.push_back(it == m.end() ? kAuUnknown
                                     : (it->second >= kActiveIntensity ? kAuPresent : kAuAbsent));
      }
      if (!KeepAuSample(s, absl::StrCat(subject_dir.string(), " frame ", frame), options, report)) {
        continue;
      }
      const std::string* image = images.Find(image_number);
      ASSIGN_OR_RETURN(bool found,
                       CheckImage(image ? *image : "",
                                  absl::StrCat(subject, " label frame ", frame, " -> image ",
                                               image_number, " in ", image_dir),
                                  options, report));
      if (!found) continue;
      s.image = *image;
      index.samples.push_back(std::move(s));
      ++kept;
    }
    if (kept == 0) {
      RETURN_IF_ERROR(report.Skip("empty_subject", absl::StrCat(subject, ": no usable frame")));
    }
  }
  tally.Note("DISFA subjects", -1, report);
  return index;
}

}  // namespace mal::data
