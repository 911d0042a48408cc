#ifndef MAL_COMMON_UTIL_FILES_H_
#define MAL_COMMON_UTIL_FILES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal {

// Reads a whole file. Errors name the path: NotFound, PermissionDenied, FailedPrecondition (a
// directory, which an ifstream would read as an empty file), DataLoss (a read error).
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file in the same directory, fsync, rename.
// A reader never sees a partial file, and a failed write leaves no file behind.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents);

// `path` if absolute, else `base`/`path`.
std::string ResolvePath(const std::string& base, const std::string& path);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_FILES_H_
