#include <gmock/gmock.h>
#include <sys/stat.h>

#include <filesystem>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/data/reader.h"
#include "tests/test_util.h"

namespace mal::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A BP4D tree: columns deliberately out of numeric order (map by header name, never position),
// one zero-padded image name and one not, an unknown (9) label, a malformed line, a missing image.
class Bp4dReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteText(dir_ / "AUCoding/AU_OCC/F001_T1.csv",
                       "0,2,1,4,40\n"
                       "732,1,0,0,9\n"
                       "733,0,1,9,9\n"
                       "734,1,1\n"
                       "735,0,0,0,9\n");
    testing::WriteImage(dir_ / "F001/T1/0732.jpg");
    testing::WriteImage(dir_ / "F001/T1/733.jpg");
    testing::WriteText(dir_ / "AUCoding/AU_OCC/M001_T2.csv", "0,1,2,4\n10,1,1,1\n");
    testing::WriteImage(dir_ / "M001/T2/10.png");
  }
  ReaderOptions Options() {
    ReaderOptions o;
    o.root = dir_.path();
    o.aus = {1, 2, 4};
    return o;
  }
  testing::TempDir dir_;
};

TEST_F(Bp4dReaderTest, MapsColumnsByHeaderAndResolvesPaddedAndUnpaddedNames) {
  auto index = LoadDataset("bp4d", Options(), DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 3u);
  const Sample& a = index->samples[0];
  EXPECT_EQ(a.id, "F001/T1/732");
  EXPECT_EQ(a.subject, "F001");
  EXPECT_THAT(a.au, ElementsAre(kAuAbsent, kAuPresent, kAuAbsent));  // AU1=0, AU2=1, AU4=0
  EXPECT_THAT(a.image, HasSubstr("F001/T1/0732.jpg"));
  const Sample& b = index->samples[1];
  EXPECT_THAT(b.au, ElementsAre(kAuPresent, kAuAbsent, kAuUnknown));  // 9 is masked
  EXPECT_THAT(b.image, HasSubstr("F001/T1/733.jpg"));
  EXPECT_EQ(index->samples[2].subject, "M001");
}

TEST_F(Bp4dReaderTest, ReportsEverySkipWithFileAndLine) {
  auto index = LoadDataset("bp4d", Options(), DataRole::kAu);
  ASSERT_TRUE(index.ok());
  const auto& skips = index->report.skips();
  ASSERT_TRUE(skips.count("malformed_line"));
  EXPECT_EQ(skips.at("malformed_line").count, 1);
  EXPECT_THAT(skips.at("malformed_line").examples[0], HasSubstr("F001_T1.csv:4"));
  ASSERT_TRUE(skips.count("missing_image"));
  EXPECT_THAT(skips.at("missing_image").examples[0], HasSubstr("F001_T1.csv:5: frame 735"));
  EXPECT_EQ(index->report.total(), 2);
}

TEST_F(Bp4dReaderTest, StrictFailsAtFirstProblem) {
  ReaderOptions o = Options();
  o.strict = true;
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("F001_T1.csv:4"));
}

TEST_F(Bp4dReaderTest, DropPolicyDropsFramesWithUnknownLabels) {
  ReaderOptions o = Options();
  o.drop_unknown_au = true;
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->samples.size(), 2u);
  EXPECT_EQ(index->report.skips().at("unknown_au_label").count, 1);
  EXPECT_THAT(index->report.skips().at("unknown_au_label").examples[0],
              HasSubstr("F001_T1.csv:3: F001/T1/733: an AU is unknown"));
  // Dropping them is the policy asked for, not a bad line: strict reading fails at line 4, the
  // malformed one, not at line 3.
  o.strict = true;
  auto strict = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_FALSE(strict.ok());
  EXPECT_THAT(std::string(strict.status().message()), HasSubstr("F001_T1.csv:4"));
}

TEST_F(Bp4dReaderTest, MissingAuColumnIsMaskedAndNoted) {
  ReaderOptions o = Options();
  o.aus = {1, 12};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->samples[0].au[1], kAuUnknown);
  EXPECT_THAT(index->report.notes(), ::testing::Contains(HasSubstr("AU12 has no column")));
}

TEST_F(Bp4dReaderTest, UnreadableImageIsReportedWithVerify) {
  testing::WriteText(dir_ / "M001/T2/10.png", "not an image");
  ReaderOptions o = Options();
  o.verify_images = true;
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->report.skips().at("unreadable_image").count, 1);
  // M001 now has no usable frame at all.
  EXPECT_EQ(index->report.skips().at("empty_subject").count, 1);
}

TEST(Bp4dReaderLayoutTest, TrailingSeparatorsInHeaderOrRowsAreNotErrors) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1,2,\n5,1,0\n6,0,1,\n7,1\n");
  for (int f : {5, 6, 7}) testing::WriteImage(dir / ("F001/T1/" + std::to_string(f) + ".jpg"));
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1, 2};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->samples.size(), 2u);
  EXPECT_THAT(index->samples[1].au, ElementsAre(kAuAbsent, kAuPresent));
  // Frame 7 lacks the AU2 column: that is still malformed.
  EXPECT_THAT(index->report.skips().at("malformed_line").examples[0], HasSubstr("F001_T1.csv:4"));
}

TEST(Bp4dReaderErrorsTest, MissingLabelDirectoryNamesPath) {
  testing::TempDir dir;
  ReaderOptions o;
  o.root = dir.path();
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("AUCoding/AU_OCC"));
}

TEST(Bp4dReaderErrorsTest, NothingUsableIsAnErrorWithReasons) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n5,1\n");
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("missing_image"));
}

// Frames re-extracted from the videos with 0-based names (start_number 0): the same silent offset
// as in DISFA must not happen here either.
TEST(Bp4dNamingTest, ZeroBasedReExtractedFramesAreDetected) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n1,0\n2,0\n3,1\n4,0\n");
  for (int f = 0; f < 4; ++f) testing::WriteImage(dir / absl::StrCat("F001/T1/", f, ".jpg"), 4, 10 * f);
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 4u);
  EXPECT_THAT(index->samples[2].image, HasSubstr("F001/T1/2.jpg"));  // label frame 3
  EXPECT_EQ(index->samples[2].au[0], kAuPresent);
  ASSERT_FALSE(index->report.notes().empty());
  EXPECT_THAT(index->report.notes().back(), HasSubstr("label frame N is image N-1 in 1"));
}

TEST(Bp4dLabelFileTest, RepeatedFramesCrOnlyFilesEmptyRowsAndHeaderOnlyFiles) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n1,1\n1,0\n,,\n2,0\n");
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T2.csv", "0,1\r1,1\r2,0\r");  // Excel for Mac
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T3.csv", "0,1\n");
  for (const char* t : {"T1", "T2", "T3"}) {
    for (int f = 1; f <= 2; ++f) testing::WriteImage(dir / absl::StrCat("F001/", t, "/", f, ".jpg"));
  }
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 4u);  // T1's 2 frames, T2's 2 frames
  EXPECT_EQ(index->samples[0].id, "F001/T1/1");
  EXPECT_EQ(index->samples[0].au[0], kAuPresent);  // the first line of frame 1
  EXPECT_EQ(index->samples[3].id, "F001/T2/2");
  const auto& skips = index->report.skips();
  EXPECT_THAT(skips.at("duplicate_frame").examples[0],
              HasSubstr("F001_T1.csv:3: frame 1 is listed again (first at line 2)"));
  EXPECT_FALSE(skips.count("malformed_line"));  // ",," is an emptied row
  EXPECT_THAT(skips.at("empty_label_file").examples[0], HasSubstr("F001_T3.csv: a header and no"));
  std::filesystem::create_directories(dir / "AUCoding/AU_OCC/F002_T1.csv");  // unpacked too deep
  auto again = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->report.skips().at("unreadable_label_file").examples[0],
              HasSubstr("F002_T1.csv: is a directory"));
  o.strict = true;
  EXPECT_FALSE(LoadDataset("bp4d", o, DataRole::kAu).ok());
}

// A folder of every other frame: each offset matches about half the labels, and an edge frame
// must not shift them all by one (frames 644..648 with images 643, 645, 647 matched 3 of 5 at -1).
TEST(Bp4dNamingTest, ASparseImageFolderKeepsTheDocumentedNaming) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n644,0\n645,1\n646,0\n647,1\n648,0\n");
  for (int f : {643, 645, 647}) testing::WriteImage(dir / absl::StrCat("F001/T1/", f, ".jpg"));
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 2u);
  EXPECT_EQ(index->samples[0].id, "F001/T1/645");
  EXPECT_EQ(index->samples[0].au[0], kAuPresent);
  EXPECT_THAT(index->samples[0].image, HasSubstr("F001/T1/645.jpg"));
}

// What unpacking on a Mac or a stray pipe leaves in AU_OCC is passed over (a pipe would block the
// read for good), and a label file without a header, with another separator or in UTF-16 says so.
TEST(Bp4dLabelFileTest, SystemFilesPipesAndHeaderlessFilesAreNamedOrPassedOver) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n1,1\n");
  testing::WriteImage(dir / "F001/T1/1.jpg");
  testing::WriteText(dir / "AUCoding/AU_OCC/._F001_T1.csv", std::string("\0\5\26\7", 4));
  testing::WriteText(dir / "AUCoding/AU_OCC/.DS_Store", "x");
  ASSERT_EQ(::mkfifo((dir / "AUCoding/AU_OCC/F002_T1.csv").c_str(), 0600), 0);
  testing::WriteText(dir / "AUCoding/AU_OCC/F003_T1.csv", "1,0,1,9,9,9\n2,0,0,9,9,9\n");
  testing::WriteText(dir / "AUCoding/AU_OCC/F004_T1.csv", "0;1;2\n1;0;1\n");
  testing::WriteText(dir / "AUCoding/AU_OCC/F005_T1.csv", std::string("\xff\xfe" "0\0,\0" "1\0\n\0", 10));
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 1u);
  const auto& skips = index->report.skips();
  ASSERT_TRUE(skips.count("malformed_header"));
  const auto& bad = skips.at("malformed_header");
  EXPECT_EQ(bad.count, 3);
  ASSERT_EQ(bad.examples.size(), 3u);
  EXPECT_THAT(bad.examples[0], HasSubstr("F003_T1.csv:1: column '9' is named twice: the first line "
                                         "looks like a frame's labels, and the file has no header"));
  EXPECT_THAT(bad.examples[1], HasSubstr("F004_T1.csv:1: no frame column (named 0 or frame); the "
                                         "header is one field: are the columns separated by ';'?"));
  EXPECT_THAT(bad.examples[2], HasSubstr("F005_T1.csv:1: no frame column (named 0 or frame); the "
                                         "file is UTF-16 text"));
  EXPECT_FALSE(skips.count("unrecognised_label_file"));  // "._F001_T1.csv" is not a subject "."
  ASSERT_TRUE(skips.count("unreadable_label_file"));      // the pipe: said, not read
  EXPECT_THAT(skips.at("unreadable_label_file").examples[0],
              HasSubstr("F002_T1.csv: not a regular file (a named pipe, socket or device)"));
}

TEST(Bp4dLabelFileTest, AFolderWithoutLabelFilesSaysWhatItHolds) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.xlsx", "x");
  ReaderOptions o;
  o.root = dir.path();
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()),
              HasSubstr("AU_OCC: no <Subject>_<Task>.csv label file there (1 other file(s), e.g. "
                        "F001_T1.xlsx)"));
}

// An image folder that exists but cannot be listed: said once with the reason, not as a missing
// image per frame (here a file where the folder should be; a folder without read permission is
// the same path, which a test running as root cannot show).
TEST(Bp4dNamingTest, AnUnlistableImageFolderIsNamedWithItsReason) {
  testing::TempDir dir;
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n1,1\n2,0\n");
  testing::WriteText(dir / "AUCoding/AU_OCC/F001_T2.csv", "0,1\n1,1\n");
  testing::WriteText(dir / "F001/T1", "a file");
  testing::WriteImage(dir / "F001/T2/1.jpg");
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("bp4d", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->samples.size(), 1u);
  const auto& skips = index->report.skips();
  EXPECT_FALSE(skips.count("missing_image"));
  ASSERT_TRUE(skips.count("unreadable_image_directory"));
  EXPECT_EQ(skips.at("unreadable_image_directory").count, 2);
  EXPECT_THAT(skips.at("unreadable_image_directory").examples[0],
              HasSubstr("F001/T1: Not a directory (its 2 labelled frames skipped)"));
}

}  // namespace
}  // namespace mal::data
