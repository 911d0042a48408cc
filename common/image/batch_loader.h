#ifndef MAL_COMMON_IMAGE_BATCH_LOADER_H_
#define MAL_COMMON_IMAGE_BATCH_LOADER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/data/sample.h"
#include "common/image/transforms.h"

namespace mal::image {

// A ready batch: contiguous float buffers the engine wraps as tensors without copying.
struct Batch {
  int64_t number = 0;  // position in the epoch, 0-based
  int size = 0;        // images that decoded (a corrupt one is left out, see `failures`)
  int height = 0, width = 0;
  std::vector<float> images;          // size x 3 x height x width, normalised RGB
  std::vector<int64_t> samples;       // indices into DatasetIndex::samples
  std::vector<float> au_labels;       // size x aus, 1 present / 0 absent or unknown
  std::vector<float> au_mask;         // size x aus, 1 known / 0 unknown
  std::vector<int64_t> expressions;   // canonical expression, -1 unlabelled
  std::vector<float> consistency;     // -1 unknown
  std::vector<std::string> failures;  // "path: reason" of images left out
};

// Decodes and augments batches on worker threads ahead of the consumer, through a bounded queue
// (at most `prefetch` batches wait). Batches come out in order, and their content depends only on
// (seed, epoch, position), never on thread timing. A corrupt image is left out of its batch and
// reported; it never stops the loader. Next() is for one consumer thread; the rest is internal.
class BatchLoader {
 public:
  struct Options {
    int batch_size = 32;
    int threads = 2;
    int prefetch = 4;
    bool shuffle = true;  // training order; false keeps index order (evaluation)
    bool augment = true;  // random crop and flip; false = evaluation transform
    bool drop_last = false;
    uint64_t seed = 1;
    TransformOptions transform;
  };

  // `index` must outlive the loader. `samples` are the indices this loader draws from.
  static absl::StatusOr<std::unique_ptr<BatchLoader>> Create(const data::DatasetIndex* index,
                                                             std::vector<int64_t> samples,
                                                             Options options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Begins `epoch` at batch `first_batch` (a resumed run skips what it has done). Discards
  // whatever was prefetched for the previous epoch.
  void StartEpoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the current epoch, or nullopt when it is over. Batches whose every image
  // failed are not returned; their failures are carried to the next batch returned.
  std::optional<Batch> Next();
  // The failures ("path: reason") of images in batches Next() skipped because none of their
  // images decoded, and that no batch returned since carried: after Next() returned nullopt, the
  // end of the pass's. Cleared by the call.
  std::vector<std::string> TakeFailures();

  int64_t batches_per_epoch() const;
  int64_t failed_images() const { return failed_images_.load(); }

 private:
  BatchLoader(const data::DatasetIndex* index, std::vector<int64_t> samples, Options options);
  void WorkerLoop();
  bool NextReady() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool WorkAvailable() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  Batch Build(int64_t epoch, int64_t number, const std::vector<int64_t>& order);

  const data::DatasetIndex* const index_;
  const std::vector<int64_t> samples_;
  const Options options_;
  std::atomic<int64_t> failed_images_{0};

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by StartEpoch
  int64_t epoch_ ABSL_GUARDED_BY(mu_) = -1;
  std::shared_ptr<const std::vector<int64_t>> order_ ABSL_GUARDED_BY(mu_);
  int64_t next_to_build_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_to_return_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t end_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int64_t, Batch> ready_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> carried_failures_ ABSL_GUARDED_BY(mu_);

  std::vector<std::thread> workers_;
};

}  // namespace mal::image

#endif  // MAL_COMMON_IMAGE_BATCH_LOADER_H_
