#ifndef MAL_CLIENT_DATA_COMMANDS_H_
#define MAL_CLIENT_DATA_COMMANDS_H_

namespace CLI {
class App;
}

namespace mal::cli {

// Adds `data inspect` and `data synth` (local, no server) to malctl's command tree. The command
// that runs writes its exit code to `*exit_code` (0 ok, 1 failed; usage errors are the parser's
// 2); output goes to stdout, errors to stderr.
void AddDataCommands(CLI::App& app, int* exit_code);

}  // namespace mal::cli

#endif  // MAL_CLIENT_DATA_COMMANDS_H_
