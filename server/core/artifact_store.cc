#include "server/core/artifact_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace mal::server {

namespace fs = std::filesystem;

absl::Status ArtifactStore::CheckName(absl::string_view name) {
  if (name.empty() || name.size() > 200)
    return absl::InvalidArgumentError("artifact name: empty or too long");
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("artifact name '", name, "': bad path component"));
    }
    for (char c : part) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
        return absl::InvalidArgumentError(absl::StrCat("artifact name '", name, "': character '",
                                                       std::string(1, c), "' not allowed"));
      }
    }
  }
  return absl::OkStatus();
}

std::string ArtifactStore::RunDir(const std::string& experiment, int trial, int fold) const {
  return absl::StrCat(root_, "/", experiment, "/trial-", trial, "/fold-", fold);
}

absl::StatusOr<int64_t> ArtifactStore::RemoveExperiment(const std::string& experiment) {
  if (experiment.empty() || experiment.find('/') != std::string::npos || experiment == "." ||
      experiment == "..")
    return absl::InvalidArgumentError(absl::StrCat("bad experiment id '", experiment, "'"));
  const fs::path dir = fs::path(root_) / experiment;
  const fs::path aside = fs::path(root_) / (".deleted-" + experiment);
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    fs::remove_all(aside, ec);  // a crash during an earlier removal
    fs::rename(dir, aside, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot move ", dir.string(), " aside: ", ec.message()));
    }
  }
  if (!fs::exists(aside, ec)) return 0;
  int64_t bytes = 0;
  for (fs::recursive_directory_iterator it(aside, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) bytes += static_cast<int64_t>(it->file_size(size_ec));
  }
  fs::remove_all(aside, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot remove ", aside.string(), ": ", ec.message()));
  return bytes;
}

std::vector<ArtifactStore::Entry> ArtifactStore::List(const std::string& experiment, int trial,
                                                      int fold) const {
  std::vector<Entry> out;
  const fs::path dir = RunDir(experiment, trial, fold);
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string name = fs::relative(it->path(), dir, ec).string();
    if (!CheckName(name).ok() || name.find(".tmp") != std::string::npos) continue;  // uploads
    Entry e;
    e.name = name;
    struct stat st {};
    if (::stat(it->path().c_str(), &st) != 0) continue;
    e.size = static_cast<int64_t>(st.st_size);
    e.modified_ms = int64_t{st.st_mtim.tv_sec} * 1000 + st.st_mtim.tv_nsec / 1000000;
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<std::string> ArtifactStore::Find(const std::string& experiment, int trial, int fold,
                                                const std::string& name) const {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const std::string path = absl::StrCat(RunDir(experiment, trial, fold), "/", name);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return absl::NotFoundError(absl::StrCat("artifact ", name, " not found"));
  return path;
}

int ArtifactStore::RemovePartialUploads() {
  int removed = 0;
  std::error_code ec;
  std::vector<fs::path> partial;
  for (auto it = fs::recursive_directory_iterator(root_, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file() &&
        it->path().filename().string().find(".upload-") != std::string::npos) {
      partial.push_back(it->path());
    }
  }
  for (const auto& p : partial) removed += fs::remove(p, ec) ? 1 : 0;
  return removed;
}

namespace {

// Bytes free for an unprivileged writer on the file system holding `path`; -1 when unknown.
int64_t FreeBytes(const std::string& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

absl::Status CheckFree(const std::string& path, int64_t min_free, int64_t more) {
  const int64_t free = FreeBytes(path);
  if (free >= 0 && free - more < min_free) {
    absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
        "the coordinator's disk is nearly full: ", free >> 20, " MiB free, uploads need ",
        min_free >> 20, " MiB left (mal-coordinator --min-free-mb)"));
    LOG_EVERY_T(WARNING, 30) << "upload refused: " << s.message();
    return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ArtifactStore::Upload>> ArtifactStore::BeginUpload(
    const std::string& experiment, int trial, int fold, const std::string& name) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const std::string path = absl::StrCat(RunDir(experiment, trial, fold), "/", name);
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  RETURN_IF_ERROR(CheckFree(fs::path(path).parent_path().string(), limits_.min_free_bytes, 0));
  static std::atomic<int64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".upload-", ::getpid(), "-", counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat(tmp, ": ", std::strerror(errno)));
  return std::unique_ptr<Upload>(new Upload(path, tmp, fd, limits_));
}

ArtifactStore::Upload::~Upload() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

absl::Status ArtifactStore::Upload::Append(absl::string_view data) {
  if (size_ + static_cast<int64_t>(data.size()) > limits_.max_upload_bytes) {
    // INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: the same file is refused again on every try, so
    // a worker must not retry it (a full disk, below, may clear).
    return absl::InvalidArgumentError(
        absl::StrCat(fs::path(path_).filename().string(), ": over the upload limit of ",
                     limits_.max_upload_bytes >> 20, " MiB (mal-coordinator --max-upload-mb)"));
  }
  // Checked every 64 MiB, not per chunk: statvfs is a system call.
  if ((size_ >> 26) != ((size_ + static_cast<int64_t>(data.size())) >> 26)) {
    RETURN_IF_ERROR(CheckFree(fs::path(tmp_).parent_path().string(), limits_.min_free_bytes,
                              static_cast<int64_t>(data.size())));
  }
  hash_.Update(data);
  size_ += static_cast<int64_t>(data.size());
  while (!data.empty()) {
    const ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      // The worker retries (a disk may get space back): an operator must see why in this log
      // too, not only in the run's message (a probe found nothing here under `ulimit -f`).
      absl::Status s = absl::ResourceExhaustedError(absl::StrCat(tmp_, ": ", std::strerror(errno)));
      LOG_EVERY_T(WARNING, 30) << "upload refused: " << s.message();
      return s;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ArtifactStore::Upload::Commit(const std::string& expected_sha256) {
  digest_ = hash_.HexDigest();
  if (digest_ != expected_sha256) {
    return absl::DataLossError(absl::StrCat("artifact ", fs::path(path_).filename().string(),
                                            ": checksum mismatch (sent ", expected_sha256,
                                            ", received ", digest_, ")"));
  }
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    fd_ = -1;
    return absl::InternalError(absl::StrCat(tmp_, ": ", std::strerror(errno)));
  }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(path_, ": ", std::strerror(errno)));
  }
  committed_ = true;
  return size_;
}

}  // namespace mal::server
