#ifndef MAL_WORKER_DAEMON_EVENT_PIPE_H_
#define MAL_WORKER_DAEMON_EVENT_PIPE_H_

// The engine child's events to its daemon: one mal.v1.Event per line, as JSON, on a pipe.
// No torch here (the engine's records are plain structs).

#include <string>

#include "absl/status/statusor.h"
#include "mal/v1/service.pb.h"
#include "worker/engine/trainer.h"

namespace mal::worker {

v1::Event ToEvent(const engine::IterationRecord& r);
v1::Event ToEvent(const engine::WeightSummary& s);
v1::Event ToEvent(const engine::EpochRecord& r);

// One line (with its '\n').
std::string EncodeEventLine(const v1::Event& event);
absl::StatusOr<v1::Event> DecodeEventLine(const std::string& line);

// A RecordSink that writes every record to a file descriptor (the pipe to the daemon). Writes
// that fail (the daemon went away) are ignored: the run's files still have everything.
class PipeSink : public engine::RecordSink {
 public:
  explicit PipeSink(int fd) : fd_(fd) {}
  void OnIteration(const engine::IterationRecord& r) override { Write(ToEvent(r)); }
  void OnWeightSummary(const engine::WeightSummary& s) override { Write(ToEvent(s)); }
  void OnEpoch(const engine::EpochRecord& r) override { Write(ToEvent(r)); }
  // The last line: how training ended (RunOutcome). Engine errors are not retryable (a bad spec, a
  // missing dataset, a non-finite loss or an out-of-memory fail the same way on another worker);
  // kCancelled (told to stop) is, as the run resumes from its checkpoint.
  void Finish(const absl::Status& status);

 private:
  void Write(const v1::Event& event);
  int fd_;
};

}  // namespace mal::worker

#endif  // MAL_WORKER_DAEMON_EVENT_PIPE_H_
