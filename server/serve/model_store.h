#ifndef MAL_SERVER_SERVE_MODEL_STORE_H_
#define MAL_SERVER_SERVE_MODEL_STORE_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "mal/v1/inference.pb.h"
#include "server/serve/dynamic_batcher.h"
#include "worker/engine/au_model.h"

namespace mal::serve {

// The models mal-serve offers, from a directory: every subdirectory DIR/NAME holding model.json
// and model.pt (a run directory as the trainer leaves it, or a copy) is the model NAME. Models are
// loaded on first use and kept while their parameters fit in `memory_budget`; past it the least
// recently used ones are dropped (calls still holding one finish with it). Thread-safe.
class ModelStore {
 public:
  struct Options {
    std::string dir;
    std::string device = "cpu";                // cpu, cuda, cuda:N
    int64_t memory_budget = int64_t{2} << 30;  // bytes of loaded parameters and buffers
    DynamicBatcher::Options batching;          // each loaded model's model calls
  };
  explicit ModelStore(Options options) : options_(std::move(options)) {}

  // The model NAME behind its batcher, loading it if needed (under the store's lock: a first call
  // waits for it). Errors: NotFound for a name that is not a model directory (names are not paths:
  // '/', '\\' and leading '.' are refused), AuModel::Load's errors.
  absl::StatusOr<std::shared_ptr<DynamicBatcher>> Get(const std::string& name);

  // Every model under the directory, by name, with its metadata and whether it is loaded now. A
  // directory whose model.json is bad is listed with an empty metadata. NotFound: no directory.
  absl::StatusOr<v1::ListModelsResponse> List();

 private:
  const Options options_;
  absl::Mutex mu_;
  struct Entry {
    std::shared_ptr<DynamicBatcher> batcher;
    std::list<std::string>::iterator lru;
  };
  std::map<std::string, Entry> loaded_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_MODEL_STORE_H_
