#ifndef MAL_COMMON_DATA_SAMPLE_H_
#define MAL_COMMON_DATA_SAMPLE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mal::data {

// AU label values in Sample::au.
inline constexpr int8_t kAuAbsent = 0;
inline constexpr int8_t kAuPresent = 1;
inline constexpr int8_t kAuUnknown = -1;

// One image with whatever labels its dataset gives. Every reader produces these.
struct Sample {
  std::string id;       // unique within its index, e.g. "F001/T1/732" or "train_00001"
  std::string image;    // path of the image file
  std::string subject;  // empty where the format has no subject ids (RAF-DB, AffectNet)
  std::string split;    // "train" / "test" where the format has an official split, else empty
  std::vector<int8_t> au;  // one per DatasetIndex::aus: kAuPresent, kAuAbsent or kAuUnknown
  int expression = -1;     // canonical order (expression.h), -1 when unlabelled
  float consistency = -1;  // share of annotators who chose `expression`; -1 when unknown
  int box[4] = {0, 0, 0, 0};  // face box x, y, width, height; width 0 = whole image
};

// Why samples were skipped, with counts and a few examples, so nothing is dropped silently.
// In strict mode the first problem becomes the error instead.
class LoadReport {
 public:
  struct Entry {
    int64_t count = 0;
    std::vector<std::string> examples;  // at most kMaxExamples
  };
  static constexpr size_t kMaxExamples = 5;

  explicit LoadReport(bool strict = false) : strict_(strict) {}

  // Records `count` skipped samples (or files, for file-level reasons) under `reason` (snake_case).
  // Returns an error carrying `example` in strict mode, OK otherwise.
  absl::Status Skip(absl::string_view reason, absl::string_view example, int64_t count = 1);
  // Records samples left out by design (AffectNet's contempt / none / uncertain / non-face codes,
  // outside the 7 basic expressions; frames whose AUs are not coded): counted like a skip, never
  // an error, strict or not.
  void Exclude(absl::string_view reason, absl::string_view example, int64_t count = 1);
  void Note(std::string note) { notes_.push_back(std::move(note)); }

  bool strict() const { return strict_; }
  const std::map<std::string, Entry>& skips() const { return skips_; }
  const std::vector<std::string>& notes() const { return notes_; }
  int64_t total() const;

 private:
  bool strict_;
  std::map<std::string, Entry> skips_;
  std::vector<std::string> notes_;
};

// The samples of one dataset, in a deterministic order (sorted by subject, then file order).
struct DatasetIndex {
  std::string format;
  std::string root;
  std::vector<int> aus;  // AU numbers, the meaning of Sample::au
  std::vector<Sample> samples;
  LoadReport report;
  // For formats with an official split (RAF-DB, AffectNet, GFT): every partition the label files
  // list, with its size, and whether it was read into `samples` (ReaderOptions::split), so that a
  // partition left out is reported rather than silently absent.
  struct Partition {
    std::string name;   // "train", "test"
    int64_t entries = 0;
    std::string unit;   // what `entries` counts: "images", "videos"
    bool used = false;
  };
  std::vector<Partition> partitions;
  // Adds `n` entries to partition `name` (created on first use, in order of first use).
  void CountPartition(const std::string& name, int64_t n, const std::string& unit, bool used);

  // Sorted distinct non-empty subjects.
  std::vector<std::string> Subjects() const;
  bool HasAuLabels() const;
  bool HasExpressions() const;
};

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_SAMPLE_H_
