#ifndef MAL_SERVER_SERVE_REGISTRY_CACHE_H_
#define MAL_SERVER_SERVE_REGISTRY_CACHE_H_

// mal-serve --registry: models from the coordinator's ModelRegistry service
// (proto/mal/v1/service.proto), downloaded once into a cache directory,
// CACHE/NAME/VERSION/{model.pt,model.json}, and reused across restarts. Version numbers are never
// reused by the registry, so a cached NAME:VERSION never goes stale; only aliases and bare names
// are asked again, at most every `alias_ttl`. Thread-safe.

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/spec/model_ref.h"
#include "common/util/grpc_channel.h"
#include "mal/v1/service.grpc.pb.h"

namespace mal::serve {

class RegistryCache {
 public:
  struct Options {
    std::string address;                         // the coordinator, HOST:PORT
    rpc::ClientSecurity security;                // TLS files and the bearer token
    std::string cache_dir;                       // created when missing
    std::chrono::milliseconds alias_ttl{10000};  // how long a resolved alias or name is trusted
    std::chrono::milliseconds timeout{10000};    // per metadata call; downloads get 30 min
  };
  // Creates the cache directory and the channel (no call yet). Errors name the option or file.
  static absl::StatusOr<std::unique_ptr<RegistryCache>> Create(Options options);

  // NAME:VERSION that `ref` means now: a pinned reference as it is (no call); an alias or a bare
  // name from the registry, or from the last answer within alias_ttl. When the coordinator cannot
  // be reached, the last answer of any age is used (logged), else Unavailable. NotFound from the
  // registry passes through.
  absl::StatusOr<ModelRef> Resolve(const ModelRef& ref);

  // The directory holding model.pt and model.json of `version` (pinned), downloading them first
  // when they are not cached. The download goes to a temporary directory that is renamed into
  // place, so the cache holds whole models only. Errors: the registry's (NotFound, Unavailable),
  // DataLoss for a corrupt transfer, Internal naming a path that cannot be written.
  absl::StatusOr<std::string> Fetch(const ModelRef& version);

  // Every registered version (ListRegisteredModels).
  absl::StatusOr<v1::ListRegisteredModelsResponse> List();

  const Options& options() const { return options_; }

 private:
  RegistryCache(Options options, std::shared_ptr<grpc::Channel> channel);

  const Options options_;
  std::unique_ptr<v1::ModelRegistry::Stub> stub_;
  struct Resolved {
    ModelRef version;
    std::chrono::steady_clock::time_point at;
  };
  absl::Mutex mu_;
  std::map<std::string, Resolved> resolved_ ABSL_GUARDED_BY(mu_);  // by reference text
};

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_REGISTRY_CACHE_H_
