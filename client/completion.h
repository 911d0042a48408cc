#ifndef MAL_CLIENT_COMPLETION_H_
#define MAL_CLIENT_COMPLETION_H_

namespace CLI {
class App;
}

namespace mal::cli {

// Adds `completion bash`: prints a bash completion script for malctl, generated from the command
// tree itself (every subcommand and option), so it never falls behind. Install with
//   malctl completion bash > /etc/bash_completion.d/malctl   (or source it from ~/.bashrc)
void AddCompletionCommand(CLI::App& app, int* exit_code);

}  // namespace mal::cli

#endif  // MAL_CLIENT_COMPLETION_H_
