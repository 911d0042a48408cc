#include "common/synth/synth_dataset.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "common/data/folds.h"
#include "common/data/reader.h"
#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal::synth {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

SynthOptions Small(const std::string& out) {
  SynthOptions o;
  o.out = out;
  o.au_subjects = 3;
  o.frames = 24;
  o.fe_subjects = 20;
  o.fe_images = 60;
  o.size = 48;
  o.threads = 2;
  return o;
}

std::map<std::string, std::string> Tree(const std::string& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) {
      files[fs::relative(e.path(), root).string()] = *ReadFile(e.path().string());
    }
  }
  return files;
}

TEST(SynthDatasetTest, RealReadersLoadItWithZeroSkips) {
  testing::TempDir dir;
  auto summary = GenerateSynthFace(Small(dir / "sf"));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->au_images, 72);
  EXPECT_EQ(summary->fe_images, 60);

  data::ReaderOptions o;
  o.root = dir / "sf";
  o.verify_images = true;
  auto au = data::LoadDataset("synthface", o, data::DataRole::kAu);
  ASSERT_TRUE(au.ok()) << au.status();
  EXPECT_EQ(au->samples.size(), 72u);
  EXPECT_EQ(au->report.total(), 0);
  // Nothing to warn of; the one note says how image names were matched to label frames.
  ASSERT_EQ(au->report.notes().size(), 1u);
  EXPECT_THAT(au->report.notes()[0],
              HasSubstr("image names of BP4D videos: label frame N is image N (the documented layout) in"));
  EXPECT_EQ(au->aus.size(), 12u);
  // Subjects come from the three standard BP4D parts, so the standard protocol runs.
  auto folds = data::MakeFolds(*au, data::FoldOptions{});
  ASSERT_TRUE(folds.ok()) << folds.status();
  EXPECT_EQ(folds->size(), 3u);

  auto fe = data::LoadDataset("synthface", o, data::DataRole::kFe);
  ASSERT_TRUE(fe.ok()) << fe.status();
  EXPECT_EQ(fe->samples.size(), 48u);  // 80% train
  EXPECT_EQ(fe->report.total(), 0);
  for (const auto& s : fe->samples) {
    EXPECT_GE(s.expression, 0);
    EXPECT_GT(s.consistency, 0);
  }
  o.root = dir / "sf/au";
  auto as_bp4d = data::LoadDataset("bp4d", o, data::DataRole::kAu);
  ASSERT_TRUE(as_bp4d.ok());
  EXPECT_EQ(as_bp4d->report.total(), 0);
}

TEST(SynthDatasetTest, LabelsAreTrueByConstruction) {
  testing::TempDir dir;
  ASSERT_TRUE(GenerateSynthFace(Small(dir / "sf")).ok());
  // synth_truth.csv has the intensities; the BP4D CSV says 1 exactly where intensity > 0.
  std::map<std::string, std::vector<std::string>> truth;
  std::ifstream in(dir / "sf/au/synth_truth.csv");
  std::string line;
  std::getline(in, line);
  const std::vector<std::string> header = absl::StrSplit(line, ',');
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    truth[f[0]] = f;
  }
  data::ReaderOptions o;
  o.root = dir / "sf";
  o.aus = {1, 2, 4, 6, 7, 9, 10, 12, 14, 15, 17, 23, 24, 25, 26};
  auto au = data::LoadDataset("synthface", o, data::DataRole::kAu);
  ASSERT_TRUE(au.ok());
  ASSERT_EQ(truth.size(), au->samples.size());
  for (const auto& s : au->samples) {
    const auto& t = truth.at(s.id);
    for (size_t k = 0; k < o.aus.size(); ++k) {
      const bool active = std::stod(t[k + 1]) > 0;
      ASSERT_EQ(s.au[k] == data::kAuPresent, active) << s.id << " AU" << o.aus[k];
    }
  }
}

// Each BP4D task elicits its own state and subjects talk and smile throughout, so the frame base
// rates are near BP4D's (AU6, 7, 10, 12, 14 in 35-60% of frames; AU1, 2, 4, 15, 23, 24 in 10-25%)
// and every AU of the 12 appears in most subjects, not in a few segments.
TEST(SynthDatasetTest, AuBaseRatesAreNearBp4dsAndEveryAuAppearsInMostSubjects) {
  testing::TempDir dir;
  SynthOptions o = Small(dir / "sf");
  o.au_subjects = 12;
  o.frames = 80;
  o.fe_images = 20;
  o.size = 32;
  ASSERT_TRUE(GenerateSynthFace(o).ok());
  data::ReaderOptions r;
  r.root = dir / "sf";
  auto au = data::LoadDataset("synthface", r, data::DataRole::kAu);
  ASSERT_TRUE(au.ok()) << au.status();
  ASSERT_EQ(au->aus, (std::vector<int>{1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24}));
  for (size_t k = 0; k < au->aus.size(); ++k) {
    int positives = 0;
    std::set<std::string> subjects;
    for (const auto& s : au->samples) {
      if (s.au[k] != data::kAuPresent) continue;
      ++positives;
      subjects.insert(s.subject);
    }
    const double rate = static_cast<double>(positives) / static_cast<double>(au->samples.size());
    const int a = au->aus[k];
    const bool frequent = a == 6 || a == 7 || a == 10 || a == 12 || a == 14;
    EXPECT_GE(rate, frequent ? 0.25 : 0.04) << "AU" << a;
    EXPECT_LE(rate, frequent ? 0.7 : 0.4) << "AU" << a;
    EXPECT_GE(subjects.size(), 8u) << "AU" << a << " appears in few subjects";
  }
}

TEST(SynthDatasetTest, DeterministicByteForByte) {
  testing::TempDir dir;
  ASSERT_TRUE(GenerateSynthFace(Small(dir / "a")).ok());
  SynthOptions b = Small(dir / "b");
  b.threads = 1;
  ASSERT_TRUE(GenerateSynthFace(b).ok());
  EXPECT_TRUE(Tree(dir / "a") == Tree(dir / "b"));
  SynthOptions c = Small(dir / "c");
  c.seed = 2;
  ASSERT_TRUE(GenerateSynthFace(c).ok());
  EXPECT_FALSE(Tree(dir / "a") == Tree(dir / "c"));
}

TEST(SynthDatasetTest, AmbiguousSamplesHaveLowerConsistency) {
  testing::TempDir dir;
  SynthOptions o = Small(dir / "sf");
  o.fe_images = 400;
  o.au_subjects = 1;
  o.frames = 1;
  o.ambiguous = 0.5;
  o.size = 32;
  ASSERT_TRUE(GenerateSynthFace(o).ok());
  std::ifstream in(dir / "sf/fe/synth_truth.csv");
  std::string line;
  std::getline(in, line);
  double sum[2] = {0, 0};
  int n[2] = {0, 0};
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    const int ambiguous = f[3] != "clear";
    sum[ambiguous] += std::stod(f[5]);
    ++n[ambiguous];
  }
  ASSERT_GT(n[0], 100);
  ASSERT_GT(n[1], 100);
  EXPECT_GT(sum[0] / n[0], sum[1] / n[1] + 0.15);
}

TEST(SynthDatasetTest, RefusesToOverwriteWithoutForceAndLeavesNoPartialDirectory) {
  testing::TempDir dir;
  testing::WriteText(dir / "sf/keep.txt", "mine");
  auto refused = GenerateSynthFace(Small(dir / "sf"));
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--force"));
  EXPECT_TRUE(fs::exists(dir / "sf/keep.txt"));
  SynthOptions o = Small(dir / "sf");
  o.force = true;
  ASSERT_TRUE(GenerateSynthFace(o).ok());
  EXPECT_FALSE(fs::exists(dir / "sf/keep.txt"));
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename(), "sf");
  }
  o.au_subjects = 0;
  auto bad = GenerateSynthFace(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--au-subjects"));
}

TEST(SynthDatasetTest, PreviewSheetIsAPng) {
  testing::TempDir dir;
  ASSERT_TRUE(WritePreviewSheet(dir / "sheet.png", 1, 64).ok());
  const std::string png = *ReadFile(dir / "sheet.png");
  EXPECT_EQ(png.substr(1, 3), "PNG");
}

}  // namespace
}  // namespace mal::synth
