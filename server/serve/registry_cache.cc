#include "server/serve/registry_cache.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/util/artifact_transfer.h"
#include "common/util/files.h"
#include "common/util/grpc_status.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"

namespace mal::serve {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<RegistryCache>> RegistryCache::Create(Options options) {
  if (options.address.empty()) return absl::InvalidArgumentError("--registry: empty address");
  if (options.cache_dir.empty()) return absl::InvalidArgumentError("--cache-dir is required");
  std::error_code ec;
  fs::create_directories(options.cache_dir, ec);
  if (ec || !fs::is_directory(options.cache_dir)) {
    return absl::PermissionDeniedError(
        absl::StrCat("--cache-dir ", options.cache_dir, ": cannot create: ", ec.message()));
  }
  auto channel = rpc::MakeSecureChannel(options.address, options.security);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<RegistryCache>(new RegistryCache(std::move(options), *channel));
}

RegistryCache::RegistryCache(Options options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)), stub_(v1::ModelRegistry::NewStub(std::move(channel))) {}

absl::StatusOr<ModelRef> RegistryCache::Resolve(const ModelRef& ref) {
  if (ref.pinned()) return ref;
  const std::string key = ref.ToString();
  const auto now = std::chrono::steady_clock::now();
  {
    absl::MutexLock lock(&mu_);
    auto it = resolved_.find(key);
    if (it != resolved_.end() && now - it->second.at < options_.alias_ttl)
      return it->second.version;
  }
  v1::GetModelRequest req;
  req.set_model(key);
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, options_.timeout);
  grpc::Status s = stub_->GetModel(&ctx, req, &info);
  absl::MutexLock lock(&mu_);
  if (!s.ok()) {
    auto it = resolved_.find(key);
    const bool unreachable = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                             s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (unreachable && it != resolved_.end()) {
      LOG(WARNING) << "registry " << options_.address << " unreachable (" << s.error_message()
                   << "): serving " << key << " as " << it->second.version.ToString()
                   << ", its last resolution";
      return it->second.version;
    }
    if (unreachable) {
      return absl::UnavailableError(
          absl::StrCat("model registry ", options_.address, " unreachable: ", s.error_message()));
    }
    resolved_.erase(key);  // deleted or moved away: do not serve it from memory either
    return FromGrpcStatus(s);
  }
  ModelRef version;
  version.name = info.name();
  version.version = info.version();
  resolved_[key] = Resolved{version, now};
  return version;
}

absl::StatusOr<std::string> RegistryCache::Fetch(const ModelRef& version) {
  if (!version.pinned()) return absl::InternalError("RegistryCache::Fetch: not a pinned version");
  const fs::path dir =
      fs::path(options_.cache_dir) / version.name / std::to_string(version.version);
  std::error_code ec;
  if (fs::exists(dir / run_files::kModel, ec) && fs::exists(dir / run_files::kModelMetadata, ec)) {
    return dir.string();
  }
  v1::GetModelRequest get;
  get.set_model(version.ToString());
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, options_.timeout);
    if (grpc::Status s = stub_->GetModel(&ctx, get, &info); !s.ok()) return FromGrpcStatus(s);
  }
  static std::atomic<int> counter{0};
  const fs::path tmp = fs::path(options_.cache_dir) / version.name /
                       absl::StrCat(".", version.version, ".tmp-", ::getpid(), "-", counter++);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat(tmp.string(), ": cannot create: ", ec.message()));
  auto remove_tmp = [&tmp] {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
  };
  auto fail = [&remove_tmp](absl::Status s) {
    remove_tmp();
    return s;
  };
  v1::DownloadModelRequest req;
  req.set_model(version.ToString());
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::minutes(30));
  auto reader = stub_->DownloadModel(&ctx, req);
  if (grpc::Status s = rpc::ReceiveFile(*reader, (tmp / run_files::kModel).string()); !s.ok())
    return fail(FromGrpcStatus(s));
  if (absl::Status s = WriteFileAtomic((tmp / run_files::kModelMetadata).string(), info.metadata());
      !s.ok())
    return fail(s);
  fs::rename(tmp, dir, ec);
  if (ec) {
    // Another process (or call) may have put the same version in place first: same bytes.
    if (fs::exists(dir / run_files::kModel, ec)) {
      remove_tmp();
      return dir.string();
    }
    return fail(absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message())));
  }
  LOG(INFO) << "cached " << version.ToString() << " from the registry in " << dir.string();
  return dir.string();
}

absl::StatusOr<v1::ListRegisteredModelsResponse> RegistryCache::List() {
  v1::ListRegisteredModelsResponse out;
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, options_.timeout);
  grpc::Status s = stub_->ListRegisteredModels(&ctx, v1::ListRegisteredModelsRequest(), &out);
  if (!s.ok()) return FromGrpcStatus(s);
  return out;
}

}  // namespace mal::serve
