// malctl: the mal command-line client.

#include <iostream>
#include <string>
#include <vector>

#include "client/data_commands.h"
#include "client/service_commands.h"
#include "common/util/logging.h"

namespace {

void Usage() {
  std::cerr << "usage: malctl <command> [options]\n\n"
               "data commands (local, no server needed):\n"
               "  malctl data synth --out DIR [...]          generate the SynthFace dataset\n"
               "  malctl data inspect --format F --root DIR   check a dataset, show its folds\n\n"
               "service commands (--address HOST:PORT or MAL_ADDRESS; default 127.0.0.1:7070; -o json;\n"
               "TLS: --tls-ca PEM or MAL_TLS_CA [--tls-cert/--tls-key for mutual TLS]; token: --token-file or MAL_TOKEN):\n"
               "  malctl submit -f SPEC.yaml [--follow]       submit an experiment\n"
               "  malctl ls                                    list experiments\n"
               "  malctl describe ID                           an experiment and its fold runs\n"
               "  malctl watch ID [--from-seq N]               stream its events (losses, weights, metrics)\n"
               "  malctl cancel ID                             stop it\n"
               "  malctl wait ID [--timeout S]                 wait until it ends (exit 0: succeeded)\n"
               "  malctl results ID                            per-trial, per-AU F1 (mean and std over folds)\n"
               "  malctl workers                               the worker daemons\n\n"
               "Run a command with --help for its options.\n";
}

}  // namespace

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    Usage();
    return args.empty() ? 2 : 0;
  }
  if (mal::cli::IsServiceCommand(args[0])) {
    return mal::cli::RunServiceCommand(args[0], std::vector<std::string>(args.begin() + 1, args.end()));
  }
  if (args[0] == "data" && args.size() >= 2) {
    const std::vector<std::string> rest(args.begin() + 2, args.end());
    if (args[1] == "inspect") return mal::cli::RunDataInspect(rest);
    if (args[1] == "synth") return mal::cli::RunDataSynth(rest);
  }
  std::cerr << "malctl: unknown command '" << args[0] << (args.size() > 1 ? " " + args[1] : "")
            << "'\n";
  Usage();
  return 2;
}
