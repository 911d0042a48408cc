#include "worker/daemon/daemon.h"

#include <fcntl.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/spec/spec.h"
#include "common/util/files.h"
#include "common/util/grpc_channel.h"
#include "common/util/grpc_status.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"
#include "worker/daemon/child_process.h"
#include "worker/daemon/event_pipe.h"

namespace mal::worker {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kCallTimeout{10000};
constexpr milliseconds kTransferTimeout{300000};
constexpr size_t kBatch = 256;
constexpr size_t kMaxPending = 50000;

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
  bool stale = false;             // the coordinator refused our lease: stop, report nothing
  v1::EpochMetrics last_epoch;
  std::optional<v1::RunOutcome> outcome;  // the child's last word, when it sent one
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
  grpc::Status Upload(RunTask* t, const std::string& name, const std::string& path);
  void UploadProgress(RunTask* t, int epoch);
  void UploadAll(RunTask* t);
  // Retries a call while IsTransient, until it lands, the run is revoked, or the daemon stops.
  template <typename Call>
  grpc::Status Deliver(RunTask* t, Call call);
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
};

std::vector<v1::RunClaim> Daemon::Claims() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::RunClaim> out;
  auto claim = [&](const v1::Assignment& a) {
    v1::RunClaim c;
    c.set_run_id(a.run_id());
    c.set_lease_epoch(a.lease_epoch());
    out.push_back(c);
  };
  for (const auto& [id, t] : runs_) {
    if (!t->done && !t->dropped) claim(t->a);
  }
  for (const auto& a : waiting_) claim(a);
  return out;
}

bool Daemon::Register() {
  v1::RegisterRequest req;
  req.set_name(o_.name);
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  req.set_host(host);
  req.set_slots(o_.slots);
  for (const auto& d : o_.devices) req.add_devices(d);
  req.set_version("mal-worker 0.1.0");
  req.set_instance(instance_);
  for (const auto& c : Claims()) *req.add_running() = c;
  v1::RegisterResponse resp;
  grpc::Status s = client_->Register(req, &resp, kCallTimeout);
  if (!s.ok()) {
    if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
      LOG_FIRST_N(ERROR, 1) << "register with " << o_.coordinator << ": " << s.error_message()
                            << " (retrying until that daemon's lease lapses)";
    } else {
      LOG_EVERY_N(WARNING, 20) << "register with " << o_.coordinator << ": " << s.error_message();
    }
    return false;
  }
  heartbeat_ms_ = std::max<int64_t>(10, resp.heartbeat_ms());
  LOG(INFO) << "registered with " << o_.coordinator << " as " << o_.name << " (" << o_.slots
            << " slot(s), " << req.running_size() << " run(s) claimed, " << resp.drop_size()
            << " dropped)";
  absl::MutexLock lock(&mu_);
  for (const auto& d : resp.drop()) Drop(d);
  return true;
}

void Daemon::Drop(const v1::RunClaim& d) {
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [&](const v1::Assignment& a) {
                                  return a.run_id() == d.run_id() &&
                                         a.lease_epoch() == d.lease_epoch();
                                }),
                 waiting_.end());
  auto it = runs_.find(d.run_id());
  if (it == runs_.end() || it->second->a.lease_epoch() != d.lease_epoch()) return;
  LOG(INFO) << "run " << d.run_id() << " revoked by the coordinator: stopping it";
  it->second->dropped = true;
  SignalChild(it->second->child, SIGTERM);
}

bool Daemon::Heartbeat() {
  v1::HeartbeatRequest req;
  req.set_name(o_.name);
  for (const auto& c : Claims()) *req.add_running() = c;
  {
    absl::MutexLock lock(&mu_);
    req.set_free_slots(std::max(0, o_.slots - static_cast<int>(runs_.size() + waiting_.size())));
  }
  v1::HeartbeatResponse resp;
  // Short: a call stuck on a half-open connection must not eat the lease.
  grpc::Status s =
      client_->Heartbeat(req, &resp, milliseconds(std::max<int64_t>(1000, 2 * heartbeat_ms_)));
  if (!s.ok()) {
    LOG_EVERY_N(WARNING, 20) << "heartbeat to " << o_.coordinator << ": " << s.error_message();
    return false;
  }
  if (resp.reregister()) {
    registered_ = false;
    return true;
  }
  {
    absl::MutexLock lock(&mu_);
    for (const auto& d : resp.drop()) Drop(d);
  }
  for (const auto& a : resp.assignments()) Start(a);
  return true;
}

void Daemon::Start(const v1::Assignment& a) {
  absl::MutexLock lock(&mu_);
  if (runs_.count(a.run_id())) {
    waiting_.push_back(a);  // its previous task is still stopping
    return;
  }
  Launch(a);
}

void Daemon::Launch(const v1::Assignment& a) {
  auto t = std::make_unique<RunTask>();
  t->a = a;
  // The device with the fewest runs on it.
  std::map<std::string, int> load;
  for (const auto& d : o_.devices) load[d] = 0;
  for (const auto& [id, other] : runs_) {
    if (!other->done) ++load[other->device];
  }
  t->device = o_.devices[0];
  for (const auto& d : o_.devices) {
    if (load[d] < load[t->device]) t->device = d;
  }
  t->dir = absl::StrCat(o_.work_dir, "/runs/", a.experiment_id(), "/trial-", a.trial(), "-fold-",
                        a.fold());
  LOG(INFO) << "run " << a.run_id() << ": " << a.experiment_id() << " trial " << a.trial()
            << " fold " << a.fold() << " attempt " << a.attempt() << " on " << t->device
            << (a.has_checkpoint() ? " (resuming)" : "");
  RunTask* raw = t.get();
  runs_[a.run_id()] = std::move(t);
  raw->thread = std::thread([this, raw] {
    Execute(raw);
    absl::MutexLock lock(&mu_);
    raw->done = true;
    wake_.SignalAll();
  });
}

void Daemon::Reap() {
  std::vector<std::unique_ptr<RunTask>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = runs_.begin(); it != runs_.end();) {
      if (it->second->done) {
        finished.push_back(std::move(it->second));
        it = runs_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& t : finished) t->thread.join();
  absl::MutexLock lock(&mu_);
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (runs_.count(it->run_id())) {
      ++it;
      continue;
    }
    const v1::Assignment a = *it;
    it = waiting_.erase(it);
    Launch(a);
  }
}

std::unique_ptr<grpc::Server> Daemon::StartHealth() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o_.listen, grpc::InsecureServerCredentials(), &port);
  rpc::ConfigureServer(builder);
  std::unique_ptr<grpc::Server> health = builder.BuildAndStart();
  if (health == nullptr || port == 0) return nullptr;
  health->GetHealthCheckService()->SetServingStatus(false);
  std::cout << "mal-worker health on port " << port << std::endl;
  return health;
}

int Daemon::Run() {
  std::error_code ec;
  fs::create_directories(o_.work_dir + "/runs", ec);
  if (ec) {
    LOG(ERROR) << o_.work_dir << ": " << ec.message();
    return 2;
  }
  // One daemon per work directory: run directories are wiped and refilled per assignment.
  const std::string lock_path = o_.work_dir + "/worker.lock";
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    if (lock_fd >= 0) ::close(lock_fd);
    LOG(ERROR) << o_.work_dir << ": another mal-worker is using this work directory";
    std::cerr << "mal-worker: " << o_.work_dir
              << ": another mal-worker is using this work directory\n";
    return 2;
  }
  std::unique_ptr<grpc::Server> health;
  if (!o_.listen.empty() && (health = StartHealth()) == nullptr) {
    LOG(ERROR) << "cannot listen on " << o_.listen;
    ::close(lock_fd);
    return 2;
  }
  int backoff_ms = 100;
  bool serving = false;
  bool in_contact = false;  // the last call to the coordinator went through
  while (!*stop_) {
    Reap();
    if (health && serving != (registered_ && in_contact)) {
      serving = registered_ && in_contact;
      health->GetHealthCheckService()->SetServingStatus(serving);
    }
    if (!registered_) {
      registered_ = in_contact = Register();
      if (!registered_) {
        Sleep(milliseconds(backoff_ms));
        backoff_ms = std::min(backoff_ms * 2, 5000);
        continue;
      }
      backoff_ms = 100;
    }
    in_contact = Heartbeat();
    // Wake early when a run ends, so its slot is offered at once; look at *stop_ (set by a signal
    // handler, which cannot signal wake_) every 100 ms.
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + absl::Milliseconds(heartbeat_ms_);
    auto run_ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& [id, t] : runs_) {
        if (t->done) return true;
      }
      return false;
    };
    while (!*stop_ && !run_ended() && absl::Now() < deadline) {
      wake_.WaitWithDeadline(&mu_, std::min(deadline, absl::Now() + absl::Milliseconds(100)));
    }
  }
  if (health) health->GetHealthCheckService()->SetServingStatus(false);
  HandBack();
  if (health) health->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  ::close(lock_fd);
  return 0;
}

void Daemon::HandBack() {
  std::vector<RunTask*> running;
  {
    absl::MutexLock lock(&mu_);
    LOG(INFO) << "stopping: handing back " << runs_.size() + waiting_.size() << " run(s)";
    for (const auto& a : waiting_) {  // never started: give them back as they are
      v1::FailRunRequest req;
      req.set_run_id(a.run_id());
      req.set_lease_epoch(a.lease_epoch());
      req.set_message(absl::StrCat("worker ", o_.name, " shut down"));
      req.set_retryable(true);
      req.set_released(true);
      (void)client_->FailRun(req, kCallTimeout);
    }
    waiting_.clear();
    for (auto& [id, t] : runs_) {
      t->stopping = true;
      SignalChild(t->child, SIGTERM);
      running.push_back(t.get());
    }
  }
  // Without the lock: a run's thread takes it when it ends. Nothing else adds or removes runs now.
  for (RunTask* t : running) t->thread.join();
}

// ------------------------------------------------------------------------------------------
// One run.

template <typename Call>
grpc::Status Daemon::Deliver(RunTask* t, Call call) {
  int backoff = 100;
  for (;;) {
    grpc::Status s = call();
    if (s.ok() || !IsTransient(s) || t->dropped) return s;
    if (*stop_ && !t->stopping) return s;
    LOG_EVERY_N(WARNING, 10) << "run " << t->a.run_id() << ": " << s.error_message()
                             << " (retrying)";
    Sleep(milliseconds(backoff));
    backoff = std::min(backoff * 2, 3000);
    if (t->stopping && backoff >= 3000) return s;  // shutting down: do not wait forever
  }
}

grpc::Status Daemon::Upload(RunTask* t, const std::string& name, const std::string& path) {
  return Deliver(t, [&]() {
    return client_->Upload(t->a.run_id(), t->a.lease_epoch(), name, path, kTransferTimeout);
  });
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
  if (absl::Status s = WriteFileAtomic(t->dir + "/" + run_files::kSpec, t->a.spec().SerializeAsString());
      !s.ok()) {
    *error = std::string(s.message());
    return false;
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

void Daemon::UploadProgress(RunTask* t, int epoch) {
  const std::string out = t->dir + "/out";
  // The checkpoint first: the logs are at least as new, and a resumed run trims them to it.
  for (const std::string name :
       {run_files::kCheckpoint, run_files::kRecords, run_files::kSummaries, run_files::kMetrics}) {
    if (fs::exists(out + "/" + name)) (void)Upload(t, name, out + "/" + name);
  }
  if (epoch > 0) {
    const std::string name = run_files::WeightsCsv(epoch);
    if (fs::exists(out + "/" + name)) (void)Upload(t, name, out + "/" + name);
  }
}

void Daemon::UploadAll(RunTask* t) {
  const fs::path out = t->dir + "/out";
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(out, ec)) {
    if (!entry.is_regular_file()) continue;
    const std::string rel = fs::relative(entry.path(), out).string();
    if (rel.find(".tmp") != std::string::npos || rel.find(".fetch") != std::string::npos) continue;
    grpc::Status s = Upload(t, rel, entry.path().string());
    if (!s.ok())
      LOG(WARNING) << "run " << t->a.run_id() << ": uploading " << rel << ": " << s.error_message();
  }
  (void)Upload(t, run_files::kLog, t->dir + "/" + run_files::kLog);
}

void Daemon::Fail(RunTask* t, const std::string& message, bool retryable, bool released) {
  LOG(WARNING) << "run " << t->a.run_id() << (released ? " handed back" : " failed")
               << (retryable ? " (retryable)" : "") << ": " << message;
  v1::FailRunRequest req;
  req.set_run_id(t->a.run_id());
  req.set_lease_epoch(t->a.lease_epoch());
  req.set_message(message);
  req.set_retryable(retryable);
  req.set_released(released);
  (void)Deliver(t, [&]() { return client_->FailRun(req, kCallTimeout); });
}

void Daemon::Execute(RunTask* t) {
  std::error_code ec;
  fs::create_directories(t->dir, ec);
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
                                   "--out",   t->dir + "/out",
                                   "--quiet", "--events-fd",
                                   "3",       "--device",
                                   t->device};
  if (o_.threads > 0) {
    args.push_back("--threads");
    args.push_back(absl::StrCat(o_.threads));
  }
  if (t->a.has_checkpoint()) args.push_back("--resume");
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
  int64_t checkpoint_mtime = 0;
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
        } else if (ev->has_outcome()) {
          s.outcome = ev->outcome();
        } else if (ev->has_epoch()) {
          s.last_epoch = ev->epoch();
          s.pending.push_back(std::move(*ev));
          if (s.stale || t->dropped) continue;
          Flush(t, s);
          UploadProgress(t, s.last_epoch.epoch());
          last_upload = Clock::now();
        } else {
          s.pending.push_back(std::move(*ev));
        }
      }
    }
    // Too much waiting for a coordinator that is away: weight summaries give way first.
    if (s.pending.size() > kMaxPending) {
      std::deque<v1::Event> kept;
      for (auto& e : s.pending) {
        if (!e.has_weights()) kept.push_back(std::move(e));
      }
      s.pending.swap(kept);
    }
    if (!s.stale && !s.pending.empty() &&
        (s.pending.size() >= kBatch || Clock::now() - last_flush > milliseconds(200))) {
      Flush(t, s);
      last_flush = Clock::now();
    }
    if (!s.stale &&
        Clock::now() - last_upload > std::chrono::seconds(std::max(1, o_.upload_every_s))) {
      struct stat st;
      const std::string ckpt = t->dir + "/out/" + run_files::kCheckpoint;
      if (::stat(ckpt.c_str(), &st) == 0 &&
          st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec != checkpoint_mtime) {
        checkpoint_mtime = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
        (void)Upload(t, run_files::kCheckpoint, ckpt);
      }
      last_upload = Clock::now();
    }
    if ((s.stale || t->dropped || t->stopping) && term_sent == Clock::time_point()) {
      SignalChild(child.pid, SIGTERM);
      term_sent = Clock::now();
    }
    if (term_sent != Clock::time_point() &&
        Clock::now() - term_sent > std::chrono::seconds(o_.stop_grace_s)) {
      SignalChild(child.pid, SIGKILL);  // the whole group: helpers too, or the pipe would stay open
    }
  }
}

// The run's end, from the child's outcome (typed: RunOutcome) and its exit: complete, fail for
// good, or give back for a retry elsewhere.
void Daemon::Conclude(RunTask* t, const ChildExit& exit, Supervised& s) {
  const int64_t run_id = t->a.run_id();
  if (t->dropped || s.stale) {
    LOG(INFO) << "run " << run_id << " stopped (revoked)";
    return;
  }
  // What the engine said last goes out before the outcome.
  for (int tries = 0; !Flush(t, s) && !s.stale && !t->dropped; ++tries) {
    if (*stop_ && (!t->stopping || tries > 20)) break;  // shutting down: do not wait forever
    Sleep(milliseconds(500));
  }
  if (s.stale || t->dropped) return;
  if (t->stopping) {
    UploadProgress(t, 0);
    Fail(t, absl::StrCat("worker ", o_.name, " shut down"), true, /*released=*/true);
    return;
  }
  if (s.outcome && s.outcome->code() == 0 && !exit.signaled && exit.status == 0) {
    UploadAll(t);
    v1::CompleteRunRequest req;
    req.set_run_id(run_id);
    req.set_lease_epoch(t->a.lease_epoch());
    v1::FoldResult* r = req.mutable_result();
    *r->mutable_aus() = s.last_epoch.aus();
    *r->mutable_test_f1() = s.last_epoch.test_f1();
    r->set_test_mean_f1(s.last_epoch.test_mean_f1());
    r->set_val_mean_f1(s.last_epoch.val_mean_f1());
    r->set_iterations(s.last_epoch.iteration());
    r->set_epochs(s.last_epoch.epoch());
    grpc::Status st = Deliver(t, [&]() { return client_->CompleteRun(req, kCallTimeout); });
    LOG(INFO) << "run " << run_id << " succeeded: test mean F1 " << s.last_epoch.test_mean_f1()
              << (st.ok() ? "" : " (not acknowledged: " + st.error_message() + ")");
    return;
  }
  if (s.outcome && s.outcome->code() != 0) {
    // The engine's own verdict: its errors (bad spec, missing dataset, non-finite loss, out of
    // memory) fail the same way anywhere; a stop it was told of is retried from the checkpoint.
    if (s.outcome->retryable()) {
      UploadProgress(t, 0);
    } else {
      UploadAll(t);
    }
    Fail(t, s.outcome->message().empty() ? "engine failed without a message" : s.outcome->message(),
         s.outcome->retryable());
    return;
  }
  // No outcome: the engine crashed (or was killed) before it could say how training ended.
  const std::string last = LastLogLine(t->dir + "/" + run_files::kLog);
  UploadProgress(t, 0);
  Fail(t,
       absl::StrCat("engine process ", exit.Describe(), s.outcome ? " after reporting success" : "",
                    last.empty() ? "" : ": ", last),
       true);
}

}  // namespace

int RunDaemon(const DaemonOptions& options, const std::atomic<bool>* stop,
              std::unique_ptr<CoordinatorClient> client) {
  DaemonOptions o = options;
  if (o.coordinator.empty() || o.work_dir.empty() || o.slots < 1 || o.devices.empty()) {
    LOG(ERROR) << "--coordinator, --work-dir and --slots >= 1 are required";
    return 2;
  }
  if (o.name.empty()) {
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    o.name = absl::StrCat(host, "-", ::getpid());
  }
  if (o.engine.empty()) o.engine = fs::read_symlink("/proc/self/exe").string();
  if (o.threads <= 0) {
    o.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / o.slots);
  }
  if (client == nullptr) {
    rpc::ClientSecurity security{o.tls_ca, o.tls_cert, o.tls_key, o.token};
    auto channel = rpc::MakeSecureChannel(o.coordinator, security);
    if (!channel.ok()) {
      LOG(ERROR) << channel.status().message();
      std::cerr << "mal-worker: " << channel.status().message() << "\n";
      return 2;
    }
    client = MakeGrpcCoordinatorClient(*channel);
  }
  Daemon d(o, stop, std::move(client));
  return d.Run();
}

}  // namespace mal::worker
