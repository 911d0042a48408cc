// malctl: the mal command-line client. `malctl --help` and `malctl COMMAND --help` list the
// commands and their options.

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "client/data_commands.h"
#include "client/predict_command.h"
#include "client/service_commands.h"
#include "common/util/cli.h"
#include "common/util/logging.h"

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
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
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  return exit_code;
}
