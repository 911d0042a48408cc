// The worker daemon's control side (daemon_impl.h): registration, heartbeats, starting and
// reaping runs, shutdown; and RunDaemon.

#include "worker/daemon/daemon.h"

#include <fcntl.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/util/grpc_channel.h"
#include "common/util/logging.h"
#include "common/util/systemd_notify.h"
#include "worker/daemon/child_process.h"
#include "worker/daemon/daemon_impl.h"

namespace mal::worker {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace internal {

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
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
        s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      // Not transient, but the coordinator's token file may be fixed without restarting us: keep
      // trying, and say so where an operator looks (the log and systemctl status).
      LOG_EVERY_N(ERROR, 10) << "the coordinator " << o_.coordinator
                             << " refuses this worker's token: " << s.error_message()
                             << " (--token-file needs a token with the worker role; retrying)";
      NotifySystemd(absl::StrCat("STATUS=registration refused: ", s.error_message()));
    } else if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
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
  NotifySystemd(absl::StrCat("READY=1\nSTATUS=registered with ", o_.coordinator, " as ", o_.name));
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
  if (it->second->child.load() > 0) {
    LOG(INFO) << "run " << d.run_id() << " revoked by the coordinator: stopping it";
  } else {
    // No engine running: not started yet (it is stopped as it starts), or ended (a completion
    // being delivered, or a coordinator restart that found the run finished).
    LOG(INFO) << "run " << d.run_id() << " revoked by the coordinator (its engine is not running)";
  }
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
  try {
    raw->thread = std::thread([this, raw] {
      try {
        Execute(raw);
      } catch (const std::exception& e) {
        // A defect or an unforeseen system error in this run's handling: the run is retried,
        // its child does not outlive it, and the daemon and its other runs go on.
        if (const pid_t pid = raw->child.exchange(0); pid > 0) {
          SignalChild(pid, SIGKILL);
          (void)WaitChild(pid);
        }
        LOG(ERROR) << "run " << raw->a.run_id() << ": " << e.what();
        if (!raw->dropped) {
          Fail(raw, absl::StrCat("worker ", o_.name, ": ", e.what()), /*retryable=*/true);
        }
      }
      // Revoked (a cancel, a lapsed lease): the run resumes from the coordinator's checkpoint
      // wherever it runs next, so its directory only filled the disk of a daemon that runs for
      // months (it went only at the next start). A later assignment of the same run waits for
      // this task (Start), so nothing trains in it now. Kept if it failed here first.
      std::error_code ec;
      if (raw->dropped && !fs::exists(fs::path(raw->dir) / kFailedMarker, ec)) {
        LOG(INFO) << "run " << raw->a.run_id() << ": removing " << raw->dir << " (revoked)";
        RemoveRunDir(raw->dir);
      }
      absl::MutexLock lock(&mu_);
      raw->done = true;
      wake_.SignalAll();
    });
  } catch (const std::exception& e) {  // std::system_error, or std::bad_alloc for its state
    // Out of threads or of address space (ulimit -v, a container's limit): this run cannot
    // start here, but the daemon and its other runs go on. One try to say why, a failed attempt
    // (bounded by max_restarts); if it does not land, the run is not claimed at the next
    // heartbeat and the coordinator re-queues it as lost.
    runs_.erase(a.run_id());
    const std::string message =
        absl::StrCat("worker ", o_.name, ": cannot start a thread for the run: ", e.what());
    LOG(ERROR) << "run " << a.run_id() << ": " << message;
    (void)client_->FailRun(FailRunRequestFor(a, message, /*retryable=*/true), kCallTimeout);
  }
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
  RemoveLeftovers();
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
        // 0.1-2 s (docs/service.md): a restarted coordinator holds its workers' runs for one
        // lease, and up to 5 s here took most of a short one.
        backoff_ms = std::min(backoff_ms * 2, 2000);
        continue;
      }
      backoff_ms = 100;
    }
    in_contact = Heartbeat();
    // Told to register again (the coordinator restarted): at once, not a heartbeat later; its
    // claims on the runs held here count against one lease.
    if (!registered_) continue;
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
  NotifySystemd("STOPPING=1\nSTATUS=checkpointing and handing runs back");
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

}  // namespace internal

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
  internal::Daemon d(o, stop, std::move(client));
  return d.Run();
}

}  // namespace mal::worker
