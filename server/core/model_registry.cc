#include "server/core/model_registry.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/spec/model_ref.h"
#include "common/util/status_macros.h"

namespace mal::server {

v1::ModelInfo ToModelInfo(const ModelRow& m) {
  v1::ModelInfo mi;
  mi.set_name(m.name);
  mi.set_version(m.version);
  mi.set_experiment_id(m.experiment_id);
  mi.set_trial(m.trial);
  mi.set_fold(m.fold);
  mi.set_test_mean_f1(m.test_mean_f1);
  // Store-relative: clients learn nothing about the server's file system (issue 14).
  const size_t at = m.artifact.rfind("/artifacts/");
  mi.set_artifact(at == std::string::npos ? m.artifact : m.artifact.substr(at + 11));
  mi.set_metadata(m.metadata);
  mi.set_created_ms(m.created_ms);
  return mi;
}

namespace {

// The aliases among `aliases` (alias -> version) that point at `info`'s version.
void AddAliases(const std::vector<std::pair<std::string, int>>& aliases, v1::ModelInfo* info) {
  for (const auto& [alias, version] : aliases) {
    if (version == info->version()) info->add_aliases(alias);
  }
}

}  // namespace

absl::StatusOr<ModelRow> ModelRegistry::Resolve(const std::string& model) {
  ASSIGN_OR_RETURN(ModelRef ref, ParseModelRef(model));
  int version = ref.version;
  if (!ref.alias.empty()) {
    ASSIGN_OR_RETURN(auto aliases, store_->ModelAliases(ref.name));
    for (const auto& [alias, v] : aliases) {
      if (alias == ref.alias) version = v;
    }
    if (version == 0) {
      // Say whether the model exists at all: the likelier mistake differs.
      if (!store_->RegisteredModel(ref.name, 0).ok()) {
        return absl::NotFoundError(absl::StrCat("no model \"", ref.name, "\" in the registry"));
      }
      return absl::NotFoundError(
          absl::StrCat("model \"", ref.name, "\" has no alias \"", ref.alias, "\""));
    }
  }
  return store_->RegisteredModel(ref.name, version);
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::WithAliases(const ModelRow& row) {
  v1::ModelInfo info = ToModelInfo(row);
  ASSIGN_OR_RETURN(auto aliases, store_->ModelAliases(row.name));
  AddAliases(aliases, &info);
  return info;
}

absl::StatusOr<v1::ListRegisteredModelsResponse> ModelRegistry::List(const std::string& name) {
  if (!name.empty()) {
    ASSIGN_OR_RETURN(ModelRef ref, ParseModelRef(name));
    if (ref.pinned() || !ref.alias.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("list takes a model name, not a version or alias: \"", name, "\""));
    }
  }
  ASSIGN_OR_RETURN(std::vector<ModelRow> rows, store_->RegisteredModels(name));
  v1::ListRegisteredModelsResponse out;
  std::string aliases_of;
  std::vector<std::pair<std::string, int>> aliases;
  for (const ModelRow& row : rows) {
    if (row.name != aliases_of) {
      ASSIGN_OR_RETURN(aliases, store_->ModelAliases(row.name));
      aliases_of = row.name;
    }
    v1::ModelInfo* info = out.add_models();
    *info = ToModelInfo(row);
    AddAliases(aliases, info);
  }
  return out;
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Get(const std::string& model) {
  ASSIGN_OR_RETURN(ModelRow row, Resolve(model));
  return WithAliases(row);
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::SetAlias(const std::string& model,
                                                      const std::string& alias) {
  RETURN_IF_ERROR(CheckModelAlias(alias));
  ASSIGN_OR_RETURN(ModelRow row, Resolve(model));
  RETURN_IF_ERROR(store_->SetModelAlias(row.name, alias, row.version));
  return WithAliases(row);
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::DeleteAlias(const std::string& name,
                                                         const std::string& alias) {
  ASSIGN_OR_RETURN(ModelRef ref, ParseModelRef(name));
  if (ref.pinned() || !ref.alias.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("give the model's name, not \"", name, "\""));
  }
  RETURN_IF_ERROR(CheckModelAlias(alias));
  ASSIGN_OR_RETURN(int version, store_->DeleteModelAlias(ref.name, alias));
  auto row = store_->RegisteredModel(ref.name, version);
  if (!row.ok()) return row.status();
  return WithAliases(*row);
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Delete(const std::string& model) {
  ASSIGN_OR_RETURN(ModelRef ref, ParseModelRef(model));
  if (!ref.pinned() && ref.alias.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "delete one version: \"", model, ":VERSION\" or \"", model, "@ALIAS\", not a bare name"));
  }
  ASSIGN_OR_RETURN(ModelRow row, Resolve(model));
  ASSIGN_OR_RETURN(std::vector<std::string> removed, store_->DeleteModel(row.name, row.version));
  v1::ModelInfo info = ToModelInfo(row);
  for (std::string& alias : removed) info.add_aliases(std::move(alias));
  return info;
}

absl::StatusOr<std::pair<std::string, v1::ModelInfo>> ModelRegistry::ModelFile(
    const std::string& model) {
  ASSIGN_OR_RETURN(ModelRow row, Resolve(model));
  if (row.artifact.empty()) {
    return absl::NotFoundError(
        absl::StrCat("model \"", row.name, ":", row.version, "\" has no model file"));
  }
  ASSIGN_OR_RETURN(v1::ModelInfo info, WithAliases(row));
  std::string path = row.artifact;
  if (!artifacts_root_.empty()) {
    // "/old/data/artifacts/exp-1/trial-0/fold-1/model.pt" -> ROOT/exp-1/trial-0/fold-1/model.pt
    const size_t at = path.rfind("/artifacts/");
    if (at != std::string::npos) {
      path = absl::StrCat(artifacts_root_, "/", path.substr(at + 11));
    } else if (!path.empty() && path[0] != '/') {
      path = absl::StrCat(artifacts_root_, "/", path);
    }
  }
  return std::make_pair(std::move(path), std::move(info));
}

}  // namespace mal::server
