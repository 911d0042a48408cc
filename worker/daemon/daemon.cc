#include "worker/daemon/daemon.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/spec/spec.h"
#include "common/util/files.h"
#include "common/util/grpc_channel.h"
#include "common/util/grpc_status.h"
#include "common/util/logging.h"
#include "common/util/sha256.h"
#include "mal/v1/service.grpc.pb.h"
#include "worker/daemon/event_pipe.h"

namespace mal::worker {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kCallTimeout{10000};
constexpr size_t kBatch = 256;
constexpr size_t kMaxPending = 50000;

bool Transient(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED || s.error_code() == grpc::StatusCode::INTERNAL ||
         s.error_code() == grpc::StatusCode::UNKNOWN || s.error_code() == grpc::StatusCode::CANCELLED;
}

std::string LastLogLine(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return "";
  std::string last;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace())) last = std::string(line);
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
  std::atomic<bool> dropped{false};  // the coordinator revoked it: stop, report nothing
  std::atomic<bool> stopping{false};  // the daemon shuts down: stop, hand it back
  std::atomic<pid_t> child{0};
  std::atomic<bool> done{false};
};

class Daemon {
 public:
  Daemon(const DaemonOptions& o, const std::atomic<bool>* stop, std::shared_ptr<grpc::Channel> channel)
      : o_(o),
        stop_(stop),
        stub_(v1::WorkerGateway::NewStub(std::move(channel))),
        instance_(absl::StrCat(::getpid(), "-", std::chrono::system_clock::now().time_since_epoch().count())) {}

  int Run();

 private:
  bool Register();
  bool Heartbeat();  // false when the coordinator could not be reached
  void Start(const v1::Assignment& a);
  void Launch(const v1::Assignment& a);  // mu_ held
  void Reap();
  void Drop(const v1::RunClaim& claim);  // mu_ held
  std::vector<v1::RunClaim> Claims();

  // Run side (one thread per run).
  void Execute(RunTask* t);
  bool Prepare(RunTask* t, std::string* error);
  pid_t Spawn(RunTask* t, int* events_fd);
  bool Flush(RunTask* t, std::deque<v1::Event>& pending, int64_t& next_index, bool* stale);
  grpc::Status Upload(RunTask* t, const std::string& name, const std::string& path);
  grpc::Status Fetch(RunTask* t, const std::string& name, const std::string& path);
  void UploadProgress(RunTask* t, int epoch);
  void UploadAll(RunTask* t);
  // Retries a report until it lands, the run is revoked, or the daemon stops.
  template <typename Call>
  grpc::Status Deliver(RunTask* t, Call call);
  void Sleep(milliseconds d) { std::this_thread::sleep_for(d); }

  const DaemonOptions& o_;
  const std::atomic<bool>* stop_;
  std::unique_ptr<v1::WorkerGateway::Stub> stub_;
  const std::string instance_;
  int64_t heartbeat_ms_ = 1000;
  bool registered_ = false;

  std::mutex mu_;
  std::condition_variable wake_;
  std::map<int64_t, std::unique_ptr<RunTask>> runs_;  // guarded by mu_
  // Assignments of a run whose previous task (revoked, being stopped) has not ended yet: they
  // start when it has, so two tasks never share a run directory. Guarded by mu_.
  std::vector<v1::Assignment> waiting_;
};

std::vector<v1::RunClaim> Daemon::Claims() {
  std::lock_guard<std::mutex> lock(mu_);
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
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, kCallTimeout);
  grpc::Status s = stub_->Register(&ctx, req, &resp);
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
  LOG(INFO) << "registered with " << o_.coordinator << " as " << o_.name << " (" << o_.slots << " slot(s), "
            << req.running_size() << " run(s) claimed, " << resp.drop_size() << " dropped)";
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& d : resp.drop()) Drop(d);
  return true;
}

void Daemon::Drop(const v1::RunClaim& d) {
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [&](const v1::Assignment& a) {
                                  return a.run_id() == d.run_id() && a.lease_epoch() == d.lease_epoch();
                                }),
                 waiting_.end());
  auto it = runs_.find(d.run_id());
  if (it == runs_.end() || it->second->a.lease_epoch() != d.lease_epoch()) return;
  LOG(INFO) << "run " << d.run_id() << " revoked by the coordinator: stopping it";
  it->second->dropped = true;
  const pid_t pid = it->second->child;
  if (pid > 0) ::kill(-pid, SIGTERM);
}

bool Daemon::Heartbeat() {
  v1::HeartbeatRequest req;
  req.set_name(o_.name);
  const auto claims = Claims();
  for (const auto& c : claims) *req.add_running() = c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    req.set_free_slots(std::max(0, o_.slots - static_cast<int>(runs_.size() + waiting_.size())));
  }
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  // Short: a call stuck on a half-open connection must not eat the lease.
  rpc::SetDeadline(ctx, milliseconds(std::max<int64_t>(1000, 2 * heartbeat_ms_)));
  grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
  if (!s.ok()) {
    LOG_EVERY_N(WARNING, 20) << "heartbeat to " << o_.coordinator << ": " << s.error_message();
    return false;
  }
  if (resp.reregister()) {
    registered_ = false;
    return true;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& d : resp.drop()) Drop(d);
  }
  for (const auto& a : resp.assignments()) Start(a);
  return true;
}

void Daemon::Start(const v1::Assignment& a) {
  std::lock_guard<std::mutex> lock(mu_);
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
  t->dir = absl::StrCat(o_.work_dir, "/runs/", a.experiment_id(), "/trial-", a.trial(), "-fold-", a.fold());
  LOG(INFO) << "run " << a.run_id() << ": " << a.experiment_id() << " trial " << a.trial() << " fold " << a.fold()
            << " attempt " << a.attempt() << " on " << t->device << (a.has_checkpoint() ? " (resuming)" : "");
  RunTask* raw = t.get();
  runs_[a.run_id()] = std::move(t);
  raw->thread = std::thread([this, raw] {
    Execute(raw);
    raw->done = true;
    wake_.notify_all();
  });
}

void Daemon::Reap() {
  std::vector<std::unique_ptr<RunTask>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
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
    LOG(ERROR) << o_.work_dir << ": another mal-worker is using this work directory";
    std::cerr << "mal-worker: " << o_.work_dir << ": another mal-worker is using this work directory\n";
    return 2;
  }
  std::unique_ptr<grpc::Server> health;
  if (!o_.listen.empty()) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(o_.listen, grpc::InsecureServerCredentials(), &port);
    rpc::ConfigureServer(builder);
    health = builder.BuildAndStart();
    if (health == nullptr || port == 0) {
      LOG(ERROR) << "cannot listen on " << o_.listen;
      return 2;
    }
    health->GetHealthCheckService()->SetServingStatus(false);
    std::cout << "mal-worker health on port " << port << std::endl;
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
    std::unique_lock<std::mutex> lock(mu_);
    // Wake early when a run ends, so its slot is offered at once.
    wake_.wait_for(lock, milliseconds(heartbeat_ms_), [&] {
      if (*stop_) return true;
      for (const auto& [id, t] : runs_) {
        if (t->done) return true;
      }
      return false;
    });
  }
  LOG(INFO) << "stopping: handing back " << runs_.size() + waiting_.size() << " run(s)";
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& a : waiting_) {  // never started: give them back as they are
      v1::FailRunRequest req;
      req.set_run_id(a.run_id());
      req.set_lease_epoch(a.lease_epoch());
      req.set_message(absl::StrCat("worker ", o_.name, " shut down"));
      req.set_retryable(true);
      req.set_released(true);
      v1::Ack ack;
      grpc::ClientContext ctx;
      rpc::SetDeadline(ctx, kCallTimeout);
      (void)stub_->FailRun(&ctx, req, &ack);
    }
    waiting_.clear();
    for (auto& [id, t] : runs_) {
      t->stopping = true;
      const pid_t pid = t->child;
      if (pid > 0) ::kill(-pid, SIGTERM);
    }
  }
  if (health) health->GetHealthCheckService()->SetServingStatus(false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, t] : runs_) t->thread.join();
  }
  if (health) health->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

// ------------------------------------------------------------------------------------------
// One run.

template <typename Call>
grpc::Status Daemon::Deliver(RunTask* t, Call call) {
  int backoff = 100;
  for (;;) {
    grpc::Status s = call();
    if (s.ok() || !Transient(s) || t->dropped) return s;
    if (*stop_ && !t->stopping) return s;
    LOG_EVERY_N(WARNING, 10) << "run " << t->a.run_id() << ": " << s.error_message() << " (retrying)";
    Sleep(milliseconds(backoff));
    backoff = std::min(backoff * 2, 3000);
    if (t->stopping && backoff >= 3000) return s;  // shutting down: do not wait forever
  }
}

grpc::Status Daemon::Upload(RunTask* t, const std::string& name, const std::string& path) {
  return Deliver(t, [&]() {
    std::ifstream in(path, std::ios::binary);
    if (!in) return grpc::Status(grpc::StatusCode::NOT_FOUND, path + ": cannot open");
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, milliseconds(300000));
    v1::UploadArtifactResponse resp;
    auto writer = stub_->UploadArtifact(&ctx, &resp);
    Sha256 hash;
    std::vector<char> buf(rpc::kArtifactChunkBytes);
    v1::ArtifactChunk chunk;
    chunk.set_run_id(t->a.run_id());
    chunk.set_lease_epoch(t->a.lease_epoch());
    chunk.set_name(name);
    bool ok = true;
    while (ok && (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0)) {
      chunk.set_data(buf.data(), static_cast<size_t>(in.gcount()));
      hash.Update(chunk.data());
      ok = writer->Write(chunk);
      chunk = v1::ArtifactChunk();
    }
    if (ok) {
      chunk.set_sha256(hash.HexDigest());
      ok = writer->Write(chunk);
    }
    writer->WritesDone();
    return writer->Finish();
  });
}

grpc::Status Daemon::Fetch(RunTask* t, const std::string& name, const std::string& path) {
  return Deliver(t, [&]() {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, milliseconds(300000));
    v1::FetchArtifactRequest req;
    req.set_run_id(t->a.run_id());
    req.set_name(name);
    auto reader = stub_->FetchArtifact(&ctx, req);
    const std::string tmp = path + ".fetch";
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    Sha256 hash;
    std::string expected;
    v1::ArtifactChunk chunk;
    while (reader->Read(&chunk)) {
      if (!chunk.sha256().empty()) expected = chunk.sha256();
      hash.Update(chunk.data());
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    }
    grpc::Status s = reader->Finish();
    out.close();
    if (s.ok() && (!out || hash.HexDigest() != expected)) {
      s = grpc::Status(grpc::StatusCode::DATA_LOSS, name + ": checksum mismatch after download");
    }
    if (!s.ok()) {
      fs::remove(tmp);
      return s;
    }
    fs::rename(tmp, path);
    return s;
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
  if (absl::Status s = WriteFileAtomic(t->dir + "/spec.json", SpecToJson(t->a.spec())); !s.ok()) {
    *error = std::string(s.message());
    return false;
  }
  if (!t->a.has_checkpoint()) return true;
  for (const char* name : {"checkpoint.pt", "records.csv", "summaries.jsonl", "metrics.json"}) {
    grpc::Status s = Fetch(t, name, out + "/" + name);
    if (s.ok() || s.error_code() == grpc::StatusCode::NOT_FOUND) continue;
    *error = absl::StrCat("fetching ", name, ": ", s.error_message());
    return false;
  }
  return true;
}

pid_t Daemon::Spawn(RunTask* t, int* events_fd) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
  std::vector<std::string> args = {o_.engine, "train", "-f", t->dir + "/spec.json", "--fold",
                                   absl::StrCat(t->a.fold()), "--out", t->dir + "/out", "--quiet",
                                   "--events-fd", "3", "--device", t->device};
  if (o_.threads > 0) {
    args.push_back("--threads");
    args.push_back(absl::StrCat(o_.threads));
  }
  if (t->a.has_checkpoint()) args.push_back("--resume");
  const std::string log = t->dir + "/log.txt";
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // The run dies with the daemon (its lease will lapse and it resumes elsewhere).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setpgid(0, 0);
    const int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (logfd >= 0) {
      ::dup2(logfd, 1);
      ::dup2(logfd, 2);
    }
    ::dup2(fds[1], 3);
    for (int fd = 4; fd < 1024; ++fd) ::close(fd);
    ::signal(SIGPIPE, SIG_DFL);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  // The child makes itself a group leader too; doing it here as well closes the race with a
  // signal to the group sent before the child got there.
  if (pid > 0) ::setpgid(pid, pid);
  if (pid < 0) {
    ::close(fds[0]);
    return -1;
  }
  *events_fd = fds[0];
  return pid;
}

bool Daemon::Flush(RunTask* t, std::deque<v1::Event>& pending, int64_t& next_index, bool* stale) {
  while (!pending.empty()) {
    v1::ReportEventsRequest req;
    req.set_run_id(t->a.run_id());
    req.set_lease_epoch(t->a.lease_epoch());
    req.set_first_index(next_index);
    for (size_t i = 0; i < pending.size() && i < kBatch; ++i) *req.add_events() = pending[i];
    v1::ReportEventsResponse resp;
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, kCallTimeout);
    grpc::Status s = stub_->ReportEvents(&ctx, req, &resp);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION || s.error_code() == grpc::StatusCode::NOT_FOUND) {
        LOG(WARNING) << "run " << t->a.run_id() << ": " << s.error_message() << "; stopping it";
        *stale = true;
      } else {
        LOG_EVERY_N(WARNING, 20) << "run " << t->a.run_id() << ": reporting events: " << s.error_message();
      }
      return false;
    }
    next_index += req.events_size();
    pending.erase(pending.begin(), pending.begin() + req.events_size());
  }
  return true;
}

void Daemon::UploadProgress(RunTask* t, int epoch) {
  const std::string out = t->dir + "/out";
  // The checkpoint first: the logs are at least as new, and a resumed run trims them to it.
  for (const std::string name : {"checkpoint.pt", "records.csv", "summaries.jsonl", "metrics.json"}) {
    if (fs::exists(out + "/" + name)) (void)Upload(t, name, out + "/" + name);
  }
  if (epoch > 0) {
    char name[64];
    std::snprintf(name, sizeof name, "weights/epoch_%03d.csv", epoch);
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
    if (!s.ok()) LOG(WARNING) << "run " << t->a.run_id() << ": uploading " << rel << ": " << s.error_message();
  }
  (void)Upload(t, "log.txt", t->dir + "/log.txt");
}

void Daemon::Execute(RunTask* t) {
  const int64_t run_id = t->a.run_id();
  auto fail = [&](const std::string& message, bool retryable, bool released = false) {
    LOG(WARNING) << "run " << run_id << (released ? " handed back" : " failed") << (retryable ? " (retryable)" : "")
                 << ": " << message;
    (void)Deliver(t, [&]() {
      v1::FailRunRequest req;
      req.set_run_id(run_id);
      req.set_lease_epoch(t->a.lease_epoch());
      req.set_message(message);
      req.set_retryable(retryable);
      req.set_released(released);
      v1::Ack ack;
      grpc::ClientContext ctx;
      rpc::SetDeadline(ctx, kCallTimeout);
      return stub_->FailRun(&ctx, req, &ack);
    });
  };
  std::error_code ec;
  fs::create_directories(t->dir, ec);
  std::string error;
  if (!Prepare(t, &error)) {
    if (!t->dropped) fail(absl::StrCat("worker ", o_.name, ": ", error), true);
    return;
  }
  // Tell the coordinator it runs (ASSIGNED -> RUNNING) before the engine's first event.
  std::deque<v1::Event> pending;
  int64_t next_index = 1;
  bool stale = false;
  {
    v1::ReportEventsRequest req;
    req.set_run_id(run_id);
    req.set_lease_epoch(t->a.lease_epoch());
    req.set_first_index(1);
    grpc::Status s = Deliver(t, [&]() {
      v1::ReportEventsResponse resp;
      grpc::ClientContext ctx;
      rpc::SetDeadline(ctx, kCallTimeout);
      return stub_->ReportEvents(&ctx, req, &resp);
    });
    if (!s.ok()) {
      LOG(WARNING) << "run " << run_id << ": not started: " << s.error_message();
      return;
    }
  }
  int events_fd = -1;
  const pid_t pid = Spawn(t, &events_fd);
  if (pid < 0) {
    fail(absl::StrCat("worker ", o_.name, ": cannot start the engine: ", std::strerror(errno)), true);
    return;
  }
  t->child = pid;
  if (t->dropped || *stop_) ::kill(-pid, SIGTERM);

  std::string partial;
  auto last_flush = Clock::now();
  auto last_upload = Clock::now();
  auto term_sent = Clock::time_point();
  int64_t checkpoint_mtime = 0;
  v1::EpochMetrics last_epoch;
  bool open = true;
  while (open) {
    pollfd p{events_fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 200);
    if (r > 0) {
      char buf[65536];
      const ssize_t n = ::read(events_fd, buf, sizeof buf);
      if (n <= 0) {
        open = n < 0 && errno == EINTR;
      } else {
        partial.append(buf, static_cast<size_t>(n));
        size_t nl;
        while ((nl = partial.find('\n')) != std::string::npos) {
          auto ev = DecodeEventLine(partial.substr(0, nl));
          partial.erase(0, nl + 1);
          if (!ev.ok()) {
            LOG(WARNING) << "run " << run_id << ": " << ev.status();
            continue;
          }
          if (ev->has_epoch()) {
            last_epoch = ev->epoch();
            pending.push_back(std::move(*ev));
            if (stale || t->dropped) continue;
            Flush(t, pending, next_index, &stale);
            UploadProgress(t, last_epoch.epoch());
            last_upload = Clock::now();
            continue;
          }
          pending.push_back(std::move(*ev));
        }
      }
    }
    // Too much waiting for a coordinator that is away: weight summaries give way first.
    if (pending.size() > kMaxPending) {
      std::deque<v1::Event> kept;
      for (auto& e : pending) {
        if (!e.has_weights()) kept.push_back(std::move(e));
      }
      pending.swap(kept);
    }
    if (!stale && !pending.empty() && (pending.size() >= kBatch || Clock::now() - last_flush > milliseconds(200))) {
      Flush(t, pending, next_index, &stale);
      last_flush = Clock::now();
    }
    if (!stale && Clock::now() - last_upload > std::chrono::seconds(std::max(1, o_.upload_every_s))) {
      struct stat st;
      const std::string ckpt = t->dir + "/out/checkpoint.pt";
      if (::stat(ckpt.c_str(), &st) == 0 && st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec != checkpoint_mtime) {
        checkpoint_mtime = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
        (void)Upload(t, "checkpoint.pt", ckpt);
      }
      last_upload = Clock::now();
    }
    if ((stale || t->dropped || t->stopping) && term_sent == Clock::time_point()) {
      ::kill(-pid, SIGTERM);
      term_sent = Clock::now();
    }
    if (term_sent != Clock::time_point() && Clock::now() - term_sent > std::chrono::seconds(o_.stop_grace_s)) {
      ::kill(-pid, SIGKILL);  // the whole group: helpers too, or the pipe would stay open
    }
  }
  ::close(events_fd);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  t->child = 0;
  const std::string log = t->dir + "/log.txt";
  if (t->dropped || stale) {
    LOG(INFO) << "run " << run_id << " stopped (revoked)";
    return;
  }
  // What the engine said last goes out before the outcome.
  for (int tries = 0; !Flush(t, pending, next_index, &stale) && !stale && !t->dropped; ++tries) {
    if (*stop_ && (!t->stopping || tries > 20)) break;  // shutting down: do not wait forever
    Sleep(milliseconds(500));
  }
  if (stale || t->dropped) return;
  if (t->stopping) {
    UploadProgress(t, 0);
    fail(absl::StrCat("worker ", o_.name, " shut down"), true, /*released=*/true);
    return;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    UploadAll(t);
    v1::CompleteRunRequest req;
    req.set_run_id(run_id);
    req.set_lease_epoch(t->a.lease_epoch());
    v1::FoldResult* r = req.mutable_result();
    *r->mutable_aus() = last_epoch.aus();
    *r->mutable_test_f1() = last_epoch.test_f1();
    r->set_test_mean_f1(last_epoch.test_mean_f1());
    r->set_val_mean_f1(last_epoch.val_mean_f1());
    r->set_iterations(last_epoch.iteration());
    r->set_epochs(last_epoch.epoch());
    grpc::Status s = Deliver(t, [&]() {
      v1::Ack ack;
      grpc::ClientContext ctx;
      rpc::SetDeadline(ctx, kCallTimeout);
      return stub_->CompleteRun(&ctx, req, &ack);
    });
    LOG(INFO) << "run " << run_id << " succeeded: test mean F1 " << last_epoch.test_mean_f1()
              << (s.ok() ? "" : " (not acknowledged: " + s.error_message() + ")");
    return;
  }
  if (WIFEXITED(status) && (WEXITSTATUS(status) == 1 || WEXITSTATUS(status) == 2)) {
    // The engine's own errors (bad spec, missing dataset, non-finite loss) do not improve on retry.
    std::string message = LastLogLine(log);
    if (message.empty()) message = absl::StrCat("engine exited with status ", WEXITSTATUS(status));
    UploadAll(t);
    fail(message, false);
    return;
  }
  std::string message;
  if (WIFSIGNALED(status)) {
    message = absl::StrCat("engine process killed by signal ", WTERMSIG(status),
                           WTERMSIG(status) == SIGKILL ? " (out of memory?)" : "");
  } else {
    message = absl::StrCat("engine exited with status ", WEXITSTATUS(status), ": ", LastLogLine(log));
  }
  UploadProgress(t, 0);
  fail(message, true);
}

}  // namespace

int RunDaemon(const DaemonOptions& options, const std::atomic<bool>* stop) {
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
  rpc::ClientSecurity security{o.tls_ca, o.tls_cert, o.tls_key, o.token};
  auto channel = rpc::MakeSecureChannel(o.coordinator, security);
  if (!channel.ok()) {
    LOG(ERROR) << channel.status().message();
    std::cerr << "mal-worker: " << channel.status().message() << "\n";
    return 2;
  }
  Daemon d(o, stop, *channel);
  return d.Run();
}

}  // namespace mal::worker
