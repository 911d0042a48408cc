#ifndef MAL_COMMON_SPEC_MODEL_REF_H_
#define MAL_COMMON_SPEC_MODEL_REF_H_

// A reference to a registered model (docs/serving.md): NAME (its newest version), NAME:VERSION or
// NAME@ALIAS, as malctl, mal-serve and the coordinator's ModelRegistry service read it.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal {

struct ModelRef {
  std::string name;   // an experiment name: letters, digits, '-', '_', '.'
  int version = 0;    // >= 1 for NAME:VERSION, else 0
  std::string alias;  // for NAME@ALIAS, else empty ("latest" is read as no alias)

  // NAME, NAME:VERSION or NAME@ALIAS again.
  std::string ToString() const;
  bool pinned() const { return version > 0; }
};

// Parses a reference. InvalidArgument, quoting `text`: an empty or badly formed name, a version
// that is not a positive integer, a bad alias (CheckModelAlias).
absl::StatusOr<ModelRef> ParseModelRef(absl::string_view text);

// An alias: 1 to 64 letters, digits, '-' and '_', not "latest" (reserved for the newest version)
// and not all digits (that reads as a version). InvalidArgument otherwise.
absl::Status CheckModelAlias(absl::string_view alias);

}  // namespace mal

#endif  // MAL_COMMON_SPEC_MODEL_REF_H_
