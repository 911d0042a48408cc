#include "common/spec/spec_paths.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/test_util.h"

namespace mal {
namespace {

using ::testing::HasSubstr;

v1::ExperimentSpec Spec(const std::string& au_root, const std::string& fe_root = "") {
  v1::ExperimentSpec spec;
  spec.mutable_data()->mutable_au()->set_root(au_root);
  if (!fe_root.empty()) spec.mutable_data()->mutable_fe()->set_root(fe_root);
  return spec;
}

std::string Refusal(const v1::ExperimentSpec& spec, const std::vector<std::string>& roots,
                    bool resolve_links = false) {
  absl::Status s = CheckSpecPaths(spec, roots, resolve_links);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  return std::string(s.message());
}

TEST(SpecPathsTest, NoRootsAllowsAnything) {
  EXPECT_TRUE(CheckSpecPaths(Spec("/etc"), {}, false).ok());
}

TEST(SpecPathsTest, PathsMustLieUnderARootLexically) {
  const std::vector<std::string> roots = *NormalizeDataRoots({"/data/", "/scratch/mal"}, false);
  EXPECT_EQ(roots, (std::vector<std::string>{"/data", "/scratch/mal"}));
  EXPECT_TRUE(CheckSpecPaths(Spec("/data/bp4d", "/scratch/mal/raf"), roots, false).ok());
  EXPECT_TRUE(CheckSpecPaths(Spec("/data"), roots, false).ok());

  EXPECT_THAT(Refusal(Spec("/etc"), roots), HasSubstr("data.au.root: /etc is outside the data "
                                                      "roots (/data, /scratch/mal)"));
  EXPECT_THAT(Refusal(Spec("/data/../etc"), roots), HasSubstr("data.au.root"));
  EXPECT_THAT(Refusal(Spec("/data2/x"), roots), HasSubstr("data.au.root"));
  EXPECT_THAT(Refusal(Spec("/data/bp4d", "/scratch/malware"), roots), HasSubstr("data.fe.root"));
  EXPECT_THAT(Refusal(Spec("../../etc"), roots), HasSubstr("data.au.root: '../../etc' must be "
                                                           "an absolute path"));

  v1::ExperimentSpec inside = Spec("/data/bp4d");
  inside.mutable_data()->mutable_au()->set_images("frames");
  EXPECT_TRUE(CheckSpecPaths(inside, roots, false).ok());
  inside.mutable_data()->mutable_au()->set_images("../../../etc");
  EXPECT_THAT(Refusal(inside, roots), HasSubstr("data.au.images: /data/bp4d/../../../etc"));
  inside.mutable_data()->mutable_au()->clear_images();
  inside.mutable_data()->mutable_au()->set_manifest("/etc/passwd");
  EXPECT_THAT(Refusal(inside, roots), HasSubstr("data.au.manifest"));
  inside.mutable_data()->mutable_au()->clear_manifest();
  inside.mutable_model()->set_pretrained("/data/../../../../etc/shadow");
  EXPECT_THAT(Refusal(inside, roots), HasSubstr("model.pretrained"));
  inside.mutable_model()->set_pretrained("/data/weights/resnet34.pt");
  EXPECT_TRUE(CheckSpecPaths(inside, roots, false).ok());
  inside.mutable_train()->set_fe_weights("/home/someone/mal-run/weights/epoch_012.csv");
  EXPECT_THAT(
      Refusal(inside, roots),
      HasSubstr("train.fe_weights: /home/someone/mal-run/weights/epoch_012.csv is outside"));
  inside.mutable_train()->set_fe_weights("weights/epoch_012.csv");
  EXPECT_THAT(Refusal(inside, roots), HasSubstr("train.fe_weights: 'weights/epoch_012.csv' must be "
                                                "an absolute path"));
  inside.mutable_train()->set_fe_weights("/scratch/mal/run-7/weights/epoch_012.csv");
  EXPECT_TRUE(CheckSpecPaths(inside, roots, false).ok());

  EXPECT_FALSE(NormalizeDataRoots({"data"}, false).ok());
  EXPECT_THAT(std::string(NormalizeDataRoots({"/no/such/dir"}, true).status().message()),
              HasSubstr("--data-root /no/such/dir: not an existing directory"));
}

// On a worker, which has the files, a symbolic link under a root that points outside is outside.
TEST(SpecPathsTest, ResolvedLinksCannotLeaveTheRoot) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir / "root/real");
  std::filesystem::create_directories(dir / "outside");
  std::filesystem::create_directory_symlink(dir / "outside", dir / "root/escape");
  const auto roots = *NormalizeDataRoots({dir / "root"}, true);
  EXPECT_TRUE(CheckSpecPaths(Spec(dir / "root/real"), roots, true).ok());
  EXPECT_TRUE(CheckSpecPaths(Spec(dir / "root/not-yet"), roots, true).ok());
  EXPECT_THAT(Refusal(Spec(dir / "root/escape"), roots, true), HasSubstr("resolves to"));
  // Lexically it looked inside.
  EXPECT_TRUE(CheckSpecPaths(Spec(dir / "root/escape"), roots, false).ok());
}

}  // namespace
}  // namespace mal
