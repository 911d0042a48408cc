#ifndef MAL_COMMON_UTIL_CRC32C_H_
#define MAL_COMMON_UTIL_CRC32C_H_

// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), as TFRecord files use it.
// Written here because no C++ library in Debian 12 provides it (google/crc32c is not packaged;
// Abseil's absl/crc arrived after 20220623); a table-driven byte loop, checked against RFC 3720's
// test vectors.

#include <cstdint>

#include "absl/strings/string_view.h"

namespace mal {

uint32_t Crc32c(absl::string_view data);
// TFRecord's masked form: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t MaskedCrc32c(absl::string_view data);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_CRC32C_H_
