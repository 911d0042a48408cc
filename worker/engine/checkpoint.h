#ifndef MAL_WORKER_ENGINE_CHECKPOINT_H_
#define MAL_WORKER_ENGINE_CHECKPOINT_H_

// The checkpoint format of a fold run (torch; engine code only): the base and meta nets, both
// optimisers, the position in the data and the CPU random state, in one torch archive written
// through a temporary file and a rename, so a kill never leaves a torn checkpoint.

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/models.h"

namespace mal::engine {

// The batch sizes a run trains with, in images: train.batch_au, train.batch_fe (0 for STL) and
// mal.val_batch (0 unless MAL). train.oom_retries may have halved the spec's (trainer.h).
struct Batches {
  int64_t au = 0, fe = 0, val = 0;
  bool operator==(const Batches& o) const { return au == o.au && fe == o.fe && val == o.val; }
  bool operator!=(const Batches& o) const { return !(*this == o); }
};

// Where training stands: the epoch (from 1) and iteration in it, the global iteration, the
// next batch of each loader (the FE and meta-validation loaders cycle through their own epochs),
// and the batch sizes the run was training with (all 0 in a checkpoint written before they were
// recorded); the FE draw the run trains on (FeDrawDigest: the hex SHA-256 of the train.fe_weights
// draw, or "none"; "" in a checkpoint written before 2026-12-07, and not written when "").
struct Position {
  int64_t epoch = 1, iter_in_epoch = 0, global_iter = 0;
  int64_t au_next = 0, fe_epoch = 0, fe_next = 0, val_epoch = 0, val_next = 0;
  Batches batches;
  std::string fe_draw;
};

// Errors: DataLoss naming `path` when it cannot be written (nothing is left at `path` then but
// the previous checkpoint).
absl::Status SaveCheckpoint(const std::string& path, BaseNetImpl& model, MetaNetImpl& meta,
                            torch::optim::Optimizer& base, torch::optim::Optimizer& meta_opt,
                            const Position& p);

// Restores everything SaveCheckpoint wrote onto `device`. Errors: DataLoss naming `path` when it
// is unreadable or written for another architecture (another spec or backbone); a
// c10::OutOfMemoryError from the device propagates (Train handles it).
absl::StatusOr<Position> LoadCheckpoint(const std::string& path, BaseNetImpl& model,
                                        MetaNetImpl& meta, torch::optim::Optimizer& base,
                                        torch::optim::Optimizer& meta_opt,
                                        const torch::Device& device);

// Only the batch sizes of the checkpoint at `path` (read on the CPU), to build a resumed run's
// loaders before the checkpoint is restored. Errors: DataLoss naming `path` when it is unreadable;
// NotFound when it was written before batch sizes were recorded.
absl::StatusOr<Batches> ReadCheckpointBatches(const std::string& path);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_CHECKPOINT_H_
