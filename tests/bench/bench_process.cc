#include "tests/bench/bench_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/str_cat.h"

namespace mal::bench {

int64_t RssKb(pid_t pid, const char* field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::string(field).size()));
  }
  return 0;
}

StartedCoordinator StartCoordinator(const std::string& binary, const std::string& dir,
                                    const std::vector<std::string>& args) {
  const std::string log = dir + "/coordinator.log";
  std::vector<std::string> all{binary, "--listen", "127.0.0.1:0", "--data-dir", dir + "/data"};
  all.insert(all.end(), args.begin(), args.end());
  StartedCoordinator started;
  started.pid = ::fork();
  if (started.pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    ::dup2(::fileno(f), 1);
    ::dup2(::fileno(f), 2);
    std::vector<char*> argv;
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  for (int i = 0; i < 200 && started.port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = text.find("listening on port ");
    if (at != std::string::npos) started.port = std::stoi(text.substr(at + 18));
  }
  if (started.port == 0) {
    ::kill(started.pid, SIGKILL);
    ::waitpid(started.pid, nullptr, 0);
  }
  return started;
}

}  // namespace mal::bench
