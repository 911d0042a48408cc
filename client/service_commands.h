#ifndef MAL_CLIENT_SERVICE_COMMANDS_H_
#define MAL_CLIENT_SERVICE_COMMANDS_H_

namespace CLI {
class App;
}

namespace mal::cli {

// Adds submit, ls, describe, cancel, watch, wait, results and workers, thin clients of the
// Coordinator service, to malctl's command tree. The command that runs writes its exit code to
// `*exit_code`: 0 ok, 1 failed (or the experiment failed), 2 usage, 3 coordinator unreachable,
// 4 (wait) still running at the timeout (client/service_client.h).
void AddServiceCommands(CLI::App& app, int* exit_code);

}  // namespace mal::cli

#endif  // MAL_CLIENT_SERVICE_COMMANDS_H_
