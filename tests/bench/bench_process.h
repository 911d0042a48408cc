#ifndef MAL_TESTS_BENCH_BENCH_PROCESS_H_
#define MAL_TESTS_BENCH_BENCH_PROCESS_H_

// What the coordinator benchmarks share: starting the real mal-coordinator and reading a
// process's memory.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mal::bench {

// A line of /proc/PID/status ("VmRSS:", "VmHWM:"), kB; 0 when it cannot be read.
int64_t RssKb(pid_t pid, const char* field);

struct StartedCoordinator {
  pid_t pid = -1;
  int port = 0;  // 0: it did not print its port within 10 s (killed; see DIR/coordinator.log)
};
// Forks `binary --listen 127.0.0.1:0 --data-dir DIR/data ARGS...` with its output in
// DIR/coordinator.log and waits for its "listening on port N" line.
StartedCoordinator StartCoordinator(const std::string& binary, const std::string& dir,
                                    const std::vector<std::string>& args);

}  // namespace mal::bench

#endif  // MAL_TESTS_BENCH_BENCH_PROCESS_H_
