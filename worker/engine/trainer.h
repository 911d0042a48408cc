#ifndef MAL_WORKER_ENGINE_TRAINER_H_
#define MAL_WORKER_ENGINE_TRAINER_H_

// Trains one fold of an experiment with STL, MTL or MAL (no torch in this header).

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mal/v1/spec.pb.h"

namespace mal::engine {

// Every iteration.
struct IterationRecord {
  int epoch = 0;           // 1-based
  int64_t iteration = 0;   // 1-based, over the whole run
  double loss_au = 0, loss_fe = 0;
  double loss_val = -1;    // -1 where no meta update ran this iteration
  double mean_w_au = 0, mean_w_fe = 0;    // raw meta-net weights (0 for STL/MTL)
  double mean_wn_au = 0, mean_wn_fe = 0;  // normalised
  double lr = 0, meta_lr = 0;
  double seconds = 0;      // of this iteration
};

struct SampleWeight {
  std::string id;
  int label = -1;          // canonical expression
  double consistency = -1;
  double weight = 0;       // raw meta-net output
};

// Every `train.log_every` iterations: the weights of the samples seen since the last summary.
struct WeightSummary {
  int epoch = 0;
  int64_t iteration = 0;
  static constexpr double kQuantiles[] = {0, 0.1, 0.25, 0.5, 0.75, 0.9, 1};
  std::vector<double> au_quantiles, fe_quantiles;  // at kQuantiles
  std::vector<SampleWeight> lowest_fe, highest_fe;  // up to 5 each
};

// Every epoch.
struct EpochRecord {
  int epoch = 0;
  int64_t iteration = 0;
  std::vector<int> aus;
  std::vector<double> test_f1;  // per AU, on the fold's test subjects (empty for fold 0)
  double test_mean_f1 = 0;      // -1 for fold 0 (the final fit), which has no test part
  std::vector<double> val_f1;   // on the validation reserve
  double val_mean_f1 = 0;
  double val_loss = 0;          // class-rebalanced
  double mean_fe_weight = -1, mean_au_weight = -1;  // over every training sample (MAL)
  double fe_weight_consistency_spearman = 0;         // MAL, where consistency is known
  double seconds = 0;
  std::string weights_csv;      // per-sample weights of this epoch (MAL)
  // Images that did not decode and were left out: of this epoch's training batches (AU, FE and
  // the reserve's meta-validation batches, each image once however often drawn; a resumed epoch
  // counts from the resume), of the test part and of the validation reserve in this evaluation.
  int64_t train_failed_images = 0, test_failed_images = 0, val_failed_images = 0;
};

// The run starts over from its first iteration with smaller batches (train.oom_retries).
struct RestartRecord {
  std::string reason;  // the out-of-memory message of the attempt that ended
  int batch_au = 0, batch_fe = 0, val_batch = 0;  // the batches it starts over with
  int halving = 0;                                // 1 .. train.oom_retries
};

// Receives records as training produces them, on the training thread. Keep it fast.
class RecordSink {
 public:
  virtual ~RecordSink() = default;
  virtual void OnIteration(const IterationRecord&) {}
  virtual void OnWeightSummary(const WeightSummary&) {}
  virtual void OnEpoch(const EpochRecord&) {}
  // Before the new attempt's first record: what came before belongs to the larger batches.
  virtual void OnRestart(const RestartRecord&) {}
};

struct TrainOptions {
  v1::ExperimentSpec spec;  // defaults applied and validated
  int fold = 1;             // 1-based; 0: the final fit on every subject (no test part)
  int trial = 0;            // the experiment's trial this run belongs to (model.json)
  std::string out_dir;
  bool resume = false;      // continue from out_dir/checkpoint.pt when it exists
  bool progress = false;    // progress to stderr (a bar on a terminal, plain lines otherwise)
  RecordSink* sink = nullptr;
  // Polled between iterations: true stops the run after a checkpoint (status Cancelled).
  std::function<bool()> should_stop;
  // Images per forward when evaluating (test subjects, validation reserve, the epoch's sample
  // weights); no effect on training. Train's out-of-memory fallback halves it with the batches.
  int eval_batch = 64;
  // Write a checkpoint before the first iteration of a run that does not resume. Set by Train's
  // out-of-memory fallback when it starts a run over, so that the worker daemon uploads the
  // smaller batches' checkpoint before any of the new run's logs.
  bool checkpoint_at_start = false;
};

struct TrainResult {
  EpochRecord final_epoch;
  std::string model_path;     // weights (torch archive)
  std::string metadata_path;  // model.json: AUs, input, normalisation, thresholds, spec, metrics
  int64_t iterations = 0;
  // How often train.oom_retries halved the batches after running out of memory (0: never); the
  // batches trained with are in model.json's spec.
  int oom_halvings = 0;
};

// Trains, evaluates every epoch, checkpoints, and saves the model under out_dir:
//   checkpoint.pt, records.csv, summaries.jsonl, metrics.json, weights/epoch_NNN.csv (MAL),
//   model.pt, model.json. Files are written atomically. Errors (bad spec, unreadable dataset,
//   non-finite loss or weights) come back as a status naming the cause; the last good checkpoint
//   stays. CUDA device memory exhausted (c10::OutOfMemoryError): ResourceExhausted with
//   OutOfMemoryMessage; under the worker daemon such a run fails without a retry (the same batch
//   would fail again). cuDNN's NOT_SUPPORTED and cuDNN / cuBLAS / CPU allocation failures count
//   as out of memory too. With train.oom_retries N > 0 the run first starts over from its first
//   iteration with every batch halved (train.batch_au, train.batch_fe, mal.val_batch and
//   options.eval_batch, none below 1), up to N times; the larger batch's files (checkpoint, logs,
//   weights, model, TensorBoard) are removed first. A resumed run (options.resume) trains with
//   the batches its checkpoint was written with when they are the spec's halved 1..N times. (On
//   the CPU, Linux's OOM killer usually ends the process instead, which the daemon retries.)
absl::StatusOr<TrainResult> Train(const TrainOptions& options);

// One attempt at training with exactly options.spec's batches: what Train runs, but LibTorch's
// exceptions (c10::Error, c10::OutOfMemoryError) propagate instead of becoming a status.
using TrainAttempt = std::function<absl::StatusOr<TrainResult>(const TrainOptions&)>;
absl::StatusOr<TrainResult> TrainOnce(const TrainOptions& options);

// Train's handling of exceptions and of train.oom_retries around `attempt` (TrainOnce in Train;
// tests pass one that throws c10::OutOfMemoryError).
absl::StatusOr<TrainResult> TrainWithOomFallback(const TrainOptions& options,
                                                 const TrainAttempt& attempt);

// The message of a run that ran out of device memory: the device, the batch sizes of `spec`'s
// method (AU, FE, validation batch), the input size (px) and backbone, which fields to lower, and
// the first line of LibTorch's message `what`. E.g. "out of memory on cuda:0 with batch 64 AU +
// 64 FE, validation batch 256 at 224 px (resnet34): lower train.batch_au / train.batch_fe /
// mal.val_batch or model.input (CUDA out of memory. Tried to allocate ...)".
std::string OutOfMemoryMessage(const v1::ExperimentSpec& spec, const std::string& what);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_TRAINER_H_
