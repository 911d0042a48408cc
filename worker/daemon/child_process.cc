#include "worker/daemon/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace mal::worker {

absl::StatusOr<Child> SpawnChild(const std::vector<std::string>& args,
                                 const std::string& log_path) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setpgid(0, 0);
    const int logfd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
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
  const int fork_errno = errno;
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  // The child makes itself a group leader too; doing it here as well closes the race with a
  // signal to the group sent before the child got there.
  ::setpgid(pid, pid);
  return Child{pid, fds[0]};
}

void SignalChild(pid_t pid, int signal) {
  if (pid > 0) ::kill(-pid, signal);
}

std::string ChildExit::Describe() const {
  if (!signaled) return absl::StrCat("exited with status ", status);
  return absl::StrCat("killed by signal ", status, status == SIGKILL ? " (out of memory?)" : "");
}

ChildExit WaitChild(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ChildExit out;
  out.signaled = WIFSIGNALED(status);
  out.status = out.signaled ? WTERMSIG(status) : WEXITSTATUS(status);
  return out;
}

}  // namespace mal::worker
