#ifndef MAL_WORKER_DAEMON_EVENT_PIPE_H_
#define MAL_WORKER_DAEMON_EVENT_PIPE_H_

// The engine child's events to its daemon: one mal.v1.Event per line, as JSON, on a pipe.
// No torch here (the engine's records are plain structs).

#include <chrono>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "mal/v1/service.pb.h"
#include "worker/engine/trainer.h"

namespace mal::worker {

v1::Event ToEvent(const engine::IterationRecord& r);
v1::Event ToEvent(const engine::WeightSummary& s);
v1::Event ToEvent(const engine::EpochRecord& r);
v1::Event ToEvent(const engine::RestartRecord& r);

// One line (with its '\n').
std::string EncodeEventLine(const v1::Event& event);
absl::StatusOr<v1::Event> DecodeEventLine(const std::string& line);

// An EngineProgress event (progress.units = `units`).
v1::Event ProgressEvent(int64_t units);

// A RecordSink that writes every record to a file descriptor (the pipe to the daemon). Writes
// that fail (the daemon went away) are ignored: the run's files still have everything.
// Thread-safe: the records come from the training thread, progress events from the sink's own.
//
// Training never waits for the daemon: the fd is made non-blocking, and what the pipe cannot take
// now (the daemon busy with a coordinator that does not answer) waits in memory, sent by the next
// write or the progress thread. Past `max_backlog` bytes, loss points, weight summaries and
// progress events are dropped (counted, reported on stderr at the end); epochs, restarts and the
// outcome never are (the daemon completes the run with the last epoch's metrics).
class PipeSink : public engine::RecordSink {
 public:
  static constexpr size_t kDefaultMaxBacklog = size_t{64} << 20;  // bytes
  explicit PipeSink(int fd, size_t max_backlog = kDefaultMaxBacklog);
  ~PipeSink() override { StopProgressReports(); }
  PipeSink(const PipeSink&) = delete;
  PipeSink& operator=(const PipeSink&) = delete;
  void OnIteration(const engine::IterationRecord& r) override { Write(ToEvent(r), true); }
  void OnWeightSummary(const engine::WeightSummary& s) override { Write(ToEvent(s), true); }
  void OnEpoch(const engine::EpochRecord& r) override { Write(ToEvent(r), false); }
  void OnRestart(const engine::RestartRecord& r) override { Write(ToEvent(r), false); }
  // The last line: how training ended (RunOutcome). Engine errors are not retryable (a bad spec, a
  // missing dataset, a non-finite loss or an out-of-memory fail the same way on another worker);
  // kCancelled (told to stop) is, as the run resumes from its checkpoint.
  // Stops the progress reports first, so the outcome is the last line, and waits until the
  // daemon has taken every line waiting in memory (or is gone).
  // `final_epoch` (with an OK status): the run's result (RunOutcome.final_epoch).
  void Finish(const absl::Status& status, const engine::EpochRecord* final_epoch = nullptr);

  // Starts a thread that writes ProgressEvent(ProgressCount()) (common/util/progress.h) at the end
  // of every `interval` (ms) in which the count moved: the daemon's evidence that a run that sends
  // no record for a while (a long evaluation, a dataset being generated) is not stuck. Call once.
  void StartProgressReports(std::chrono::milliseconds interval);
  void StopProgressReports();

 private:
  // `droppable`: may be left out when the backlog is full.
  void Write(const v1::Event& event, bool droppable);
  // Writes what the pipe takes now of the backlog.
  void Drain() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_);
  const size_t max_backlog_;
  std::string backlog_ ABSL_GUARDED_BY(mu_);  // bytes not yet written, from `sent_` on
  size_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_reports_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reporter_;
};

}  // namespace mal::worker

#endif  // MAL_WORKER_DAEMON_EVENT_PIPE_H_
