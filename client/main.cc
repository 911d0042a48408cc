// malctl: the mal command-line client. `malctl --help` and `malctl COMMAND --help` list the
// commands and their options.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <string>
#include <vector>

#include "client/completion.h"
#include "client/data_commands.h"
#include "client/predict_command.h"
#include "client/service_client.h"
#include "client/service_commands.h"
#include "common/util/cli.h"
#include "common/util/grpc_channel.h"
#include "common/util/logging.h"

namespace {

// Ctrl-C or SIGTERM during watch, wait or submit --follow: exit 3 (interrupted), with the
// terminal's cursor shown again in case the live view hid it. predict installs its own handler
// (it finishes the rows it has).
void OnInterrupt(int) {
  static const char kShowCursor[] = "\x1b[?25h\n";
  if (::isatty(STDOUT_FILENO)) (void)!::write(STDOUT_FILENO, kShowCursor, sizeof kShowCursor - 1);
  ::_exit(mal::cli::kInterrupted);
}

}  // namespace

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
  // A write past `ulimit -f` fails with EFBIG, an error naming the file, instead of SIGXFSZ
  // killing the process without a word (a coordinator under a limit crash-looped so).
  std::signal(SIGXFSZ, SIG_IGN);
  mal::rpc::InitClientPolling();  // before any gRPC use
  std::signal(SIGINT, OnInterrupt);
  std::signal(SIGTERM, OnInterrupt);
  CLI::App app(
      "malctl: the mal client. Data commands work locally; service commands talk to a coordinator "
      "(--address HOST:PORT or MAL_ADDRESS, default 127.0.0.1:7070; TLS: --tls-ca or MAL_TLS_CA; "
      "token: --token-file or MAL_TOKEN).",
      "malctl");
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  int exit_code = 0;
  mal::cli::AddDataCommands(app, &exit_code);
  mal::cli::AddServiceCommands(app, &exit_code);
  mal::cli::AddPredictCommand(app, &exit_code);
  mal::cli::AddCompletionCommand(app, &exit_code);
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  return exit_code;
}
