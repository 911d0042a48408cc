#include "common/predict/predict.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <csignal>
#include <filesystem>
#include <opencv2/videoio.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/predict/predict_command.h"
#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal::predict {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// A backend that answers one face per readable image (AU1 p 0.8, AU2 p 0.2), an error in the slot
// of an image whose bytes are "bad", and records the requests.
struct FakeBackend {
  std::vector<v1::DetectActionUnitsRequest> requests;
  absl::Status fail;
  int max_images = 0;  // > 0: more images in a request are refused, as mal-serve's --max-images

  Backend AsBackend() {
    return [this](const v1::DetectActionUnitsRequest& r)
               -> absl::StatusOr<v1::DetectActionUnitsResponse> {
      requests.push_back(r);
      if (!fail.ok()) return fail;
      if (max_images > 0 && r.images_size() > max_images) {
        return absl::ResourceExhaustedError(
            absl::StrCat(r.images_size(), " images in one request: at most ", max_images));
      }
      v1::DetectActionUnitsResponse out;
      out.add_aus(1);
      out.add_aus(2);
      for (const v1::ImageInput& in : r.images()) {
        v1::ImageResult* res = out.add_results();
        res->set_id(in.id());
        if (in.encoded() == "bad") {
          res->set_code(3);
          res->set_message(in.id() + ": not a decodable image");
          continue;
        }
        v1::FaceResult* f = res->add_faces();
        f->set_success(true);
        f->set_confidence(0.9f);
        f->mutable_box()->set_width(10);
        f->mutable_box()->set_height(10);
        for (auto [au, p] : {std::pair{1, 0.8f}, std::pair{2, 0.2f}}) {
          v1::AuPrediction* a = f->add_aus();
          a->set_au(au);
          a->set_probability(p);
          a->set_present(p >= 0.5f);
        }
      }
      return out;
    };
  }
};

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

TEST(PredictTest, ImagesAndDirectoriesInBatchesToOpenFaceStyleCsv) {
  testing::TempDir dir;
  testing::WriteImage(dir / "faces/b.jpg");
  testing::WriteImage(dir / "faces/a.png");
  testing::WriteText(dir / "faces/notes.txt", "not an image");
  testing::WriteText(dir / "faces/c.jpg", "bad");
  testing::WriteImage(dir / "single.jpg");
  FakeBackend backend;
  PredictOptions o;
  o.model = "m";
  o.batch = 2;
  o.inputs = {dir / "faces", dir / "single.jpg"};
  std::ostringstream out, log;
  auto summary = RunPredict(o, backend.AsBackend(), out, log);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(backend.requests.size(), 2u);  // 4 images, 2 per request
  EXPECT_EQ(backend.requests[0].model(), "m");
  EXPECT_EQ(backend.requests[0].images(0).id(), dir / "faces/a.png");  // sorted
  const std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0],
            "input,frame,face_id,timestamp,confidence,success,x,y,width,height,AU01_p,AU02_p,AU01_"
            "c,AU02_c");
  EXPECT_EQ(lines[1], dir / "faces/a.png" + ",1,0,0.000,0.900,1,0,0,10,10,0.8000,0.2000,1,0");
  EXPECT_EQ(lines[3], dir / "faces/c.jpg" + ",1,0,0.000,0,0,,,,,,,,");  // unreadable: success 0
  EXPECT_EQ(std::count(lines[3].begin(), lines[3].end(), ','),
            std::count(lines[0].begin(), lines[0].end(), ','));
  EXPECT_THAT(log.str(), HasSubstr("c.jpg: not a decodable image"));
  EXPECT_EQ(summary->images, 4);
  EXPECT_EQ(summary->unreadable, 1);
  EXPECT_EQ(summary->faces, 3);
  EXPECT_EQ(summary->present, (std::vector<int64_t>{3, 0}));
  EXPECT_NEAR(summary->mean_probability[0], 0.8, 1e-6);
  EXPECT_THAT(FormatSummary(*summary), HasSubstr("AU01    100.0%"));
}

// A --batch above the server's --max-images: the refused request goes again in halves, and the
// requests after it are no larger; every image answered once, in order.
TEST(PredictTest, ABatchOverTheServersLimitIsSentInHalves) {
  testing::TempDir dir;
  std::vector<std::string> inputs;
  for (int i = 0; i < 7; ++i) {
    testing::WriteImage(dir / absl::StrCat("f", i, ".jpg"));
    inputs.push_back(dir / absl::StrCat("f", i, ".jpg"));
  }
  FakeBackend backend;
  backend.max_images = 2;
  PredictOptions o;
  o.model = "m";
  o.batch = 5;
  o.inputs = inputs;
  std::ostringstream out, log;
  auto summary = RunPredict(o, backend.AsBackend(), out, log);
  ASSERT_TRUE(summary.ok()) << summary.status();
  std::vector<int> sizes;
  for (const auto& r : backend.requests) sizes.push_back(r.images_size());
  // 5 refused, then 2, 2 and 1; the last two images in a request of 2.
  EXPECT_EQ(sizes, (std::vector<int>{5, 2, 2, 1, 2}));
  const std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 8u);
  for (int i = 0; i < 7; ++i)
    EXPECT_THAT(lines[i + 1], HasSubstr(absl::StrCat("f", i, ".jpg,1,0")));
  EXPECT_EQ(summary->faces, 7);
  EXPECT_THAT(
      log.str(),
      HasSubstr("5 images in one request: at most 2; sending at most 2 images per request"));
  // Other errors are not retried.
  FakeBackend down;
  down.fail = absl::UnavailableError("mal-serve at x: connection refused");
  EXPECT_EQ(RunPredict(o, down.AsBackend(), out, log).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(down.requests.size(), 1u);
}

// malctl: an image larger than one gRPC message may carry is not sent (it failed the whole run);
// its row says so, in its place, and the other images are answered.
TEST(PredictTest, AnImageOverTheRequestLimitGetsItsOwnErrorRow) {
  testing::TempDir dir;
  testing::WriteImage(dir / "a.jpg");
  testing::WriteText(dir / "big.bmp", std::string(4000, 'x'));
  testing::WriteImage(dir / "c.jpg");
  FakeBackend backend;
  PredictOptions o;
  o.model = "m";
  o.max_image_bytes = 3000;
  o.inputs = {dir / "a.jpg", dir / "big.bmp", dir / "c.jpg"};
  std::ostringstream out, log;
  auto summary = RunPredict(o, backend.AsBackend(), out, log);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(backend.requests.size(), 1u);
  EXPECT_TRUE(backend.requests[0].images(1).encoded().empty());  // not sent
  const std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[2], dir / "big.bmp" + ",1,0,0.000,0,0,,,,,,,,");
  EXPECT_THAT(lines[3], HasSubstr("c.jpg,1,0,0.000,0.900,1"));
  EXPECT_THAT(log.str(), HasSubstr("big.bmp: 0.0 MB, more than the 0.0 MB one image may have"));
  EXPECT_EQ(summary->unreadable, 1);
  EXPECT_EQ(summary->faces, 2);
}

TEST(PredictTest, VideoFramesGoRawWithTimestampsAndEveryNth) {
  testing::TempDir dir;
  const std::string video = dir / "clip.avi";
  {
    cv::VideoWriter writer(video, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 5.0,
                           cv::Size(64, 48));
    ASSERT_TRUE(writer.isOpened());
    for (int i = 0; i < 10; ++i)
      writer.write(cv::Mat(48, 64, CV_8UC3, cv::Scalar(20 * i, 100, 50)));
  }
  FakeBackend backend;
  PredictOptions o;
  o.inputs = {video};
  o.every = 3;
  std::ostringstream out, log;
  auto summary = RunPredict(o, backend.AsBackend(), out, log);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(backend.requests.size(), 1u);
  ASSERT_EQ(backend.requests[0].images_size(), 4);  // frames 1, 4, 7, 10
  const v1::RawFrame& raw = backend.requests[0].images(1).raw();
  EXPECT_EQ(raw.width(), 64);
  EXPECT_EQ(raw.height(), 48);
  EXPECT_EQ(raw.channels(), 3);
  EXPECT_EQ(raw.pixels().size(), 64u * 48 * 3);
  const std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_THAT(lines[2], ::testing::StartsWith(video + ",4,0,0.600,"));
  EXPECT_THAT(lines[4], ::testing::StartsWith(video + ",10,0,1.800,"));

  o.max_frames = 5;  // frames 1 and 4 only
  backend.requests.clear();
  ASSERT_TRUE(RunPredict(o, backend.AsBackend(), out, log).ok());
  EXPECT_EQ(backend.requests[0].images_size(), 2);
}

TEST(PredictTest, BadInputsAreNamedBeforeAnythingIsSent) {
  testing::TempDir dir;
  testing::WriteImage(dir / "ok.jpg");
  testing::WriteText(dir / "table.csv", "a,b\n");
  FakeBackend backend;
  PredictOptions o;
  std::ostringstream out, log;
  o.inputs = {dir / "ok.jpg", dir / "missing.jpg"};
  auto missing = RunPredict(o, backend.AsBackend(), out, log);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("missing.jpg"));
  o.inputs = {dir / "table.csv"};
  auto csv = RunPredict(o, backend.AsBackend(), out, log);
  EXPECT_EQ(csv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(csv.status().message()), HasSubstr("table.csv"));
  o.inputs = {};
  EXPECT_FALSE(RunPredict(o, backend.AsBackend(), out, log).ok());
  EXPECT_TRUE(backend.requests.empty());
}

TEST(PredictTest, AProgressLineForTerminals) {
  testing::TempDir dir;
  testing::WriteImage(dir / "a.jpg");
  testing::WriteImage(dir / "b.jpg");
  FakeBackend backend;
  PredictOptions o;
  o.inputs = {dir / "a.jpg", dir / "b.jpg"};
  o.batch = 1;
  o.progress = true;
  std::ostringstream out, log;
  ASSERT_TRUE(RunPredict(o, backend.AsBackend(), out, log).ok());
  EXPECT_THAT(log.str(), HasSubstr("\r1 of 2 images, 1 faces, "));
  EXPECT_THAT(log.str(), HasSubstr("\r2 of 2 images, 2 faces, "));
  EXPECT_EQ(log.str().back(), '\n');
  EXPECT_EQ(Lines(out.str()).size(), 3u);  // the rows are not mixed with it
}

TEST(PredictTest, JsonIsOneLinePerImage) {
  testing::TempDir dir;
  testing::WriteImage(dir / "a.jpg");
  testing::WriteImage(dir / "b.jpg");
  FakeBackend backend;
  PredictOptions o;
  o.inputs = {dir / "a.jpg", dir / "b.jpg"};
  o.format = "json";
  std::ostringstream out, log;
  ASSERT_TRUE(RunPredict(o, backend.AsBackend(), out, log).ok());
  const std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr("\"probability\":0.8"));
  EXPECT_THAT(lines[1], HasSubstr("b.jpg"));
}

TEST(PredictTest, OutFileAppearsWholeOrNotAtAll) {
  testing::TempDir dir;
  testing::WriteImage(dir / "a.jpg");
  FakeBackend backend;
  PredictCommandOptions o;
  o.predict.inputs = {dir / "a.jpg"};
  o.out = dir / "rows.csv";
  EXPECT_EQ(RunPredictCommand(o, backend.AsBackend(), "test"), 0);
  EXPECT_EQ(Lines(*ReadFile(o.out)).size(), 2u);

  backend.fail = absl::NotFoundError("no model \"m\"");
  o.out = dir / "failed.csv";
  EXPECT_EQ(RunPredictCommand(o, backend.AsBackend(), "test"), 1);
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_THAT(e.path().filename().string(), ::testing::Not(HasSubstr("failed.csv")));
  }
  o.predict.inputs = {dir / "nope.jpg"};
  EXPECT_EQ(RunPredictCommand(o, backend.AsBackend(), "test"), 2);

  // --out a directory: refused before the first request.
  backend.fail = absl::OkStatus();
  backend.requests.clear();
  o.predict.inputs = {dir / "a.jpg"};
  o.out = dir.path();
  EXPECT_EQ(RunPredictCommand(o, backend.AsBackend(), "test"), 2);
  EXPECT_TRUE(backend.requests.empty());
}

// Ctrl-C or SIGTERM in the middle of files: exit 3 and no --out file (a partial one under the
// final name, with exit 0, looked like a finished run).
TEST(PredictTest, AnInterruptedRunExitsThreeAndWritesNoFile) {
  testing::TempDir dir;
  testing::WriteImage(dir / "a.jpg");
  testing::WriteImage(dir / "b.jpg");
  FakeBackend backend;
  const Backend answer = backend.AsBackend();
  for (int sig : {SIGINT, SIGTERM}) {
    PredictCommandOptions o;
    o.predict.inputs = {dir / "a.jpg", dir / "b.jpg"};
    o.predict.batch = 1;
    o.out = dir / "rows.csv";
    const Backend interrupting = [&](const v1::DetectActionUnitsRequest& r) {
      std::raise(sig);  // during the first request
      return answer(r);
    };
    EXPECT_EQ(RunPredictCommand(o, interrupting, "test"), 3) << sig;
    for (const auto& e : fs::directory_iterator(dir.path())) {
      EXPECT_THAT(e.path().filename().string(), ::testing::Not(HasSubstr("rows.csv"))) << sig;
    }
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

// A video OpenCV cannot open has its row saying so (it was left out with exit 0); a pipe under an
// image's name is refused before anything is sent (reading it blocked for good), and in a
// directory it is counted, not read.
TEST(PredictTest, UnreadableVideosGetARowAndPipesAreNotRead) {
  testing::TempDir dir;
  testing::WriteImage(dir / "a.jpg");
  testing::WriteText(dir / "empty.mp4", "");
  FakeBackend backend;
  PredictOptions o;
  o.inputs = {dir / "empty.mp4", dir / "a.jpg"};
  std::ostringstream out, log;
  auto summary = RunPredict(o, backend.AsBackend(), out, log);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->images, 2);
  EXPECT_EQ(summary->unreadable, 1);
  const std::vector<std::string> lines = Lines(out.str());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[1], ::testing::StartsWith(dir / "empty.mp4" + ",1,0,0.000,0,0,"));
  EXPECT_THAT(log.str(), HasSubstr("empty.mp4: OpenCV cannot open this video"));

  fs::create_directories(dir / "pipes");
  ASSERT_EQ(::mkfifo((dir / "pipes/x.jpg").c_str(), 0600), 0);
  fs::create_symlink(dir / "gone.jpg", dir / "pipes/link.jpg");
  backend.requests.clear();
  o.inputs = {dir / "pipes/x.jpg"};
  auto pipe = RunPredict(o, backend.AsBackend(), out, log);
  EXPECT_EQ(pipe.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(pipe.status().message()), HasSubstr("x.jpg: not a regular file"));
  o.inputs = {dir / "pipes"};
  auto none = RunPredict(o, backend.AsBackend(), out, log);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("no image or video among the inputs"));
  EXPECT_THAT(log.str(), HasSubstr("2 image name(s) that are not regular files"));
  EXPECT_TRUE(backend.requests.empty());
}

}  // namespace
}  // namespace mal::predict
