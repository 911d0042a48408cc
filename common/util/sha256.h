#ifndef MAL_COMMON_UTIL_SHA256_H_
#define MAL_COMMON_UTIL_SHA256_H_

// SHA-256 (OpenSSL's EVP), for checksummed artifact transfers.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view data);
  // Lowercase hex of the digest; the hasher may not be updated afterwards.
  std::string HexDigest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The hex SHA-256 of a file's contents, read in blocks.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_SHA256_H_
