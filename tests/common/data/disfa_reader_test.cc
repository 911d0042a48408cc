#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/data/reader.h"
#include "tests/test_util.h"

namespace mal::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

void WriteAu(const testing::TempDir& dir, const std::string& subject, int au,
             const std::vector<int>& intensities) {
  std::string text;
  for (size_t i = 0; i < intensities.size(); ++i) {
    absl::StrAppend(&text, i + 1, ",", intensities[i], "\n");
  }
  testing::WriteText(
      dir / absl::StrCat("ActionUnit_Labels/", subject, "/", subject, "_au", au, ".txt"), text);
}

TEST(DisfaReaderTest, ThresholdsIntensityAndMapsOneBasedLinesToZeroBasedFrames) {
  testing::TempDir dir;
  WriteAu(dir, "SN001", 1, {0, 1, 2, 5});
  WriteAu(dir, "SN001", 2, {3, 0, 0, 1});
  for (int f = 0; f < 4; ++f) testing::WriteImage(dir / absl::StrCat("SN001/", f, ".png"));
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1, 2};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 4u);
  EXPECT_EQ(index->samples[0].id, "SN001/0");
  EXPECT_THAT(index->samples[0].image, HasSubstr("SN001/0.png"));
  EXPECT_THAT(index->samples[0].au, ElementsAre(kAuAbsent, kAuPresent));  // 0, 3
  EXPECT_THAT(index->samples[1].au, ElementsAre(kAuAbsent, kAuAbsent));   // 1 is below 2
  EXPECT_THAT(index->samples[2].au, ElementsAre(kAuPresent, kAuAbsent));  // 2 is active
  EXPECT_THAT(index->samples[3].image, HasSubstr("SN001/3.png"));
}

// The field report: frames extracted with ffmpeg are named 1.jpg ... N.jpg. Assuming 0-based names
// read 24 frames with 2 AU1 positives as 22 frames with none. The naming is taken from the disk,
// per subject, and said in a note.
TEST(DisfaReaderTest, OneBasedImageNamesAreDetectedPerSubject) {
  testing::TempDir dir;
  std::vector<int> au1(24, 0);
  au1[22] = 3;  // frames 23 and 24 (1-based) are positive
  au1[23] = 4;
  WriteAu(dir, "SN001", 1, au1);
  WriteAu(dir, "SN002", 1, au1);
  for (int f = 1; f <= 24; ++f) testing::WriteImage(dir / absl::StrCat("SN001/", f, ".jpg"), 4);
  for (int f = 0; f < 24; ++f) testing::WriteImage(dir / absl::StrCat("SN002/", f, ".jpg"), 4);
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 48u);
  EXPECT_EQ(index->report.total(), 0);
  for (const std::string subject : {"SN001", "SN002"}) {
    int positives = 0;
    std::string last;
    for (const Sample& s : index->samples) {
      if (s.subject != subject) continue;
      positives += s.au[0] == kAuPresent;
      last = s.image;
    }
    EXPECT_EQ(positives, 2) << subject;
    EXPECT_THAT(last, HasSubstr(subject == "SN001" ? "SN001/24.jpg" : "SN002/23.jpg"));
  }
  ASSERT_EQ(index->report.notes().size(), 1u);
  EXPECT_EQ(index->report.notes()[0],
            "image names of DISFA subjects: label frame N is image N-1 (the documented layout) in "
            "1 of them, image N in 1 of them");
}

TEST(DisfaReaderTest, UnequalLineCountsSkipTheSubject) {
  testing::TempDir dir;
  WriteAu(dir, "SN002", 1, {0, 1, 2});
  WriteAu(dir, "SN002", 2, {0, 1});
  WriteAu(dir, "SN003", 1, {2});
  WriteAu(dir, "SN003", 2, {2});
  testing::WriteImage(dir / "SN003/0.jpg");
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1, 2};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->samples.size(), 1u);
  const auto& skip = index->report.skips().at("line_count_mismatch");
  EXPECT_EQ(skip.count, 3);  // the subject's frames, not one file
  EXPECT_THAT(skip.examples[0], HasSubstr("au1=3 au2=2); subject skipped (3 labelled frames)"));
}

TEST(DisfaReaderTest, MalformedLineNamesFileAndLine) {
  testing::TempDir dir;
  testing::WriteText(dir / "ActionUnit_Labels/SN001/SN001_au1.txt", "1,0\n2,seven\n3,9\n");
  testing::WriteImage(dir / "SN001/0.png");
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  const auto& skip = index->report.skips().at("malformed_line");
  EXPECT_EQ(skip.count, 2);
  EXPECT_THAT(skip.examples[0], HasSubstr("SN001_au1.txt:2"));
  EXPECT_THAT(skip.examples[1], HasSubstr("SN001_au1.txt:3: intensity 9 not in 0..5"));
}

TEST(DisfaReaderTest, AFrameListedTwiceKeepsTheFirstLine) {
  testing::TempDir dir;
  testing::WriteText(dir / "ActionUnit_Labels/SN001/SN001_au1.txt", "1,5\n1,0\n2,0\n");
  for (int f = 0; f < 2; ++f) testing::WriteImage(dir / absl::StrCat("SN001/", f, ".png"));
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 2u);
  EXPECT_EQ(index->samples[0].au[0], kAuPresent);  // 5, not the repeated 0
  EXPECT_THAT(index->report.skips().at("malformed_line").examples[0],
              HasSubstr("SN001_au1.txt:2: frame 1 is listed again"));
}

TEST(DisfaReaderTest, MissingAuFileIsReportedAndMasked) {
  testing::TempDir dir;
  WriteAu(dir, "SN001", 1, {3});
  testing::WriteImage(dir / "SN001/0.png");
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1, 26};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(index->samples[0].au, ElementsAre(kAuPresent, kAuUnknown));
  EXPECT_THAT(index->report.skips().at("missing_label_file").examples[0],
              HasSubstr("SN001_au26.txt"));
}

// Frames extracted with ffmpeg (1.jpg ...) by a run that stopped early: 1..8 for 10 labelled
// frames matches 8 at image N and 8 at N-1 (the documented naming, which the tie kept: every label
// one frame off). The same within the video's last 10% (1..9: 90%, enough to count as covering).
// The first image is the first labelled frame's under image N: that breaks the tie, and a note
// says so.
TEST(DisfaReaderTest, AnExtractionThatStoppedEarlyIsReadFromItsFirstImage) {
  for (int last : {8, 9}) {
    testing::TempDir dir;
    std::vector<int> au1(10, 0);
    au1[0] = 3;  // frame 1 only
    WriteAu(dir, "SN001", 1, au1);
    for (int f = 1; f <= last; ++f) testing::WriteImage(dir / absl::StrCat("SN001/", f, ".jpg"), 4);
    ReaderOptions o;
    o.root = dir.path();
    o.aus = {1};
    auto index = LoadDataset("disfa", o, DataRole::kAu);
    ASSERT_TRUE(index.ok()) << index.status();
    ASSERT_EQ(index->samples.size(), static_cast<size_t>(last));
    EXPECT_THAT(index->samples[0].image, HasSubstr("SN001/1.jpg"));
    EXPECT_EQ(index->samples[0].au[0], kAuPresent);
    EXPECT_EQ(index->samples[1].au[0], kAuAbsent);
    EXPECT_EQ(index->report.skips().at("missing_image").count, 10 - last);
    EXPECT_THAT(index->report.notes(),
                ::testing::Contains(HasSubstr(absl::StrCat(
                    "SN001: image names fit label frame N as image N (", last,
                    " of 10 frames) and as image N-1 (", last,
                    "); took image N: the first image, 1, is the first labelled frame's"))))
        << last;
  }
}

// macOS's archive folder is not a subject; SN013's labels find their frames under SN033 (one
// public list's name for the same subject), and the other way round, but not when both names
// have labels (two subjects: the frames are the one whose folder they are in).
TEST(DisfaReaderTest, SystemFoldersAreNotSubjectsAndSn013FindsSn033sFrames) {
  for (const auto& [labels, frames] : {std::pair{"SN013", "SN033"}, std::pair{"SN033", "SN013"}}) {
    testing::TempDir dir;
    WriteAu(dir, labels, 1, {0, 3});
    testing::WriteText(dir / "ActionUnit_Labels/__MACOSX/._SN013", "AppleDouble");
    testing::WriteText(dir / "ActionUnit_Labels/._SN001", "AppleDouble");
    for (int f = 0; f < 2; ++f) testing::WriteImage(dir / absl::StrCat(frames, "/", f, ".jpg"), 4);
    ReaderOptions o;
    o.root = dir.path();
    o.aus = {1};
    auto index = LoadDataset("disfa", o, DataRole::kAu);
    ASSERT_TRUE(index.ok()) << index.status();
    EXPECT_EQ(index->report.total(), 0) << labels;
    ASSERT_EQ(index->samples.size(), 2u) << labels;
    EXPECT_EQ(index->samples[0].subject, labels);
    EXPECT_THAT(index->samples[1].image, HasSubstr(absl::StrCat(frames, "/1.jpg")));
    EXPECT_EQ(index->samples[1].au[0], kAuPresent);

    WriteAu(dir, frames, 1, {2, 0});  // both names labelled: two subjects, one without frames
    auto both = LoadDataset("disfa", o, DataRole::kAu);
    ASSERT_TRUE(both.ok()) << both.status();
    ASSERT_EQ(both->samples.size(), 2u) << labels;
    EXPECT_EQ(both->samples[0].subject, frames);
  }
}

// An image folder that cannot be listed is said as such, not as every frame's missing image.
TEST(DisfaReaderTest, AnUnreadableImageFolderIsNamedOnce) {
  testing::TempDir dir;
  WriteAu(dir, "SN001", 1, {0, 3, 0});
  testing::WriteText(dir / "SN001", "not a folder");
  ReaderOptions o;
  o.root = dir.path();
  o.aus = {1};
  auto index = LoadDataset("disfa", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());  // no usable sample
  EXPECT_THAT(std::string(index.status().message()),
              HasSubstr("unreadable_image_directory x3 (e.g. " + (dir / "SN001") +
                        ": Not a directory (its 3 labelled frames skipped)"));
}

}  // namespace
}  // namespace mal::data
