#ifndef MAL_SERVER_SERVE_DYNAMIC_BATCHER_H_
#define MAL_SERVER_SERVE_DYNAMIC_BATCHER_H_

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <opencv2/core.hpp>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/engine/au_model.h"

namespace mal::serve {

// Dynamic batching for one model: face crops submitted by concurrent calls go through the model in
// one Predict (one forward pass, better use of the matrix kernels than many small ones), up to
// `max_batch` crops; the first queued call waits up to `max_delay`, and only while a request that
// holds a Ticket has yet to queue its crops. One thread runs the model; a call larger than
// max_batch runs alone. Thread-safe.
class DynamicBatcher {
 public:
  struct Options {
    int max_batch = 32;                         // crops per model call (>= 1; 1: no batching)
    std::chrono::microseconds max_delay{2000};  // how long the first waiting call waits for company
    // Called on the model thread after each model call with its crops and its duration (s), for
    // metrics; empty: nothing is called.
    std::function<void(int crops, double seconds)> on_model_call;
  };
  DynamicBatcher(std::shared_ptr<const engine::AuModel> model, Options options);
  ~DynamicBatcher();  // answers what is queued, then stops its thread
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  const engine::AuModel& model() const { return *model_; }

  // Held by a request from its start (before it decodes and detects) to its end: the model thread
  // waits for company only while a ticket holder has not queued its crops yet, so a lone request
  // never waits and concurrent ones meet in one batch.
  class Ticket {
   public:
    explicit Ticket(DynamicBatcher* batcher);
    ~Ticket();
    Ticket(Ticket&& other) noexcept : batcher_(other.batcher_) { other.batcher_ = nullptr; }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    Ticket& operator=(Ticket&&) = delete;

   private:
    DynamicBatcher* batcher_;
  };

  // Blocks until the crops' probabilities are known: crops.size() x A, as AuModel::Predict (whose
  // errors it returns, for every call of the batch that failed). The first queued call waits up to
  // max_delay for the other ticket holders' crops (or a full batch), then the model runs.
  absl::StatusOr<std::vector<float>> Predict(const std::vector<cv::Mat>& crops);

  // How many model calls and crops so far (for tests and metrics).
  int64_t model_calls() const;
  int64_t crops() const;

 private:
  struct Job {
    const std::vector<cv::Mat>* crops;
    absl::StatusOr<std::vector<float>> result;
    bool done = false;
  };
  void Loop();

  const std::shared_ptr<const engine::AuModel> model_;
  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);
  int tickets_ ABSL_GUARDED_BY(mu_) = 0;         // requests under way
  int queued_tickets_ ABSL_GUARDED_BY(mu_) = 0;  // of them, those with crops in queue_ or running
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t model_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t crops_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_DYNAMIC_BATCHER_H_
