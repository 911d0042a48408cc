#include "common/data/reader.h"

#include <algorithm>
#include <filesystem>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

ReaderOptions ReaderOptionsFromSpec(const v1::DatasetSpec& spec, const std::vector<int>& aus) {
  ReaderOptions o;
  o.root = spec.root();
  o.images = ResolvePath(spec.root(), spec.images());
  o.distribution = spec.distribution();
  o.manifest = spec.manifest();
  o.split = absl::AsciiStrToLower(spec.split());
  o.aus = aus;
  o.strict = spec.strict();
  o.verify_images = spec.verify_images();
  o.drop_unknown_au = absl::AsciiStrToLower(spec.unknown_au()) == "drop";
  o.aligned = !spec.has_aligned() || spec.aligned();
  return o;
}

std::vector<int> DefaultAus(const std::string& format) {
  if (format == "bp4d" || format == "synthface") return {1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24};
  if (format == "disfa") return {1, 2, 4, 6, 9, 12, 25, 26};
  if (format == "gft") return {1, 2, 4, 6, 10, 12, 14, 15, 23, 24};
  return {};
}

namespace {

// Sample ids are unique within an index (sample.h): a list that names an image twice (RAF-DB,
// AffectNet, a csv manifest) keeps its first line; later ones are reported, an error when strict.
absl::Status DropDuplicateIds(DatasetIndex& index) {
  std::unordered_map<std::string, size_t> first;  // id -> position in the kept samples
  std::vector<Sample> kept;
  kept.reserve(index.samples.size());
  for (Sample& s : index.samples) {
    auto [it, inserted] = first.emplace(s.id, kept.size());
    if (inserted) {
      kept.push_back(std::move(s));
      continue;
    }
    const Sample& was = kept[it->second];
    const bool same = was.au == s.au && was.expression == s.expression;
    RETURN_IF_ERROR(index.report.Skip(
        "duplicate_sample", absl::StrCat(s.id, ": listed again", same ? "" : " with other labels",
                                         " (", s.image, "); the first listing is kept")));
  }
  index.samples = std::move(kept);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DatasetIndex> LoadDataset(const std::string& format, const ReaderOptions& options,
                                         DataRole role) {
  if (options.root.empty()) return absl::InvalidArgumentError("root: empty dataset root");
  std::error_code ec;
  if (!fs::is_directory(options.root, ec)) {
    return absl::NotFoundError(absl::StrCat(options.root, ": dataset root is not a directory"));
  }
  for (int au : options.aus) {
    if (au < 1 || au > 99) {
      return absl::InvalidArgumentError(absl::StrCat("aus: AU", au, " is not an AU number 1..99"));
    }
  }
  const std::string f = absl::AsciiStrToLower(format);
  absl::StatusOr<DatasetIndex> index;
  if (f == "bp4d") {
    index = ReadBp4d(options);
  } else if (f == "disfa") {
    index = ReadDisfa(options);
  } else if (f == "gft") {
    index = ReadGft(options);
  } else if (f == "rafdb") {
    index = ReadRafDb(options);
  } else if (f == "affectnet") {
    index = ReadAffectNet(options);
  } else if (f == "csv") {
    index = ReadCsvManifest(options);
  } else if (f == "synthface") {
    ReaderOptions o = options;
    o.root = (fs::path(options.root) / (role == DataRole::kAu ? "au" : "fe")).string();
    index = role == DataRole::kAu ? ReadBp4d(o) : ReadRafDb(o);
    if (index.ok()) index->format = "synthface";
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "format: unknown dataset format '", format,
        "' (bp4d, disfa, gft, rafdb, affectnet, csv, synthface)"));
  }
  if (!index.ok()) return index.status();
  RETURN_IF_ERROR(DropDuplicateIds(*index));
  if (index->samples.empty()) {
    std::string why;
    for (const auto& [reason, e] : index->report.skips()) {
      absl::StrAppend(&why, "; ", reason, " x", e.count,
                      e.examples.empty() ? "" : absl::StrCat(" (e.g. ", e.examples[0], ")"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat(options.root, ": no usable sample in ", format, " layout", why));
  }
  return index;
}

absl::StatusOr<DatasetIndex> LoadDataset(const v1::DatasetSpec& spec, const std::vector<int>& aus,
                                         DataRole role) {
  return LoadDataset(spec.format(), ReaderOptionsFromSpec(spec, aus), role);
}

}  // namespace mal::data
