// One fold run's execution on its own thread (daemon_impl.h): prepare the run directory, start
// the engine child, relay its events, upload its files, and report the outcome it typed.

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <optional>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/spec/spec_paths.h"
#include "common/util/files.h"
#include "common/util/grpc_status.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"
#include "worker/daemon/child_process.h"
#include "worker/daemon/daemon_impl.h"
#include "worker/daemon/event_pipe.h"

namespace mal::worker {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace internal {

namespace {

// The last non-empty line of the engine's log (context for a crash, which sends no outcome).
std::string LastLogLine(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return "";
  std::string last;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace()))
    last = std::string(line);
  absl::string_view v(last);
  absl::ConsumePrefix(&v, "mal-worker: ");
  absl::ConsumePrefix(&v, "training failed: ");
  return std::string(v);
}

// The run's checkpoint's modification time (ns), or `otherwise` when there is none.
int64_t CheckpointMtime(const RunTask* t, int64_t otherwise) {
  struct stat st;
  const std::string ckpt = t->dir + "/out/" + run_files::kCheckpoint;
  if (::stat(ckpt.c_str(), &st) != 0) return otherwise;
  return st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
}

// Whether `fd` has data (or end of file) to read now.
bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

// A refusal that no retry would change: the coordinator will not take the file (over its
// --max-upload-mb, a name it refuses). Not a stale lease or a coordinator away.
bool RefusedForGood(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::INVALID_ARGUMENT;
}

// "uploading NAME: why", without naming the file twice when the refusal names it already.
std::string UploadFailure(const std::string& name, const grpc::Status& s) {
  const std::string why = s.error_message();
  return absl::StartsWith(why, name + ":") ? absl::StrCat("uploading ", why)
                                           : absl::StrCat("uploading ", name, ": ", why);
}

// A progress upload of `name` refused for good: the first such refusal is the run's (the
// supervision stops the child, Conclude fails the run).
void NoteRefusal(int64_t run_id, const std::string& name, const grpc::Status& st, Supervised& s) {
  if (!RefusedForGood(st) || s.refused) return;
  s.refused = UploadFailure(name, st);
  LOG(WARNING) << "run " << run_id << ": " << *s.refused << "; stopping it";
}

// Every entry runs/EXPERIMENT/RUN under `root` (run directories, and the RUN.removing a killed
// deletion left) into `*runs`. False when listing failed midway (logged): `*runs` has what was
// listed before.
bool ListRunDirs(const fs::path& root, std::vector<fs::path>* runs) {
  std::error_code ec;
  try {  // an iterator's increment throws on an error
    for (const auto& experiment : fs::directory_iterator(root, ec)) {
      if (!experiment.is_directory(ec)) continue;
      for (const auto& run : fs::directory_iterator(experiment.path(), ec))
        runs->push_back(run.path());
    }
  } catch (const fs::filesystem_error& e) {
    LOG(WARNING) << "listing " << root.string() << ": " << e.what();
    return false;
  }
  return true;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// One run.

template <typename Call>
grpc::Status Daemon::Deliver(RunTask* t, Call call, milliseconds patience) {
  int backoff = 100;
  const auto start = Clock::now();
  for (;;) {
    grpc::Status s = call();
    if (s.ok() || !IsTransient(s) || t->dropped) return s;
    milliseconds wait(backoff);
    if (patience != kForever) {
      const auto left = patience - std::chrono::duration_cast<milliseconds>(Clock::now() - start);
      if (left <= milliseconds(0)) return s;
      wait = std::min(wait, left);  // the last try at the end of the patience, not past it
    }
    LOG_EVERY_N(WARNING, 10) << "run " << t->a.run_id() << ": " << s.error_message()
                             << " (retrying)";
    Sleep(wait);
    backoff = std::min(backoff * 2, 3000);
    // Shutting down (the daemon's flag is set before HandBack marks each run): do not wait
    // forever, but do retry a few times so a hand-back is not lost to one transient error.
    if (Stopping(t) && backoff >= 3000) return s;
  }
}

grpc::Status Daemon::Upload(RunTask* t, const std::string& name, const std::string& path,
                            milliseconds patience) {
  return Deliver(
      t,
      [&]() {
        return client_->Upload(t->a.run_id(), t->a.lease_epoch(), name, path, kTransferTimeout);
      },
      patience);
}

bool Daemon::Prepare(RunTask* t, std::string* error) {
  const std::string out = t->dir + "/out";
  std::error_code ec;
  // A fresh directory each time: a resumed run takes the coordinator's latest checkpoint, which
  // may come from another host.
  fs::remove_all(out, ec);
  fs::create_directories(out, ec);
  if (ec) {
    *error = absl::StrCat(out, ": ", ec.message());
    return false;
  }
  if (absl::Status s =
          WriteFileAtomic(t->dir + "/" + run_files::kSpec, t->a.spec().SerializeAsString());
      !s.ok()) {
    *error = std::string(s.message());
    return false;
  }
  // The engine's log of the earlier attempts, which the new engine appends to: without it the
  // upload of the new one replaced them on the coordinator. Also for a retry without a checkpoint
  // (it trains from the start, but the earlier attempts' log says why they ended). The
  // coordinator's copy has every attempt that uploaded, on any host; a log here (a run that failed
  // on this host, its directory kept) is kept only where it continues that copy (lines of this
  // host's attempt that did not go up), else an attempt on another host in between would be lost
  // (found by a probe: a retry back in its old .failed directory replaced them).
  if (t->a.attempt() > 0 || t->a.has_checkpoint()) {
    const std::string log = t->dir + "/" + run_files::kLog;
    const std::string fetched = log + ".fetched";
    grpc::Status s = Deliver(t, [&]() {
      return client_->Fetch(t->a.run_id(), run_files::kLog, fetched, kTransferTimeout);
    });
    if (s.ok()) {
      const absl::StatusOr<std::string> remote = ReadFile(fetched);
      const absl::StatusOr<std::string> local = ReadFile(log);
      std::error_code rename_ec;
      if (remote.ok() && !(local.ok() && absl::StartsWith(*local, *remote)))
        fs::rename(fetched, log, rename_ec);
      if (rename_ec)
        LOG(WARNING) << "run " << t->a.run_id() << ": " << log << ": " << rename_ec.message();
    } else if (s.error_code() != grpc::StatusCode::NOT_FOUND) {
      LOG(WARNING) << "run " << t->a.run_id() << ": fetching its log: " << s.error_message();
    }
    std::error_code ec;
    fs::remove(fetched, ec);
  }
  if (!t->a.has_checkpoint()) return true;
  for (const char* name :
       {run_files::kCheckpoint, run_files::kRecords, run_files::kSummaries, run_files::kMetrics}) {
    grpc::Status s = Deliver(t, [&]() {
      return client_->Fetch(t->a.run_id(), name, out + "/" + name, kTransferTimeout);
    });
    if (s.ok() || s.error_code() == grpc::StatusCode::NOT_FOUND) continue;
    *error = absl::StrCat("fetching ", name, ": ", s.error_message());
    return false;
  }
  return true;
}

bool Daemon::Flush(RunTask* t, Supervised& s) {
  while (!s.pending.empty()) {
    v1::ReportEventsRequest req;
    req.set_run_id(t->a.run_id());
    req.set_lease_epoch(t->a.lease_epoch());
    req.set_first_index(s.next_index);
    for (size_t i = 0; i < s.pending.size() && i < kBatch; ++i) *req.add_events() = s.pending[i];
    v1::ReportEventsResponse resp;
    grpc::Status st = client_->ReportEvents(req, &resp, kCallTimeout);
    if (!st.ok()) {
      if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
          st.error_code() == grpc::StatusCode::NOT_FOUND) {
        LOG(WARNING) << "run " << t->a.run_id() << ": " << st.error_message() << "; stopping it";
        s.stale = true;
      } else {
        LOG_EVERY_N(WARNING, 20) << "run " << t->a.run_id()
                                 << ": reporting events: " << st.error_message();
      }
      return false;
    }
    s.next_index += req.events_size();
    s.pending.erase(s.pending.begin(), s.pending.begin() + req.events_size());
  }
  return true;
}

void Daemon::UploadProgress(RunTask* t, Supervised& s, milliseconds patience) {
  const std::string out = t->dir + "/out/";
  // The coordinator's copy must never hold a checkpoint newer than its logs and weights CSVs: a
  // run resumed from it (here or on another worker) would lack the iterations and epochs between
  // them, for good. So the checkpoint as it is now is set aside first (a hard link: the engine
  // replaces checkpoint.pt by a rename, never in place; a copy where links fail), then what it
  // covers goes up, which the engine wrote before it (records and summaries every iteration, an
  // epoch's weights CSV and metrics before its checkpoint), and the set-aside checkpoint last.
  // The checkpoint alone went first until 2026-12-07 (found by a kill-at-random probe).
  const std::string snapshot = t->dir + "/" + kCheckpointSnapshot;
  // Read before the link: a checkpoint replaced in between makes this older than the snapshot,
  // so the next tick sends it again rather than never.
  const int64_t snapshot_mtime = CheckpointMtime(t, 0);
  std::error_code ec;
  fs::remove(snapshot, ec);
  ec.clear();
  fs::create_hard_link(out + run_files::kCheckpoint, snapshot, ec);
  if (ec) {
    ec.clear();
    fs::copy_file(out + run_files::kCheckpoint, snapshot, fs::copy_options::overwrite_existing, ec);
  }
  const bool checkpoint = !ec;
  OweEveryWeightsCsv(t, s);  // written before the checkpoint set aside, its epoch read or not
  struct File {
    std::string name, path;
    int weights_epoch = 0;  // a weights CSV's epoch; 0 for the other files
    bool covered = true;    // the checkpoint after it waits until it arrived (or is absent)
  };
  std::vector<File> files;
  const std::string empty = t->dir + "/" + kEmptyUpload;
  absl::Cleanup remove_set_aside = [&snapshot, &empty] {  // at every return below
    std::error_code remove_ec;
    fs::remove(snapshot, remove_ec);
    fs::remove(empty, remove_ec);
  };
  const bool restart = s.restart_pending;
  if (restart) {
    // After a restart the coordinator holds the old run's checkpoint: its logs go first (a retry
    // from it then resumes with none, not with the new run's), then the new checkpoint once the
    // engine wrote one, and only then the new logs.
    (void)WriteFileAtomic(empty, "");
    for (const char* name : {run_files::kRecords, run_files::kSummaries, run_files::kMetrics}) {
      files.push_back({name, empty});
    }
    if (checkpoint) files.push_back({run_files::kCheckpoint, snapshot});
  }
  if (!restart || checkpoint) {
    for (const std::string name :
         {run_files::kRecords, run_files::kSummaries, run_files::kMetrics}) {
      files.push_back({name, out + name});
    }
    for (int epoch : s.owed_weights) {
      const std::string name = run_files::WeightsCsv(epoch);
      files.push_back({name, out + name, epoch});
    }
  }
  // The engine's log so far, for `malctl logs --follow`.
  files.push_back({run_files::kLog, t->dir + "/" + run_files::kLog, 0, /*covered=*/false});
  // No checkpoint without its records (the engine removes every file when it starts over with
  // halved batches, possibly between the link above and now).
  const bool records = fs::exists(out + run_files::kRecords, ec);
  if (checkpoint && !restart && records) files.push_back({run_files::kCheckpoint, snapshot});
  s.upload_owed = false;
  bool covered = true;  // every file the checkpoint covers arrived
  for (const File& f : files) {
    if (f.name == run_files::kCheckpoint && !covered) {
      LOG(WARNING) << "run " << t->a.run_id() << ": " << run_files::kCheckpoint
                   << " held back: a file it covers did not arrive (sent again later)";
      s.upload_owed = true;
      break;
    }
    if (!fs::exists(f.path, ec)) continue;
    grpc::Status st = Upload(t, f.name, f.path, patience);
    if (st.ok() && f.weights_epoch > 0) s.sent_weights.insert(f.weights_epoch);
    if (st.ok() && f.name == run_files::kCheckpoint) {
      s.restart_pending = false;
      s.sent_checkpoint_mtime = snapshot_mtime;
    }
    if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      // The coordinator no longer leases the run to this worker (as for a report, Flush): nothing
      // more goes up, the child is stopped. (It read "checkpoint held back ... sent again later".)
      // Not NOT_FOUND: the client's answer for a local file the engine removed meanwhile.
      LOG(WARNING) << "run " << t->a.run_id() << ": uploading " << f.name << ": "
                   << st.error_message() << "; stopping it";
      s.stale = true;
      return;
    }
    NoteRefusal(t->a.run_id(), f.name, st, s);
    covered = covered && (st.ok() || !f.covered);
    if (!st.ok() && IsTransient(st)) {
      LOG_EVERY_N(WARNING, 10) << "run " << t->a.run_id() << ": uploading " << f.name << ": "
                               << st.error_message() << " (sent again later)";
      s.upload_owed = true;  // the coordinator is away: the rest would wait as long
      return;
    }
  }
  if (!s.upload_owed) s.owed_weights.clear();
}

void Daemon::OweEveryWeightsCsv(const RunTask* t, Supervised& s) {
  std::error_code ec;
  for (fs::directory_iterator it(t->dir + "/out/" + run_files::kWeightsDir, ec), end;
       !ec && it != end; it.increment(ec)) {
    int epoch = 0;
    const std::string name = it->path().filename().string();
    if (std::sscanf(name.c_str(), "epoch_%d.csv", &epoch) == 1 &&
        name == std::filesystem::path(run_files::WeightsCsv(epoch)).filename().string() &&
        s.sent_weights.count(epoch) == 0) {
      s.owed_weights.insert(epoch);
    }
  }
}

grpc::Status Daemon::UploadAll(RunTask* t) {
  const fs::path out = t->dir + "/out";
  std::error_code ec;
  grpc::Status first;
  // Sends one output file; a failure is logged and the first one kept.
  auto send = [&](const std::string& rel, const std::string& path) {
    grpc::Status s = Upload(t, rel, path);
    if (s.ok()) return;
    LOG(WARNING) << "run " << t->a.run_id() << ": uploading " << rel << ": " << s.error_message();
    if (first.ok()) first = grpc::Status(s.error_code(), UploadFailure(rel, s));
  };
  // Non-throwing forms throughout: a file vanishing or unreadable mid-walk is a file not sent,
  // never an exception on the run's thread.
  fs::recursive_directory_iterator it(out, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const fs::directory_entry& entry = *it;
    std::error_code entry_ec;
    if (!entry.is_regular_file(entry_ec)) continue;
    const std::string rel = entry.path().lexically_relative(out).string();
    if (rel.find(".tmp") != std::string::npos || rel.find(".fetch") != std::string::npos) continue;
    if (rel == run_files::kCheckpoint) continue;  // last, below
    send(rel, entry.path().string());
  }
  if (ec && first.ok()) {
    first = grpc::Status(grpc::StatusCode::INTERNAL,
                         absl::StrCat("reading ", out.string(), ": ", ec.message()));
  }
  // The checkpoint after the files it covers, as UploadProgress sends it, and only when they all
  // arrived (a daemon killed midway, or a file that failed, leaves the coordinator's checkpoint
  // behind its logs, never ahead of them).
  const std::string checkpoint = (out / run_files::kCheckpoint).string();
  std::error_code exists_ec;
  if (first.ok() && fs::exists(checkpoint, exists_ec)) send(run_files::kCheckpoint, checkpoint);
  (void)Upload(t, run_files::kLog, t->dir + "/" + run_files::kLog);
  return first;
}

size_t DropWeightSummaries(std::deque<v1::Event>& pending, size_t keep_head) {
  const auto first =
      pending.begin() + static_cast<std::ptrdiff_t>(std::min(keep_head, pending.size()));
  const auto end =
      std::remove_if(first, pending.end(), [](const v1::Event& e) { return e.has_weights(); });
  const size_t dropped = static_cast<size_t>(pending.end() - end);
  pending.erase(end, pending.end());
  return dropped;
}

v1::FailRunRequest FailRunRequestFor(const v1::Assignment& a, const std::string& message,
                                     bool retryable, bool released) {
  v1::FailRunRequest req;
  req.set_run_id(a.run_id());
  req.set_lease_epoch(a.lease_epoch());
  req.set_message(message);
  req.set_retryable(retryable);
  req.set_released(released);
  return req;
}

void Daemon::Fail(RunTask* t, const std::string& message, bool retryable, bool released) {
  LOG(WARNING) << "run " << t->a.run_id() << (released ? " handed back" : " failed")
               << (retryable ? " (retryable)" : "") << ": " << message;
  if (!released) {
    // Kept for inspection, and marked so that a start keeps it (RemoveLeftovers).
    const std::set<std::string> held = HeldRunDirs();
    absl::MutexLock lock(&run_dirs_mu_);
    std::error_code ec;
    if (fs::is_directory(t->dir, ec)) {
      // Without its marker the directory goes at the next start, as a revoked run's does (its
      // log is on the coordinator; typically the disk is full, and the space is welcome then).
      if (absl::Status s = WriteFileAtomic(t->dir + "/" + kFailedMarker, message); !s.ok()) {
        LOG(WARNING) << "run " << t->a.run_id() << ": " << s.message() << "; " << t->dir
                     << " is not kept past this daemon's next start";
      }
    }
    PruneFailedRunDirs(held);
  }
  const v1::FailRunRequest req = FailRunRequestFor(t->a, message, retryable, released);
  (void)Deliver(t, [&]() { return client_->FailRun(req, kCallTimeout); });
}

void Daemon::Release(RunTask* t, absl::string_view detail) {
  Fail(t, absl::StrCat("worker ", o_.name, " shut down", detail), true, /*released=*/true);
}

void Daemon::Execute(RunTask* t) {
  std::error_code ec;
  {
    absl::MutexLock lock(&run_dirs_mu_);
    // A first attempt starts from nothing: a directory already there belongs to a run of another
    // coordinator (a fresh state directory numbers its experiments from exp-1 again), whose log
    // the new run would otherwise append to.
    if (t->a.attempt() == 0 && !t->a.has_checkpoint() && fs::exists(t->dir, ec)) {
      LOG(WARNING) << "run " << t->a.run_id() << ": removing " << t->dir
                   << ", left by an earlier run of the same experiment id";
      fs::remove_all(t->dir, ec);
    }
    fs::create_directories(t->dir, ec);
    fs::remove(fs::path(t->dir) / kSent, ec);  // a retry here trains in it again
    fs::remove(fs::path(t->dir) / kFailedMarker, ec);
  }
  // Containment with links resolved: this host has the files (the coordinator checked lexically).
  if (absl::Status s = CheckSpecPaths(t->a.spec(), o_.data_roots, /*resolve_links=*/true);
      !s.ok()) {
    if (!t->dropped) Fail(t, absl::StrCat("worker ", o_.name, ": ", s.message()), false);
    return;
  }
  std::string error;
  if (!Prepare(t, &error)) {
    if (!t->dropped) Fail(t, absl::StrCat("worker ", o_.name, ": ", error), true);
    return;
  }
  // Tell the coordinator it runs (ASSIGNED -> RUNNING) before the engine's first event.
  v1::ReportEventsRequest start;
  start.set_run_id(t->a.run_id());
  start.set_lease_epoch(t->a.lease_epoch());
  start.set_first_index(1);
  v1::ReportEventsResponse started;
  grpc::Status st =
      Deliver(t, [&]() { return client_->ReportEvents(start, &started, kCallTimeout); });
  if (!st.ok()) {
    LOG(WARNING) << "run " << t->a.run_id() << ": not started: " << st.error_message();
    return;
  }
  std::vector<std::string> args = {o_.engine, "train",
                                   "-f",      t->dir + "/" + run_files::kSpec,
                                   "--fold",  absl::StrCat(t->a.fold()),
                                   "--trial", absl::StrCat(t->a.trial()),
                                   "--out",   t->dir + "/out",
                                   "--quiet", "--events-fd",
                                   "3",       "--device",
                                   t->device};
  if (o_.threads > 0) {
    args.push_back("--threads");
    args.push_back(absl::StrCat(o_.threads));
  }
  if (t->a.has_checkpoint()) args.push_back("--resume");
  if (Stopping(t)) {  // told to stop before the engine started: give the run back as is
    Release(t);
    return;
  }
  auto child = SpawnChild(args, t->dir + "/" + run_files::kLog);
  if (!child.ok()) {
    Fail(t,
         absl::StrCat("worker ", o_.name, ": cannot start the engine: ", child.status().message()),
         true);
    return;
  }
  t->child = child->pid;
  if (t->dropped || *stop_) SignalChild(child->pid, SIGTERM);
  Supervised s;
  Supervise(t, *child, s);
  ::close(child->events_fd);
  const ChildExit exit = WaitChild(child->pid);
  t->child = 0;
  Conclude(t, exit, s);
}

// Relays the child's events until its pipe closes: epoch ends are reported at once with the
// run's files, the rest in batches; checkpoints are uploaded as they change; a revoked, stale or
// stopping run's child gets SIGTERM, then SIGKILL after the grace period.
void Daemon::Supervise(RunTask* t, const Child& child, Supervised& s) {
  std::string partial;
  auto last_flush = Clock::now(), last_upload = Clock::now();
  auto term_sent = Clock::time_point();
  auto last_progress = Clock::now();
  for (bool open = true; open;) {
    pollfd p{child.events_fd, POLLIN, 0};
    if (::poll(&p, 1, 200) > 0) {
      char buf[65536];
      const ssize_t n = ::read(child.events_fd, buf, sizeof buf);
      open = n > 0 || (n < 0 && errno == EINTR);
      if (n > 0) partial.append(buf, static_cast<size_t>(n));
      for (size_t nl; (nl = partial.find('\n')) != std::string::npos;) {
        auto ev = DecodeEventLine(partial.substr(0, nl));
        partial.erase(0, nl + 1);
        if (!ev.ok()) {
          LOG(WARNING) << "run " << t->a.run_id() << ": " << ev.status();
          continue;
        }
        last_progress = Clock::now();
        if (s.stalled && !ev->has_outcome()) s.moved_after_stall = true;  // work, not a goodbye
        if (ev->has_outcome()) {
          s.outcome = ev->outcome();
        } else if (ev->has_progress()) {
          // Only the watchdog's business: not reported.
        } else if (ev->has_restart()) {
          // The engine starts over with halved batches: the last epoch and iteration were the
          // larger batches' (the watchers learn why from the event).
          s.last_epoch = v1::EpochMetrics();
          s.last_iteration = 0;
          s.restart_pending = true;
          s.pending.push_back(std::move(*ev));
        } else if (ev->has_epoch()) {
          s.last_epoch = ev->epoch();
          s.pending.push_back(std::move(*ev));
          if (s.stale || t->dropped) continue;
          Flush(t, s);
          s.owed_weights.insert(s.last_epoch.epoch());
          UploadProgress(t, s, kProgressUploadPatience);
          last_upload = Clock::now();
        } else {
          if (ev->has_point()) s.last_iteration = ev->point().iteration();
          s.pending.push_back(std::move(*ev));
        }
      }
    }
    // Too much waiting for a coordinator that is away: weight summaries give way first, never
    // those of the last request, which may have arrived.
    if (s.pending.size() < kMaxPending) s.purge_above = kMaxPending;
    if (s.pending.size() > s.purge_above) {
      const size_t dropped = DropWeightSummaries(s.pending, kBatch);
      LOG(WARNING) << "run " << t->a.run_id() << ": " << s.pending.size()
                   << " events wait for the coordinator; dropped " << dropped
                   << " weight summaries";
      s.purge_above = std::max(kMaxPending, s.pending.size() + kMaxPending / 2);
    }
    if (!s.stale && !s.pending.empty() &&
        (s.pending.size() >= kBatch || Clock::now() - last_flush > milliseconds(200))) {
      Flush(t, s);
      last_flush = Clock::now();
    }
    if (!s.stale && !t->dropped &&
        Clock::now() - last_upload > std::chrono::seconds(std::max(1, o_.upload_every_s))) {
      const int64_t mtime = CheckpointMtime(t, s.sent_checkpoint_mtime);
      if (s.upload_owed || !s.owed_weights.empty() || mtime != s.sent_checkpoint_mtime) {
        // A new checkpoint goes up with the logs it covers (after them), and what an epoch end
        // could not send while the coordinator was away with it.
        UploadProgress(t, s, kProgressUploadPatience);
      }
      last_upload = Clock::now();
    }
    // Not while events wait that this thread was too busy (uploading) to read.
    if (o_.stall_timeout_s > 0 && term_sent == Clock::time_point() &&
        Clock::now() - last_progress > std::chrono::seconds(o_.stall_timeout_s) &&
        !Readable(child.events_fd)) {
      s.stalled = absl::StrCat(
          "engine made no progress for ", o_.stall_timeout_s, " s (--stall-timeout-s) ",
          s.last_iteration > 0 ? absl::StrCat("after iteration ", s.last_iteration)
                               : std::string("before this attempt's first iteration"),
          "; stopped it");
      LOG(WARNING) << "run " << t->a.run_id() << ": " << *s.stalled;
      SignalChild(child.pid, SIGTERM);
      term_sent = Clock::now();
    }
    if ((s.stale || t->dropped || t->stopping || s.refused) && term_sent == Clock::time_point()) {
      SignalChild(child.pid, SIGTERM);
      term_sent = Clock::now();
    }
    if (term_sent != Clock::time_point() &&
        Clock::now() - term_sent > std::chrono::seconds(o_.stop_grace_s)) {
      SignalChild(child.pid, SIGKILL);  // the whole group: helpers too, or the pipe would stay open
      if (!s.abandoned && !s.stale && !t->dropped && !Stopping(t) &&
          Clock::now() - term_sent > std::chrono::seconds(o_.stop_grace_s) + kUnkillableAfter) {
        // Uninterruptible sleep: it ends when the kernel lets it. Give the run to another worker
        // now (the coordinator then revokes it here); this slot stays taken until it ends.
        s.abandoned = true;
        OweEveryWeightsCsv(t, s);
        UploadProgress(t, s);
        Fail(t,
             absl::StrCat(
                 "worker ", o_.name, ": engine process ", child.pid, " survived SIGKILL for ",
                 std::chrono::duration_cast<std::chrono::seconds>(kUnkillableAfter).count(),
                 " s (uninterruptible sleep: a hung network file system or device?)",
                 s.stalled ? absl::StrCat("; ", *s.stalled) : std::string()),
             true);
      }
    }
  }
}

// The run's end, from the child's outcome (typed: RunOutcome) and its exit: complete, fail for
// good, or give back for a retry elsewhere.
void Daemon::Conclude(RunTask* t, const ChildExit& exit, Supervised& s) {
  const int64_t run_id = t->a.run_id();
  if (t->dropped || s.stale) {
    LOG(INFO) << "run " << run_id << " stopped (revoked)";
    t->dropped = true;  // its directory goes when the task ends (Launch)
    return;
  }
  if (s.abandoned) return;  // failed already, for a retry elsewhere
  // Every weights CSV the engine wrote: an epoch line may have died in the engine's memory (a
  // crash, SIGKILL) before the daemon read it, and the next attempt starts from an empty out/.
  OweEveryWeightsCsv(t, s);
  // What the engine said last goes out before the outcome.
  for (int tries = 0; !Flush(t, s) && !s.stale && !t->dropped; ++tries) {
    if (*stop_ && (!t->stopping || tries > 20)) break;  // shutting down: do not wait forever
    Sleep(milliseconds(500));
  }
  if (s.stale || t->dropped) {
    t->dropped = true;
    return;
  }
  if (s.refused) {
    // Stopped as soon as the coordinator refused a file for good (a checkpoint over its
    // --max-upload-mb at the first epoch): training on would only make files it also refuses.
    (void)UploadAll(t);
    Fail(t, absl::StrCat("the coordinator refuses the run's files: ", *s.refused),
         /*retryable=*/false);
    return;
  }
  const bool succeeded = s.outcome && s.outcome->code() == 0 && !exit.signaled && exit.status == 0;
  // A run the engine failed for good (bad spec, missing data, non-finite loss, out of memory)
  // fails as it would without a stop or a stall, below.
  const bool failed_for_good = s.outcome && s.outcome->code() != 0 && !s.outcome->retryable();
  // Stuck (the watchdog stopped it): a retryable failure, an attempt of its own, unless the
  // engine said after the SIGTERM that it succeeded or cannot succeed anywhere. Before the
  // shutdown's hand-back, so a run that hangs on every host ends after max_restarts instead of
  // being handed around for ever.
  if (s.stalled && !succeeded && !failed_for_good) {
    const std::string last = LastLogLine(t->dir + "/" + run_files::kLog);
    UploadProgress(t, s);
    Fail(t,
         absl::StrCat(
             *s.stalled,
             s.moved_after_stall
                 ? "; it moved after the SIGTERM (slow, not stuck: raise --stall-timeout-s)"
                 : "",
             "; engine process ",
             // Our own signal: no "out of memory?" guess.
             exit.signaled ? absl::StrCat("killed by signal ", exit.status) : exit.Describe(),
             last.empty() ? "" : "; its log's last line: ", last),
         true);
    return;
  }
  // Shutting down: a run that did not finish goes back to the coordinator, released (not an
  // attempt that failed). *stop_ as well as t->stopping: a child spawned after the daemon was told
  // to stop is signalled at once (Execute), and may end before HandBack has marked its run.
  if (Stopping(t) && !succeeded && !failed_for_good) {
    UploadProgress(t, s);
    Release(t);
    return;
  }
  if (succeeded) {
    // The result: the engine's own final metrics (a run resumed from a checkpoint written after
    // its last epoch trains no epoch and sends no epoch event; its result was an empty one,
    // recorded as F1 0), else the last epoch event (an engine that does not send them).
    const v1::EpochMetrics final_epoch =
        s.outcome->has_final_epoch() ? s.outcome->final_epoch() : s.last_epoch;
    if (final_epoch.epoch() == 0) {
      (void)UploadAll(t);
      if (!t->dropped) {
        Fail(t, "the engine ended successfully without the metrics of any epoch", false);
      }
      return;
    }
    // While stopping, uploads give up after a few retries: complete the run only with every
    // file delivered, else hand it back (it resumes from its checkpoint elsewhere).
    if (const grpc::Status up = UploadAll(t); !up.ok()) {
      if (Stopping(t)) {
        Release(t, " before the run's files were uploaded");
      } else if (!t->dropped) {
        // Completing the run would leave the coordinator without its files. Refused for good
        // (a file over mal-coordinator --max-upload-mb): training again would make the same
        // file, so not retried; anything else (a checksum broken on the way) is.
        Fail(t,
             absl::StrCat("the run trained, but its files did not reach the coordinator: ",
                          up.error_message()),
             /*retryable=*/!RefusedForGood(up));
      }
      return;
    }
    // Every file is on the coordinator: a daemon killed from here on leaves the directory to the
    // next start's sweep (it was kept for good when killed before the rename below).
    if (!WriteFileAtomic(t->dir + "/" + kSent, "").ok())
      LOG(WARNING) << "run " << run_id << ": could not mark " << t->dir << " as sent";
    v1::CompleteRunRequest req;
    req.set_run_id(run_id);
    req.set_lease_epoch(t->a.lease_epoch());
    v1::FoldResult* r = req.mutable_result();
    *r->mutable_aus() = final_epoch.aus();
    *r->mutable_test_f1() = final_epoch.test_f1();
    r->set_test_mean_f1(final_epoch.test_mean_f1());
    r->set_val_mean_f1(final_epoch.val_mean_f1());
    r->set_iterations(final_epoch.iteration());
    r->set_epochs(final_epoch.epoch());
    grpc::Status st = Deliver(t, [&]() { return client_->CompleteRun(req, kCallTimeout); });
    if (!st.ok() && t->dropped) {
      // Dropped while the completion was retried: a coordinator that restarted after recording
      // it (the reply was lost) no longer holds the run for this worker. Asked once more, it
      // answers a completion it has as done.
      st = client_->CompleteRun(req, kCallTimeout);
    }
    LOG(INFO) << "run " << run_id << " succeeded: "
              << (final_epoch.test_mean_f1() < 0
                      ? std::string("no test part (a final fit)")
                      : absl::StrCat("test mean F1 ", final_epoch.test_mean_f1()))
              << (st.ok() ? "" : " (not acknowledged: " + st.error_message() + ")");
    // Every file is on the coordinator: the local copy would only fill the worker's disk (a
    // ResNet-34's model and checkpoint are about 260 MB a run). Kept after a failure, for
    // inspection.
    if (st.ok()) RemoveRunDir(t->dir);
    return;
  }
  if (s.outcome && s.outcome->code() != 0) {
    // The engine's own verdict: its errors (bad spec, missing dataset, non-finite loss, out of
    // memory) fail the same way anywhere; a stop it was told of is retried from the checkpoint.
    if (s.outcome->retryable()) {
      UploadProgress(t, s);
    } else {
      (void)UploadAll(t);
    }
    Fail(t, s.outcome->message().empty() ? "engine failed without a message" : s.outcome->message(),
         s.outcome->retryable());
    return;
  }
  // No outcome: the engine crashed (or was killed) before it could say how training ended.
  const std::string last = LastLogLine(t->dir + "/" + run_files::kLog);
  UploadProgress(t, s);
  Fail(t,
       absl::StrCat("engine process ", exit.Describe(), s.outcome ? " after reporting success" : "",
                    last.empty() ? "" : ": ", last),
       true);
}

void Daemon::RemoveRunDir(const std::string& dir) {
  absl::MutexLock lock(&run_dirs_mu_);  // not while another run creates the parent
  RemoveRunDirLocked(dir);
}

void Daemon::RemoveRunDirLocked(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;  // removed already (a completed run dropped afterwards)
  const std::string removing = dir + ".removing";
  fs::remove_all(removing, ec);  // an older one a killed daemon left under this name
  fs::rename(dir, removing, ec);
  if (ec) LOG(WARNING) << "renaming " << dir << ": " << ec.message();
  fs::remove_all(ec ? dir : removing, ec);
  if (ec) LOG(WARNING) << "removing " << dir << ": " << ec.message();
  fs::remove(fs::path(dir).parent_path(), ec);  // the experiment's, once empty
}

std::set<std::string> Daemon::HeldRunDirs() {
  absl::MutexLock lock(&mu_);
  std::set<std::string> held;
  for (const auto& [id, t] : runs_) {
    if (!t->done) held.insert(fs::path(t->dir).lexically_normal().string());
  }
  return held;
}

void Daemon::RemoveLeftovers() {
  absl::MutexLock lock(&run_dirs_mu_);
  std::vector<fs::path> runs;
  (void)ListRunDirs(fs::path(o_.work_dir) / "runs", &runs);  // the daemon starts all the same
  std::error_code ec;
  for (const fs::path& run : runs) {
    const char* why = nullptr;
    if (run.extension() == ".removing" || fs::exists(run / kSent, ec)) {
      why = "a completed run's, its files on the coordinator, left by a stop";
    } else if (fs::is_directory(run, ec) && !fs::exists(run / kFailedMarker, ec)) {
      // Neither completed nor failed here: the run this daemon had when it was killed or
      // stopped, or one the coordinator revoked. It resumes from the coordinator's copy wherever
      // it runs next (this host too), so the local one only filled the disk (it was kept for good
      // until 2026-12-07; found by a kill-at-random probe).
      why =
          "a run this daemon no longer holds, left by a kill, a stop or a revocation; it resumes "
          "from the coordinator's checkpoint";
    }
    if (why == nullptr) continue;
    LOG(INFO) << "removing " << run.string() << " (" << why << ")";
    fs::remove_all(run, ec);
    fs::remove(run.parent_path(), ec);  // the experiment's, once empty
  }
  PruneFailedRunDirs({});  // a start: no run held yet
}

void Daemon::PruneFailedRunDirs(const std::set<std::string>& held) {
  std::vector<fs::path> runs;
  if (!ListRunDirs(fs::path(o_.work_dir) / "runs", &runs)) return;  // nothing removed then
  std::vector<std::pair<fs::file_time_type, fs::path>> failed;      // marker time, run directory
  std::error_code ec;
  for (const fs::path& run : runs) {
    const auto when = fs::last_write_time(run / kFailedMarker, ec);
    if (!ec) failed.emplace_back(when, run);
  }
  const size_t keep = static_cast<size_t>(std::max(0, o_.keep_failed_runs));
  if (failed.size() <= keep) return;
  std::sort(failed.begin(), failed.end(), std::greater<>());  // newest first
  for (size_t i = keep; i < failed.size(); ++i) {
    const fs::path& dir = failed[i].second;
    // A run still held (an engine that outlived its SIGKILL, failed as abandoned) keeps its
    // directory until its task ends; it still counts among the newest.
    if (held.count(dir.lexically_normal().string()) > 0) continue;
    LOG(INFO) << "removing " << dir.string() << " (a failed run's, beyond the newest " << keep
              << " kept: --keep-failed-runs; its log is on the coordinator)";
    RemoveRunDirLocked(dir.string());  // renamed first: a kill midway leaves no half-kept run
  }
}

}  // namespace internal
}  // namespace mal::worker
