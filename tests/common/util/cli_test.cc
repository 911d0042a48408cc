#include "common/util/cli.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>

#include "client/data_commands.h"
#include "common/synth/synth_dataset.h"

namespace mal::cli {
namespace {

using ::testing::HasSubstr;

struct Outcome {
  std::optional<int> parse;  // ParseCommandLine's result
  int exit_code = -1;        // what the command's callback set
  std::string out, err;
};

// malctl's data commands, parsed from `args` with stdout and stderr captured.
Outcome Malctl(const std::vector<std::string>& args) {
  CLI::App app("test", "malctl");
  app.require_subcommand(1);
  Outcome o;
  AddDataCommands(app, &o.exit_code);
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  o.parse = ParseCommandLine(app, args);
  o.out = testing::internal::GetCapturedStdout();
  o.err = testing::internal::GetCapturedStderr();
  return o;
}

TEST(CliTest, ValuesFlagsShortNamesAndPositionalsReachTheCommand) {
  CLI::App app("test", "prog");
  std::string root, output = "text", id;
  bool strict = false;
  std::vector<int> aus;
  int runs = 0;
  app.add_option("--root", root);
  app.add_option("-o,--output", output);
  app.add_option("--aus", aus)->delimiter(',');
  app.add_flag("--strict", strict);
  CLI::App* sub = app.add_subcommand("describe");
  sub->add_option("id", id)->required();
  sub->callback([&] { ++runs; });
  EXPECT_EQ(ParseCommandLine(app, {"--root=/d", "-o", "json", "--aus", "1,2,4", "--strict",
                                   "describe", "exp-3"}),
            std::nullopt);
  EXPECT_EQ(root, "/d");
  EXPECT_EQ(output, "json");
  EXPECT_EQ(aus, (std::vector<int>{1, 2, 4}));
  EXPECT_TRUE(strict);
  EXPECT_EQ(id, "exp-3");
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(CommandPath(app), "prog describe");
}

TEST(CliTest, AScalarGivenTwiceTakesTheLastValueAndListsKeepAll) {
  CLI::App app("test", "prog");
  std::string ca;
  std::vector<std::string> kinds;
  bool follow = false;
  app.add_option("--tls-ca", ca);
  app.add_option("--kinds", kinds)->delimiter(',');
  app.add_flag("--follow", follow);
  CLI::Option_group* group = app.add_option_group("daemon");
  int slots = 0;
  group->add_option("--slots", slots);
  EXPECT_EQ(ParseCommandLine(
                app, {"--tls-ca", "a.pem", "--kinds", "state,end", "--tls-ca", "b.pem", "--kinds",
                      "point", "--follow", "--follow", "--slots", "1", "--slots", "3"}),
            std::nullopt);
  EXPECT_EQ(ca, "b.pem");
  EXPECT_EQ(kinds, (std::vector<std::string>{"state", "end", "point"}));
  EXPECT_TRUE(follow);
  EXPECT_EQ(slots, 3);
}

TEST(CliTest, UsageErrorsAreExitTwoAndNameTheOption) {
  Outcome missing = Malctl({"data", "inspect", "--format", "bp4d"});
  EXPECT_EQ(missing.parse, kExitUsage);
  EXPECT_THAT(missing.err, HasSubstr("--root"));
  EXPECT_THAT(missing.err, HasSubstr("malctl data inspect --help"));
  EXPECT_EQ(missing.exit_code, -1);  // the command never ran

  Outcome unknown = Malctl({"data", "inspect", "--format", "bp4d", "--root", "/x", "--bogus", "1"});
  EXPECT_EQ(unknown.parse, kExitUsage);
  EXPECT_THAT(unknown.err, HasSubstr("--bogus"));

  Outcome number = Malctl({"data", "synth", "--out", "/x", "--size", "ten"});
  EXPECT_EQ(number.parse, kExitUsage);
  EXPECT_THAT(number.err, HasSubstr("--size"));

  Outcome range = Malctl({"data", "synth", "--out", "/x", "--ambiguous", "2"});
  EXPECT_EQ(range.parse, kExitUsage);
  EXPECT_THAT(range.err, HasSubstr("--ambiguous"));

  Outcome au = Malctl({"data", "inspect", "--format", "bp4d", "--root", "/x", "--aus", "1,x"});
  EXPECT_EQ(au.parse, kExitUsage);
  EXPECT_THAT(au.err, HasSubstr("'x' is not an AU number"));

  Outcome member = Malctl({"data", "inspect", "--format", "bp4d", "--root", "/x", "-o", "xml"});
  EXPECT_EQ(member.parse, kExitUsage);
  EXPECT_THAT(member.err, HasSubstr("--output"));

  Outcome none = Malctl({});
  EXPECT_EQ(none.parse, kExitUsage);
  EXPECT_THAT(none.err, HasSubstr("data"));  // the commands it has
}

TEST(CliTest, HelpGoesToStdoutWithExitZeroAndListsTheOptions) {
  Outcome help = Malctl({"data", "inspect", "--help"});
  EXPECT_EQ(help.parse, kExitOk);
  EXPECT_THAT(help.out, HasSubstr("--verify-images"));
  EXPECT_THAT(help.out, HasSubstr("--format"));
  EXPECT_EQ(help.exit_code, -1);
}

TEST(CliTest, CommandsRunAndSetTheirExitCode) {
  Outcome version = Malctl({"data", "synth", "--generator-version"});
  EXPECT_EQ(version.parse, std::nullopt);
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out, std::to_string(synth::kSynthFaceGenerator) + "\n");

  Outcome nothing = Malctl({"data", "synth"});  // neither --out nor --preview
  EXPECT_EQ(nothing.parse, std::nullopt);
  EXPECT_EQ(nothing.exit_code, kExitUsage);
  EXPECT_THAT(nothing.err, HasSubstr("--out"));

  Outcome absent = Malctl({"data", "inspect", "--format", "bp4d", "--root", "/nonexistent/bp4d"});
  EXPECT_EQ(absent.parse, std::nullopt);
  EXPECT_EQ(absent.exit_code, 1);
  EXPECT_THAT(absent.err, HasSubstr("/nonexistent/bp4d"));
}

}  // namespace
}  // namespace mal::cli
