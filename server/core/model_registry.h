#ifndef MAL_SERVER_CORE_MODEL_REGISTRY_H_
#define MAL_SERVER_CORE_MODEL_REGISTRY_H_

// The model registry behind the ModelRegistry service (proto/mal/v1/service.proto): the versions
// finished experiments registered, their aliases, deletion, and where a version's model.pt lies.
// It reads and writes the state store only, never the coordinator's lock: a registry or serving
// call does not wait for scheduling. No gRPC here; thread-safe (the store is).

#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "mal/v1/service.pb.h"
#include "server/state/state_store.h"

namespace mal::server {

// A registry row as the API shows it (aliases left empty).
v1::ModelInfo ToModelInfo(const ModelRow& row);

class ModelRegistry {
 public:
  // `artifacts_root`: the artifact store's directory (DATA_DIR/artifacts) that model files are
  // found under now; empty: the paths as registered.
  explicit ModelRegistry(StateStore* store, std::string artifacts_root = "")
      : store_(store), artifacts_root_(std::move(artifacts_root)) {}

  // Every version of model `name` (empty: of all models) with its aliases, by name and version.
  // InvalidArgument for a badly formed name.
  absl::StatusOr<v1::ListRegisteredModelsResponse> List(const std::string& name);
  // The version a reference (NAME, NAME:VERSION, NAME@ALIAS; common/spec/model_ref.h) means,
  // with its aliases. InvalidArgument: not a reference; NotFound names what is missing.
  absl::StatusOr<v1::ModelInfo> Get(const std::string& model);
  // Points `alias` at the version `model` means (the alias may already exist: it moves).
  absl::StatusOr<v1::ModelInfo> SetAlias(const std::string& model, const std::string& alias);
  // Removes alias `alias` of model `name`; returns the version it pointed at.
  absl::StatusOr<v1::ModelInfo> DeleteAlias(const std::string& name, const std::string& alias);
  // Removes the version `model` means (NAME:VERSION or NAME@ALIAS; a bare NAME is refused, so a
  // typo cannot delete the newest version) and its aliases; returns it with those aliases.
  absl::StatusOr<v1::ModelInfo> Delete(const std::string& model);
  // The path of model.pt of the version `model` means, and that version's info. The path is under
  // `artifacts_root` whatever data directory it was registered in (rows hold the path of their
  // time: a data directory copied or restored elsewhere served the old place's files, or none).
  absl::StatusOr<std::pair<std::string, v1::ModelInfo>> ModelFile(const std::string& model);

 private:
  absl::StatusOr<ModelRow> Resolve(const std::string& model);
  absl::StatusOr<v1::ModelInfo> WithAliases(const ModelRow& row);

  StateStore* const store_;
  const std::string artifacts_root_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_MODEL_REGISTRY_H_
