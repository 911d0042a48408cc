#include "worker/daemon/event_pipe.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <iostream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/util/progress.h"
#include "google/protobuf/util/json_util.h"

namespace mal::worker {

namespace {

void Fill(v1::SampleWeightEntry* out, const engine::SampleWeight& w) {
  out->set_id(w.id);
  out->set_label(w.label);
  out->set_consistency(w.consistency);
  out->set_weight(w.weight);
}

}  // namespace

v1::Event ToEvent(const engine::IterationRecord& r) {
  v1::Event e;
  v1::TrainingPoint* p = e.mutable_point();
  p->set_epoch(r.epoch);
  p->set_iteration(r.iteration);
  p->set_loss_au(r.loss_au);
  p->set_loss_fe(r.loss_fe);
  p->set_loss_val(r.loss_val);
  p->set_mean_w_au(r.mean_w_au);
  p->set_mean_w_fe(r.mean_w_fe);
  p->set_mean_wn_au(r.mean_wn_au);
  p->set_mean_wn_fe(r.mean_wn_fe);
  p->set_lr(r.lr);
  p->set_meta_lr(r.meta_lr);
  p->set_seconds(r.seconds);
  return e;
}

v1::Event ToEvent(const engine::WeightSummary& s) {
  v1::Event e;
  v1::WeightSummary* w = e.mutable_weights();
  w->set_epoch(s.epoch);
  w->set_iteration(s.iteration);
  for (double q : engine::WeightSummary::kQuantiles) w->add_quantile_levels(q);
  for (double q : s.au_quantiles) w->add_au_quantiles(q);
  for (double q : s.fe_quantiles) w->add_fe_quantiles(q);
  for (const auto& x : s.lowest_fe) Fill(w->add_lowest_fe(), x);
  for (const auto& x : s.highest_fe) Fill(w->add_highest_fe(), x);
  return e;
}

v1::Event ToEvent(const engine::EpochRecord& r) {
  v1::Event e;
  v1::EpochMetrics* m = e.mutable_epoch();
  m->set_epoch(r.epoch);
  m->set_iteration(r.iteration);
  for (int a : r.aus) m->add_aus(a);
  for (double f : r.test_f1) m->add_test_f1(f);
  m->set_test_mean_f1(r.test_mean_f1);
  for (double f : r.val_f1) m->add_val_f1(f);
  m->set_val_mean_f1(r.val_mean_f1);
  m->set_val_loss(r.val_loss);
  m->set_mean_fe_weight(r.mean_fe_weight);
  m->set_mean_au_weight(r.mean_au_weight);
  m->set_fe_weight_consistency_spearman(r.fe_weight_consistency_spearman);
  m->set_seconds(r.seconds);
  m->set_train_failed_images(r.train_failed_images);
  m->set_test_failed_images(r.test_failed_images);
  m->set_val_failed_images(r.val_failed_images);
  return e;
}

v1::Event ToEvent(const engine::RestartRecord& r) {
  v1::Event e;
  v1::RunRestart* m = e.mutable_restart();
  m->set_reason(r.reason);
  m->set_batch_au(r.batch_au);
  m->set_batch_fe(r.batch_fe);
  m->set_val_batch(r.val_batch);
  m->set_halving(r.halving);
  return e;
}

std::string EncodeEventLine(const v1::Event& event) {
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(event, &json);  // one line by default
  json.push_back('\n');
  return json;
}

absl::StatusOr<v1::Event> DecodeEventLine(const std::string& line) {
  v1::Event e;
  // Unknown fields ignored: an engine newer than its daemon (binaries replaced in place) may
  // send kinds this daemon does not know.
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto s = google::protobuf::util::JsonStringToMessage(line, &e, options);
  if (!s.ok()) return absl::DataLossError(absl::StrCat("engine event: ", s.ToString()));
  return e;
}

v1::Event ProgressEvent(int64_t units) {
  v1::Event e;
  e.mutable_progress()->set_units(units);
  return e;
}

PipeSink::PipeSink(int fd, size_t max_backlog) : fd_(fd), max_backlog_(max_backlog) {
  const int flags = fd < 0 ? -1 : ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    absl::MutexLock lock(&mu_);
    fd_ = -1;  // not an open descriptor: nothing to write to
  }
}

void PipeSink::Write(const v1::Event& event, bool droppable) {
  const std::string line = EncodeEventLine(event);
  absl::MutexLock lock(&mu_);
  if (fd_ < 0) return;
  Drain();  // room first: drop only what still does not fit
  if (droppable && backlog_.size() - sent_ + line.size() > max_backlog_) {
    ++dropped_;
  } else {
    backlog_ += line;
  }
  Drain();
}

void PipeSink::Drain() {
  while (fd_ >= 0 && sent_ < backlog_.size()) {
    const ssize_t n = ::write(fd_, backlog_.data() + sent_, backlog_.size() - sent_);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;  // the pipe is full: later
    if (n <= 0) {
      fd_ = -1;  // the reader is gone
      break;
    }
    sent_ += static_cast<size_t>(n);
  }
  if (sent_ == backlog_.size() || fd_ < 0) {
    if (backlog_.capacity() > (size_t{1} << 20)) {
      std::string().swap(backlog_);  // give a long outage's memory back
    } else {
      backlog_.clear();
    }
    sent_ = 0;
  } else if (sent_ > (size_t{1} << 20) && sent_ > backlog_.size() / 2) {
    backlog_.erase(0, sent_);  // compact now and then, not at every write
    sent_ = 0;
  }
}

void PipeSink::StartProgressReports(std::chrono::milliseconds interval) {
  try {
    reporter_ = std::thread([this, interval, reported = ProgressCount()]() mutable {
      const absl::Duration wait = absl::FromChrono(interval);
      for (;;) {
        {
          absl::MutexLock lock(&mu_);
          const auto stopped = [this]()
                                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_reports_; };
          if (mu_.AwaitWithTimeout(absl::Condition(&stopped), wait)) return;
          Drain();  // what waits from the training thread's last write
        }
        const int64_t units = ProgressCount();
        if (units == reported) continue;
        reported = units;
        Write(ProgressEvent(units), /*droppable=*/true);
      }
    });
  } catch (const std::exception& e) {  // std::system_error, or std::bad_alloc for its state
    // No thread to spare (a tight address-space limit): records still go; a stall watchdog may
    // then stop a run that is quiet for long.
    std::cerr << "mal-worker: no progress reports to the daemon: " << e.what() << "\n";
  }
}

void PipeSink::StopProgressReports() {
  {
    absl::MutexLock lock(&mu_);
    stop_reports_ = true;
  }
  if (reporter_.joinable()) reporter_.join();
}

void PipeSink::Finish(const absl::Status& status, const engine::EpochRecord* final_epoch) {
  StopProgressReports();
  v1::Event e;
  v1::RunOutcome* o = e.mutable_outcome();
  o->set_code(static_cast<int>(status.code()));
  o->set_message(std::string(status.message()));
  o->set_retryable(status.code() == absl::StatusCode::kCancelled);
  if (status.ok() && final_epoch != nullptr)
    *o->mutable_final_epoch() = ToEvent(*final_epoch).epoch();
  Write(e, /*droppable=*/false);
  // Every line out before the process ends: the daemon reads it once it is free again. No time
  // limit: a daemon that dies takes this process with it (PR_SET_PDEATHSIG), one that stops the
  // run sends SIGKILL after its grace period.
  for (;;) {
    int fd;
    {
      absl::MutexLock lock(&mu_);
      Drain();
      if (fd_ < 0 || backlog_.empty()) {
        if (dropped_ > 0) {
          std::cerr << "mal-worker: " << dropped_
                    << " loss point(s), weight summaries or progress events were not sent to the "
                       "daemon (it did not read for long; the run's files have them all)\n";
        }
        return;
      }
      fd = fd_;
    }
    pollfd p{fd, POLLOUT, 0};
    (void)::poll(&p, 1, 1000);
  }
}

}  // namespace mal::worker
