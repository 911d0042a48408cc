#ifndef MAL_COMMON_UTIL_CLI_H_
#define MAL_COMMON_UTIL_CLI_H_

#include <optional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace mal::cli {

// Exit codes every mal program shares for its command line: 0 ok (and --help), 2 a usage error.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 2;

// Parses `args` (the command line without the program name) into `app`, a CLI11 command tree
// (Debian's libcli11-dev) whose subcommand callbacks run the command. Returns the exit code to
// end with at once: kExitOk after printing the help asked for with --help (to stdout), kExitUsage
// after printing "PROGRAM: <what is wrong, naming the option>" and where the usage is (to stderr);
// nullopt when the command ran (its callback set its own exit code).
std::optional<int> ParseCommandLine(CLI::App& app, const std::vector<std::string>& args);

// The command path of the deepest subcommand the last parse reached: "malctl data inspect".
std::string CommandPath(const CLI::App& app);

}  // namespace mal::cli

#endif  // MAL_COMMON_UTIL_CLI_H_
