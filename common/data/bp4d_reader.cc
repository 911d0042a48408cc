// BP4D-Spontaneous: AUCoding/AU_OCC/<Subject>_<Task>.csv, images <images>/<Subject>/<Task>/<frame>.jpg.

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/data/au_csv.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

absl::StatusOr<DatasetIndex> ReadBp4d(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("bp4d", options, /*au_format=*/true);
  const std::string label_dir = (fs::path(options.root) / "AUCoding" / "AU_OCC").string();
  RETURN_IF_ERROR(RequireDirectory(label_dir, "BP4D layout AUCoding/AU_OCC/<Subject>_<Task>.csv"));
  const std::string image_root = options.images.empty() ? options.root : options.images;

  std::map<int, std::vector<std::string>> missing_columns;
  FrameNamingTally naming;
  std::map<std::string, int64_t> per_subject;
  // A directory named like a label file (an archive unpacked one level too deep) is said, not
  // passed over.
  for (const std::string& name : ListDirectory(label_dir, /*directories=*/true)) {
    if (!absl::EndsWithIgnoreCase(name, ".csv")) continue;
    RETURN_IF_ERROR(index.report.Skip(
        "unreadable_label_file",
        absl::StrCat((fs::path(label_dir) / name).string(), ": is a directory, not a file")));
  }
  std::vector<std::string> special;
  const std::vector<std::string> files = ListDirectory(label_dir, /*directories=*/false, &special);
  RETURN_IF_ERROR(ReportSpecialFiles(label_dir, special, ".csv", index.report));
  if (std::none_of(files.begin(), files.end(),
                   [](const std::string& f) { return absl::EndsWithIgnoreCase(f, ".csv"); })) {
    return absl::NotFoundError(absl::StrCat(
        label_dir, ": no <Subject>_<Task>.csv label file there",
        files.empty() ? std::string(" (empty)")
                      : absl::StrCat(" (", files.size(), " other file(s), e.g. ", files[0], ")")));
  }
  for (const std::string& name : files) {
    const std::string path = (fs::path(label_dir) / name).string();
    if (!absl::EndsWithIgnoreCase(name, ".csv")) continue;
    const std::string stem = fs::path(name).stem().string();
    const size_t us = stem.find('_');
    if (us == std::string::npos || us == 0 || us + 1 == stem.size()) {
      RETURN_IF_ERROR(index.report.Skip("unrecognised_label_file",
                                        absl::StrCat(path, ": not named <Subject>_<Task>.csv")));
      continue;
    }
    const std::string subject = stem.substr(0, us);
    const std::string task = stem.substr(us + 1);
    const std::string image_dir = (fs::path(image_root) / subject / task).string();
    FrameDirectory images(image_dir);
    const size_t before = index.samples.size();
    RETURN_IF_ERROR(ReadAuVideoCsv(
        AuVideo{path, subject, absl::StrCat(subject, "/", task), "", image_dir, &images}, options,
        index, missing_columns, &naming));
    per_subject[subject] += static_cast<int64_t>(index.samples.size() - before);
  }
  NoteMissingAuColumns(missing_columns, index.report);
  naming.Note("BP4D videos", 0, index.report);
  for (const auto& [subject, n] : per_subject) {
    if (n == 0) {
      RETURN_IF_ERROR(index.report.Skip("empty_subject",
                                        absl::StrCat(subject, ": no usable frame in any task")));
    }
  }
  return index;
}

}  // namespace mal::data
