#include "server/serve/dynamic_batcher.h"

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace mal::serve {

DynamicBatcher::DynamicBatcher(std::shared_ptr<const engine::AuModel> model, Options options)
    : model_(std::move(model)), options_(options) {
  thread_ = std::thread([this] { Loop(); });
}

DynamicBatcher::~DynamicBatcher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

DynamicBatcher::Ticket::Ticket(DynamicBatcher* batcher) : batcher_(batcher) {
  absl::MutexLock lock(&batcher_->mu_);
  ++batcher_->tickets_;
}

DynamicBatcher::Ticket::~Ticket() {
  if (batcher_ == nullptr) return;
  absl::MutexLock lock(&batcher_->mu_);
  --batcher_->tickets_;
}

int64_t DynamicBatcher::model_calls() const {
  absl::MutexLock lock(&mu_);
  return model_calls_;
}

int64_t DynamicBatcher::crops() const {
  absl::MutexLock lock(&mu_);
  return crops_;
}

absl::StatusOr<std::vector<float>> DynamicBatcher::Predict(const std::vector<cv::Mat>& crops) {
  if (crops.empty()) return std::vector<float>();
  Job job{&crops, std::vector<float>(), false};
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the model is being unloaded");
  queue_.push_back(&job);
  ++queued_tickets_;
  mu_.Await(absl::Condition(&job.done));
  --queued_tickets_;
  return std::move(job.result);
}

void DynamicBatcher::Loop() {
  const int max_batch = std::max(1, options_.max_batch);
  for (;;) {
    std::vector<Job*> jobs;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stopping_; };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, nothing left
      // Company for the first call: wait until the batch is full or the delay is over.
      const absl::Time deadline = absl::Now() + absl::FromChrono(options_.max_delay);
      // Ready when the batch is full or every request under way has queued its crops (a request
      // without a ticket never makes the model wait).
      auto full = [this, max_batch]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        size_t n = 0;
        for (const Job* j : queue_) n += j->crops->size();
        return stopping_ || static_cast<int>(n) >= max_batch || queued_tickets_ >= tickets_;
      };
      if (max_batch > 1) mu_.AwaitWithDeadline(absl::Condition(&full), deadline);
      size_t n = 0;
      while (!queue_.empty() && (jobs.empty() || n + queue_.front()->crops->size() <=
                                                     static_cast<size_t>(max_batch))) {
        n += queue_.front()->crops->size();
        jobs.push_back(queue_.front());
        queue_.pop_front();
      }
      ++model_calls_;
      crops_ += static_cast<int64_t>(n);
    }
    std::vector<cv::Mat> all;
    for (const Job* j : jobs) all.insert(all.end(), j->crops->begin(), j->crops->end());
    const auto started = std::chrono::steady_clock::now();
    absl::StatusOr<std::vector<float>> out = model_->Predict(all);
    if (options_.on_model_call) {
      options_.on_model_call(
          static_cast<int>(all.size()),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    const size_t a = static_cast<size_t>(model_->metadata().aus_size());
    absl::MutexLock lock(&mu_);
    size_t at = 0;
    for (Job* j : jobs) {
      if (out.ok()) {
        j->result =
            std::vector<float>(out->begin() + static_cast<long>(at * a),
                               out->begin() + static_cast<long>((at + j->crops->size()) * a));
      } else {
        j->result = out.status();
      }
      at += j->crops->size();
      j->done = true;
    }
  }
}

}  // namespace mal::serve
