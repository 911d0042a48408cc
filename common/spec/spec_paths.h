#ifndef MAL_COMMON_SPEC_SPEC_PATHS_H_
#define MAL_COMMON_SPEC_SPEC_PATHS_H_

// Path containment for specs on a shared cluster (issue 14, docs/service.md "Data roots"): when
// a daemon is given data roots (`--data-root DIR`, repeatable), every file path a spec names
// must lie under one of them.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "mal/v1/spec.pb.h"

namespace mal {

// The roots as absolute, normalised directories. `resolve_links`: also resolve symbolic links
// (the root must then exist; a worker, which has the data). INVALID_ARGUMENT naming the flag
// for a relative or empty root, or (with `resolve_links`) one that does not exist.
absl::StatusOr<std::vector<std::string>> NormalizeDataRoots(const std::vector<std::string>& roots,
                                                            bool resolve_links);

// OK when `roots` is empty, or every path of the spec lies under one of `roots` (as returned by
// NormalizeDataRoots): data.au / data.fe `root` (absolute), their `images`, `manifest` and
// `distribution` (absolute, or relative to the dataset's root), model.pretrained and
// train.fe_weights (absolute).
// A path is compared after lexical normalisation, so `..` cannot climb out; with
// `resolve_links` symbolic links are resolved as well (a link under a root pointing elsewhere is
// outside). INVALID_ARGUMENT naming the field path and the roots otherwise.
absl::Status CheckSpecPaths(const v1::ExperimentSpec& spec, const std::vector<std::string>& roots,
                            bool resolve_links);

}  // namespace mal

#endif  // MAL_COMMON_SPEC_SPEC_PATHS_H_
