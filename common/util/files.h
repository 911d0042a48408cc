#ifndef MAL_COMMON_UTIL_FILES_H_
#define MAL_COMMON_UTIL_FILES_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal {

// Reads a whole file. Errors name the path: NotFound, PermissionDenied, FailedPrecondition (a
// directory, which an ifstream would read as an empty file), DataLoss (a read error).
absl::StatusOr<std::string> ReadFile(const std::string& path);
// The same, refusing a file of more than `max_bytes` (FailedPrecondition naming the path and the
// limit) before reading it all: a regular file by its size, anything else (a pipe, /dev/zero) by
// reading at most max_bytes + 1 bytes.
absl::StatusOr<std::string> ReadFile(const std::string& path, int64_t max_bytes);

// Writes `contents` to `path` atomically: a temporary file in the same directory, fsync, rename.
// A reader never sees a partial file, and a failed write leaves no file behind.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents);

// `path` if absolute, else `base`/`path`.
std::string ResolvePath(const std::string& base, const std::string& path);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_FILES_H_
