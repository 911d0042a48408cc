#ifndef MAL_COMMON_TENSORBOARD_EVENT_WRITER_H_
#define MAL_COMMON_TENSORBOARD_EVENT_WRITER_H_

// TensorBoard event files: TFRecord framing (length, masked CRC-32C of the length, the serialized
// tensorboard.Event, masked CRC-32C of the data; little-endian) of scalars and histograms
// (proto/tensorboard/event.proto). One writer per run directory; TensorBoard shows each directory
// as one run. Not thread-safe.

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mal::tensorboard {

class EventWriter {
 public:
  // Creates `dir` and a file DIR/events.out.tfevents.<unix s>.<host>.mal there, starting with the
  // file_version event. `atomic`: the events go to a temporary file renamed into place by Close
  // (an export never leaves a partial file); otherwise they are appended and flushed as they come,
  // for TensorBoard to read live. Errors name the path.
  static absl::StatusOr<std::unique_ptr<EventWriter>> Create(const std::string& dir, bool atomic);
  // Not atomic: Close(), errors dropped. Atomic and not Closed: the temporary file is removed, so
  // an export that stopped at an error leaves nothing (and replaces nothing).
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // `wall_time` in s since the Unix epoch (0: now).
  absl::Status AddScalar(const std::string& tag, int64_t step, double value, double wall_time = 0);
  // A histogram of `values` in `buckets` equal-width buckets between their min and max.
  absl::Status AddHistogram(const std::string& tag, int64_t step, const std::vector<double>& values,
                            int buckets = 30, double wall_time = 0);
  absl::Status Flush();
  // Flushes, closes and (atomic) renames into place. Idempotent.
  absl::Status Close();

  const std::string& path() const { return path_; }

 private:
  EventWriter(std::string path, std::string tmp, std::FILE* file)
      : path_(std::move(path)), tmp_(std::move(tmp)), file_(file) {}
  absl::Status Write(const std::string& event);

  const std::string path_, tmp_;  // tmp_ empty: writing path_ directly
  std::FILE* file_;
};

}  // namespace mal::tensorboard

#endif  // MAL_COMMON_TENSORBOARD_EVENT_WRITER_H_
