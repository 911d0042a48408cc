// Runs the real malctl binary: generate SynthFace, inspect it and broken datasets.

#include <sys/wait.h>

#include <cstdio>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal {
namespace {

using ::testing::HasSubstr;

struct Result {
  int exit_code;
  std::string output;  // stdout and stderr
};

Result Malctl(const std::string& args) {
  const std::string cmd = testing::BinaryDir() + "/client/malctl " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  Result r{-1, ""};
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The field report: 3 training and 2 test images, of which inspect reported 3 and nothing else.
TEST(MalctlDataTest, InspectReportsEveryPartition) {
  testing::TempDir dir;
  std::string list;
  for (const char* name : {"train_00001", "train_00002", "train_00003", "test_0001", "test_0002"}) {
    list += std::string(name) + ".jpg 4\n";
    testing::WriteImage(dir / (std::string("Image/aligned/") + name + "_aligned.jpg"));
  }
  testing::WriteText(dir / "EmoLabel/list_patition_label.txt", list);
  Result text = Malctl("data inspect --format rafdb --root " + dir.path());
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_THAT(text.output, HasSubstr("samples   3 usable"));
  EXPECT_THAT(text.output, HasSubstr("partitions train 3 images (read), test 2 images (not read)"));
  Result all = Malctl("data inspect --format rafdb --split all --root " + dir.path() + " -o json");
  ASSERT_EQ(all.exit_code, 0) << all.output;
  EXPECT_THAT(all.output, HasSubstr("\"samples\": 5"));
  EXPECT_THAT(all.output, HasSubstr("\"name\": \"test\""));
  EXPECT_THAT(all.output, HasSubstr("\"entries\": 2,"));  // a JSON number, like every count
}

TEST(MalctlDataTest, SynthThenInspectAsJson) {
  testing::TempDir dir;
  Result synth = Malctl("data synth --out " + (dir / "sf") +
                        " --au-subjects 3 --frames 30 --fe-images 50 --fe-subjects 10 --size 48"
                        " --preview " + (dir / "sheet.png"));
  ASSERT_EQ(synth.exit_code, 0) << synth.output;
  EXPECT_THAT(synth.output, HasSubstr("images/s"));
  // The quickstart recognises an old cache by this number.
  Result version = Malctl("data synth --generator-version");
  ASSERT_EQ(version.exit_code, 0) << version.output;
  EXPECT_THAT(ReadFile(dir / "sf/synthface.txt").value_or(""), HasSubstr("generator " + version.output));

  Result json = Malctl("data inspect --format synthface --root " + (dir / "sf") + " -o json");
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_THAT(json.output, HasSubstr("\"samples\": 90"));
  EXPECT_THAT(json.output, HasSubstr("\"skipped\": 0"));
  EXPECT_THAT(json.output, HasSubstr("\"protocol\": \"standard\""));
  EXPECT_THAT(json.output, HasSubstr("\"test_subjects\""));

  Result fe = Malctl("data inspect --format rafdb --root " + (dir / "sf/fe"));
  ASSERT_EQ(fe.exit_code, 0) << fe.output;
  EXPECT_THAT(fe.output, HasSubstr("mean consistency"));

  Result kfold = Malctl("data inspect --format bp4d --root " + (dir / "sf/au") +
                        " --aus 1,2,4 --folds 3 --seed 7");
  ASSERT_EQ(kfold.exit_code, 0) << kfold.output;
  EXPECT_THAT(kfold.output, HasSubstr("folds (kfold)"));
  // Whole subjects as the reserve: 3 subjects in 3 folds leave 2 to train, too few to reserve 2.
  Result by_subject = Malctl("data inspect --format bp4d --root " + (dir / "sf/au") +
                             " --folds 3 --val-split subjects");
  ASSERT_EQ(by_subject.exit_code, 0) << by_subject.output;
  EXPECT_THAT(by_subject.output, HasSubstr("no folds: mal.val_split: subjects"));
  EXPECT_THAT(by_subject.output, HasSubstr("fold 1 has 2 training subject(s)"));
}

TEST(MalctlDataTest, InspectReportsBadLinesWithFileAndLine) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1,2\n1,1,0\n2,1\n");
  testing::WriteImage(dir / "F001/T1/1.jpg");
  Result r = Malctl("data inspect --format bp4d --root " + dir.path() + " --aus 1,2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("malformed_line"));
  EXPECT_THAT(r.output, HasSubstr("F001_T1.csv:3"));
  Result strict = Malctl("data inspect --format bp4d --root " + dir.path() + " --aus 1,2 --strict");
  EXPECT_EQ(strict.exit_code, 1);
  EXPECT_THAT(strict.output, HasSubstr("F001_T1.csv:3"));
}

TEST(MalctlDataTest, UsageAndMissingDataErrors) {
  EXPECT_EQ(Malctl("data inspect --format bp4d").exit_code, 2);
  EXPECT_EQ(Malctl("data inspect --format bp4d --root /x --bogus 1").exit_code, 2);
  Result missing = Malctl("data inspect --format bp4d --root /nonexistent/bp4d");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr("/nonexistent/bp4d"));
  Result format = Malctl("data inspect --format fer2013 --root /tmp");
  EXPECT_EQ(format.exit_code, 1);
  EXPECT_THAT(format.output, HasSubstr("unknown dataset format"));
  EXPECT_EQ(Malctl("nonsense").exit_code, 2);
  Result twice = Malctl("data inspect --format bp4d --root /x --aus 1,2,1");
  EXPECT_EQ(twice.exit_code, 2);
  EXPECT_THAT(twice.output, HasSubstr("AU1 listed twice"));
}

}  // namespace
}  // namespace mal
