// malctl: the mal command-line client.

#include <iostream>
#include <string>
#include <vector>

#include "client/data_commands.h"
#include "common/util/logging.h"

namespace {

void Usage() {
  std::cerr << "usage: malctl <command> [options]\n\n"
               "data commands (local, no server needed):\n"
               "  malctl data synth --out DIR [...]          generate the SynthFace dataset\n"
               "  malctl data inspect --format F --root DIR   check a dataset, show its folds\n\n"
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
