#ifndef MAL_WORKER_DAEMON_CHILD_PROCESS_H_
#define MAL_WORKER_DAEMON_CHILD_PROCESS_H_

// Supervision of one engine child process, apart from what the run does with it: the child leads
// its own process group (so a stop reaches its helpers too), dies with the daemon
// (PR_SET_PDEATHSIG: its lease lapses and the run resumes elsewhere), appends stdout and stderr
// to a log file, and writes its events to fd 3, the write end of a pipe whose read end the
// daemon gets.

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mal::worker {

struct Child {
  pid_t pid = -1;
  int events_fd = -1;  // read end of the event pipe (close-on-exec); the caller closes it
};

// Starts `args[0]` (an executable path) with `args`. Errors: Internal naming the failed system
// call (pipe, fork). An exec failure shows as the child exiting with status 127.
absl::StatusOr<Child> SpawnChild(const std::vector<std::string>& args, const std::string& log_path);

// Sends `signal` to the child's whole process group.
void SignalChild(pid_t pid, int signal);

struct ChildExit {
  bool signaled = false;
  int status = 0;  // the exit status, or the signal number when `signaled`
  // "exited with status N" or "killed by signal N (SIGKILL: out of memory?)".
  std::string Describe() const;
};
// Waits for the child to end (retrying on EINTR) and reaps it.
ChildExit WaitChild(pid_t pid);

}  // namespace mal::worker

#endif  // MAL_WORKER_DAEMON_CHILD_PROCESS_H_
