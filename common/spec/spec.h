#ifndef MAL_COMMON_SPEC_SPEC_H_
#define MAL_COMMON_SPEC_SPEC_H_

// The experiment spec: YAML in, a validated mal.v1.ExperimentSpec out. Errors name the field path
// and the reason ("search.space.train.lr: log_uniform needs 0 < low < high"), and YAML errors the
// file, line and column.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "mal/v1/spec.pb.h"

namespace google::protobuf {
class FieldDescriptor;
class Message;
}  // namespace google::protobuf

namespace mal {

// Parses YAML text onto the spec message, key for key; `source` names the text in errors.
// Unknown keys and ill-typed values are errors. Does not apply defaults or validate.
absl::StatusOr<v1::ExperimentSpec> ParseSpecYaml(absl::string_view yaml, absl::string_view source);
// The same with `overrides` (see LoadSpecFile) applied to the YAML tree first.
absl::StatusOr<v1::ExperimentSpec> ParseSpecYaml(absl::string_view yaml, absl::string_view source,
                                                 const std::vector<std::string>& overrides);

// Reads, parses, fills defaults, validates. Relative paths in the spec stay relative to the
// current directory, as a user typing them expects. A path ending in kSpecProtoSuffix holds a
// serialized mal.v1.ExperimentSpec (what the worker daemon hands its engine child: the spec in the
// one form it has from submission to training); anything else is YAML (JSON is YAML too).
// Errors: the file unreadable, unparsable or invalid, each naming `path` (and the field); an
// invalid value is placed at its line and column ("exp.yaml:4:7: train.lr: must be > 0"), or at
// the override that gave it ("--set train.lr=-1: train.lr: must be > 0").
absl::StatusOr<v1::ExperimentSpec> LoadSpecFile(const std::string& path);
// The same with `overrides` applied to the YAML before it is read, each "FIELD.PATH=VALUE" (malctl
// submit --set): VALUE is YAML ("1e-3", "adam", "[1, 2]", "{mode: exact}") and replaces the
// field, creating parent maps. Errors name the override ("--set train.lrr=0.1: unknown field
// train.lrr"); the merged spec is then validated as a file is.
absl::StatusOr<v1::ExperimentSpec> LoadSpecFile(const std::string& path,
                                                const std::vector<std::string>& overrides);
inline constexpr char kSpecProtoSuffix[] = ".pb";

// Makes the spec's relative file paths (data.au.root, data.fe.root, model.pretrained) absolute
// against `base_dir` (an absolute directory, normally the current one), so the spec means on a
// coordinator or worker what it meant where it was written. Only fields that are set are touched:
// no message is created (an STL spec without data.fe stays without it). Paths inside a dataset
// (images, manifest) stay relative to its root, as everywhere.
void ResolveSpecPaths(v1::ExperimentSpec& spec, const std::string& base_dir);

// Fills every unset field with its documented default (docs/spec.md).
void ApplyDefaults(v1::ExperimentSpec& spec);

// Checks a spec with defaults applied; the first problem comes back naming its field path.
absl::Status ValidateSpec(const v1::ExperimentSpec& spec);

// The field at a dotted path below `message`'s type ("train.lr"), or an error naming the path.
absl::StatusOr<const google::protobuf::FieldDescriptor*> ResolveFieldPath(
    const google::protobuf::Message& message, absl::string_view path);

// Sets the scalar field at a dotted path from text ("1e-3", "adam", "true"), creating parents.
absl::Status SetFieldByPath(google::protobuf::Message& message, absl::string_view path,
                            absl::string_view value);

// The spec as YAML-compatible text (protobuf text format is not YAML; this is JSON, which is).
std::string SpecToJson(const v1::ExperimentSpec& spec);

}  // namespace mal

#endif  // MAL_COMMON_SPEC_SPEC_H_
