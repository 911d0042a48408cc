#ifndef MAL_COMMON_SPEC_MODEL_METADATA_H_
#define MAL_COMMON_SPEC_MODEL_METADATA_H_

#include <string>

#include "absl/status/statusor.h"
#include "mal/v1/inference.pb.h"

namespace mal {

inline constexpr char kModelFormat[] = "mal-model-v1";

// model.json's text: the metadata as pretty JSON with the .proto field names.
std::string ModelMetadataToJson(const v1::ModelMetadata& metadata);

// Parses model.json's text (unknown fields are ignored, for newer writers) and checks that a
// model can be used with it: format, backbone (one the engine builds), aus (1..99, not empty, none
// twice), input 8..1024 px, resize from input to 2048 px, three means and three positive stds, one
// threshold in (0, 1) per AU (missing thresholds become 0.5). Errors (InvalidArgument) start with
// `source` and name the field.
absl::StatusOr<v1::ModelMetadata> ParseModelMetadata(const std::string& json,
                                                     const std::string& source);

// Reads and parses the file at `path`; NotFound when it is missing.
absl::StatusOr<v1::ModelMetadata> ReadModelMetadata(const std::string& path);

}  // namespace mal

#endif  // MAL_COMMON_SPEC_MODEL_METADATA_H_
