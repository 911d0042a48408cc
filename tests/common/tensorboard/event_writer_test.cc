#include "common/tensorboard/event_writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>

#include "common/tensorboard/run_summaries.h"
#include "common/util/crc32c.h"
#include "common/util/files.h"
#include "tensorboard/event.pb.h"
#include "tests/test_util.h"

namespace mal::tensorboard {
namespace {

// RFC 3720 (iSCSI), appendix B.4.
TEST(Crc32cTest, MatchesThePublishedVectors) {
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
}

// Reads a TFRecord file back, checking both CRCs of every record.
std::vector<::tensorboard::Event> ReadRecords(const std::string& path) {
  const std::string data = *ReadFile(path);
  std::vector<::tensorboard::Event> out;
  size_t at = 0;
  auto u32 = [&](size_t p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(data[p + i]);
    return v;
  };
  while (at < data.size()) {
    EXPECT_LE(at + 12, data.size());
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(data[at + i]);
    EXPECT_EQ(u32(at + 8), MaskedCrc32c(data.substr(at, 8)));
    const std::string body = data.substr(at + 12, n);
    EXPECT_EQ(u32(at + 12 + n), MaskedCrc32c(body));
    ::tensorboard::Event e;
    EXPECT_TRUE(e.ParseFromString(body));
    out.push_back(e);
    at += 12 + n + 4;
  }
  return out;
}

TEST(EventWriterTest, WritesFramedScalarsAndHistogramsAtomically) {
  testing::TempDir dir;
  std::string path;
  {
    auto w = EventWriter::Create(dir / "run", /*atomic=*/true);
    ASSERT_TRUE(w.ok()) << w.status();
    path = (*w)->path();
    ASSERT_TRUE((*w)->AddScalar("loss/au", 3, 0.25).ok());
    ASSERT_TRUE((*w)->AddHistogram("fe_weight/happiness", 9, {0.1, 0.2, 0.2, 0.9}, 4).ok());
    EXPECT_FALSE(std::filesystem::exists(path));  // renamed into place at Close only
    ASSERT_TRUE((*w)->Close().ok());
  }
  EXPECT_THAT(path, ::testing::HasSubstr("/run/events.out.tfevents."));
  const auto events = ReadRecords(path);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].file_version(), "brain.Event:2");
  EXPECT_EQ(events[1].step(), 3);
  EXPECT_EQ(events[1].summary().value(0).tag(), "loss/au");
  EXPECT_FLOAT_EQ(events[1].summary().value(0).simple_value(), 0.25f);
  const auto& h = events[2].summary().value(0).histo();
  EXPECT_EQ(h.num(), 4);
  EXPECT_DOUBLE_EQ(h.min(), 0.1);
  EXPECT_DOUBLE_EQ(h.max(), 0.9);
  EXPECT_THAT(h.bucket(), ::testing::ElementsAre(3, 0, 0, 1));
  EXPECT_DOUBLE_EQ(h.bucket_limit(3), 0.9);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "run")) files += !e.path().empty();
  EXPECT_EQ(files, 1);  // no temporary file left
}

// A weights CSV becomes one histogram per expression and one of the AU weights; the meta net's
// per-frame AU weights get their own only where training applied something else (the AU mean).
TEST(RunSummariesTest, WeightsCsvHistogramsPerExpressionAndAuMetaWeightsOnlyWhereTheyDiffer) {
  const std::string header =
      "id,task,label,consistency,weight,normalized_weight,alignment,meta_weight\n";
  const std::string fe =
      "f1,fe,happiness,0.9,0.6,0.6,,0.6\nf2,fe,happiness,0.4,0.2,0.2,,0.2\n"
      "f3,fe,sadness,1.0,0.5,0.5,0.1,0.5\n";
  auto histograms = [&](const std::string& csv) {
    testing::TempDir dir;
    std::map<std::string, int64_t> counts;  // tag -> number of values
    auto w = EventWriter::Create(dir / "run", /*atomic=*/true);
    EXPECT_TRUE(w.ok()) << w.status();
    const std::string path = (*w)->path();
    EXPECT_TRUE(AddWeightsCsv(**w, csv, 7).ok());
    EXPECT_TRUE((*w)->Close().ok());
    for (const auto& e : ReadRecords(path)) {
      for (const auto& v : e.summary().value()) {
        EXPECT_EQ(e.step(), 7);
        counts[v.tag()] = static_cast<int64_t>(v.histo().num());
      }
    }
    return counts;
  };
  using ::testing::Pair;
  using ::testing::UnorderedElementsAre;
  // au_weighting: sample (meta_weight = weight), and a CSV from before the column.
  EXPECT_THAT(histograms(header + fe + "a1,au,,-1,0.3,0.3,,0.3\na2,au,,-1,0.7,0.7,,0.7\n"),
              UnorderedElementsAre(Pair("fe_weight/happiness", 2), Pair("fe_weight/sadness", 1),
                                   Pair("au_weight/all", 2)));
  EXPECT_THAT(histograms("id,task,label,consistency,weight\na1,au,,-1,0.3\nf3,fe,sadness,1,0.5\n"),
              UnorderedElementsAre(Pair("fe_weight/sadness", 1), Pair("au_weight/all", 1)));
  // task / task_in_base_step: every AU frame trained at the mean, the meta net's own values kept.
  EXPECT_THAT(histograms(header + fe + "a1,au,,-1,0.5,0.5,,0.3\na2,au,,-1,0.5,0.5,,0.7\n"),
              UnorderedElementsAre(Pair("fe_weight/happiness", 2), Pair("fe_weight/sadness", 1),
                                   Pair("au_weight/all", 2), Pair("au_meta_weight/all", 2)));
}

}  // namespace
}  // namespace mal::tensorboard
