#ifndef MAL_SERVER_CORE_ARTIFACT_STORE_H_
#define MAL_SERVER_CORE_ARTIFACT_STORE_H_

// Artifacts on the coordinator's local disk (checkpoints, models, per-sample weight CSVs), laid
// out as ROOT/<experiment>/trial-<t>/fold-<f>/<name>. Uploads land in a temporary file that is
// checked against the sender's SHA-256, synced and renamed into place, so a reader never sees a
// partial artifact and a failed upload leaves nothing behind. No gRPC here.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/util/sha256.h"

namespace mal::server {

struct ArtifactLimits {
  int64_t max_upload_bytes = int64_t{16} << 30;  // one artifact, bytes
  int64_t min_free_bytes = int64_t{512} << 20;   // uploads are refused below this much free disk
};

class ArtifactStore {
 public:
  using Limits = ArtifactLimits;
  explicit ArtifactStore(std::string root, Limits limits = {})
      : root_(std::move(root)), limits_(limits) {}

  // Checks a relative artifact name: letters, digits, '.', '_', '-', and '/' between parts; no
  // "..", no absolute path.
  static absl::Status CheckName(absl::string_view name);
  std::string RunDir(const std::string& experiment, int trial, int fold) const;
  // The path of an existing artifact, or NotFound.
  absl::StatusOr<std::string> Find(const std::string& experiment, int trial, int fold,
                                   const std::string& name) const;

  // One upload in progress. Destroying it without Commit removes the temporary file.
  class Upload {
   public:
    ~Upload();
    absl::Status Append(absl::string_view data);
    // Verifies the checksum, syncs, renames into place; returns the final size.
    absl::StatusOr<int64_t> Commit(const std::string& expected_sha256);
    const std::string& path() const { return path_; }
    std::string sha256() const { return digest_; }

   private:
    friend class ArtifactStore;
    Upload(std::string path, std::string tmp, int fd, Limits limits)
        : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd), limits_(limits) {}
    std::string path_, tmp_;
    int fd_;
    Limits limits_;
    int64_t size_ = 0;
    Sha256 hash_;
    std::string digest_;
    bool committed_ = false;
  };
  // The finished artifacts of a run (no upload in progress), by relative name, with size (bytes)
  // and modification time (Unix ms). An empty list when the run has uploaded nothing.
  struct Entry {
    std::string name;
    int64_t size = 0, modified_ms = 0;
  };
  std::vector<Entry> List(const std::string& experiment, int trial, int fold) const;

  // Removes every artifact of an experiment (ROOT/<experiment>, renamed aside first so that a
  // crash leaves no half-removed run directory under its name); returns the bytes removed (0
  // when it had none). Internal error naming the directory when it cannot be removed.
  absl::StatusOr<int64_t> RemoveExperiment(const std::string& experiment);

  // Removes the temporary files of uploads a crash interrupted; returns how many. Call at start,
  // before any upload.
  int RemovePartialUploads();

  // ResourceExhausted when the disk holding the store has less than limits.min_free_bytes free
  // (naming both figures; a worker retries it); Append refuses a write that would leave less than
  // min_free_bytes the same way, and an upload past limits.max_upload_bytes with InvalidArgument
  // (naming the file and the limit; the same file would be refused again). The partial file is
  // removed either way.
  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const std::string& experiment, int trial,
                                                      int fold, const std::string& name);

 private:
  const std::string root_;
  const Limits limits_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_ARTIFACT_STORE_H_
