#ifndef MAL_SERVER_SERVE_MODEL_STORE_H_
#define MAL_SERVER_SERVE_MODEL_STORE_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "mal/v1/inference.pb.h"
#include "server/serve/dynamic_batcher.h"
#include "server/serve/registry_cache.h"
#include "worker/engine/au_model.h"

namespace mal::serve {

// The models mal-serve offers, from one of two sources:
// - a directory: every subdirectory DIR/NAME holding model.json and model.pt (a run directory as
//   the trainer leaves it, a `malctl models pull`, a `mal-worker import`) is the model NAME;
// - the coordinator's registry (RegistryCache): a model is a reference, NAME (the newest
//   version), NAME:VERSION or NAME@ALIAS, and is loaded as the version it resolves to, so two
//   references to one version share one loaded copy, and moving an alias takes effect within the
//   cache's alias_ttl.
// Models are loaded on first use, outside the store's lock (a slow download or load delays only
// the calls for that model), and kept while their parameters fit in `memory_budget`; past it the
// least recently used ones are dropped (calls still holding one finish with it). Thread-safe.
class ModelStore {
 public:
  struct Options {
    std::string dir;                           // the directory source, or empty
    std::shared_ptr<RegistryCache> registry;   // the registry source, or null
    std::string device = "cpu";                // cpu, cuda, cuda:N
    int64_t memory_budget = int64_t{2} << 30;  // bytes of loaded parameters and buffers
    DynamicBatcher::Options batching;          // each loaded model's model calls
  };
  explicit ModelStore(Options options) : options_(std::move(options)) {}

  // The model `name` behind its batcher, loading it if needed. Errors: NotFound for an unknown
  // model or a name that is not one (names are not paths: '/', '\\' and leading '.' are refused;
  // with a registry, a malformed reference), the registry's errors (Unavailable), AuModel::Load's.
  absl::StatusOr<std::shared_ptr<DynamicBatcher>> Get(const std::string& name);

  // Every model by name (with a registry: every version as NAME:VERSION, with its aliases), its
  // metadata and whether it is loaded now. A directory whose model.json is bad is listed with an
  // empty metadata. NotFound: no directory; the registry's errors.
  absl::StatusOr<v1::ListModelsResponse> List();

  // The version `name` means now, for the Open Inference Protocol: "1" for a model directory;
  // with a registry, the version number it resolves to (the registry's errors otherwise).
  absl::StatusOr<std::string> Version(const std::string& name);

  // True with a registry: versions are the registry's (Open Inference Protocol model_version).
  bool versioned() const { return options_.registry != nullptr; }

 private:
  // The key a model is loaded under and its directory (downloading it with a registry).
  absl::StatusOr<std::pair<std::string, std::string>> Locate(const std::string& name);

  const Options options_;
  absl::Mutex mu_;
  struct Entry {
    std::shared_ptr<DynamicBatcher> batcher;
    std::list<std::string>::iterator lru;
  };
  std::map<std::string, Entry> loaded_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> loading_ ABSL_GUARDED_BY(mu_);  // keys being loaded by some call
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);     // most recently used first
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_MODEL_STORE_H_
