#include "common/util/cli.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>

namespace mal::cli {

std::string CommandPath(const CLI::App& app) {
  const CLI::App* at = &app;
  std::string path = app.get_name();
  for (;;) {
    const std::vector<CLI::App*> subs = at->get_subcommands();
    if (subs.empty()) return path;
    at = subs.back();
    path += " " + at->get_name();
  }
}

namespace {

// A scalar option given twice takes the last value (`--tls-ca A ... --tls-ca B` is B), as Unix
// tools and scripts that append to a command line expect; lists (`--kinds a,b`) keep every value.
void LastValueWins(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    if (option->get_items_expected_max() == 1 && option->get_type_size_max() == 1) {
      option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) LastValueWins(*sub);
}

}  // namespace

std::optional<int> ParseCommandLine(CLI::App& app, const std::vector<std::string>& args) {
  LastValueWins(app);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11's parse order
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    // The help of the subcommand asked about, its usage line naming the whole command path.
    const CLI::App* at = &app;
    std::string parents;
    while (!at->get_subcommands().empty()) {
      parents += (parents.empty() ? "" : " ") + at->get_name();
      at = at->get_subcommands().back();
    }
    std::cout << at->help(parents);
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    if (args.empty()) {  // a bare program name: show what it can do
      std::cerr << app.help();
      return kExitUsage;
    }
    const std::string path = CommandPath(app);
    std::cerr << app.get_name() << ": " << e.what() << "\n"
              << "usage: " << path << " --help\n";
    return kExitUsage;
  }
  return std::nullopt;
}

}  // namespace mal::cli
