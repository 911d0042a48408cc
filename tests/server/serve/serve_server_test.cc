#include "server/serve/serve_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <opencv2/imgcodecs.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/util/grpc_channel.h"
#include "mal/v1/inference.grpc.pb.h"
#include "tests/test_util.h"
#include "tests/worker/engine/model_fixture.h"

namespace mal::serve {
namespace {

using ::testing::HasSubstr;

std::string GreyPng(int size, int value) {
  std::vector<uchar> bytes;
  cv::imencode(".png", cv::Mat(size, size, CV_8UC3, cv::Scalar(value, value, value)), bytes);
  return std::string(bytes.begin(), bytes.end());
}

class ServeServerTest : public ::testing::Test {
 protected:
  void Start(int64_t memory_budget = int64_t{1} << 30) {
    testing::WriteTestModel(dir_ / "models/a", {1, 2, 4, 12}, 32, 36, 1);
    testing::WriteTestModel(dir_ / "models/b", {6, 12}, 32, 36, 2);
    ServeServer::Options o;
    o.listen = "127.0.0.1:0";
    o.model_dir = dir_ / "models";
    o.memory_budget = memory_budget;
    auto server = ServeServer::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = v1::Inference::NewStub(rpc::MakeChannel(absl::StrCat("127.0.0.1:", server_->port())));
  }
  grpc::Status Detect(const v1::DetectActionUnitsRequest& req, v1::DetectActionUnitsResponse* res) {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, std::chrono::seconds(30));
    return stub_->DetectActionUnits(&ctx, req, res);
  }
  v1::ListModelsResponse List() {
    v1::ListModelsResponse out;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->ListModels(&ctx, v1::ListModelsRequest(), &out).ok());
    return out;
  }
  testing::TempDir dir_;
  std::unique_ptr<ServeServer> server_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(ServeServerTest, DetectsListsAndRefusesUnknownModels) {
  Start();
  v1::DetectActionUnitsRequest req;
  req.set_model("a");
  req.set_face_crop(true);
  req.add_images()->set_encoded(GreyPng(48, 100));
  v1::DetectActionUnitsResponse res;
  ASSERT_TRUE(Detect(req, &res).ok());
  ASSERT_EQ(res.results(0).faces_size(), 1);
  EXPECT_EQ(res.results(0).faces(0).aus_size(), 4);

  v1::ListModelsResponse list = List();
  ASSERT_EQ(list.models_size(), 2);
  EXPECT_EQ(list.models(0).name(), "a");
  EXPECT_TRUE(list.models(0).loaded());
  EXPECT_FALSE(list.models(1).loaded());
  EXPECT_EQ(list.models(1).metadata().aus_size(), 2);

  for (const char* name : {"nope", "../models/a", "", ".hidden"}) {
    req.set_model(name);
    grpc::Status s = Detect(req, &res);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << name;
  }
  // Over gRPC's 64 MiB message limit: refused before it reaches the service.
  req.set_model("a");
  req.mutable_images(0)->set_encoded(std::string(65 << 20, 'x'));
  EXPECT_EQ(Detect(req, &res).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ServeServerTest, ManyClientsAtOnceGetTheSameAnswers) {
  Start();
  v1::DetectActionUnitsRequest req;
  req.set_model("a");
  req.set_face_crop(true);
  for (int i = 0; i < 4; ++i) req.add_images()->set_encoded(GreyPng(40 + 8 * i, 30 * i));
  v1::DetectActionUnitsResponse reference;
  ASSERT_TRUE(Detect(req, &reference).ok());
  std::vector<std::thread> clients;
  std::atomic<int> same{0};
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&] {
      for (int k = 0; k < 4; ++k) {
        v1::DetectActionUnitsResponse res;
        if (Detect(req, &res).ok() && res.SerializeAsString() == reference.SerializeAsString())
          ++same;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(same.load(), 32);
}

TEST_F(ServeServerTest, PastTheMemoryBudgetTheLeastRecentlyUsedModelIsDropped) {
  Start(/*memory_budget=*/1);  // room for one model at a time
  v1::DetectActionUnitsRequest req;
  req.set_face_crop(true);
  req.add_images()->set_encoded(GreyPng(40, 50));
  v1::DetectActionUnitsResponse res;
  req.set_model("a");
  ASSERT_TRUE(Detect(req, &res).ok());
  req.set_model("b");
  ASSERT_TRUE(Detect(req, &res).ok());
  v1::ListModelsResponse list = List();
  EXPECT_FALSE(list.models(0).loaded());
  EXPECT_TRUE(list.models(1).loaded());
  req.set_model("a");  // loaded again on demand
  ASSERT_TRUE(Detect(req, &res).ok());
  EXPECT_EQ(res.results(0).faces(0).aus_size(), 4);
}

TEST_F(ServeServerTest, StartRefusesAMissingModelDirectory) {
  ServeServer::Options o;
  o.listen = "127.0.0.1:0";
  o.model_dir = dir_ / "absent";
  auto server = ServeServer::Start(o);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("absent"));
}

}  // namespace
}  // namespace mal::serve
