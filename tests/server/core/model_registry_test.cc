#include "server/core/model_registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace mal::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ModelRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = StateStore::Open(dir_ / "state.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto id = store_->CreateExperiment("", "bp4d-mal", "spec", 1, 3);
    ASSERT_TRUE(id.ok()) << id.status();
    // Three versions of bp4d-mal (folds 1, 2 and the final fit), one of another model.
    for (int fold : {1, 2, 0}) Register("bp4d-mal", *id, fold);
    Register("other", *id, 1);
  }
  void Register(const std::string& name, const std::string& experiment, int fold) {
    ModelRow m;
    m.name = name;
    m.experiment_id = experiment;
    m.fold = fold;
    m.test_mean_f1 = 0.5 + fold / 10.0;
    m.artifact = "/var/lib/mal/artifacts/" + name + "/model.pt";
    m.metadata = "{}";
    ASSERT_TRUE(store_->RegisterModel(m).ok());
  }

  testing::TempDir dir_;
  std::unique_ptr<StateStore> store_;
};

TEST_F(ModelRegistryTest, ResolvesNamesVersionsAndAliases) {
  ModelRegistry registry(store_.get());
  auto newest = registry.Get("bp4d-mal");
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ(newest->version(), 3);
  EXPECT_EQ(newest->fold(), 0);
  EXPECT_EQ(registry.Get("bp4d-mal@latest")->version(), 3);
  EXPECT_EQ(registry.Get("bp4d-mal:1")->fold(), 1);

  auto set = registry.SetAlias("bp4d-mal:2", "champion");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT(set->aliases(), ElementsAre("champion"));
  EXPECT_EQ(registry.Get("bp4d-mal@champion")->version(), 2);
  // Moving the alias.
  ASSERT_TRUE(registry.SetAlias("bp4d-mal:1", "champion").ok());
  EXPECT_EQ(registry.Get("bp4d-mal@champion")->version(), 1);
  EXPECT_TRUE(registry.Get("bp4d-mal:2")->aliases().empty());

  auto list = registry.List("");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->models_size(), 4);
  EXPECT_EQ(list->models(0).name(), "bp4d-mal");
  EXPECT_THAT(list->models(0).aliases(), ElementsAre("champion"));
  EXPECT_EQ(list->models(3).name(), "other");
  EXPECT_EQ(registry.List("other")->models_size(), 1);
}

TEST_F(ModelRegistryTest, ErrorsNameWhatIsMissing) {
  ModelRegistry registry(store_.get());
  auto unknown = registry.Get("nope");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("\"nope\""));
  auto no_version = registry.Get("bp4d-mal:9");
  EXPECT_THAT(std::string(no_version.status().message()), HasSubstr("bp4d-mal:9"));
  auto no_alias = registry.Get("bp4d-mal@prod");
  EXPECT_EQ(no_alias.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(no_alias.status().message()), HasSubstr("no alias \"prod\""));
  EXPECT_EQ(registry.Get("a/b").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.SetAlias("bp4d-mal", "latest").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.SetAlias("bp4d-mal:9", "prod").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.DeleteAlias("bp4d-mal", "prod").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.List("bp4d-mal:1").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelRegistryTest, DeleteRemovesAVersionAndItsAliasesAndNeverReusesItsNumber) {
  ModelRegistry registry(store_.get());
  ASSERT_TRUE(registry.SetAlias("bp4d-mal:3", "champion").ok());
  ASSERT_TRUE(registry.SetAlias("bp4d-mal:3", "staging").ok());
  // A bare name is refused: a typo must not delete the newest version.
  EXPECT_EQ(registry.Delete("bp4d-mal").status().code(), absl::StatusCode::kInvalidArgument);
  auto deleted = registry.Delete("bp4d-mal@champion");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->version(), 3);
  EXPECT_THAT(deleted->aliases(), ElementsAre("champion", "staging"));
  EXPECT_EQ(registry.Get("bp4d-mal:3").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.Get("bp4d-mal@staging").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.Get("bp4d-mal")->version(), 2);  // the newest left
  EXPECT_EQ(registry.Delete("bp4d-mal:3").status().code(), absl::StatusCode::kNotFound);
  // The next registration is version 4, not 3 again: caches keyed by NAME:VERSION stay right.
  Register("bp4d-mal", registry.Get("bp4d-mal")->experiment_id(), 0);
  EXPECT_EQ(registry.Get("bp4d-mal")->version(), 4);
  // The experiment's own list keeps the deleted row only when asked (model registration runs
  // once per experiment, also after a restart).
  const std::string experiment = registry.Get("bp4d-mal")->experiment_id();
  EXPECT_EQ(store_->Models(experiment)->size(), 4u);
  EXPECT_EQ(store_->Models(experiment, /*include_deleted=*/true)->size(), 5u);
}

TEST_F(ModelRegistryTest, AliasesSurviveReopen) {
  {
    ModelRegistry registry(store_.get());
    ASSERT_TRUE(registry.SetAlias("bp4d-mal:2", "champion").ok());
  }
  store_.reset();
  auto store = StateStore::Open(dir_ / "state.db");
  ASSERT_TRUE(store.ok());
  ModelRegistry registry(store->get());
  EXPECT_EQ(registry.Get("bp4d-mal@champion")->version(), 2);
  auto file = registry.ModelFile("bp4d-mal@champion");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->first, "/var/lib/mal/artifacts/bp4d-mal/model.pt");
  EXPECT_EQ(file->second.artifact(), "bp4d-mal/model.pt");  // clients see store-relative names
}

// A data directory copied or restored elsewhere: the rows still hold the old absolute paths, and
// the files are read under the artifact store's directory of now.
TEST_F(ModelRegistryTest, ModelFilesAreFoundUnderTheArtifactStoreOfNow) {
  ModelRegistry registry(store_.get(), "/srv/mal2/artifacts");
  auto file = registry.ModelFile("bp4d-mal:1");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->first, "/srv/mal2/artifacts/bp4d-mal/model.pt");
}

}  // namespace
}  // namespace mal::server
