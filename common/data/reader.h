#ifndef MAL_COMMON_DATA_READER_H_
#define MAL_COMMON_DATA_READER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/sample.h"
#include "mal/v1/spec.pb.h"

namespace mal::data {

// What a reader needs, resolved from a DatasetSpec (paths made absolute-or-root-relative).
struct ReaderOptions {
  std::string root;
  std::string images;        // image root; defaults to root
  std::string distribution;  // rafdb annotator distribution file; empty = look in the usual places
  std::string manifest;      // csv manifest file
  std::string split;         // train | test | all; empty = the format's default
  std::vector<int> aus;      // empty = the format's standard list
  bool strict = false;
  bool verify_images = false;
  bool drop_unknown_au = false;  // drop frames with an unknown AU label instead of masking it
  bool aligned = true;           // rafdb: aligned faces
};

// Which part of an experiment a dataset feeds; decides how `synthface` is read.
enum class DataRole { kAu, kFe };

ReaderOptions ReaderOptionsFromSpec(const v1::DatasetSpec& spec, const std::vector<int>& aus);

// The standard AU list of a format (bp4d: 12, disfa: 8, gft: 10); empty where a format has none.
std::vector<int> DefaultAus(const std::string& format);

// Reads any supported format. `synthface` is read as bp4d from root/au (kAu) or as rafdb from
// root/fe (kFe). Errors that make the whole dataset unusable (missing root or label directory,
// unknown format, nothing left after skips) come back as a status naming the path.
absl::StatusOr<DatasetIndex> LoadDataset(const std::string& format, const ReaderOptions& options,
                                         DataRole role);
absl::StatusOr<DatasetIndex> LoadDataset(const v1::DatasetSpec& spec, const std::vector<int>& aus,
                                         DataRole role);

// The individual readers (see docs/data.md for each layout).
absl::StatusOr<DatasetIndex> ReadBp4d(const ReaderOptions& options);
absl::StatusOr<DatasetIndex> ReadDisfa(const ReaderOptions& options);
absl::StatusOr<DatasetIndex> ReadGft(const ReaderOptions& options);
absl::StatusOr<DatasetIndex> ReadRafDb(const ReaderOptions& options);
absl::StatusOr<DatasetIndex> ReadAffectNet(const ReaderOptions& options);
absl::StatusOr<DatasetIndex> ReadCsvManifest(const ReaderOptions& options);

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_READER_H_
