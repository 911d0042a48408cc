#include "server/serve/model_store.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/spec/model_metadata.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"

namespace mal::serve {

namespace fs = std::filesystem;

absl::StatusOr<std::shared_ptr<DynamicBatcher>> ModelStore::Get(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.find_first_of("/\\") != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return absl::NotFoundError(
        absl::StrCat("no model \"", name, "\" (a model is named by its directory)"));
  }
  absl::MutexLock lock(&mu_);
  if (auto it = loaded_.find(name); it != loaded_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second.batcher;
  }
  const fs::path dir = fs::path(options_.dir) / name;
  if (!fs::exists(dir / run_files::kModelMetadata)) {
    return absl::NotFoundError(absl::StrCat("no model \"", name, "\" in ", options_.dir));
  }
  auto model = engine::AuModel::Load(dir.string(), options_.device);
  if (!model.ok()) return model.status();
  std::shared_ptr<const engine::AuModel> shared = std::move(*model);
  auto batcher = std::make_shared<DynamicBatcher>(shared, options_.batching);
  bytes_ += shared->bytes();
  lru_.push_front(name);
  loaded_[name] = {batcher, lru_.begin()};
  LOG(INFO) << "loaded model " << name << " (" << shared->bytes() / 1024 << " KiB on "
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

absl::StatusOr<v1::ListModelsResponse> ModelStore::List() {
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
