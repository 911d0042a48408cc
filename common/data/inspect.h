#ifndef MAL_COMMON_DATA_INSPECT_H_
#define MAL_COMMON_DATA_INSPECT_H_

#include <string>
#include <vector>

#include "common/data/folds.h"
#include "common/data/sample.h"
#include "mal/v1/data.pb.h"

namespace mal::data {

// Summarises an index (subjects, per-AU rates, expressions, skips) and, when `folds` is non-empty,
// its folds, as the stable message `malctl data inspect -o json` prints.
v1::DatasetInspection Inspect(const DatasetIndex& index, const std::string& protocol,
                              const std::vector<Fold>& folds);

// The same, as aligned human-readable text.
std::string FormatInspection(const v1::DatasetInspection& inspection);

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_INSPECT_H_
