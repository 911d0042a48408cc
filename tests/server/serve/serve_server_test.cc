#include "server/serve/serve_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/synth/face_renderer.h"
#include "common/util/grpc_channel.h"
#include "common/util/random.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
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

  // A link loop and a name beyond NAME_MAX made the file system throw while the name was marked
  // as loading: every later call of it waited for good. Each is asked twice.
  std::filesystem::create_symlink("loop", dir_ / "models/loop");
  for (const std::string& name :
       std::vector<std::string>{"nope", "../models/a", "", ".hidden", "loop", "loop",
                                std::string(300, 'x'), std::string(300, 'x')}) {
    req.set_model(name);
    grpc::Status s = Detect(req, &res);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << name;
  }
  // Over gRPC's 64 MiB message limit: refused before it reaches the service.
  req.set_model("a");
  req.mutable_images(0)->set_encoded(std::string(65 << 20, 'x'));
  EXPECT_EQ(Detect(req, &res).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// The same faces and AUs, probabilities within 1e-5: a request batched with others runs in a larger
// forward pass, whose kernels may sum in another order.
bool Close(const v1::DetectActionUnitsResponse& a, const v1::DetectActionUnitsResponse& b) {
  if (a.results_size() != b.results_size()) return false;
  for (int i = 0; i < a.results_size(); ++i) {
    if (a.results(i).faces_size() != b.results(i).faces_size()) return false;
    for (int f = 0; f < a.results(i).faces_size(); ++f) {
      const auto& x = a.results(i).faces(f);
      const auto& y = b.results(i).faces(f);
      if (x.aus_size() != y.aus_size()) return false;
      for (int k = 0; k < x.aus_size(); ++k) {
        if (std::abs(x.aus(k).probability() - y.aus(k).probability()) > 1e-5f) return false;
      }
    }
  }
  return true;
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
        if (Detect(req, &res).ok() && Close(res, reference)) ++same;
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

// A SynthFace face at (x, y) on a grey 320 x 240 frame, as a raw BGR frame.
v1::ImageInput FrameWithFace(int x, int y) {
  cv::Mat frame(240, 320, CV_8UC3, cv::Scalar(90, 90, 90));
  Rng rng(7);
  synth::FaceState state;
  state.identity = synth::RandomIdentity(rng);
  synth::RenderFace(state, 140).copyTo(frame(cv::Rect(x, y, 140, 140)));
  v1::ImageInput in;
  in.mutable_raw()->set_width(320);
  in.mutable_raw()->set_height(240);
  in.mutable_raw()->set_channels(3);
  in.mutable_raw()->set_pixels(
      std::string(reinterpret_cast<const char*>(frame.data), 320 * 240 * 3));
  return in;
}

TEST_F(ServeServerTest, StreamAnswersEveryFrameInOrderWithStableFaceIds) {
  Start();
  grpc::ClientContext ctx;
  auto stream = stub_->StreamActionUnits(&ctx);
  v1::StreamActionUnitsRequest first;
  first.set_model("a");
  ASSERT_TRUE(stream->Write(first));  // options only, no frame
  // A face drifting right, one unreadable frame in the middle, then the face again.
  for (int i = 0; i < 6; ++i) {
    v1::StreamActionUnitsRequest req;
    if (i == 3) {
      req.mutable_frame()->set_encoded("garbage");
    } else {
      *req.mutable_frame() = FrameWithFace(20 + 12 * i, 40);
    }
    ASSERT_TRUE(stream->Write(req));
    v1::StreamActionUnitsResponse res;
    ASSERT_TRUE(stream->Read(&res));  // one answer per frame, before the next is sent
    EXPECT_EQ(res.frame(), i);
    EXPECT_GE(res.latency_ms(), 0);
    if (i == 3) {
      EXPECT_EQ(res.result().code(), 3);
      continue;
    }
    ASSERT_EQ(res.result().faces_size(), 1) << "frame " << i;
    EXPECT_EQ(res.result().faces(0).face_id(), 0) << "frame " << i;
    EXPECT_EQ(res.result().faces(0).aus_size(), 4);
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());

  grpc::ClientContext ctx2;
  auto unknown = stub_->StreamActionUnits(&ctx2);
  first.set_model("nope");
  unknown->Write(first);
  unknown->WritesDone();
  v1::StreamActionUnitsResponse res;
  EXPECT_FALSE(unknown->Read(&res));
  EXPECT_EQ(unknown->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServeServerTest, OpenInferenceProtocolV2OnTheSamePort) {
  Start();
  auto oip = inference::GRPCInferenceService::NewStub(
      rpc::MakeChannel(absl::StrCat("127.0.0.1:", server_->port())));
  {
    grpc::ClientContext ctx;
    inference::ServerLiveResponse live;
    ASSERT_TRUE(oip->ServerLive(&ctx, inference::ServerLiveRequest(), &live).ok());
    EXPECT_TRUE(live.live());
  }
  for (auto [name, ready] : {std::pair{"a", true}, std::pair{"nope", false}}) {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest req;
    req.set_name(name);
    inference::ModelReadyResponse res;
    ASSERT_TRUE(oip->ModelReady(&ctx, req, &res).ok());
    EXPECT_EQ(res.ready(), ready) << name;
  }
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest req;
    req.set_name("a");
    inference::ModelMetadataResponse res;
    ASSERT_TRUE(oip->ModelMetadata(&ctx, req, &res).ok());
    ASSERT_EQ(res.inputs_size(), 2);
    EXPECT_EQ(res.inputs(1).name(), "PIXELS");
    EXPECT_EQ(res.inputs(1).shape(2), 32);
    EXPECT_EQ(res.outputs(0).shape(1), 4);
  }
  // BYTES: two encoded face crops; the same probabilities as mal's own RPC with face_crop.
  const std::string png1 = GreyPng(40, 60), png2 = GreyPng(50, 160);
  inference::ModelInferRequest infer;
  infer.set_model_name("a");
  infer.set_id("r1");
  auto* in = infer.add_inputs();
  in->set_name("IMAGES");
  in->set_datatype("BYTES");
  in->add_shape(2);
  in->mutable_contents()->add_bytes_contents(png1);
  in->mutable_contents()->add_bytes_contents(png2);
  inference::ModelInferResponse out;
  {
    grpc::ClientContext ctx;
    grpc::Status s = oip->ModelInfer(&ctx, infer, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(out.id(), "r1");
  EXPECT_EQ(out.parameters().at("aus").string_param(), "1,2,4,12");
  ASSERT_EQ(out.raw_output_contents_size(), 1);
  ASSERT_EQ(out.raw_output_contents(0).size(), 2 * 4 * sizeof(float));
  std::vector<float> probs(8);
  std::memcpy(probs.data(), out.raw_output_contents(0).data(), 8 * sizeof(float));
  v1::DetectActionUnitsRequest own;
  own.set_model("a");
  own.set_face_crop(true);
  own.add_images()->set_encoded(png1);
  own.add_images()->set_encoded(png2);
  v1::DetectActionUnitsResponse mine;
  ASSERT_TRUE(Detect(own, &mine).ok());
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j)
      EXPECT_NEAR(probs[i * 4 + j], mine.results(i).faces(0).aus(j).probability(), 1e-5);
  }
  // Raw BYTES (length-prefixed) give the same.
  infer.mutable_inputs(0)->clear_contents();
  std::string raw;
  for (const std::string* e : {&png1, &png2}) {
    const uint32_t n = static_cast<uint32_t>(e->size());
    raw.append(reinterpret_cast<const char*>(&n), 4);
    raw += *e;
  }
  infer.add_raw_input_contents(raw);
  inference::ModelInferResponse out_raw;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(oip->ModelInfer(&ctx, infer, &out_raw).ok());
  }
  EXPECT_EQ(out_raw.raw_output_contents(0), out.raw_output_contents(0));
  // Errors name what is wrong.
  infer.clear_raw_input_contents();
  infer.mutable_inputs(0)->mutable_contents()->add_bytes_contents("not an image");
  infer.mutable_inputs(0)->set_shape(0, 1);
  {
    grpc::ClientContext ctx;
    grpc::Status s = oip->ModelInfer(&ctx, infer, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("IMAGES"));
  }
  // An input of another name, or IMAGES as FP32, is named as such (it read as a shape error).
  for (const auto& [name, datatype, says] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"FOO", "BYTES", "input FOO: the inputs are IMAGES (BYTES [N]) and PIXELS"},
           {"IMAGES", "FP32", "IMAGES: datatype FP32, IMAGES is BYTES"}}) {
    inference::ModelInferRequest other = infer;
    other.mutable_inputs(0)->set_name(name);
    other.mutable_inputs(0)->set_datatype(datatype);
    grpc::ClientContext ctx;
    grpc::Status s = oip->ModelInfer(&ctx, other, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr(says));
  }
  // The pixel limit of DetectActionUnits (40 MP) holds here too, before decoding: an 8000 x 8000
  // PNG header.
  {
    std::vector<uchar> big;
    cv::imencode(".png", cv::Mat(8000, 8000, CV_8UC1, cv::Scalar(0)), big);
    inference::ModelInferRequest large = infer;
    large.mutable_inputs(0)->mutable_contents()->clear_bytes_contents();
    large.mutable_inputs(0)->mutable_contents()->add_bytes_contents(
        std::string(big.begin(), big.end()));
    grpc::ClientContext ctx;
    grpc::Status s = oip->ModelInfer(&ctx, large, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("8000x8000 px is over the limit of 40000000"));
  }
  infer.set_model_name("nope");
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(oip->ModelInfer(&ctx, infer, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // FP32 pixels of the wrong side.
  inference::ModelInferRequest pixels;
  pixels.set_model_name("a");
  auto* p = pixels.add_inputs();
  p->set_name("PIXELS");
  p->set_datatype("FP32");
  for (int64_t d : {1, 3, 16, 16}) p->add_shape(d);
  p->mutable_contents()->mutable_fp32_contents()->Resize(3 * 16 * 16, 0.f);
  {
    grpc::ClientContext ctx;
    grpc::Status s = oip->ModelInfer(&ctx, pixels, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("[N, 3, 32, 32]"));
  }
  for (int d : {2, 3}) p->set_shape(d, 32);
  p->mutable_contents()->mutable_fp32_contents()->Resize(3 * 32 * 32, 0.f);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(oip->ModelInfer(&ctx, pixels, &out).ok());
    EXPECT_EQ(out.outputs(0).shape(0), 1);
  }
  // A NaN among them came back as NaN probabilities with status OK.
  p->mutable_contents()->set_fp32_contents(7, std::nanf(""));
  {
    grpc::ClientContext ctx;
    grpc::Status s = oip->ModelInfer(&ctx, pixels, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("PIXELS: value 7 is nan"));
  }
}

TEST_F(ServeServerTest, ASecondServerOnAPortInUseIsRefusedNotShared) {
  Start();
  ServeServer::Options o;
  o.listen = absl::StrCat("127.0.0.1:", server_->port());
  o.model_dir = dir_ / "models";
  auto second = ServeServer::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ServeServerTest, StartRefusesADeviceItCannotUse) {
  testing::WriteTestModel(dir_ / "models/a", {1, 2}, 32, 36, 1);
  ServeServer::Options o;
  o.listen = "127.0.0.1:0";
  o.model_dir = dir_ / "models";
  o.device = "gpu7";
  auto server = ServeServer::Start(o);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("--device"));
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
