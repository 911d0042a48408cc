#ifndef MAL_WORKER_DAEMON_DAEMON_IMPL_H_
#define MAL_WORKER_DAEMON_DAEMON_IMPL_H_

// The worker daemon's parts, shared by its two files (daemon/ only): daemon.cc, the control side
// (registration, heartbeats, starting and reaping runs, shutdown) on the daemon's thread, and
// daemon_run.cc, one run's execution (prepare, spawn, relay events, uploads, the outcome) on that
// run's thread.

#include <grpcpp/server.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "mal/v1/service.pb.h"
#include "worker/daemon/child_process.h"
#include "worker/daemon/coordinator_client.h"
#include "worker/daemon/daemon.h"

namespace mal::worker::internal {

using std::chrono::milliseconds;

constexpr milliseconds kCallTimeout{10000};
constexpr milliseconds kTransferTimeout{300000};
constexpr size_t kBatch = 256;
constexpr size_t kMaxPending = 50000;
constexpr milliseconds kForever = milliseconds::max();
// How long an upload made while the child trains (epoch ends, checkpoints) keeps retrying.
constexpr milliseconds kProgressUploadPatience{10000};
// In a run's directory (beside out/, so no output walk sends it): the checkpoint set aside while
// UploadProgress sends the files it covers before it, and the empty file it sends in place of
// the logs after a restart (Supervised::restart_pending).
constexpr char kCheckpointSnapshot[] = "checkpoint.upload";
constexpr char kEmptyUpload[] = "empty.upload";
// Written into a run's directory once every file of the run reached the coordinator, just before
// its completion is sent: the local copy is no longer needed, whatever the answer.
constexpr char kSent[] = ".sent";
// Written into a run's directory when this daemon fails the run (not a hand-back): the directory
// is kept for inspection (the newest DaemonOptions::keep_failed_runs). A start removes every run
// directory without kSent's or this marker's reason to exist (RemoveLeftovers).
constexpr char kFailedMarker[] = ".failed";
// A child still there this long after its SIGKILL is in uninterruptible sleep (a hard-mounted
// network file system, FUSE): its run is given up (docs/service.md).
constexpr milliseconds kUnkillableAfter{60000};

// Drops the weight summaries from `pending` after its first `keep_head` events, which keep their
// places: a ReportEvents request that timed out may have delivered them, and the coordinator
// skips events by run-local index, so their indices must not change. Returns how many it dropped.
size_t DropWeightSummaries(std::deque<v1::Event>& pending, size_t keep_head);

// The FailRun request that reports `a`'s run failed (or, `released`, handed back).
v1::FailRunRequest FailRunRequestFor(const v1::Assignment& a, const std::string& message,
                                     bool retryable, bool released = false);

struct RunTask {
  v1::Assignment a;
  std::string device;
  std::string dir;  // work_dir/runs/<experiment>/trial-<t>-fold-<f>
  std::thread thread;
  std::atomic<bool> dropped{false};   // the coordinator revoked it: stop, report nothing
  std::atomic<bool> stopping{false};  // the daemon shuts down: stop, hand it back
  std::atomic<pid_t> child{0};
  std::atomic<bool> done{false};
};

// What one run's supervision loop saw of its child.
struct Supervised {
  std::deque<v1::Event> pending;  // not yet reported
  int64_t next_index = 1;         // run-local index of pending.front()
  // Weight summaries are dropped when `pending` grows past this (kMaxPending, then higher while
  // what stays after a purge is still long, so a long backlog is not copied on every loop).
  size_t purge_above = kMaxPending;
  bool stale = false;  // the coordinator refused our lease: stop, report nothing
  v1::EpochMetrics last_epoch;
  int64_t last_iteration = 0;  // of the last training point of this attempt
  // Epochs whose weights CSV has not reached the coordinator (an upload gave up while it was
  // away), and whether the checkpoint and logs are owed too: sent at the next periodic tick and
  // by every ending.
  std::set<int> owed_weights;
  std::set<int> sent_weights;  // epochs whose weights CSV the coordinator has
  bool upload_owed = false;
  // The modification time (ns) of the checkpoint the coordinator last received from this run, as
  // it was before UploadProgress set it aside (0: none yet). A periodic tick sends a checkpoint
  // whose time differs. The checkpoint's time after the upload would mark one the engine wrote
  // meanwhile as sent (it went up only at the next checkpoint or the run's end).
  int64_t sent_checkpoint_mtime = 0;
  // The engine started over with halved batches (a `restart` event) and the coordinator still
  // holds the larger batches' checkpoint: until the new run's checkpoint is there, the new logs
  // must not be (a retry would resume the old run with them). UploadProgress then sends empty
  // logs, the new checkpoint, and the new logs, in that order.
  bool restart_pending = false;
  // Set when the child was stopped for reporting no progress (DaemonOptions::stall_timeout_s):
  // what happened, for the run's failure message.
  std::optional<std::string> stalled;
  bool moved_after_stall = false;  // an event came after the watchdog's SIGTERM: slow, not stuck
  // The child outlived its SIGKILL for kUnkillableAfter (uninterruptible sleep): its run was
  // failed for a retry elsewhere; the slot stays taken until the process ends.
  bool abandoned = false;
  std::optional<v1::RunOutcome> outcome;  // the child's last word, when it sent one
  // The coordinator refused one of the run's files for good ("uploading NAME: why"): the child is
  // stopped and the run fails, not retried (every attempt would make the same file).
  std::optional<std::string> refused;
};

class Daemon {
 public:
  Daemon(const DaemonOptions& o, const std::atomic<bool>* stop,
         std::unique_ptr<CoordinatorClient> client)
      : o_(o),
        stop_(stop),
        client_(std::move(client)),
        instance_(absl::StrCat(::getpid(), "-",
                               std::chrono::system_clock::now().time_since_epoch().count())) {}

  int Run();

 private:
  // Control side (the daemon's thread).
  bool Register();
  bool Heartbeat();  // false when the coordinator could not be reached
  void Start(const v1::Assignment& a);
  void Launch(const v1::Assignment& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Reap();
  void Drop(const v1::RunClaim& claim) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<v1::RunClaim> Claims();
  void HandBack();  // shutting down: gives back waiting assignments, stops the children, joins
  std::unique_ptr<grpc::Server> StartHealth();

  // Run side (one thread per run).
  void Execute(RunTask* t);
  bool Prepare(RunTask* t, std::string* error);
  void Supervise(RunTask* t, const Child& child, Supervised& s);
  void Conclude(RunTask* t, const ChildExit& exit, Supervised& s);
  void Fail(RunTask* t, const std::string& message, bool retryable, bool released = false);
  bool Flush(RunTask* t, Supervised& s);
  // The daemon is shutting down: its stop flag is set (before HandBack marks each run) or HandBack
  // marked this run.
  bool Stopping(const RunTask* t) const { return t->stopping || *stop_; }
  // Gives a run back to the coordinator for a retry elsewhere, released (not a failed attempt),
  // with "worker NAME shut down" and `detail`.
  void Release(RunTask* t, absl::string_view detail = "");
  // Removes a completed run's directory: renamed to DIR.removing first, so a daemon killed while
  // deleting leaves a name that the next start sweeps (RemoveLeftovers), not a partial run
  // directory that looks kept after a failure. The experiment's directory goes once empty.
  void RemoveRunDir(const std::string& dir) ABSL_LOCKS_EXCLUDED(run_dirs_mu_);
  // The same with run_dirs_mu_ held; nothing for a directory that is not there.
  void RemoveRunDirLocked(const std::string& dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(run_dirs_mu_);
  // The directories of the runs this daemon holds (tasks not done).
  std::set<std::string> HeldRunDirs() ABSL_LOCKS_EXCLUDED(mu_);
  // At start: every runs/EXPERIMENT/*.removing a killed daemon left, every run directory holding
  // the kSent marker (its output files all reached the coordinator and its completion was sent: a
  // daemon killed between the acknowledgement and the rename left it), every run directory without
  // the marker of a run this daemon failed (a run it held when it was killed or stopped, or one
  // revoked: it resumes from the coordinator's copy), and then-empty experiment directories.
  // Failed runs' directories are kept for inspection, the newest DaemonOptions::keep_failed_runs.
  void RemoveLeftovers() ABSL_LOCKS_EXCLUDED(run_dirs_mu_);
  // Removes the directories of failed runs (kFailedMarker) beyond the newest keep_failed_runs, by
  // the marker's time, except those in `held` (HeldRunDirs, taken before run_dirs_mu_).
  void PruneFailedRunDirs(const std::set<std::string>& held)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(run_dirs_mu_);
  grpc::Status Upload(RunTask* t, const std::string& name, const std::string& path,
                      milliseconds patience = kForever);
  // The logs, the weights CSVs of `s.owed_weights` (every one in the output not yet sent), and
  // last the checkpoint as it was before them (set aside as kCheckpointSnapshot in the run
  // directory), so that the coordinator's checkpoint is never ahead of its logs: it is held back
  // (and owed) when the records are missing or a file it covers did not arrive. After a restart
  // (s.restart_pending): empty logs, the checkpoint, then the logs. Clears what was sent and sets
  // `s.upload_owed` when a transient failure outlasted `patience`. While the child
  // trains, `patience` bounds the retries, so a coordinator that is away does not stop the relay
  // (and, through a full pipe, the training): the next periodic tick sends them again.
  void UploadProgress(RunTask* t, Supervised& s, milliseconds patience = kForever);
  // Adds every weights CSV in the run's output not yet sent to `s.owed_weights`.
  void OweEveryWeightsCsv(const RunTask* t, Supervised& s);
  // Every file of the run's output (the checkpoint last) and its log. Transient refusals (a full
  // disk on the coordinator) are retried until they pass, or a few times while stopping. The first
  // output file that did not arrive comes back with its code and "uploading NAME: why"; OK when all
  // did.
  grpc::Status UploadAll(RunTask* t);
  // Retries a call while IsTransient, until it lands, the run is revoked, the daemon stops, or
  // `patience` has passed since the first try.
  template <typename Call>
  grpc::Status Deliver(RunTask* t, Call call, milliseconds patience = kForever);
  void Sleep(milliseconds d) { std::this_thread::sleep_for(d); }

  const DaemonOptions& o_;
  const std::atomic<bool>* stop_;
  const std::unique_ptr<CoordinatorClient> client_;
  const std::string instance_;
  int64_t heartbeat_ms_ = 1000;  // the daemon's thread only
  bool registered_ = false;      // the daemon's thread only

  absl::Mutex mu_;
  absl::CondVar wake_;  // a run ended
  std::map<int64_t, std::unique_ptr<RunTask>> runs_ ABSL_GUARDED_BY(mu_);
  // Assignments of a run whose previous task (revoked, being stopped) has not ended yet: they
  // start when it has, so two tasks never share a run directory.
  std::vector<v1::Assignment> waiting_ ABSL_GUARDED_BY(mu_);
  // Held while a run directory is created or removed, with the experiment's directory above it
  // once empty, so one run's cleanup never removes the parent another run is creating.
  absl::Mutex run_dirs_mu_;
};

}  // namespace mal::worker::internal

#endif  // MAL_WORKER_DAEMON_DAEMON_IMPL_H_
