#ifndef MAL_CLIENT_SERVICE_COMMANDS_H_
#define MAL_CLIENT_SERVICE_COMMANDS_H_

#include <string>
#include <vector>

namespace mal::cli {

// submit, ls, describe, watch, cancel, wait, results, workers: thin clients of the Coordinator
// service. Exit codes: 0 ok, 1 failed (or the experiment failed), 2 usage, 3 coordinator
// unreachable, 4 (wait) still running at the timeout.
bool IsServiceCommand(const std::string& command);
int RunServiceCommand(const std::string& command, const std::vector<std::string>& args);

}  // namespace mal::cli

#endif  // MAL_CLIENT_SERVICE_COMMANDS_H_
