#include "server/serve/model_store.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/spec/model_metadata.h"
#include "common/spec/model_ref.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"

namespace mal::serve {

namespace fs = std::filesystem;

absl::StatusOr<std::pair<std::string, std::string>> ModelStore::Locate(const std::string& name) {
  if (options_.registry != nullptr) {
    auto ref = ParseModelRef(name);
    if (!ref.ok()) return absl::NotFoundError(ref.status().message());
    ASSIGN_OR_RETURN(ModelRef version, options_.registry->Resolve(*ref));
    const std::string key = version.ToString();
    {
      absl::MutexLock lock(&mu_);
      if (loaded_.count(key) > 0) return std::make_pair(key, std::string());
    }
    ASSIGN_OR_RETURN(std::string dir, options_.registry->Fetch(version));
    return std::make_pair(key, dir);
  }
  // A name is one directory entry: no separator, not hidden, within NAME_MAX (255 bytes).
  if (name.empty() || name[0] == '.' || name.size() > 255 ||
      name.find_first_of("/\\") != std::string::npos || name.find('\0') != std::string::npos) {
    return absl::NotFoundError(
        absl::StrCat("no model \"", name, "\" (a model is named by its directory)"));
  }
  const fs::path dir = fs::path(options_.dir) / name;
  return std::make_pair(name, dir.string());
}

absl::StatusOr<std::shared_ptr<DynamicBatcher>> ModelStore::Get(const std::string& name) {
  ASSIGN_OR_RETURN(auto located, Locate(name));
  const std::string& key = located.first;
  const std::string& dir = located.second;
  {
    absl::MutexLock lock(&mu_);
    // One load per model: later callers wait for the first, whose result they then share.
    auto free = [this, &key]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return loading_.count(key) == 0; };
    mu_.Await(absl::Condition(&free));
    if (auto it = loaded_.find(key); it != loaded_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      return it->second.batcher;
    }
    loading_.insert(key);
  }
  auto load = [&]() -> absl::StatusOr<std::shared_ptr<const engine::AuModel>> {
    std::error_code ec;  // a link loop, a name too long: not a model directory
    if (dir.empty() || !fs::exists(fs::path(dir) / run_files::kModelMetadata, ec)) {
      // Unloaded meanwhile (registry) or not a model directory: find it again.
      if (options_.registry != nullptr) {
        ASSIGN_OR_RETURN(auto again, Locate(name));
        if (!again.second.empty()) return engine::AuModel::Load(again.second, options_.device);
      }
      return absl::NotFoundError(absl::StrCat("no model \"", name, "\" in ", options_.dir));
    }
    return engine::AuModel::Load(dir, options_.device);
  };
  // Whatever happens, the key leaves loading_ below: a throw from the file system here once left
  // every later caller of the name waiting for good, one server thread each.
  absl::StatusOr<std::shared_ptr<const engine::AuModel>> model;
  try {
    model = load();
  } catch (const std::exception& e) {
    model = absl::InternalError(absl::StrCat("model \"", name, "\": ", e.what()));
  } catch (...) {
    model = absl::InternalError(absl::StrCat("model \"", name, "\": unknown exception"));
  }
  absl::MutexLock lock(&mu_);
  loading_.erase(key);
  if (!model.ok()) return model.status();
  std::shared_ptr<const engine::AuModel> shared = std::move(*model);
  auto batcher = std::make_shared<DynamicBatcher>(shared, options_.batching);
  bytes_ += shared->bytes();
  lru_.push_front(key);
  loaded_[key] = {batcher, lru_.begin()};
  LOG(INFO) << "loaded model " << key << " (" << shared->bytes() / 1024 << " KiB on "
            << options_.device << ")";
  while (bytes_ > options_.memory_budget && lru_.size() > 1) {
    const std::string victim = lru_.back();
    lru_.pop_back();
    bytes_ -= loaded_[victim].batcher->model().bytes();
    loaded_.erase(victim);
    LOG(INFO) << "unloaded model " << victim << " (memory budget " << options_.memory_budget
              << " bytes)";
  }
  return batcher;
}

absl::StatusOr<std::string> ModelStore::Version(const std::string& name) {
  if (options_.registry == nullptr) return std::string("1");
  auto ref = ParseModelRef(name);
  if (!ref.ok()) return absl::NotFoundError(ref.status().message());
  ASSIGN_OR_RETURN(ModelRef version, options_.registry->Resolve(*ref));
  return std::to_string(version.version);
}

absl::StatusOr<v1::ListModelsResponse> ModelStore::List() {
  if (options_.registry != nullptr) {
    ASSIGN_OR_RETURN(v1::ListRegisteredModelsResponse registered, options_.registry->List());
    v1::ListModelsResponse out;
    absl::MutexLock lock(&mu_);
    for (const v1::ModelInfo& info : registered.models()) {
      v1::ServedModel* m = out.add_models();
      m->set_name(absl::StrCat(info.name(), ":", info.version()));
      *m->mutable_aliases() = info.aliases();
      if (auto parsed = ParseModelMetadata(info.metadata(), m->name()); parsed.ok())
        *m->mutable_metadata() = *parsed;
      m->set_loaded(loaded_.count(m->name()) > 0);
    }
    return out;
  }
  std::error_code ec;
  fs::directory_iterator it(options_.dir, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(options_.dir, ": ", ec.message()));
  std::map<std::string, v1::ServedModel> found;
  for (const fs::directory_entry& e : it) {
    const fs::path meta = e.path() / run_files::kModelMetadata;
    if (!e.is_directory(ec) || !fs::exists(meta, ec)) continue;
    v1::ServedModel m;
    m.set_name(e.path().filename().string());
    if (auto parsed = ReadModelMetadata(meta.string()); parsed.ok())
      *m.mutable_metadata() = *parsed;
    found[m.name()] = std::move(m);
  }
  v1::ListModelsResponse out;
  absl::MutexLock lock(&mu_);
  for (auto& [name, m] : found) {
    m.set_loaded(loaded_.count(name) > 0);
    *out.add_models() = std::move(m);
  }
  return out;
}

}  // namespace mal::serve
