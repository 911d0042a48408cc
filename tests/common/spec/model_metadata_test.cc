#include "common/spec/model_metadata.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mal {
namespace {

using ::testing::HasSubstr;

v1::ModelMetadata Valid() {
  v1::ModelMetadata m;
  m.set_format(kModelFormat);
  m.set_backbone("small_cnn");
  for (int au : {1, 2, 12}) m.add_aus(au);
  m.set_input(64);
  m.set_resize(72);
  for (float v : {0.485f, 0.456f, 0.406f}) m.add_mean(v);
  for (float v : {0.229f, 0.224f, 0.225f}) m.add_std(v);
  for (double t : {0.5, 0.4, 0.6}) m.add_thresholds(t);
  m.set_method("mal");
  m.mutable_spec()->set_name("exp");
  return m;
}

TEST(ModelMetadataTest, RoundTripsThroughJsonAndIgnoresUnknownFields) {
  const v1::ModelMetadata m = Valid();
  std::string json = ModelMetadataToJson(m);
  EXPECT_THAT(json, HasSubstr("\"format\": \"mal-model-v1\""));
  auto back = ParseModelMetadata(json, "model.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), m.SerializeAsString());
  json.insert(1, "\"written_by_a_newer_mal\": 3,");
  EXPECT_TRUE(ParseModelMetadata(json, "model.json").ok());
}

TEST(ModelMetadataTest, MissingThresholdsBecomeOneHalf) {
  v1::ModelMetadata m = Valid();
  m.clear_thresholds();
  auto back = ParseModelMetadata(ModelMetadataToJson(m), "m.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->thresholds_size(), 3);
  EXPECT_EQ(back->thresholds(2), 0.5);
}

TEST(ModelMetadataTest, ErrorsNameTheSourceAndTheField) {
  auto expect_error = [](const v1::ModelMetadata& m, const std::string& field) {
    auto parsed = ParseModelMetadata(ModelMetadataToJson(m), "/models/x/model.json");
    ASSERT_FALSE(parsed.ok()) << field;
    EXPECT_THAT(std::string(parsed.status().message()),
                HasSubstr("/models/x/model.json: " + field));
  };
  v1::ModelMetadata m = Valid();
  m.set_format("other");
  expect_error(m, "format");
  m = Valid();
  m.clear_aus();
  expect_error(m, "aus");
  m = Valid();
  m.set_aus(0, 120);
  expect_error(m, "aus");
  m = Valid();
  m.set_aus(1, 1);
  expect_error(m, "aus: AU1 listed twice");  // two AU01_p columns in predict's CSV
  m = Valid();
  m.set_backbone("vit");
  expect_error(m, "backbone: \"vit\" is not one of small_cnn, resnet18, resnet34");
  m = Valid();
  m.set_input(60000);
  m.set_resize(60000);
  expect_error(m, "input: 60000 px: 8..1024");  // one image's tensor alone is 43 GB
  m = Valid();
  m.set_resize(4096);
  expect_error(m, "resize");
  m = Valid();
  m.set_resize(32);
  expect_error(m, "resize");
  m = Valid();
  m.set_std(1, 0);
  expect_error(m, "std");
  m = Valid();
  m.set_feature_grid(-1);
  expect_error(m, "feature_grid");
  m = Valid();
  m.add_thresholds(0.5);
  expect_error(m, "thresholds");
  m = Valid();
  m.set_thresholds(0, 1.5);
  expect_error(m, "thresholds");
  auto garbage = ParseModelMetadata("{not json", "m.json");
  ASSERT_FALSE(garbage.ok());
  EXPECT_THAT(std::string(garbage.status().message()), HasSubstr("m.json"));
  EXPECT_EQ(ReadModelMetadata("/nonexistent/model.json").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace mal
